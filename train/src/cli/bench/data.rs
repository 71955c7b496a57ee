//! `monarch bench tokens | tokenize | images`: data pipeline throughput.

use super::{CliError, Timing};
use clap::Args;
use monarch_data::image::{Normalization, Transform, decode_file};
use monarch_data::{Gpt2Tokenizer, TokenDataset, TokenLoader, embedded, write_shard};
use rand::{Rng, SeedableRng};
use std::path::PathBuf;

/// Arguments of `monarch bench tokens`.
#[derive(Args, Debug)]
pub struct TokensArgs {
    /// Token shard or glob to read; without it, a shard of random tokens is written to a
    /// temporary folder.
    #[arg(long)]
    shard: Option<PathBuf>,
    /// Tokens of the generated shard.
    #[arg(long, default_value_t = 50_000_000)]
    tokens: usize,
    /// Rows per batch.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Tokens per row.
    #[arg(long, default_value_t = 1024)]
    seq: usize,
    /// Batches per timed run.
    #[arg(long, default_value_t = 200)]
    batches: usize,
    #[command(flatten)]
    timing: Timing,
}

impl TokensArgs {
    /// Times the shuffled token loader on a memory-mapped shard.
    pub fn run(self) -> Result<(), CliError> {
        let tmp = tempfile::tempdir()?;
        let path = match self.shard {
            Some(p) => p,
            None => {
                let mut rng = rand::rngs::StdRng::seed_from_u64(0);
                let tokens: Vec<u16> = (0..self.tokens).map(|_| rng.random_range(0..50257)).collect();
                let p = tmp.path().join("bench_000000.bin");
                write_shard(&p, &tokens)?;
                p
            }
        };
        let data = TokenDataset::open(&path)?;
        let mut loader = TokenLoader::new(data, self.batch, self.seq, 0, true)?;
        let ms = self.timing.median_ms(|| {
            for _ in 0..self.batches {
                loader.next_batch()?;
            }
            Ok(())
        })?;
        let batches_per_s = self.batches as f64 / (ms * 1e-3);
        let tokens_per_s = batches_per_s * (self.batch * self.seq) as f64;
        if self.timing.json {
            let j = serde_json::json!({"bench": "tokens", "batch": self.batch, "seq": self.seq, "median_ms": ms,
                "batches_per_s": batches_per_s, "tokens_per_s": tokens_per_s});
            println!("{j}");
        } else {
            println!(
                "token loader {}x{} from {}: {batches_per_s:.0} batches/s, {:.0} M tokens/s",
                self.batch,
                self.seq,
                path.display(),
                tokens_per_s / 1e6
            );
        }
        Ok(())
    }
}

/// Arguments of `monarch bench tokenize`.
#[derive(Args, Debug)]
pub struct TokenizeArgs {
    /// UTF-8 text file to encode; without it, the embedded Shakespeare (1 MB).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Threads encoding in parallel.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[command(flatten)]
    timing: Timing,
}

impl TokenizeArgs {
    /// Times parallel GPT-2 encoding.
    pub fn run(self) -> Result<(), CliError> {
        let text = match &self.input {
            Some(p) => std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?,
            None => embedded::shakespeare().to_string(),
        };
        let pool = rayon::ThreadPoolBuilder::new().num_threads(self.threads).build()?;
        let tok = Gpt2Tokenizer::new();
        let mut tokens = 0;
        let ms = self.timing.median_ms(|| {
            tokens = pool.install(|| tok.encode_parallel(&text)).len();
            Ok(())
        })?;
        let mb_per_s = text.len() as f64 / 1e6 / (ms * 1e-3);
        if self.timing.json {
            let j = serde_json::json!({"bench": "tokenize", "threads": self.threads, "bytes": text.len(),
                "tokens": tokens, "median_ms": ms, "mb_per_s": mb_per_s});
            println!("{j}");
        } else {
            println!(
                "GPT-2 encode of {:.2} MB ({tokens} tokens) on {} threads: median {ms:.1} ms, {mb_per_s:.1} MB/s",
                text.len() as f64 / 1e6,
                self.threads
            );
        }
        Ok(())
    }
}

/// Arguments of `monarch bench images`.
#[derive(Args, Debug)]
pub struct ImagesArgs {
    /// Folder of JPEG or PNG images (not searched recursively).
    #[arg(long)]
    images: PathBuf,
    /// Side of the augmented output.
    #[arg(long, default_value_t = 224)]
    size: u32,
    /// Passes over the folder per timed run.
    #[arg(long, default_value_t = 10)]
    repeat: usize,
    #[command(flatten)]
    timing: Timing,
}

impl ImagesArgs {
    /// Times decoding plus training augmentation on one thread (images per second per core).
    pub fn run(self) -> Result<(), CliError> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.images)
            .map_err(|e| format!("{}: {e}", self.images.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let ext = p.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
                matches!(ext.as_str(), "jpg" | "jpeg" | "png")
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(format!("{}: no .jpg, .jpeg or .png file", self.images.display()).into());
        }
        let transform = Transform::train(self.size);
        let norm = Normalization::imagenet();
        let mut out = vec![0f32; 3 * (self.size * self.size) as usize];
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let ms = self.timing.median_ms(|| {
            for _ in 0..self.repeat {
                for f in &files {
                    transform.apply(&decode_file(f)?, &norm, &mut rng, &mut out)?;
                }
            }
            Ok(())
        })?;
        let images = self.repeat * files.len();
        let per_s = images as f64 / (ms * 1e-3);
        if self.timing.json {
            let j = serde_json::json!({"bench": "images", "size": self.size, "images": images, "median_ms": ms,
                "images_per_s_per_core": per_s});
            println!("{j}");
        } else {
            println!(
                "decode + random resized crop {size}x{size} + flip + normalise, {images} images from {}: {per_s:.0} images/s per core",
                self.images.display(),
                size = self.size
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::cli::Cli;
    use clap::Parser;

    fn run(args: &[&str]) -> Result<(), crate::cli::CliError> {
        Cli::try_parse_from(["monarch", "bench"].iter().chain(args)).map_err(|e| e.to_string())?.run()
    }

    #[test]
    fn data_benches_run_small_and_reject_bad_flags() {
        let quick = ["--warmup", "0", "--runs", "1"];
        run(&[&["tokens", "--tokens", "5000", "--batch", "2", "--seq", "64", "--batches", "3"][..], &quick].concat())
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("t.txt");
        std::fs::write(&text, "Hello world").unwrap();
        run(&[&["tokenize", "--input", text.to_str().unwrap(), "--threads", "1"][..], &quick].concat()).unwrap();
        image::RgbImage::new(40, 30).save(dir.path().join("a.png")).unwrap();
        let d = dir.path().to_str().unwrap();
        run(&[&["images", "--images", d, "--size", "16", "--repeat", "1", "--json"][..], &quick].concat()).unwrap();
        assert!(run(&["tokens", "--batch", "x"]).is_err());
        assert!(run(&["tokens", "--tokens", "10", "--seq", "64"]).unwrap_err().to_string().contains("65"));
        assert!(run(&["images", "--images", "/no/such/dir"]).is_err());
        assert!(run(&["tokenize", "--threads", "0", "--input", "/no/such/file"]).is_err());
    }
}
