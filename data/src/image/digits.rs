//! The UCI 8×8 handwritten digits as CSV (scikit-learn's `digits.csv.gz`): one image a
//! row, 64 values 0–16 row by row, then the label. Pixels are scaled to 0–255.

use super::idx::gunzip_if_needed;
use super::{ImageSet, RawImage, check_index};
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// 8×8 grey digit images with labels 0–9.
#[derive(Clone, Debug)]
pub struct Digits {
    path: PathBuf,
    pixels: Vec<u8>,
    labels: Vec<u8>,
}

impl Digits {
    /// Reads a digits CSV file, gzipped or not.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(path, bytes)
    }

    /// Parses digits CSV bytes (gzipped or not); `path` names them in errors.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        let bytes = gunzip_if_needed(path, bytes)?;
        let (mut pixels, mut labels) = (Vec::new(), Vec::new());
        let mut offset = 0u64;
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            let at = offset;
            offset += line.len() as u64;
            let text = std::str::from_utf8(line).map_err(|_| Error::format(path, at, "not UTF-8 text"))?.trim();
            if text.is_empty() {
                continue;
            }
            let values: Vec<u8> = text
                .split(',')
                .map(|v| v.trim().parse::<u8>())
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| Error::format(path, at, format!("bad value in {text:?}: {e}")))?;
            let Some((label, image)) = values.split_last().filter(|(_, image)| image.len() == 64) else {
                return Err(Error::format(path, at, format!("a row must hold 65 values, not {}", values.len())));
            };
            if image.iter().any(|&v| v > 16) || *label > 9 {
                return Err(Error::format(path, at, "a row must hold 64 values in 0..=16, then a label in 0..=9"));
            }
            pixels.extend(image.iter().map(|&v| ((u32::from(v) * 255 + 8) / 16) as u8));
            labels.push(*label);
        }
        if labels.is_empty() {
            return Err(Error::invalid(path, "no digit rows"));
        }
        Ok(Self { path: path.to_path_buf(), pixels, labels })
    }
}

impl ImageSet for Digits {
    fn path(&self) -> &Path {
        &self.path
    }
    fn format(&self) -> &'static str {
        "UCI digits CSV"
    }
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn num_classes(&self) -> usize {
        10
    }
    fn channels(&self) -> usize {
        1
    }
    fn image_size(&self) -> Option<(usize, usize)> {
        Some((8, 8))
    }
    fn label(&self, i: usize) -> Result<i64> {
        check_index(self, i)?;
        Ok(i64::from(self.labels[i]))
    }
    fn image(&self, i: usize) -> Result<RawImage> {
        check_index(self, i)?;
        Ok(RawImage { width: 8, height: 8, channels: 1, pixels: self.pixels[i * 64..(i + 1) * 64].to_vec() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_parse_and_scale() {
        let row: Vec<String> = (0..64).map(|i| (i % 17).to_string()).chain(["3".into()]).collect();
        let set = Digits::from_bytes(Path::new("d.csv"), format!("{}\n", row.join(",")).into_bytes()).unwrap();
        assert_eq!((set.len(), set.label(0).unwrap()), (1, 3));
        let px = set.image(0).unwrap().pixels;
        assert_eq!((px[0], px[8], px[16]), (0, 128, 255));
    }

    #[test]
    fn bad_rows_name_the_offset() {
        let p = Path::new("d.csv");
        let good: String = (0..64).map(|_| "0,").collect::<String>() + "1\n";
        let bad = format!("{good}1,2,x\n");
        assert!(Digits::from_bytes(p, bad.into_bytes()).unwrap_err().to_string().contains("at byte 130"));
        let out_of_range = good.replacen('0', "17", 1);
        assert!(Digits::from_bytes(p, out_of_range.into_bytes()).is_err());
        assert!(Digits::from_bytes(p, b"\n".to_vec()).is_err());
    }
}
