//! GPT-2 byte-pair encoding through `tiktoken-rs`, whose r50k (GPT-2) ranks are compiled
//! in: no download, works offline. Long texts are cut at whitespace boundaries where the
//! GPT-2 pre-tokeniser would cut anyway and encoded in parallel (rayon); the result is
//! identical to encoding the whole text on one thread.

use crate::{Error, Result};
use rayon::prelude::*;
use tiktoken_rs::CoreBPE;

/// `<|endoftext|>`: GPT-2's separator, put before every document.
pub const END_OF_TEXT: u32 = 50256;
/// Number of GPT-2 token ids (0..=50256).
pub const GPT2_VOCAB_SIZE: usize = 50257;
/// Bytes of text per unit of parallel work.
pub(crate) const CHUNK_BYTES: usize = 64 << 10;

/// The GPT-2 tokenizer. Cheap to create after the first time (the ranks are parsed once
/// per process).
#[derive(Clone, Copy)]
pub struct Gpt2Tokenizer {
    bpe: &'static CoreBPE,
}

impl Default for Gpt2Tokenizer {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Gpt2Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gpt2Tokenizer")
    }
}

impl Gpt2Tokenizer {
    /// The GPT-2 (r50k) tokenizer.
    pub fn new() -> Self {
        Self { bpe: tiktoken_rs::r50k_base_singleton() }
    }

    /// Encodes `text` on the calling thread. Special tokens are not recognised: the text
    /// `<|endoftext|>` encodes as ordinary characters.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.bpe.encode_ordinary(text)
    }

    /// Encodes `text` on rayon's thread pool; the same ids as [`Self::encode`].
    pub fn encode_parallel(&self, text: &str) -> Vec<u32> {
        let chunks = split_at_whitespace(text, CHUNK_BYTES);
        chunks.par_iter().map(|c| self.encode(c)).collect::<Vec<_>>().concat()
    }

    /// Encodes each document behind an [`END_OF_TEXT`] (GPT-2 and llm.c's convention), in
    /// parallel over documents and over pieces of long documents.
    pub fn encode_documents<S: AsRef<str> + Sync>(&self, docs: &[S]) -> Vec<u32> {
        let pieces: Vec<(bool, &str)> = docs
            .iter()
            .flat_map(|d| {
                let chunks = split_at_whitespace(d.as_ref(), CHUNK_BYTES);
                let n = chunks.len();
                chunks.into_iter().enumerate().map(move |(i, c)| (i == 0, c)).chain((n == 0).then_some((true, "")))
            })
            .collect();
        let encoded: Vec<Vec<u32>> = pieces
            .par_iter()
            .map(|&(first, piece)| {
                let mut ids = Vec::with_capacity(piece.len() / 3 + 1);
                if first {
                    ids.push(END_OF_TEXT);
                }
                ids.extend(self.encode(piece));
                ids
            })
            .collect();
        encoded.concat()
    }

    /// Decodes ids back to text; byte sequences that are not UTF-8 (a multi-byte character
    /// cut between tokens) become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let bytes = self
            .bpe
            .decode_bytes(ids)
            .map_err(|e| Error::Config(format!("token id {} is not in the GPT-2 vocabulary", e.token)))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// Cuts `text` into pieces of about `target` bytes. Each cut lies just before a whitespace
/// character that follows a non-whitespace one: no GPT-2 pre-tokeniser piece spans such a
/// point and none looks past it, so encoding the pieces one by one gives the same ids as
/// encoding the whole text.
pub fn split_at_whitespace(text: &str, target: usize) -> Vec<&str> {
    let mut pieces = Vec::with_capacity(text.len() / target.max(1) + 1);
    let mut start = 0;
    while text.len() - start > target {
        match safe_cut(text, start + target) {
            Some(p) => {
                pieces.push(&text[start..p]);
                start = p;
            }
            None => break,
        }
    }
    if start < text.len() {
        pieces.push(&text[start..]);
    }
    pieces
}

/// The first point at or after byte `from` where `text` can be cut without changing its
/// GPT-2 ids (see [`split_at_whitespace`]), if any.
pub fn safe_cut(text: &str, from: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    (from.max(1)..bytes.len())
        .find(|&p| bytes[p].is_ascii_whitespace() && text[..p].chars().next_back().is_some_and(|c| !c.is_whitespace()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_gpt2_ids() {
        let t = Gpt2Tokenizer::new();
        assert_eq!(t.encode("Hello world"), vec![15496, 995]);
        // " the" is one token, and a newline is 198 in GPT-2's vocabulary.
        assert_eq!(t.encode(" the\n"), vec![262, 198]);
        assert_eq!(t.decode(&[15496, 995]).unwrap(), "Hello world");
        assert!(t.decode(&[60000]).is_err());
    }

    #[test]
    fn documents_start_with_end_of_text() {
        let t = Gpt2Tokenizer::new();
        let ids = t.encode_documents(&["Hello world", "", "Hello"]);
        assert_eq!(ids, vec![END_OF_TEXT, 15496, 995, END_OF_TEXT, END_OF_TEXT, 15496]);
    }

    #[test]
    fn cuts_never_change_the_ids() {
        let t = Gpt2Tokenizer::new();
        let text = "Tis  but\n\n\tthy name   that is my enemy;\u{a0} Thou art thyself,\r\n though not a Montague. 123 4567 'll 's ";
        let whole = t.encode(text);
        for target in 1..text.len() {
            let pieces = split_at_whitespace(text, target);
            assert_eq!(pieces.concat(), text);
            let ids: Vec<u32> = pieces.iter().flat_map(|p| t.encode(p)).collect();
            assert_eq!(ids, whole, "target {target}: {pieces:?}");
        }
    }
}
