//! CIFAR-10's binary format: records of one label byte and 3072 pixel bytes (32×32 red,
//! then green, then blue), in `data_batch_{1..5}.bin` and `test_batch.bin`.

use super::{ImageSet, RawImage, check_index};
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// Bytes of one record.
pub const RECORD_BYTES: usize = 1 + 3 * 32 * 32;
const CLASSES: usize = 10;

/// CIFAR-10 images from one or more binary batch files, in memory (30 MB per file).
#[derive(Clone, Debug)]
pub struct Cifar10 {
    path: PathBuf,
    records: Vec<u8>,
}

impl Cifar10 {
    /// Reads the given batch files, in order.
    pub fn open(files: &[PathBuf]) -> Result<Self> {
        let Some(first) = files.first() else {
            return Err(Error::Config("CIFAR-10: no batch file given".into()));
        };
        let mut records = Vec::new();
        for f in files {
            let bytes = std::fs::read(f).map_err(|e| Error::io(f, e))?;
            check_records(f, &bytes)?;
            records.extend_from_slice(&bytes);
        }
        Ok(Self { path: first.clone(), records })
    }

    /// The training batches `data_batch_*.bin` (or, for `test`, `test_batch.bin`) of the
    /// folder `dir` (`cifar-10-batches-bin`).
    pub fn open_dir(dir: &Path, test: bool) -> Result<Self> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                if test { name == "test_batch.bin" } else { name.starts_with("data_batch_") && name.ends_with(".bin") }
            })
            .collect();
        files.sort();
        if files.is_empty() {
            let want = if test { "test_batch.bin" } else { "data_batch_*.bin" };
            return Err(Error::invalid(dir, format!("no CIFAR-10 batch file ({want})")));
        }
        Self::open(&files)
    }

    /// Wraps records already in memory; `path` names them in errors.
    pub fn from_bytes(path: &Path, records: Vec<u8>) -> Result<Self> {
        check_records(path, &records)?;
        Ok(Self { path: path.to_path_buf(), records })
    }
}

/// Checks that `bytes` are whole records with labels below 10.
pub fn check_records(path: &Path, bytes: &[u8]) -> Result<()> {
    if bytes.is_empty() || bytes.len() % RECORD_BYTES != 0 {
        let whole = bytes.len() / RECORD_BYTES * RECORD_BYTES;
        return Err(Error::format(
            path,
            whole as u64,
            format!("{} bytes is not a whole number of {RECORD_BYTES}-byte CIFAR-10 records", bytes.len()),
        ));
    }
    for (i, rec) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
        if rec[0] as usize >= CLASSES {
            return Err(Error::format(
                path,
                (i * RECORD_BYTES) as u64,
                format!("label {} is not a CIFAR-10 class", rec[0]),
            ));
        }
    }
    Ok(())
}

impl ImageSet for Cifar10 {
    fn path(&self) -> &Path {
        &self.path
    }
    fn format(&self) -> &'static str {
        "CIFAR-10 binary"
    }
    fn len(&self) -> usize {
        self.records.len() / RECORD_BYTES
    }
    fn num_classes(&self) -> usize {
        CLASSES
    }
    fn channels(&self) -> usize {
        3
    }
    fn image_size(&self) -> Option<(usize, usize)> {
        Some((32, 32))
    }
    fn label(&self, i: usize) -> Result<i64> {
        check_index(self, i)?;
        Ok(i64::from(self.records[i * RECORD_BYTES]))
    }
    fn image(&self, i: usize) -> Result<RawImage> {
        check_index(self, i)?;
        let planes = &self.records[i * RECORD_BYTES + 1..(i + 1) * RECORD_BYTES];
        let mut pixels = Vec::with_capacity(3 * 1024);
        for p in 0..1024 {
            pixels.extend([planes[p], planes[1024 + p], planes[2048 + p]]);
        }
        Ok(RawImage { width: 32, height: 32, channels: 3, pixels })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planes_become_interleaved_pixels() {
        let mut rec = vec![7u8];
        rec.extend((0..3072).map(|i| (i / 1024) as u8 * 100 + (i % 2) as u8));
        let set = Cifar10::from_bytes(Path::new("c.bin"), rec).unwrap();
        assert_eq!((set.len(), set.label(0).unwrap()), (1, 7));
        let img = set.image(0).unwrap();
        assert_eq!(&img.pixels[..6], &[0, 100, 200, 1, 101, 201]);
    }

    #[test]
    fn bad_records_name_the_offset() {
        let p = Path::new("c.bin");
        let mut two = vec![0u8; 2 * RECORD_BYTES];
        assert!(check_records(p, &two[..RECORD_BYTES + 5]).unwrap_err().to_string().contains("at byte 3073"));
        two[RECORD_BYTES] = 10;
        assert!(check_records(p, &two).unwrap_err().to_string().contains("at byte 3073: label 10"));
        assert!(check_records(p, &[]).is_err());
    }
}
