//! The packed image format: an image set decoded once, cropped to a fixed square size
//! and stored as raw `u8` (N×H×W×C, then labels), memory-mapped for fast repeated epochs.
//!
//! Layout (little-endian): magic `MNRCHIMG`, version `u32` = 1, channels, height, width
//! (`u32` each), count `u64`, classes `u32`, bytes of class names `u32`, zeros up to byte
//! 64; then the pixels, the labels as `u16`, and the class names joined by newlines.

use super::transform::crop_resize;
use super::{ImageSet, RawImage, check_index};
use crate::{Error, Result};
use image::{Luma, Rgb};
use memmap2::Mmap;
use rayon::prelude::*;
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};

/// First bytes of a packed image file.
pub const PACKED_MAGIC: &[u8; 8] = b"MNRCHIMG";
const VERSION: u32 = 1;
const HEADER: usize = 64;

/// The header of a packed image file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackedHeader {
    /// Channels per pixel.
    pub channels: usize,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Number of images.
    pub count: usize,
    /// Number of classes.
    pub classes: usize,
    /// Bytes of the class names block.
    pub names_bytes: usize,
}

impl PackedHeader {
    fn pixels_end(&self) -> usize {
        HEADER + self.count * self.height * self.width * self.channels
    }

    fn encode(&self) -> [u8; HEADER] {
        let mut h = [0u8; HEADER];
        h[..8].copy_from_slice(PACKED_MAGIC);
        let words = [VERSION, self.channels as u32, self.height as u32, self.width as u32];
        for (i, w) in words.iter().enumerate() {
            h[8 + 4 * i..12 + 4 * i].copy_from_slice(&w.to_le_bytes());
        }
        h[24..32].copy_from_slice(&(self.count as u64).to_le_bytes());
        h[32..36].copy_from_slice(&(self.classes as u32).to_le_bytes());
        h[36..40].copy_from_slice(&(self.names_bytes as u32).to_le_bytes());
        h
    }
}

/// Checks the header of a packed image file against the file's length.
pub fn parse_packed_header(path: &Path, bytes: &[u8]) -> Result<PackedHeader> {
    if bytes.len() < HEADER {
        return Err(Error::format(path, bytes.len() as u64, "truncated packed-image header"));
    }
    if &bytes[..8] != PACKED_MAGIC {
        return Err(Error::format(path, 0, "not a packed image file (wrong magic)"));
    }
    let u32_at = |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize;
    if u32_at(8) != VERSION as usize {
        return Err(Error::format(path, 8, format!("unsupported version {}", u32_at(8))));
    }
    let mut count = [0u8; 8];
    count.copy_from_slice(&bytes[24..32]);
    let h = PackedHeader {
        channels: u32_at(12),
        height: u32_at(16),
        width: u32_at(20),
        count: usize::try_from(u64::from_le_bytes(count)).unwrap_or(usize::MAX),
        classes: u32_at(32),
        names_bytes: u32_at(36),
    };
    if !matches!(h.channels, 1 | 3) || h.height == 0 || h.width == 0 {
        return Err(Error::format(path, 12, format!("bad image shape {}x{}x{}", h.height, h.width, h.channels)));
    }
    if h.classes == 0 || h.classes > usize::from(u16::MAX) + 1 {
        return Err(Error::format(path, 32, format!("bad class count {}", h.classes)));
    }
    let per_image =
        h.height.checked_mul(h.width).and_then(|p| p.checked_mul(h.channels)).and_then(|p| p.checked_add(2));
    let total = per_image.and_then(|p| h.count.checked_mul(p)).and_then(|b| b.checked_add(HEADER + h.names_bytes));
    if total != Some(bytes.len()) {
        return Err(Error::format(
            path,
            24,
            format!(
                "header says {} images of {}x{}x{}, which disagrees with the file's {} bytes",
                h.count,
                h.height,
                h.width,
                h.channels,
                bytes.len()
            ),
        ));
    }
    Ok(h)
}

/// A packed image file, memory-mapped.
pub struct PackedImages {
    path: PathBuf,
    map: Mmap,
    header: PackedHeader,
    classes: Vec<String>,
}

impl PackedImages {
    /// Maps and checks a packed image file (header, labels, class names).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        if file.metadata().map_err(|e| Error::io(path, e))?.len() < HEADER as u64 {
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            parse_packed_header(path, &bytes)?;
        }
        // SAFETY: read-only map of a file written once through a temporary name; as with
        // any memory-mapped reader, the file must not be truncated while open.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let header = parse_packed_header(path, &map)?;
        let labels_at = header.pixels_end();
        for (i, l) in map[labels_at..labels_at + 2 * header.count].chunks_exact(2).enumerate() {
            if u16::from_le_bytes([l[0], l[1]]) as usize >= header.classes {
                return Err(Error::format(path, (labels_at + 2 * i) as u64, "label out of range of the classes"));
            }
        }
        let names = &map[labels_at + 2 * header.count..];
        let names = std::str::from_utf8(names).map_err(|e| {
            Error::format(path, (labels_at + 2 * header.count + e.valid_up_to()) as u64, "class names are not UTF-8")
        })?;
        let classes: Vec<String> = names.split('\n').map(str::to_string).collect();
        if classes.len() != header.classes {
            return Err(Error::invalid(path, format!("{} class names for {} classes", classes.len(), header.classes)));
        }
        Ok(Self { path: path.to_path_buf(), map, header, classes })
    }

    /// The file's header.
    pub fn header(&self) -> PackedHeader {
        self.header
    }
}

