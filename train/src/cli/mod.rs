//! The `monarch` command line: one module per subcommand.

mod bench;
mod data;
mod densify;
mod generate;
mod inspect;
mod kernels;
mod linear_flags;
mod project;
mod tokenize;

use clap::{Parser, Subcommand};
pub use linear_flags::LinearFlags;

/// Errors of the command-line tools; `main` prints them and exits with status 1.
pub type CliError = Box<dyn std::error::Error + Send + Sync>;

/// The safetensors file an input argument names: the file itself, or a run's output
/// folder's newest checkpoint.
fn input_file(path: &std::path::Path) -> Result<std::path::PathBuf, CliError> {
    if path.is_dir() {
        return crate::trainer::checkpoint::latest(path)?
            .ok_or_else(|| format!("{}: a folder with no checkpoint (ckpt-*.safetensors)", path.display()).into());
    }
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    Err(format!("{}: no such file or folder", path.display()).into())
}

/// monarch: structured-matrix deep learning tools.
#[derive(Parser, Debug)]
#[command(name = "monarch", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Benchmark an op and print its median time.
    Bench(bench::BenchArgs),
    /// Replace dense weights by their nearest Monarch factors (safetensors in, safetensors out).
    Project(project::ProjectArgs),
    /// Replace Monarch factors by the dense weights they compute (reverse sparsification).
    Densify(densify::DensifyArgs),
    /// Sample text from a GPT-2 training run's checkpoint.
    Generate(generate::GenerateArgs),
    /// List the tensors (name, dtype, shape) and metadata of a safetensors file.
    Inspect(inspect::InspectArgs),
    /// Tokenise text into GPT-2 token shards (llm.c format).
    Tokenize(tokenize::TokenizeArgs),
    /// Inspect data files; pack image sets.
    Data(data::DataArgs),
    /// Compile every CUDA kernel into the on-disk cache ahead of a run.
    Kernels(kernels::KernelsArgs),
}

impl Cli {
    /// Runs the chosen subcommand.
    pub fn run(self) -> Result<(), CliError> {
        match self.command {
            Command::Bench(a) => a.run(),
            Command::Project(a) => a.run(),
            Command::Densify(a) => a.run(),
            Command::Generate(a) => a.run(),
            Command::Inspect(a) => a.run(),
            Command::Tokenize(a) => a.run(),
            Command::Data(a) => a.run(),
            Command::Kernels(a) => a.run(),
        }
    }
}
