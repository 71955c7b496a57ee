//! Token files: llm.c's shard format (written and read) and nanoGPT's headerless
//! `train.bin`/`val.bin` (read), memory-mapped.
//!
//! An llm.c shard is a header of 256 little-endian `i32` — magic 20240520, version 1,
//! token count, the rest zero — followed by the tokens as little-endian `u16`.

use crate::error::from_tensor_io;
use crate::{Error, Result};
use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// First header word of an llm.c token shard.
pub const SHARD_MAGIC: i32 = 20240520;
/// The shard format version this crate reads and writes.
pub const SHARD_VERSION: i32 = 1;
/// Bytes of the llm.c header (256 `i32`).
pub const HEADER_BYTES: usize = 256 * 4;

/// How the tokens of a [`TokenFile`] are laid out on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenFormat {
    /// llm.c: 1024-byte header, then `u16` tokens.
    LlmC,
    /// nanoGPT: `u16` tokens with no header.
    Headerless,
}

impl TokenFormat {
    /// A short name for messages and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenFormat::LlmC => "llm.c token shard",
            TokenFormat::Headerless => "headerless u16 tokens (nanoGPT)",
        }
    }
}

/// Serialises `tokens` as an llm.c shard (header and tokens) in memory.
pub fn encode_shard(tokens: &[u16]) -> Result<Vec<u8>> {
    let count = i32::try_from(tokens.len())
        .map_err(|_| Error::Config(format!("a shard holds at most {} tokens, not {}", i32::MAX, tokens.len())))?;
    let mut bytes = vec![0u8; HEADER_BYTES + 2 * tokens.len()];
    for (i, word) in [SHARD_MAGIC, SHARD_VERSION, count].into_iter().enumerate() {
        bytes[4 * i..4 * i + 4].copy_from_slice(&word.to_le_bytes());
    }
    for (dst, t) in bytes[HEADER_BYTES..].chunks_exact_mut(2).zip(tokens) {
        dst.copy_from_slice(&t.to_le_bytes());
    }
    Ok(bytes)
}

/// Writes `tokens` to `path` as an llm.c shard, through a temporary file renamed when
/// complete, so that no half-written shard is ever seen under `path`.
pub fn write_shard(path: &Path, tokens: &[u16]) -> Result<()> {
    monarch_tensor::write_atomic(path, &encode_shard(tokens)?).map_err(from_tensor_io)
}

/// Reads a whole token file into memory (not mapped); see [`TokenFile::open`] for the rules.
pub fn read_tokens(path: &Path) -> Result<Vec<u16>> {
    Ok(TokenFile::open(path)?.to_vec())
}

