//! `monarch`: the project's command-line tools (bench, project, densify, tokenize,
//! inspect, generate, data, kernels).

use clap::Parser;

fn main() {
    let cli = monarch_train::cli::Cli::parse();
    if let Err(e) = cli.run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
