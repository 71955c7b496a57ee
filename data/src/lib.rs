//! Data loading for monarch: GPT-2 tokenisation, llm.c token shards and a seeded,
//! resumable token loader; image sets (ImageNet-style folders, packed uint8 files, IDX,
//! CIFAR-10, the embedded digits) with augmentation and a prefetching loader; and small
//! real data compiled in ([`embedded`]) so that everything runs with no download.
//!
//! Every failure on user input is an [`Error`] naming the file (and byte offset where it
//! applies); nothing here panics on bad data.
//!
//! ```
//! use monarch_data::image::{ImageLoader, ImageLoaderConfig, Transform, open_image_set};
//! use monarch_data::{EMBEDDED_SHAKESPEARE, Gpt2Tokenizer, TokenDataset, TokenLoader, ValidationBatches};
//! # fn main() -> monarch_data::Result<()> {
//! assert_eq!(Gpt2Tokenizer::new().encode("Hello world"), [15496, 995]);
//!
//! // Text: a folder written by `monarch tokenize` works the same as the embedded text.
//! let train = TokenDataset::split(EMBEDDED_SHAKESPEARE, "train")?;
//! let mut loader = TokenLoader::new(train, 4, 64, 1, true)?;
//! let batch = loader.next_batch()?; // inputs and targets: I64 of (4, 64)
//! assert_eq!(batch.targets.dims(), [4, 64]);
//! let checkpoint = serde_json::to_string(loader.state()).unwrap(); // resume with TokenLoader::resume
//! # let _ = checkpoint;
//! let val = TokenDataset::split(EMBEDDED_SHAKESPEARE, "val")?;
//! let mut targets = 0;
//! for batch in ValidationBatches::new(val.clone(), 8, 64)? {
//!     targets += batch?.num_targets;
//! }
//! assert_eq!(targets, val.total_tokens() - 1);
//!
//! // Images: any format, detected from the path.
//! let digits = open_image_set("embedded:digits")?;
//! for batch in ImageLoader::new(digits.into(), ImageLoaderConfig::new(256, Transform::AsIs), 0, 0)? {
//!     let batch = batch?; // images: F32 of (B, 1, 8, 8), labels: I64 of (B)
//!     assert_eq!(batch.images.dims()[1..], [1, 8, 8]);
//! }
//! # Ok(())
//! # }
//! ```

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
pub use token_dataset::{EMBEDDED_SHAKESPEARE, TokenDataset};
pub use token_loader::{IGNORE_INDEX, TokenBatch, TokenLoader, TokenLoaderState};
pub use tokenizer::{END_OF_TEXT, GPT2_VOCAB_SIZE, Gpt2Tokenizer, safe_cut, split_at_whitespace};
pub use validation::ValidationBatches;
