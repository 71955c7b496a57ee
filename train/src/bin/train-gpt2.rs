//! `train-gpt2`: trains a GPT-2 language model (default: a small Monarch GPT-2 on the
//! embedded Shakespeare). `--data DIR` takes token shards written by `monarch tokenize`
//! (WikiText-103, OpenWebText, ...), or llm.c / nanoGPT token files.

use clap::Parser;
use monarch_train::tasks::{TrainArgs, exit_code, gpt2};

/// Train GPT-2 with dense or structured layers.
#[derive(Parser, Debug)]
#[command(name = "train-gpt2", version, about)]
struct Cli {
    #[command(flatten)]
    args: TrainArgs,
}

fn main() -> std::process::ExitCode {
    exit_code(gpt2::main(&Cli::parse().args).map(|_| ()))
}
