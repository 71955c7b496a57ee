//! The IDX format of MNIST and Fashion-MNIST, gzipped or not: a big-endian header (two
//! zero bytes, a type byte, the number of dimensions, then each dimension as a `u32`),
//! then the values. Only unsigned bytes (type 0x08) are read, which is what both sets use.

use super::{ImageSet, RawImage, check_index};
use crate::{Error, Result};
use flate2::read::GzDecoder;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Decompressed files larger than this are refused (a corrupt or malicious gzip stream).
const MAX_DECOMPRESSED: u64 = 4 << 30;

/// An IDX array of unsigned bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    /// The dimensions, outermost first.
    pub dims: Vec<usize>,
    /// The values, row-major.
    pub data: Vec<u8>,
}

/// Reads a file, decompressing it if it starts with the gzip magic.
pub fn read_maybe_gzip(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    gunzip_if_needed(path, bytes)
}

pub(crate) fn gunzip_if_needed(path: &Path, bytes: Vec<u8>) -> Result<Vec<u8>> {
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Ok(bytes);
    }
    let mut out = Vec::new();
    GzDecoder::new(&bytes[..])
        .take(MAX_DECOMPRESSED + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::invalid(path, format!("corrupt gzip data: {e}")))?;
    if out.len() as u64 > MAX_DECOMPRESSED {
        return Err(Error::invalid(path, "decompresses to more than 4 GiB"));
    }
    Ok(out)
}

/// Parses the (decompressed) bytes of an IDX file; `path` names it in errors.
pub fn parse_idx(path: &Path, bytes: &[u8]) -> Result<IdxArray> {
    if bytes.len() < 4 {
        return Err(Error::format(path, bytes.len() as u64, "truncated IDX header"));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(Error::format(path, 0, "not an IDX file (the first two bytes must be zero)"));
    }
    if bytes[2] != 0x08 {
        return Err(Error::format(
            path,
            2,
            format!("IDX value type 0x{:02x} is not supported (only 0x08, u8)", bytes[2]),
        ));
    }
    let rank = bytes[3] as usize;
    if rank == 0 {
        return Err(Error::format(path, 3, "IDX array of rank 0"));
    }
    let header = 4 + 4 * rank;
    if bytes.len() < header {
        return Err(Error::format(path, bytes.len() as u64, format!("truncated IDX header of {rank} dimensions")));
    }
    let dims: Vec<usize> =
        bytes[4..header].chunks_exact(4).map(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize).collect();
    let count = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let body = bytes.len() - header;
    if count != Some(body) {
        let want = count.map_or("too many".to_string(), |c| c.to_string());
        return Err(Error::format(
            path,
            header as u64,
            format!("dimensions {dims:?} need {want} bytes of values, but {body} follow the header"),
        ));
    }
    Ok(IdxArray { dims, data: bytes[header..].to_vec() })
}

/// An IDX image file (N × rows × cols) with its IDX label file (N).
#[derive(Clone, Debug)]
pub struct IdxImages {
    path: PathBuf,
    images: IdxArray,
    labels: Vec<u8>,
    classes: usize,
}

impl IdxImages {
    /// Opens an image file and the label file beside it, found by replacing `images` with
    /// `labels` and `idx3` with `idx1` in the file name (`train-images-idx3-ubyte.gz` →
    /// `train-labels-idx1-ubyte.gz`; MNIST's `train-images.idx3-ubyte` works as well).
    pub fn open(images: impl AsRef<Path>) -> Result<Self> {
        let images = images.as_ref();
        let name = images.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if !name.contains("images") {
            return Err(Error::invalid(images, "cannot find the label file: the name does not contain \"images\""));
        }
        let labels = images.with_file_name(name.replace("images", "labels").replace("idx3", "idx1"));
        Self::open_pair(images, &labels)
    }

    /// Opens an image file and its label file.
    pub fn open_pair(images: &Path, labels: &Path) -> Result<Self> {
        let img = parse_idx(images, &read_maybe_gzip(images)?)?;
        let lab = parse_idx(labels, &read_maybe_gzip(labels)?)?;
        Self::from_arrays(images, img, labels, lab)
    }

