//! Opening an image set from a path, whatever its format.

use super::cifar::RECORD_BYTES;
use super::{Cifar10, Digits, IdxImages, ImageFolder, ImageSet, PACKED_MAGIC, PackedImages};
use crate::{Error, Result, Split, embedded};
use std::io::Read;
use std::path::Path;

/// The name that opens the embedded UCI digits.
pub const EMBEDDED_DIGITS: &str = "embedded:digits";

/// Opens the image set at `path`, detecting its format:
/// - `embedded:digits`: the digits compiled into this crate;
/// - a folder of class subfolders (`train/` of an ImageNet-style tree): an [`ImageFolder`];
/// - a folder with `data_batch_*.bin`: the CIFAR-10 training batches;
/// - a packed image file (magic `MNRCHIMG`): [`PackedImages`];
/// - an IDX image file, gzipped or not (its label file beside it): [`IdxImages`];
/// - a `.csv` or `.csv.gz` file: UCI digits rows ([`Digits`]);
/// - a `.bin` file of whole 3073-byte records: CIFAR-10.
pub fn open_image_set(path: impl AsRef<Path>) -> Result<Box<dyn ImageSet>> {
    let path = path.as_ref();
    if path.as_os_str() == EMBEDDED_DIGITS {
        return Ok(Box::new(embedded::digits()?));
    }
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        if path.join("data_batch_1.bin").is_file() {
            return Ok(Box::new(Cifar10::open_dir(path, false)?));
        }
        if path.join("train").is_dir() {
            return Err(Error::invalid(
                path,
                "holds a train/ folder: give ROOT/train or ROOT/val (or use open_image_split)",
            ));
        }
        return Ok(Box::new(ImageFolder::open(path)?));
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_ascii_lowercase();
    let mut head = [0u8; 8];
    let got =
        std::fs::File::open(path).and_then(|mut f| read_up_to(&mut f, &mut head)).map_err(|e| Error::io(path, e))?;
    let head = &head[..got];
    if head.starts_with(PACKED_MAGIC) {
        return Ok(Box::new(PackedImages::open(path)?));
    }
    if name.ends_with(".csv") || name.ends_with(".csv.gz") {
        return Ok(Box::new(Digits::open(path)?));
    }
    if head.starts_with(&[0, 0, 8, 3]) || (head.starts_with(&[0x1f, 0x8b]) && name.contains("idx")) {
        return Ok(Box::new(IdxImages::open(path)?));
    }
    if name.ends_with(".bin") && meta.len() > 0 && meta.len() % RECORD_BYTES as u64 == 0 {
        return Ok(Box::new(Cifar10::open(&[path.to_path_buf()])?));
    }
    Err(Error::invalid(
        path,
        "unknown image set format: expected a folder of class subfolders, a packed image file, an IDX image \
         file, a CIFAR-10 .bin batch, a digits .csv, or embedded:digits",
    ))
}

/// Opens split `split` of the image sets under `root`: `root/train` or `root/val` (an
/// ImageNet-style tree; `val` also for [`Split::Test`] when there is no `test`), MNIST-style
/// `train-images*` / `t10k-images*` IDX files, CIFAR-10's `data_batch_*.bin` /
/// `test_batch.bin`, or `train.mimg` / `val.mimg` packed files.
pub fn open_image_split(root: impl AsRef<Path>, split: Split) -> Result<Box<dyn ImageSet>> {
    let root = root.as_ref();
    let eval = split != Split::Train;
    let names: &[&str] = if eval { &["val", "test"] } else { &["train"] };
    for n in names {
        let dir = root.join(n);
        if dir.is_dir() {
            return open_image_set(dir);
        }
        let packed = root.join(format!("{n}.mimg"));
        if packed.is_file() {
            return open_image_set(packed);
        }
    }
    if root.join(if eval { "test_batch.bin" } else { "data_batch_1.bin" }).is_file() {
        return Ok(Box::new(Cifar10::open_dir(root, eval)?));
    }
    let prefix = if eval { "t10k-images" } else { "train-images" };
    let mut idx: Vec<_> = std::fs::read_dir(root)
        .map_err(|e| Error::io(root, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix)))
        .collect();
    idx.sort();
    if let Some(first) = idx.first() {
        return Ok(Box::new(IdxImages::open(first)?));
    }
    Err(Error::invalid(
        root,
        format!("no {} split found (a {names:?} folder or .mimg file, CIFAR-10 or IDX files)", split.as_str()),
    ))
}

fn read_up_to(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}
