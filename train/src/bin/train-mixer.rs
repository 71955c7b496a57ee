//! `train-mixer`: trains an MLP-Mixer (default: a small Mixer with Monarch channel mixing
//! on the embedded UCI digits). `--data PATH` takes the same image sets as `train-vit`.

use clap::Parser;
use monarch_nn::models::Mixer;
use monarch_train::tasks::{TrainArgs, exit_code, image};

/// Train an MLP-Mixer with dense or structured layers.
#[derive(Parser, Debug)]
#[command(name = "train-mixer", version, about)]
struct Cli {
    #[command(flatten)]
    args: TrainArgs,
}

fn main() -> std::process::ExitCode {
    exit_code(image::main::<Mixer>(&image::MIXER, &Cli::parse().args).map(|_| ()))
}
