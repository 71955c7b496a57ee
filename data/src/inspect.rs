//! `monarch data inspect`: what a data file holds, for token files and image sets alike.

use crate::image::open_image_set;
use crate::{Error, Result, TokenFile, TokenFormat};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// A summary of a data file or folder.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Inspection {
    /// A file of tokens.
    Tokens {
        /// The file.
        path: PathBuf,
        /// Its layout.
        format: TokenFormat,
        /// Number of tokens.
        tokens: u64,
        /// Smallest token id (absent when empty).
        min_id: Option<u16>,
        /// Largest token id (absent when empty).
        max_id: Option<u16>,
    },
    /// A labelled image set.
    Images {
        /// The file or folder.
        path: PathBuf,
        /// Its format.
        format: String,
        /// Number of images.
        images: u64,
        /// Number of classes.
        classes: u64,
        /// Channels per pixel.
        channels: u64,
        /// Image height, when all images share one.
        height: Option<u64>,
        /// Image width, when all images share one.
        width: Option<u64>,
    },
}

/// Inspects a token file (llm.c shard or nanoGPT `train.bin`/`val.bin`) or any image set
/// that [`open_image_set`] reads.
pub fn inspect(path: impl AsRef<Path>) -> Result<Inspection> {
    let path = path.as_ref();
    if path.is_file() {
        match TokenFile::open(path) {
            Ok(f) => {
                let range = f.id_range();
                return Ok(Inspection::Tokens {
                    path: path.to_path_buf(),
                    format: f.format(),
                    tokens: f.len() as u64,
                    min_id: range.map(|r| r.0),
                    max_id: range.map(|r| r.1),
                });
            }
            // A file that claims to be a token file but is damaged: report that.
            Err(e @ Error::Format { offset: 1.., .. }) => return Err(e),
            Err(_) => {}
        }
    }
    let set = open_image_set(path)?;
    let (h, w) = set.image_size().map_or((None, None), |(h, w)| (Some(h as u64), Some(w as u64)));
    Ok(Inspection::Images {
        path: path.to_path_buf(),
        format: set.format().to_string(),
        images: set.len() as u64,
        classes: set.num_classes() as u64,
        channels: set.channels() as u64,
        height: h,
        width: w,
    })
}

impl std::fmt::Display for Inspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Inspection::Tokens { path, format, tokens, min_id, max_id } => {
                write!(f, "{}: {}, {tokens} tokens", path.display(), format.as_str())?;
                if let (Some(lo), Some(hi)) = (min_id, max_id) {
                    write!(f, ", ids {lo}..={hi}")?;
                }
                Ok(())
            }
            Inspection::Images { path, format, images, classes, channels, height, width } => {
                write!(f, "{}: {format}, {images} images, {classes} classes, {channels} channels", path.display())?;
                match (height, width) {
                    (Some(h), Some(w)) => write!(f, ", {h}x{w}"),
                    _ => write!(f, ", sizes vary"),
                }
            }
        }
    }
}
