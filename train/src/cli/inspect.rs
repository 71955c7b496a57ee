//! `monarch inspect FILE`: the tensors of a safetensors file.

use super::CliError;
use clap::Args;
use monarch_tensor::load_safetensors;
use std::path::PathBuf;

/// Arguments of `monarch inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// A safetensors file, or a run's output folder (its newest checkpoint).
    file: PathBuf,
}

impl InspectArgs {
    /// Prints one line per tensor (name, dtype, shape, elements), then the metadata.
    pub fn run(self) -> Result<(), CliError> {
        print!("{}", listing(&super::input_file(&self.file)?)?);
        Ok(())
    }
}

/// The listing `run` prints.
fn listing(file: &std::path::Path) -> Result<String, CliError> {
    let f = load_safetensors(file)?;
    let width = f.tensors.iter().map(|(n, _)| n.len()).max().unwrap_or(4).max(4);
    let mut out = format!("{:width$}  dtype  shape\n", "name");
    let mut total = 0;
    for (name, t) in &f.tensors {
        total += t.elem_count();
        out += &format!("{name:width$}  {:5}  {:?}\n", t.dtype().as_str(), t.dims());
    }
    out += &format!("{} tensors, {total} elements\n", f.tensors.len());
    let mut meta: Vec<_> = f.metadata.iter().collect();
    meta.sort();
    for (k, v) in meta {
        out += &format!("metadata {k} = {v}\n");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use monarch_tensor::{DType, Tensor, save_safetensors};

    #[test]
    fn lists_names_dtypes_shapes_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let (a, b) = (Tensor::zeros([3, 4], DType::F32), Tensor::zeros([2], DType::BF16));
        let meta = std::collections::HashMap::from([("step".to_string(), "5".to_string())]);
        save_safetensors(&path, [("h.0.weight", &a), ("b", &b)], Some(&meta)).unwrap();
        let text = listing(&path).unwrap();
        assert_eq!(
            text,
            "name        dtype  shape\nb           bf16   [2]\nh.0.weight  f32    [3, 4]\n2 tensors, 14 elements\nmetadata step = 5\n"
        );
        assert!(listing(&dir.path().join("missing")).is_err());
        std::fs::write(dir.path().join("junk"), b"junk").unwrap();
        assert!(listing(&dir.path().join("junk")).unwrap_err().to_string().contains("not a valid safetensors"));
    }
}
