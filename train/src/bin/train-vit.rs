//! `train-vit`: trains a Vision Transformer (default: a small Monarch ViT on the embedded
//! UCI digits). `--data PATH` takes an ImageNet-style root (`train/`, `val/`), an image
//! folder, a packed image file, MNIST-style IDX files or CIFAR-10 batches.

use clap::Parser;
use monarch_nn::models::Vit;
use monarch_train::tasks::{TrainArgs, exit_code, image};

/// Train a ViT with dense or structured layers.
#[derive(Parser, Debug)]
#[command(name = "train-vit", version, about)]
struct Cli {
    #[command(flatten)]
    args: TrainArgs,
}

fn main() -> std::process::ExitCode {
    exit_code(image::main::<Vit>(&image::VIT, &Cli::parse().args).map(|_| ()))
}