/// Checks the bytes of a token file and returns where its tokens lie. `format` forces a
/// layout; `None` detects it: the llm.c magic means llm.c, and a file without it is read
/// as headerless only when named `train.bin` or `val.bin` (nanoGPT's names), since a
/// corrupted llm.c shard would otherwise pass for headerless tokens.
pub fn parse_token_bytes(
    path: &Path,
    bytes: &[u8],
    format: Option<TokenFormat>,
) -> Result<(TokenFormat, std::ops::Range<usize>)> {
    let has_magic = bytes.len() >= 4 && bytes[..4] == SHARD_MAGIC.to_le_bytes();
    let format = match format {
        Some(f) => f,
        None if has_magic => TokenFormat::LlmC,
        None if is_nanogpt_name(path) => TokenFormat::Headerless,
        None if bytes.len() < 4 => {
            return Err(Error::format(path, 0, format!("{} bytes is too short for a token shard", bytes.len())));
        }
        None => {
            let magic = i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            return Err(Error::format(
                path,
                0,
                format!(
                    "wrong magic {magic} (an llm.c shard starts with {SHARD_MAGIC}); headerless nanoGPT \
                     token files must be named train.bin or val.bin"
                ),
            ));
        }
    };
    match format {
        TokenFormat::Headerless => {
            if bytes.len() % 2 != 0 {
                return Err(Error::format(
                    path,
                    bytes.len() as u64 - 1,
                    "odd number of bytes: not a file of u16 tokens (truncated?)",
                ));
            }
            Ok((format, 0..bytes.len()))
        }
        TokenFormat::LlmC => {
            if bytes.len() < HEADER_BYTES {
                return Err(Error::format(
                    path,
                    bytes.len() as u64,
                    format!("truncated header: {} of {HEADER_BYTES} bytes", bytes.len()),
                ));
            }
            let word =
                |i: usize| i32::from_le_bytes([bytes[4 * i], bytes[4 * i + 1], bytes[4 * i + 2], bytes[4 * i + 3]]);
            if word(0) != SHARD_MAGIC {
                return Err(Error::format(path, 0, format!("wrong magic {} (expected {SHARD_MAGIC})", word(0))));
            }
            if word(1) != SHARD_VERSION {
                return Err(Error::format(
                    path,
                    4,
                    format!("unsupported shard version {} (this reader knows {SHARD_VERSION})", word(1)),
                ));
            }
            let count = word(2);
            let body = bytes.len() - HEADER_BYTES;
            let count =
                usize::try_from(count).map_err(|_| Error::format(path, 8, format!("negative token count {count}")))?;
            if count.checked_mul(2) != Some(body) {
                return Err(Error::format(
                    path,
                    8,
                    format!(
                        "header says {count} tokens ({} bytes) but {body} bytes follow the header",
                        2 * count as u128
                    ),
                ));
            }
            Ok((format, HEADER_BYTES..bytes.len()))
        }
    }
}

fn is_nanogpt_name(path: &Path) -> bool {
    matches!(path.file_name().and_then(|n| n.to_str()), Some("train.bin" | "val.bin"))
}

/// The bytes behind a token file: a read-only memory map, or a buffer in memory.
enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// One file of `u16` tokens, memory-mapped. Cheap to clone (shares the mapping).
#[derive(Clone)]
pub struct TokenFile {
    path: PathBuf,
    format: TokenFormat,
    bytes: Arc<Bytes>,
    start: usize,
    len: usize,
}

impl std::fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenFile({}, {:?}, {} tokens)", self.path.display(), self.format, self.len)
    }
}