    /// Checks that an image array and a label array belong together.
    pub fn from_arrays(images_path: &Path, images: IdxArray, labels_path: &Path, labels: IdxArray) -> Result<Self> {
        if images.dims.len() != 3 || images.dims[1] == 0 || images.dims[2] == 0 {
            return Err(Error::invalid(
                images_path,
                format!("IDX images must be N×rows×cols with rows, cols > 0, not {:?}", images.dims),
            ));
        }
        if labels.dims.len() != 1 || labels.dims[0] != images.dims[0] {
            return Err(Error::invalid(labels_path, format!("{:?} labels for {} images", labels.dims, images.dims[0])));
        }
        let classes = labels.data.iter().max().map_or(0, |&m| m as usize + 1);
        Ok(Self { path: images_path.to_path_buf(), images, labels: labels.data, classes })
    }
}

impl ImageSet for IdxImages {
    fn path(&self) -> &Path {
        &self.path
    }
    fn format(&self) -> &'static str {
        "IDX (MNIST)"
    }
    fn len(&self) -> usize {
        self.images.dims[0]
    }
    fn num_classes(&self) -> usize {
        self.classes
    }
    fn channels(&self) -> usize {
        1
    }
    fn image_size(&self) -> Option<(usize, usize)> {
        Some((self.images.dims[1], self.images.dims[2]))
    }
    fn label(&self, i: usize) -> Result<i64> {
        check_index(self, i)?;
        Ok(i64::from(self.labels[i]))
    }
    fn image(&self, i: usize) -> Result<RawImage> {
        check_index(self, i)?;
        let (h, w) = (self.images.dims[1], self.images.dims[2]);
        let pixels = self.images.data[i * h * w..(i + 1) * h * w].to_vec();
        Ok(RawImage { width: w as u32, height: h as u32, channels: 1, pixels })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IDX file of unsigned bytes with the given dimensions, values 0, 1, 2, ...
    pub(crate) fn idx_bytes(dims: &[u32]) -> Vec<u8> {
        let mut b = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            b.extend(d.to_be_bytes());
        }
        let n: u32 = dims.iter().product();
        b.extend((0..n).map(|i| i as u8));
        b
    }

    #[test]
    fn parses_header_and_values() {
        let a = parse_idx(Path::new("a"), &idx_bytes(&[2, 3, 2])).unwrap();
        assert_eq!(a.dims, vec![2, 3, 2]);
        assert_eq!(a.data, (0..12).collect::<Vec<u8>>());
    }

    #[test]
    fn bad_files_name_the_offset() {
        let p = Path::new("m.idx");
        let good = idx_bytes(&[2, 3, 2]);
        let msg = |b: &[u8]| parse_idx(p, b).unwrap_err().to_string();
        assert!(msg(&good[..good.len() - 1]).contains("m.idx: at byte 16: dimensions [2, 3, 2] need 12 bytes"));
        assert!(msg(&good[..6]).contains("at byte 6: truncated IDX header"));
        let mut t = good.clone();
        t[2] = 0x0d;
        assert!(msg(&t).contains("at byte 2: IDX value type 0x0d"));
        t[0] = 1;
        assert!(msg(&t).contains("at byte 0: not an IDX file"));
        let huge = [0, 0, 8, 2, 255, 255, 255, 255, 255, 255, 255, 255];
        assert!(msg(&huge).contains("need"));
    }

    #[test]
    fn labels_must_match_images() {
        let p = Path::new("x");
        let img = parse_idx(p, &idx_bytes(&[3, 2, 2])).unwrap();
        let lab = parse_idx(p, &idx_bytes(&[2])).unwrap();
        assert!(
            IdxImages::from_arrays(p, img.clone(), p, lab).unwrap_err().to_string().contains("[2] labels for 3 images")
        );
        let lab = parse_idx(p, &idx_bytes(&[3])).unwrap();
        let set = IdxImages::from_arrays(p, img, p, lab).unwrap();
        assert_eq!((set.len(), set.num_classes(), set.label(2).unwrap()), (3, 3, 2));
        assert_eq!(set.image(1).unwrap().pixels, vec![4, 5, 6, 7]);
        assert!(set.image(3).is_err());
    }
}
