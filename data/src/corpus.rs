//! `monarch tokenize`: text files, folders of text files and WikiText-103's
//! `wiki.{train,valid,test}.raw` in, llm.c token shards out (`train_000000.bin`,
//! `val_000000.bin`, ...), tokenised in parallel.
//!
//! Every document is preceded by `<|endoftext|>`. A plain file is one document; a
//! WikiText file is split into its articles (lines ` = Title = `). WikiText's valid and
//! test files go to their own splits; everything else forms the training pool, whose last
//! `val_fraction` of bytes (cut at a point where the cut does not change the ids) becomes
//! the validation split.

use crate::tokenizer::{CHUNK_BYTES, Gpt2Tokenizer, safe_cut, split_at_whitespace};
use crate::{END_OF_TEXT, Error, Result, write_shard};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Bytes of text read before a round of parallel tokenisation.
const ROUND_BYTES: u64 = 64 << 20;

/// A split of a tokenised corpus.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Split {
    /// Training data.
    Train,
    /// Validation data.
    Val,
    /// Test data.
    Test,
}

impl Split {
    /// The split's name, also the prefix of its shard files.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

/// Options of [`tokenize_corpus`].
#[derive(Clone, Debug)]
pub struct TokenizeOptions {
    /// Folder of the shards; created if missing, and must not already hold shards.
    pub out_dir: PathBuf,
    /// Tokens per shard (the last shard of a split holds the rest).
    pub shard_tokens: usize,
    /// Fraction of the training pool's bytes that goes to the validation split; `None`:
    /// 0 when a WikiText valid file is among the inputs, else 0.1.
    pub val_fraction: Option<f64>,
}

/// What [`tokenize_corpus`] wrote for one split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitReport {
    /// The split.
    pub split: Split,
    /// Tokens written.
    pub tokens: u64,
    /// The shard files, in order.
    pub shards: Vec<PathBuf>,
}

/// What [`tokenize_corpus`] read and wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenizeReport {
    /// Text files read.
    pub files: usize,
    /// Documents found.
    pub documents: usize,
    /// Bytes of text read.
    pub bytes: u64,
    /// The splits written, train first; splits with no token are left out.
    pub splits: Vec<SplitReport>,
}

/// An input file and what it holds.
struct Input {
    path: PathBuf,
    split: Option<Split>,
    wikitext: bool,
    bytes: u64,
}

/// Tokenises `inputs` (files or folders, read recursively in sorted order, hidden entries
/// skipped) into token shards in `opts.out_dir`.
pub fn tokenize_corpus<P: AsRef<Path>>(inputs: &[P], opts: &TokenizeOptions) -> Result<TokenizeReport> {
    if opts.shard_tokens == 0 || opts.shard_tokens > i32::MAX as usize {
        return Err(Error::Config(format!("shard size must be in 1..={}, not {}", i32::MAX, opts.shard_tokens)));
    }
    let files = collect_inputs(inputs)?;
    let has_valid = files.iter().any(|f| f.split == Some(Split::Val));
    let val_fraction = opts.val_fraction.unwrap_or(if has_valid { 0.0 } else { 0.1 });
    if !(0.0..1.0).contains(&val_fraction) {
        return Err(Error::Config(format!("validation fraction must be in [0, 1), not {val_fraction}")));
    }
    prepare_out_dir(&opts.out_dir)?;
    let pool_bytes: u64 = files.iter().filter(|f| f.split.is_none()).map(|f| f.bytes).sum();
    let cut = if val_fraction == 0.0 { u64::MAX } else { ((1.0 - val_fraction) * pool_bytes as f64).round() as u64 };
    let mut router = Router { cut, seen: 0 };
    let mut writers: Vec<ShardWriter> = [Split::Train, Split::Val, Split::Test]
        .into_iter()
        .map(|split| ShardWriter::new(&opts.out_dir, split, opts.shard_tokens))
        .collect();
    let tokenizer = Gpt2Tokenizer::new();
    let (mut documents, mut bytes) = (0, 0);
    let mut rest = &files[..];
    while !rest.is_empty() {
        let mut take = 1;
        let mut round_bytes = rest[0].bytes;
        while take < rest.len() && round_bytes + rest[take].bytes <= ROUND_BYTES {
            round_bytes += rest[take].bytes;
            take += 1;
        }
        let texts = rest[..take].par_iter().map(|f| read_text(&f.path)).collect::<Result<Vec<String>>>()?;
        let mut pieces: Vec<Piece> = Vec::new();
        for (input, text) in rest[..take].iter().zip(&texts) {
            let docs = if input.wikitext { wikitext_articles(text) } else { vec![text.as_str()] };
            documents += docs.len();
            bytes += text.len() as u64;
            for doc in docs {
                router.route(input.split, doc, &mut pieces);
            }
        }
        let ids: Vec<Vec<u32>> = pieces
            .par_iter()
            .map(|p| {
                let mut ids = Vec::with_capacity(p.text.len() / 3 + 1);
                if p.starts_document {
                    ids.push(END_OF_TEXT);
                }
                ids.extend(tokenizer.encode(p.text));
                ids
            })
            .collect();
        for (p, ids) in pieces.iter().zip(ids) {
            writers[p.split as usize].push(&ids)?;
        }
        rest = &rest[take..];
    }
    let mut splits = Vec::new();
    for w in writers {
        let report = w.finish()?;
        if report.tokens > 0 {
            splits.push(report);
        }
    }
    Ok(TokenizeReport { files: files.len(), documents, bytes, splits })
}

