//! ImageNet-style folders: `DIR/<class>/*.JPEG` (classes are the sorted subfolder names),
//! or a flat folder of images with a label file. JPEG and PNG, decoded by the `image`
//! crate; files with other extensions and hidden entries are ignored.

use super::{ImageSet, RawImage, check_index};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Extensions of the image files read (compared without case).
const EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// A folder of labelled photos of any size, decoded on demand.
#[derive(Clone, Debug)]
pub struct ImageFolder {
    root: PathBuf,
    files: Vec<PathBuf>,
    labels: Vec<u32>,
    classes: Vec<String>,
}

impl ImageFolder {
    /// Reads `dir/<class>/<image>` for every class subfolder. Fails if `dir` is missing,
    /// has no subfolder, or a class folder holds no image.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let mut classes = Vec::new();
        for path in sorted_entries(dir)? {
            if path.is_dir() {
                classes.push(path);
            }
        }
        if classes.is_empty() {
            return Err(Error::invalid(dir, "no class subfolders (expected DIR/<class>/<image>.JPEG)"));
        }
        let (mut files, mut labels, mut names) = (Vec::new(), Vec::new(), Vec::new());
        for (label, class_dir) in classes.iter().enumerate() {
            let before = files.len();
            files.extend(sorted_entries(class_dir)?.into_iter().filter(|p| is_image_name(p)));
            if files.len() == before {
                return Err(Error::invalid(class_dir, "class folder holds no .jpg, .jpeg or .png image"));
            }
            labels.resize(files.len(), label as u32);
            names.push(class_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        }
        Ok(Self { root: dir.to_path_buf(), files, labels, classes: names })
    }

    /// Reads a flat folder of images labelled by `label_file`: one image a line, its file
    /// name (or name without extension) then its class, separated by a comma or
    /// whitespace; with a comma, the class is the first word after it (ImageNet's
    /// `LOC_val_solution.csv`, whose header line is skipped). Classes are numbered in sorted
    /// order of their names, as [`Self::open`] numbers sorted subfolders.
    pub fn open_flat(dir: impl AsRef<Path>, label_file: impl AsRef<Path>) -> Result<Self> {
        let (dir, label_file) = (dir.as_ref(), label_file.as_ref());
        let text = std::fs::read_to_string(label_file).map_err(|e| Error::io(label_file, e))?;
        let mut by_name: BTreeMap<String, String> = BTreeMap::new();
        let mut offset = 0u64;
        for line in text.split_inclusive('\n') {
            let l = line.trim();
            let at = offset;
            offset += line.len() as u64;
            if l.is_empty() || l.starts_with("ImageId,") {
                continue;
            }
            let (name, rest) = match l.split_once(',') {
                Some((n, r)) => (n.trim(), r),
                None => l.split_once(char::is_whitespace).unwrap_or((l, "")),
            };
            let Some(class) = rest.split_whitespace().next() else {
                return Err(Error::format(label_file, at, format!("line {l:?} names no class")));
            };
            by_name.insert(name.to_string(), class.to_string());
        }
        let mut classes: Vec<String> = by_name.values().cloned().collect();
        classes.sort();
        classes.dedup();
        let (mut files, mut labels) = (Vec::new(), Vec::new());
        for path in sorted_entries(dir)?.into_iter().filter(|p| is_image_name(p)) {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let stem = path.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let class = by_name
                .get(&name)
                .or_else(|| by_name.get(&stem))
                .ok_or_else(|| Error::invalid(label_file, format!("has no label for image {}", path.display())))?;
            labels.push(classes.binary_search(class).unwrap_or_default() as u32);
            files.push(path);
        }
        if files.is_empty() {
            return Err(Error::invalid(dir, "folder holds no .jpg, .jpeg or .png image"));
        }
        Ok(Self { root: dir.to_path_buf(), files, labels, classes })
    }

    /// Class names, in label order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// The image files, in index order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }
}

impl ImageSet for ImageFolder {
    fn path(&self) -> &Path {
        &self.root
    }
    fn format(&self) -> &'static str {
        "image folder"
    }
    fn len(&self) -> usize {
        self.files.len()
    }
    fn num_classes(&self) -> usize {
        self.classes.len()
    }
    fn channels(&self) -> usize {
        3
    }
    fn image_size(&self) -> Option<(usize, usize)> {
        None
    }
    fn class_names(&self) -> Vec<String> {
        self.classes.clone()
    }
    fn label(&self, i: usize) -> Result<i64> {
        check_index(self, i)?;
        Ok(i64::from(self.labels[i]))
    }
    fn image(&self, i: usize) -> Result<RawImage> {
        check_index(self, i)?;
        decode_file(&self.files[i])
    }
}

/// Reads and decodes an image file (any format the `image` crate was built with) to RGB.
pub fn decode_file(path: &Path) -> Result<RawImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let img =
        image::load_from_memory(&bytes).map_err(|e| Error::Image { path: path.to_path_buf(), msg: e.to_string() })?;
    let rgb = img.into_rgb8();
    Ok(RawImage { width: rgb.width(), height: rgb.height(), channels: 3, pixels: rgb.into_raw() })
}

fn is_image_name(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// The entries of `dir` without hidden ones, sorted.
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if !path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}
