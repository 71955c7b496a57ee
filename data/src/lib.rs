//! Data loading for monarch: GPT-2 tokenisation, llm.c token shards and a seeded,
//! resumable token loader; image sets (ImageNet-style folders, packed uint8 files, IDX,
//! CIFAR-10, the embedded digits) with augmentation and a prefetching loader; and small
//! real data compiled in ([`embedded`]) so that everything runs with no download.
//!
//! Every failure on user input is an [`Error`] naming the file (and byte offset where it
//! applies); nothing here panics on bad data.

mod corpus;
pub mod embedded;
mod error;
pub mod image;
mod inspect;
mod shard;
mod token_dataset;
mod token_loader;
mod tokenizer;
mod validation;

pub use corpus::{Split, SplitReport, TokenizeOptions, TokenizeReport, tokenize_corpus, wikitext_articles};
pub use error::{Error, Result};
pub use inspect::{Inspection, inspect};
pub use shard::{
    HEADER_BYTES, SHARD_MAGIC, SHARD_VERSION, TokenFile, TokenFormat, encode_shard, parse_token_bytes, read_tokens,
    write_shard,
};
pub use token_dataset::TokenDataset;
pub use token_loader::{IGNORE_INDEX, TokenBatch, TokenLoader, TokenLoaderState};
pub use tokenizer::{END_OF_TEXT, GPT2_VOCAB_SIZE, Gpt2Tokenizer, safe_cut, split_at_whitespace};
pub use validation::ValidationBatches;