/// A piece of text bound for one split, at most a few tens of KiB.
struct Piece<'a> {
    split: Split,
    starts_document: bool,
    text: &'a str,
}

/// Sends documents to their split, cutting the training pool's stream at byte `cut`.
struct Router {
    cut: u64,
    seen: u64,
}

impl Router {
    fn route<'a>(&mut self, fixed: Option<Split>, doc: &'a str, out: &mut Vec<Piece<'a>>) {
        let mut parts = vec![(fixed.unwrap_or(Split::Train), true, doc)];
        if fixed.is_none() {
            let start = self.seen;
            self.seen += doc.len() as u64;
            if start >= self.cut {
                parts[0].0 = Split::Val;
            } else if self.seen > self.cut
                && let Some(p) = safe_cut(doc, (self.cut - start) as usize)
            {
                parts = vec![(Split::Train, true, &doc[..p]), (Split::Val, false, &doc[p..])];
            }
        }
        for (split, starts_document, text) in parts {
            let chunks = split_at_whitespace(text, CHUNK_BYTES);
            if chunks.is_empty() && starts_document {
                out.push(Piece { split, starts_document, text: "" });
            }
            for (i, text) in chunks.into_iter().enumerate() {
                out.push(Piece { split, starts_document: starts_document && i == 0, text });
            }
        }
    }
}

/// Splits WikiText into articles: each starts at a top-level heading line ` = Title = `
/// (sub-headings are ` = = Title = = `).
pub fn wikitext_articles(text: &str) -> Vec<&str> {
    let mut starts = vec![0];
    let (mut pos, mut seen_heading) = (0, false);
    for line in text.split_inclusive('\n') {
        let l = line.trim_end();
        if l.starts_with(" = ") && !l.starts_with(" = = ") && l.ends_with(" =") && l.len() > 4 {
            // Text before the first heading belongs to the first article.
            if seen_heading {
                starts.push(pos);
            }
            seen_heading = true;
        }
        pos += line.len();
    }
    starts.push(text.len());
    starts.windows(2).filter(|w| w[1] > w[0]).map(|w| &text[w[0]..w[1]]).collect()
}

fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| Error::format(path, e.utf8_error().valid_up_to() as u64, "not UTF-8 text"))
}

fn collect_inputs<P: AsRef<Path>>(inputs: &[P]) -> Result<Vec<Input>> {
    if inputs.is_empty() {
        return Err(Error::Config("no input given".into()));
    }
    let mut paths = Vec::new();
    for input in inputs {
        let input = input.as_ref();
        let meta = std::fs::metadata(input).map_err(|e| Error::io(input, e))?;
        if meta.is_dir() {
            let before = paths.len();
            walk(input, &mut paths)?;
            if paths.len() == before {
                return Err(Error::invalid(input, "folder holds no file"));
            }
        } else {
            paths.push(input.to_path_buf());
        }
    }
    paths
        .into_iter()
        .map(|path| {
            let bytes = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?.len();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let (split, wikitext) = match name {
                "wiki.train.raw" | "wiki.train.tokens" => (None, true),
                "wiki.valid.raw" | "wiki.valid.tokens" => (Some(Split::Val), true),
                "wiki.test.raw" | "wiki.test.tokens" => (Some(Split::Test), true),
                _ => (None, false),
            };
            Ok(Input { path, split, wikitext, bytes })
        })
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|e| Error::io(dir, e)))
        .collect::<Result<_>>()?;
    entries.sort();
    for path in entries {
        if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')) {
            continue;
        }
        if path.is_dir() {
            walk(&path, out)?;
        } else if path.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

fn prepare_out_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let name = entry.map_err(|e| Error::io(dir, e))?.file_name();
        let name = name.to_string_lossy();
        if ["train_", "val_", "test_"].iter().any(|p| name.starts_with(p)) && name.ends_with(".bin") {
            return Err(Error::invalid(dir, format!("already holds token shards ({name}): choose a new folder")));
        }
    }
    Ok(())
}

/// Collects one split's tokens and writes a shard whenever `shard_tokens` are in.
struct ShardWriter {
    dir: PathBuf,
    split: Split,
    shard_tokens: usize,
    buf: Vec<u16>,
    tokens: u64,
    shards: Vec<PathBuf>,
}

impl ShardWriter {
    fn new(dir: &Path, split: Split, shard_tokens: usize) -> Self {
        Self { dir: dir.to_path_buf(), split, shard_tokens, buf: Vec::new(), tokens: 0, shards: Vec::new() }
    }

    fn push(&mut self, ids: &[u32]) -> Result<()> {
        for &id in ids {
            // GPT-2 ids are below 50257.
            self.buf.push(id as u16);
            if self.buf.len() == self.shard_tokens {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let path = self.dir.join(format!("{}_{:06}.bin", self.split.as_str(), self.shards.len()));
        write_shard(&path, &self.buf)?;
        self.tokens += self.buf.len() as u64;
        self.buf.clear();
        self.shards.push(path);
        Ok(())
    }

    fn finish(mut self) -> Result<SplitReport> {
        if !self.buf.is_empty() {
            self.flush()?;
        }
        Ok(SplitReport { split: self.split, tokens: self.tokens, shards: self.shards })
    }
}
