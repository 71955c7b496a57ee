//! Image sets for classification: one [`ImageSet`] trait over the formats on disk
//! (ImageNet-style folders, packed uint8 files, IDX, CIFAR-10 binary, the embedded digits),
//! transforms (random resized crop, flip, centre crop, normalisation) and a prefetching
//! multi-threaded batch loader.

mod cifar;
mod digits;
mod folder;
mod idx;
mod loader;
mod open;
mod packed;
mod subset;
mod transform;

pub use cifar::Cifar10;
pub use digits::Digits;
pub use folder::{ImageFolder, decode_file};
pub use idx::{IdxArray, IdxImages, parse_idx, read_maybe_gzip};
pub use loader::{ImageBatch, ImageLoader, ImageLoaderConfig};
pub use open::{EMBEDDED_DIGITS, open_image_set, open_image_split};
pub use packed::{PACKED_MAGIC, PackReport, PackedHeader, PackedImages, pack_image_set, parse_packed_header};
pub use subset::Subset;
pub use transform::{Normalization, Transform};

use crate::Result;
use std::path::Path;

/// A decoded image: `height × width × channels` bytes, row-major, channels interleaved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// 1 (grey) or 3 (RGB).
    pub channels: u8,
    /// The pixels, HWC.
    pub pixels: Vec<u8>,
}

/// A labelled image set, whatever its format on disk. Implementations are cheap to
/// share between loader threads.
pub trait ImageSet: Send + Sync {
    /// The file or folder it was read from (for messages).
    fn path(&self) -> &Path;
    /// A short name of the format.
    fn format(&self) -> &'static str;
    /// Number of images.
    fn len(&self) -> usize;
    /// Whether the set holds no image.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Number of classes; labels are in `0..num_classes`.
    fn num_classes(&self) -> usize;
    /// Channels of every image (1 or 3).
    fn channels(&self) -> usize;
    /// (height, width) when all images share it, `None` for sets of photos of any size.
    fn image_size(&self) -> Option<(usize, usize)>;
    /// Class names in label order (the label numbers themselves unless the format names
    /// its classes).
    fn class_names(&self) -> Vec<String> {
        (0..self.num_classes()).map(|c| c.to_string()).collect()
    }
    /// The label of image `i`; an error when `i >= len()`.
    fn label(&self, i: usize) -> Result<i64>;
    /// Image `i`, decoded; an error when `i >= len()` or the image is corrupt.
    fn image(&self, i: usize) -> Result<RawImage>;
}

/// Fails unless `i` indexes one of the `set`'s images.
fn check_index(set: &(impl ImageSet + ?Sized), i: usize) -> Result<()> {
    if i < set.len() {
        Ok(())
    } else {
        Err(crate::Error::Config(format!(
            "{}: image index {i} out of range for {} images",
            set.path().display(),
            set.len()
        )))
    }
}
