//! Small real data compiled into the crate, so that monarch runs with no download: about
//! 1 MB of Shakespeare (public domain) and the UCI 8×8 digits (1797 images). Origins and
//! licences: `data/assets/ATTRIBUTION.md`.

use crate::image::Digits;
use crate::{Gpt2Tokenizer, Result, TokenDataset, TokenFile};
use std::path::Path;
use std::sync::LazyLock;

/// The embedded works of Shakespeare as (name, text), in a fixed order.
pub const SHAKESPEARE_WORKS: [(&str, &str); 8] = [
    ("hamlet", include_str!("../assets/shakespeare/hamlet.txt")),
    ("macbeth", include_str!("../assets/shakespeare/macbeth.txt")),
    ("romeo_and_juliet", include_str!("../assets/shakespeare/romeo_and_juliet.txt")),
    ("lear", include_str!("../assets/shakespeare/lear.txt")),
    ("othello", include_str!("../assets/shakespeare/othello.txt")),
    ("julius_caesar", include_str!("../assets/shakespeare/julius_caesar.txt")),
    ("midsummer_nights_dream", include_str!("../assets/shakespeare/midsummer_nights_dream.txt")),
    ("sonnets", include_str!("../assets/shakespeare/sonnets.txt")),
];

/// The attribution to show with the embedded data.
pub const ATTRIBUTION: &str = include_str!("../assets/ATTRIBUTION.md");

const DIGITS_CSV_GZ: &[u8] = include_bytes!("../assets/digits.csv.gz");

/// All embedded Shakespeare, the works joined by blank lines (about 1 MB).
pub fn shakespeare() -> &'static str {
    static ALL: LazyLock<String> =
        LazyLock::new(|| SHAKESPEARE_WORKS.iter().map(|(_, text)| *text).collect::<Vec<_>>().join("\n\n"));
    &ALL
}

/// The embedded Shakespeare as GPT-2 tokens, each work a document behind `<|endoftext|>`
/// (about 300k tokens; tokenised on first use, in parallel).
pub fn shakespeare_tokens() -> &'static [u16] {
    static TOKENS: LazyLock<Vec<u16>> = LazyLock::new(|| {
        let texts: Vec<&str> = SHAKESPEARE_WORKS.iter().map(|(_, t)| *t).collect();
        // GPT-2 ids are below 50257 and fit u16.
        Gpt2Tokenizer::new().encode_documents(&texts).into_iter().map(|t| t as u16).collect()
    });
    &TOKENS
}

/// The embedded Shakespeare tokens as (train, validation) data sets: the last
/// `val_fraction` of the tokens is the validation split.
pub fn shakespeare_datasets(val_fraction: f64) -> Result<(TokenDataset, TokenDataset)> {
    if !(val_fraction > 0.0 && val_fraction < 1.0) {
        return Err(crate::Error::Config(format!("validation fraction must be in (0, 1), not {val_fraction}")));
    }
    let tokens = shakespeare_tokens();
    let cut = ((1.0 - val_fraction) * tokens.len() as f64).round() as usize;
    let train = TokenFile::from_tokens("embedded:shakespeare/train", &tokens[..cut]);
    let val = TokenFile::from_tokens("embedded:shakespeare/val", &tokens[cut..]);
    Ok((TokenDataset::from_files(vec![train])?, TokenDataset::from_files(vec![val])?))
}

/// The UCI 8×8 handwritten digits: 1797 grey images, labels 0–9.
pub fn digits() -> Result<Digits> {
    Digits::from_bytes(Path::new("embedded:digits"), DIGITS_CSV_GZ.to_vec())
}
