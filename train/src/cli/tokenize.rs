//! `monarch tokenize INPUT... --out DIR`: GPT-2 token shards (llm.c format) from text.

use super::CliError;
use clap::Args;
use monarch_data::{TokenizeOptions, tokenize_corpus};
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `monarch tokenize`.
#[derive(Args, Debug)]
pub struct TokenizeArgs {
    /// Text files, folders of text files (read recursively), or WikiText-103's
    /// wiki.{train,valid,test}.raw.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Folder of the shards (train_000000.bin, val_000000.bin, ...); must hold none yet.
    #[arg(long)]
    out: PathBuf,
    /// Tokens per shard.
    #[arg(long, default_value_t = 100_000_000)]
    shard_tokens: usize,
    /// Fraction of the training text that becomes the validation split [default: 0 with a
    /// WikiText valid file among the inputs, else 0.1].
    #[arg(long)]
    val_fraction: Option<f64>,
}

impl TokenizeArgs {
    /// Tokenises the inputs and prints what was written.
    pub fn run(self) -> Result<(), CliError> {
        let start = Instant::now();
        let opts =
            TokenizeOptions { out_dir: self.out, shard_tokens: self.shard_tokens, val_fraction: self.val_fraction };
        let report = tokenize_corpus(&self.inputs, &opts)?;
        let secs = start.elapsed().as_secs_f64();
        println!(
            "read {} files, {} documents, {:.1} MB in {secs:.2} s ({:.1} MB/s)",
            report.files,
            report.documents,
            report.bytes as f64 / 1e6,
            report.bytes as f64 / 1e6 / secs.max(1e-9)
        );
        for s in &report.splits {
            println!("{}: {} tokens in {} shards", s.split.as_str(), s.tokens, s.shards.len());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::cli::Cli;
    use clap::Parser;

    #[test]
    fn writes_shards_and_reports_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("a.txt");
        std::fs::write(&text, "Hello world").unwrap();
        let out = dir.path().join("shards");
        let args =
            ["monarch", "tokenize", text.to_str().unwrap(), "--out", out.to_str().unwrap(), "--val-fraction", "0"];
        Cli::try_parse_from(args).unwrap().run().unwrap();
        assert_eq!(monarch_data::read_tokens(&out.join("train_000000.bin")).unwrap(), vec![50256, 15496, 995]);
        // The same folder again: refused, nothing overwritten.
        assert!(
            Cli::try_parse_from(args).unwrap().run().unwrap_err().to_string().contains("already holds token shards")
        );
        let missing = ["monarch", "tokenize", "/no/such/file", "--out", out.to_str().unwrap()];
        assert!(Cli::try_parse_from(missing).unwrap().run().unwrap_err().to_string().contains("/no/such/file"));
        assert!(Cli::try_parse_from(["monarch", "tokenize", "--out", "x"]).is_err());
    }
}