impl TokenFile {
    /// Opens and maps a token file, detecting the format (see [`parse_token_bytes`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_inner(path.as_ref(), None)
    }

    /// Opens and maps a token file of the given format.
    pub fn open_as(path: impl AsRef<Path>, format: TokenFormat) -> Result<Self> {
        Self::open_inner(path.as_ref(), Some(format))
    }

    fn open_inner(path: &Path, format: Option<TokenFormat>) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let meta = file.metadata().map_err(|e| Error::io(path, e))?;
        if !meta.is_file() {
            return Err(Error::invalid(path, "not a regular file"));
        }
        // Mapping an empty file fails on some systems; an empty buffer says the same.
        let bytes = if meta.len() == 0 {
            Bytes::Owned(Vec::new())
        } else {
            // SAFETY: the map is read-only; like every reader of memory-mapped files we rely
            // on nobody truncating or rewriting the file while it is open (shards are
            // written once, to a temporary name, and renamed).
            Bytes::Mapped(unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?)
        };
        let (format, range) = parse_token_bytes(path, bytes.as_slice(), format)?;
        Ok(Self { path: path.to_path_buf(), format, bytes: Arc::new(bytes), start: range.start, len: range.len() / 2 })
    }

    /// Wraps tokens held in memory (for example a tokenised embedded text) as a token file
    /// named `name`.
    pub fn from_tokens(name: impl Into<PathBuf>, tokens: &[u16]) -> Self {
        let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
        let len = tokens.len();
        Self { path: name.into(), format: TokenFormat::Headerless, bytes: Arc::new(Bytes::Owned(bytes)), start: 0, len }
    }

    /// The file's path (or name, for tokens in memory).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The layout found on disk.
    pub fn format(&self) -> TokenFormat {
        self.format
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the file holds no token.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The little-endian bytes of tokens `from..from + n`.
    fn raw(&self, from: usize, n: usize) -> &[u8] {
        let b = self.start + 2 * from;
        &self.bytes.as_slice()[b..b + 2 * n]
    }

    /// Appends tokens `from..from + n` to `out` as `i64`. Panics if the range is out of
    /// bounds: callers check it against [`Self::len`].
    pub(crate) fn extend_i64(&self, from: usize, n: usize, out: &mut Vec<i64>) {
        out.extend(self.raw(from, n).chunks_exact(2).map(|p| i64::from(u16::from_le_bytes([p[0], p[1]]))));
    }

    /// Token `i`, or `None` past the end.
    pub fn get(&self, i: usize) -> Option<u16> {
        (i < self.len).then(|| {
            let p = self.raw(i, 1);
            u16::from_le_bytes([p[0], p[1]])
        })
    }

    /// All tokens, copied into a vector.
    pub fn to_vec(&self) -> Vec<u16> {
        self.raw(0, self.len).chunks_exact(2).map(|p| u16::from_le_bytes([p[0], p[1]])).collect()
    }

    /// The smallest and largest token id, or `None` when empty.
    pub fn id_range(&self) -> Option<(u16, u16)> {
        let bytes = self.raw(0, self.len);
        let mut it = bytes.chunks_exact(2).map(|p| u16::from_le_bytes([p[0], p[1]]));
        let first = it.next()?;
        Some(it.fold((first, first), |(lo, hi), t| (lo.min(t), hi.max(t))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_is_llm_c() {
        let bytes = encode_shard(&[1, 2, 0xBEEF]).unwrap();
        assert_eq!(bytes.len(), 1024 + 6);
        assert_eq!(&bytes[0..4], &20240520i32.to_le_bytes());
        assert_eq!(&bytes[4..8], &1i32.to_le_bytes());
        assert_eq!(&bytes[8..12], &3i32.to_le_bytes());
        assert!(bytes[12..1024].iter().all(|&b| b == 0));
        assert_eq!(&bytes[1024..], &[1, 0, 2, 0, 0xEF, 0xBE]);
    }

    #[test]
    fn bad_headers_name_the_offset() {
        let p = Path::new("x.bin");
        let good = encode_shard(&[7; 10]).unwrap();
        let err = |b: &[u8]| parse_token_bytes(p, b, None).unwrap_err().to_string();
        assert!(err(&good[..good.len() - 1]).contains("at byte 8: header says 10 tokens (20 bytes) but 19 bytes"));
        assert!(err(&good[..100]).contains("at byte 100: truncated header"));
        let mut v2 = good.clone();
        v2[4] = 2;
        assert!(err(&v2).contains("at byte 4: unsupported shard version 2"));
        let mut neg = good.clone();
        neg[8..12].copy_from_slice(&(-5i32).to_le_bytes());
        assert!(err(&neg).contains("negative token count -5"));
        let mut magic = good.clone();
        magic[0] ^= 1;
        assert!(err(&magic).contains("x.bin: at byte 0: wrong magic"));
        assert!(err(&[1]).contains("too short"));
    }

    #[test]
    fn nanogpt_files_are_recognised_by_name() {
        let raw = [3u8, 0, 4, 0];
        let (f, r) = parse_token_bytes(Path::new("d/train.bin"), &raw, None).unwrap();
        assert_eq!((f, r), (TokenFormat::Headerless, 0..4));
        assert!(
            parse_token_bytes(Path::new("d/val.bin"), &raw[..3], None).unwrap_err().to_string().contains("at byte 2")
        );
        assert!(parse_token_bytes(Path::new("d/other.bin"), &raw, None).is_err());
        assert!(parse_token_bytes(Path::new("d/other.bin"), &raw, Some(TokenFormat::Headerless)).is_ok());
    }
}
