//! `monarch data ...`: inspect data files, pack image sets.

use super::CliError;
use clap::{Args, Subcommand};
use monarch_data::image::{open_image_set, pack_image_set};
use monarch_data::inspect;
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `monarch data`.
#[derive(Args, Debug)]
pub struct DataArgs {
    #[command(subcommand)]
    cmd: DataCmd,
}

#[derive(Subcommand, Debug)]
enum DataCmd {
    /// Format, size and id or class range of a token file or an image set.
    Inspect(InspectArgs),
    /// Decode an image set once into a packed uint8 file for fast repeated epochs.
    Pack(PackArgs),
}

/// Arguments of `monarch data inspect`.
#[derive(Args, Debug)]
struct InspectArgs {
    /// A token shard, nanoGPT train.bin/val.bin, or any image set (folder, packed file,
    /// IDX, CIFAR-10 .bin, digits .csv, embedded:digits).
    file: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Arguments of `monarch data pack`.
#[derive(Args, Debug)]
struct PackArgs {
    /// The image set to pack (for ImageNet: ROOT/train, then ROOT/val).
    input: PathBuf,
    /// The packed file to write (train.mimg and val.mimg are found by split name).
    #[arg(long)]
    out: PathBuf,
    /// Side of the stored square images: the central square, resized.
    #[arg(long, default_value_t = 64)]
    size: u32,
    /// Leave out images that fail to decode, and say how many, instead of stopping.
    #[arg(long)]
    skip_corrupt: bool,
}

impl DataArgs {
    /// Runs the chosen data command.
    pub fn run(self) -> Result<(), CliError> {
        match self.cmd {
            DataCmd::Inspect(a) => {
                let found = inspect(&a.file)?;
                if a.json {
                    println!("{}", serde_json::to_string(&found)?);
                } else {
                    println!("{found}");
                }
                Ok(())
            }
            DataCmd::Pack(a) => {
                let start = Instant::now();
                let set = open_image_set(&a.input)?;
                let report = pack_image_set(set.as_ref(), &a.out, a.size, a.skip_corrupt)?;
                println!(
                    "packed {} images of {}x{} into {} in {:.1} s; {} skipped as corrupt",
                    report.images,
                    a.size,
                    a.size,
                    a.out.display(),
                    start.elapsed().as_secs_f64(),
                    report.skipped
                );
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::cli::Cli;
    use clap::Parser;

    #[test]
    fn inspect_and_pack_report_errors_without_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let shard = dir.path().join("s.bin");
        monarch_data::write_shard(&shard, &[5, 9, 7]).unwrap();
        Cli::try_parse_from(["monarch", "data", "inspect", shard.to_str().unwrap(), "--json"]).unwrap().run().unwrap();
        let found = monarch_data::inspect(&shard).unwrap();
        let json: serde_json::Value = serde_json::to_value(&found).unwrap();
        assert_eq!(
            (json["tokens"].as_u64(), json["min_id"].as_u64(), json["max_id"].as_u64()),
            (Some(3), Some(5), Some(9))
        );
        std::fs::write(dir.path().join("junk.dat"), b"junk").unwrap();
        let junk = dir.path().join("junk.dat");
        let err =
            Cli::try_parse_from(["monarch", "data", "inspect", junk.to_str().unwrap()]).unwrap().run().unwrap_err();
        assert!(err.to_string().contains("junk.dat"), "{err}");
        let out = dir.path().join("d.mimg");
        let pack = ["monarch", "data", "pack", "embedded:digits", "--out", out.to_str().unwrap(), "--size", "8"];
        Cli::try_parse_from(pack).unwrap().run().unwrap();
        let json = serde_json::to_value(monarch_data::inspect(&out).unwrap()).unwrap();
        assert_eq!((json["images"].as_u64(), json["height"].as_u64()), (Some(1797), Some(8)));
    }
}