impl ImageSet for PackedImages {
    fn path(&self) -> &Path {
        &self.path
    }
    fn format(&self) -> &'static str {
        "packed images"
    }
    fn len(&self) -> usize {
        self.header.count
    }
    fn num_classes(&self) -> usize {
        self.header.classes
    }
    fn channels(&self) -> usize {
        self.header.channels
    }
    fn image_size(&self) -> Option<(usize, usize)> {
        Some((self.header.height, self.header.width))
    }
    fn class_names(&self) -> Vec<String> {
        self.classes.clone()
    }
    fn label(&self, i: usize) -> Result<i64> {
        check_index(self, i)?;
        let at = self.header.pixels_end() + 2 * i;
        Ok(i64::from(u16::from_le_bytes([self.map[at], self.map[at + 1]])))
    }
    fn image(&self, i: usize) -> Result<RawImage> {
        check_index(self, i)?;
        let h = &self.header;
        let per = h.height * h.width * h.channels;
        let pixels = self.map[HEADER + i * per..HEADER + (i + 1) * per].to_vec();
        Ok(RawImage { width: h.width as u32, height: h.height as u32, channels: h.channels as u8, pixels })
    }
}

/// What [`pack_image_set`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackReport {
    /// Images written.
    pub images: usize,
    /// Images left out because they failed to decode.
    pub skipped: usize,
}

/// Decodes every image of `set`, crops its central square, resizes it to `size`×`size`
/// and writes the packed file `out` (through a temporary file renamed at the end). With
/// `skip_corrupt`, images that fail to decode are left out and counted.
pub fn pack_image_set(set: &dyn ImageSet, out: &Path, size: u32, skip_corrupt: bool) -> Result<PackReport> {
    if size == 0 || size > 4096 {
        return Err(Error::Config(format!("packed image size must be in 1..=4096, not {size}")));
    }
    let classes = set.class_names();
    if classes.len() > usize::from(u16::MAX) + 1 || classes.iter().any(|c| c.contains('\n')) {
        return Err(Error::invalid(set.path(), "too many classes, or a class name with a newline"));
    }
    let names = classes.join("\n");
    let name = out.file_name().ok_or_else(|| Error::invalid(out, "no file name"))?;
    let tmp = out.with_file_name(format!(".{}.tmp{}", name.to_string_lossy(), std::process::id()));
    let result = write_packed(set, &tmp, size, skip_corrupt, &names).and_then(|report| {
        std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
        Ok(report)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_packed(set: &dyn ImageSet, tmp: &Path, size: u32, skip_corrupt: bool, names: &str) -> Result<PackReport> {
    let io = |e| Error::io(tmp, e);
    let mut file = std::io::BufWriter::new(std::fs::File::create(tmp).map_err(io)?);
    let mut header = PackedHeader {
        channels: set.channels(),
        height: size as usize,
        width: size as usize,
        count: 0,
        classes: set.num_classes().max(1),
        names_bytes: names.len(),
    };
    file.write_all(&header.encode()).map_err(io)?;
    let (mut labels, mut skipped) = (Vec::new(), 0);
    let ids: Vec<usize> = (0..set.len()).collect();
    for chunk in ids.chunks(256) {
        let done: Vec<Result<(Vec<u8>, i64)>> =
            chunk.par_iter().map(|&i| Ok((square(&set.image(i)?, size)?, set.label(i)?))).collect();
        for r in done {
            match r {
                Ok((px, label)) => {
                    file.write_all(&px).map_err(io)?;
                    labels.push(label as u16);
                }
                Err(Error::Image { .. } | Error::Io { .. }) if skip_corrupt => skipped += 1,
                Err(e) => return Err(e),
            }
        }
    }
    for l in &labels {
        file.write_all(&l.to_le_bytes()).map_err(io)?;
    }
    file.write_all(names.as_bytes()).map_err(io)?;
    header.count = labels.len();
    let mut file = file.into_inner().map_err(|e| Error::io(tmp, e.into_error()))?;
    file.rewind().map_err(io)?;
    file.write_all(&header.encode()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(PackReport { images: labels.len(), skipped })
}

/// The central square of `img`, resized to `size`×`size`, HWC.
fn square(img: &RawImage, size: u32) -> Result<Vec<u8>> {
    let side = img.width.min(img.height);
    let crop = ((img.width - side) / 2, (img.height - side) / 2, side, side);
    let out = match img.channels {
        1 => crop_resize::<Luma<u8>>(img, crop, size, size),
        3 => crop_resize::<Rgb<u8>>(img, crop, size, size),
        _ => None,
    };
    out.ok_or_else(|| Error::Config(format!("cannot pack an image of {}x{}x{}", img.width, img.height, img.channels)))
}
