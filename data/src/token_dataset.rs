//! A token data set: one or many token files, opened by path, glob or split name, read
//! as one stream in path order.

use crate::{Error, Result, TokenFile};
use std::path::Path;

/// The name that [`TokenDataset::split`] reads as the embedded Shakespeare.
pub const EMBEDDED_SHAKESPEARE: &str = "embedded:shakespeare";

/// One or many [`TokenFile`]s (shards), in a fixed order.
#[derive(Clone, Debug)]
pub struct TokenDataset {
    files: Vec<TokenFile>,
}

impl TokenDataset {
    /// Opens a token file, or every file matching a glob pattern (`data/train_*.bin`), in
    /// sorted path order.
    pub fn open(pattern: impl AsRef<Path>) -> Result<Self> {
        let pattern = pattern.as_ref();
        if pattern.is_file() {
            return Self::from_files(vec![TokenFile::open(pattern)?]);
        }
        if pattern.is_dir() {
            return Err(Error::invalid(
                pattern,
                "is a folder: give a shard, a glob such as DIR/train_*.bin, or use TokenDataset::split",
            ));
        }
        let text = pattern.to_str().ok_or_else(|| Error::invalid(pattern, "path is not valid UTF-8"))?;
        let paths = glob_sorted(pattern, text)?;
        if paths.is_empty() {
            return Err(Error::invalid(pattern, "no such file, and no file matches it as a glob pattern"));
        }
        Self::from_files(paths.iter().map(TokenFile::open).collect::<Result<_>>()?)
    }

    /// Opens one split (`train`, `val`, `test`) of the token files in `dir`: the first of
    /// `{split}_*.bin` (written by `monarch tokenize`), `*_{split}_*.bin` and
    /// `*_{split}.bin` (llm.c's names), `{split}.bin` (nanoGPT's) that matches any file.
    ///
    /// `embedded:shakespeare` names the embedded Shakespeare: its last 10% of tokens is
    /// split `val` (and `test`), the rest `train` (see [`TokenDataset::train_val`] for
    /// another fraction).
    pub fn split(dir: impl AsRef<Path>, split: &str) -> Result<Self> {
        let dir = dir.as_ref();
        if dir.as_os_str() == EMBEDDED_SHAKESPEARE {
            let (train, val) = crate::embedded::shakespeare_datasets(0.1)?;
            return Ok(if split == "train" { train } else { val });
        }
        if !dir.is_dir() {
            return Err(Error::invalid(dir, "not a folder"));
        }
        let base = dir.to_str().ok_or_else(|| Error::invalid(dir, "path is not valid UTF-8"))?;
        let base = glob::Pattern::escape(base);
        for name in
            [format!("{split}_*.bin"), format!("*_{split}_*.bin"), format!("*_{split}.bin"), format!("{split}.bin")]
        {
            let paths = glob_sorted(dir, &format!("{base}/{name}"))?;
            if !paths.is_empty() {
                return Self::from_files(paths.iter().map(TokenFile::open).collect::<Result<_>>()?);
            }
        }
        Err(Error::invalid(dir, format!("no token files of split {split:?} ({split}_*.bin or {split}.bin)")))
    }

    /// The `train` and `val` splits of `dir` ([`TokenDataset::split`]); the embedded
    /// Shakespeare, which has no validation split of its own, holds out its last
    /// `val_fraction` of tokens (in (0, 1)) as `val`.
    pub fn train_val(dir: impl AsRef<Path>, val_fraction: f64) -> Result<(Self, Self)> {
        let dir = dir.as_ref();
        if dir.as_os_str() == EMBEDDED_SHAKESPEARE {
            return crate::embedded::shakespeare_datasets(val_fraction);
        }
        Ok((Self::split(dir, "train")?, Self::split(dir, "val")?))
    }

    /// A data set of the given files, in this order. At least one file.
    pub fn from_files(files: Vec<TokenFile>) -> Result<Self> {
        if files.is_empty() {
            return Err(Error::Config("a token data set needs at least one file".into()));
        }
        Ok(Self { files })
    }

    /// The files, in order.
    pub fn files(&self) -> &[TokenFile] {
        &self.files
    }

    /// Tokens in all files together.
    pub fn total_tokens(&self) -> usize {
        self.files.iter().map(TokenFile::len).sum()
    }

    /// Tokens per file: a fingerprint that a saved loader state checks on resume.
    pub fn file_lengths(&self) -> Vec<u64> {
        self.files.iter().map(|f| f.len() as u64).collect()
    }
}

fn glob_sorted(shown: &Path, pattern: &str) -> Result<Vec<std::path::PathBuf>> {
    let entries = glob::glob(pattern).map_err(|e| Error::invalid(shown, format!("bad glob pattern: {e}")))?;
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(e.path().to_path_buf(), e.into()))?;
        if path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}
