//! `monarch project IN OUT --nblocks N [--layers REGEX]`: replaces dense weights by their
//! Frobenius-nearest Monarch factors (dense-to-sparse fine-tuning), and
//! `monarch densify IN OUT` (in densify.rs) undoes it. A training run's checkpoint comes
//! out as a plain weights file: its header (the run's configuration, step and data
//! position) and its optimiser state describe the dense layers, so neither is carried
//! over; `--init-from` on the training binaries is the way to fine-tune a run's dense
//! checkpoint as Monarch.

use super::CliError;
use crate::trainer::checkpoint::{self, OPTIMIZER_PREFIX};
use clap::Args;
use monarch_nn::{Linear, MonarchLinear};
use monarch_tensor::{Tensor, load_safetensors, save_safetensors};
use regex::Regex;
use std::collections::HashMap;
use std::path::PathBuf;

/// Metadata key recording a projected layer's dense shape, `out,in` (densify reads it
/// back, since padding hides `in` and a missing bias hides `out`).
pub fn shape_key(layer: &str) -> String {
    format!("monarch.dense_shape.{layer}")
}

/// Arguments of `monarch project`.
#[derive(Args, Debug)]
pub struct ProjectArgs {
    /// Input safetensors file (weights in PyTorch layout, out × in), or a run's output
    /// folder (its newest checkpoint).
    input: PathBuf,
    /// Output safetensors file (written atomically).
    output: PathBuf,
    /// Blocks per Monarch factor.
    #[arg(long)]
    nblocks: usize,
    /// Only layers whose name (the part before `.weight`) matches this regular
    /// expression; default every 2-D `.weight` but embedding tables (a last name part
    /// of `wte`, `wpe` or one containing `embed`, as `embed_tokens`), which are looked
    /// up rather than multiplied.
    #[arg(long)]
    layers: Option<String>,
}

/// Whether the default (no `--layers`) leaves `layer` alone: an embedding table, by its
/// last name part (`wte`, `wpe`, `word_embeddings`, `embed_tokens`, ...).
fn is_embedding_table(layer: &str) -> bool {
    let last = layer.rsplit('.').next().unwrap_or(layer);
    matches!(last, "wte" | "wpe") || last.contains("embed")
}

/// One projected layer's report.
#[derive(Debug, PartialEq)]
pub(crate) struct Projected {
    name: String,
    shape: [usize; 2],
    rel_error: f64,
    params_before: usize,
    params_after: usize,
}

impl ProjectArgs {
    /// Projects, writes the output and prints one line per layer.
    pub fn run(self) -> Result<(), CliError> {
        let (report, was_checkpoint) = self.project()?;
        if was_checkpoint {
            println!(
                "note: {} is a training checkpoint; {} holds its weights only (its header and optimiser \
                 state describe the dense layers); to fine-tune it as Monarch, train with --init-from",
                self.input.display(),
                self.output.display()
            );
        }
        for p in report {
            println!(
                "{}: {}x{} -> monarch, relative error {:.4e}, parameters {} -> {} ({:.2}x fewer)",
                p.name,
                p.shape[0],
                p.shape[1],
                p.rel_error,
                p.params_before,
                p.params_after,
                p.params_before as f64 / p.params_after as f64
            );
        }
        Ok(())
    }

    /// The projected layers, and whether the input was a training checkpoint (whose
    /// header and optimiser state the output leaves out).
    pub(crate) fn project(&self) -> Result<(Vec<Projected>, bool), CliError> {
        if self.nblocks == 0 {
            return Err("--nblocks must be at least 1".into());
        }
        let pattern = self.layers.as_deref().map(Regex::new).transpose()?;
        let path = super::input_file(&self.input)?;
        let file = load_safetensors(&path)?;
        let mut metadata = file.metadata.clone();
        let was_checkpoint = checkpoint::header(&metadata, &path)?.is_some();
        if was_checkpoint {
            checkpoint::remove_header(&mut metadata);
        }
        let names: HashMap<&str, &Tensor> = file.tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut out: Vec<(String, Tensor)> = Vec::new();
        let mut report = Vec::new();
        for (name, t) in &file.tensors {
            if was_checkpoint && name.starts_with(OPTIMIZER_PREFIX) {
                continue;
            }
            let chosen = |l: &&str| pattern.as_ref().map_or(!is_embedding_table(l), |p| p.is_match(l));
            let layer = name.strip_suffix(".weight").filter(chosen);
            let (Some(layer), true) = (layer, t.rank() == 2 && t.dtype().is_float()) else {
                out.push((name.clone(), t.clone()));
                continue;
            };
            for suffix in ["blkdiag1", "blkdiag2"] {
                if names.contains_key(format!("{layer}.{suffix}").as_str()) {
                    return Err(format!("{}: {layer}.{suffix} exists already", self.input.display()).into());
                }
            }
            let dense = Linear::from_weights(t.clone(), None)?;
            let m = MonarchLinear::project(&dense, self.nblocks)?;
            let (w1, w2) = (m.blkdiag1.value(), m.blkdiag2.value());
            let approx = m.dense_weight()?.to_dtype(monarch_tensor::DType::F64)?;
            let w = t.to_dtype(monarch_tensor::DType::F64)?;
            let norm = w.sqr()?.sum_all()?.to_scalar_f64()?.sqrt();
            let err = w.sub(&approx)?.sqr()?.sum_all()?.to_scalar_f64()?.sqrt();
            let [o, i] = [t.dims()[0], t.dims()[1]];
            metadata.insert(shape_key(layer), format!("{o},{i}"));
            report.push(Projected {
                name: layer.to_string(),
                shape: [o, i],
                rel_error: if norm > 0.0 { err / norm } else { 0.0 },
                params_before: t.elem_count(),
                params_after: w1.elem_count() + w2.elem_count(),
            });
            out.push((format!("{layer}.blkdiag1"), w1));
            out.push((format!("{layer}.blkdiag2"), w2));
        }
        if report.is_empty() {
            let which = if pattern.is_some() { "matches" } else { "is a layer (embedding tables are left alone)" };
            return Err(format!("{}: no 2-D floating-point `.weight` tensor {which}", self.input.display()).into());
        }
        save_safetensors(&self.output, out.iter().map(|(n, t)| (n.as_str(), t)), Some(&metadata))?;
        Ok((report, was_checkpoint))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use monarch_tensor::DType;

    pub(crate) fn args(
        input: &std::path::Path,
        output: &std::path::Path,
        nblocks: usize,
        layers: Option<&str>,
    ) -> ProjectArgs {
        ProjectArgs { input: input.into(), output: output.into(), nblocks, layers: layers.map(str::to_string) }
    }

    #[test]
    fn projects_matching_weights_and_keeps_everything_else() {
        let dir = tempfile::tempdir().unwrap();
        let (input, output) = (dir.path().join("in.safetensors"), dir.path().join("out.safetensors"));
        let w = Tensor::randn([16, 12], 0.0, 1.0, 1).unwrap();
        let b = Tensor::randn([16], 0.0, 1.0, 2).unwrap();
        let emb = Tensor::randn([10, 12], 0.0, 1.0, 3).unwrap();
        save_safetensors(&input, [("h.0.fc.weight", &w), ("h.0.fc.bias", &b), ("wte.weight", &emb)], None).unwrap();
        let (report, was_checkpoint) = args(&input, &output, 4, Some(r"^h\.\d+\.fc$")).project().unwrap();
        assert!(!was_checkpoint);
        assert_eq!(report.len(), 1);
        assert_eq!((report[0].shape, report[0].params_before, report[0].params_after), ([16, 12], 192, 36 + 48));
        assert!(report[0].rel_error > 0.0 && report[0].rel_error < 1.0);
        let f = load_safetensors(&output).unwrap();
        let names: Vec<&str> = f.tensors.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["h.0.fc.bias", "h.0.fc.blkdiag1", "h.0.fc.blkdiag2", "wte.weight"]);
        assert_eq!(f.get("h.0.fc.blkdiag1").unwrap().dims(), &[4, 3, 3]);
        assert_eq!(f.get("h.0.fc.blkdiag2").unwrap().dtype(), DType::F32);
        assert_eq!(f.metadata[&shape_key("h.0.fc")], "16,12");
    }

    /// Without `--layers`, every 2-D weight but the embedding tables is projected; a
    /// pattern can still pick a table.
    #[test]
    fn the_default_leaves_embedding_tables_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (input, output) = (dir.path().join("in.safetensors"), dir.path().join("out.safetensors"));
        let t = |seed, shape: [usize; 2]| Tensor::randn(shape, 0.0, 1.0, seed).unwrap();
        let (fc, wte, wpe, tok, head) = (t(1, [16, 12]), t(2, [40, 12]), t(3, [8, 12]), t(4, [40, 12]), t(5, [40, 12]));
        let tensors = [
            ("h.0.mlp.c_fc.weight", &fc),
            ("wte.weight", &wte),
            ("transformer.wpe.weight", &wpe),
            ("model.embed_tokens.weight", &tok),
            ("lm_head.weight", &head),
        ];
        save_safetensors(&input, tensors, None).unwrap();
        let (report, _) = args(&input, &output, 4, None).project().unwrap();
        let names: Vec<&str> = report.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["h.0.mlp.c_fc", "lm_head"]);
        let f = load_safetensors(&output).unwrap();
        for (name, kept) in
            [("wte.weight", &wte), ("transformer.wpe.weight", &wpe), ("model.embed_tokens.weight", &tok)]
        {
            assert_eq!(f.get(name).unwrap().to_vec_f64().unwrap(), kept.to_vec_f64().unwrap(), "{name}");
        }
        let (report, _) = args(&input, &output, 4, Some("^wte$")).project().unwrap();
        assert_eq!(report.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["wte"]);
        save_safetensors(&input, [("wte.weight", &wte)], None).unwrap();
        let err = args(&input, &output, 4, None).project().unwrap_err().to_string();
        assert!(err.contains("embedding tables are left alone"), "{err}");
    }

    /// A run's checkpoint: the weights are projected, while the header (whose config
    /// would build dense layers) and the optimiser state (shaped as the dense weights) are
    /// left out; other metadata stays.
    #[test]
    fn a_training_checkpoint_comes_out_as_weights_only() {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("out.safetensors");
        let w = monarch_autograd::Param::new(Tensor::randn([16, 12], 0.0, 1.0, 1).unwrap());
        let params = vec![("h.0.mlp.c_fc.weight".to_string(), w)];
        let state = vec![("h.0.mlp.c_fc.weight.exp_avg".to_string(), Tensor::zeros([16, 12], DType::F32))];
        let meta = checkpoint::CheckpointMeta {
            step: 7,
            densified: false,
            config: serde_json::json!({ "model": "dense" }),
            data: serde_json::Value::Null,
        };
        let input = checkpoint::save(dir.path(), &params, state, &meta, 1).unwrap();
        let (report, was_checkpoint) = args(dir.path(), &output, 4, None).project().unwrap();
        assert!(was_checkpoint);
        assert_eq!(report.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["h.0.mlp.c_fc"]);
        let f = load_safetensors(&output).unwrap();
        let names: Vec<&str> = f.tensors.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["h.0.mlp.c_fc.blkdiag1", "h.0.mlp.c_fc.blkdiag2"]);
        assert_eq!(checkpoint::header(&f.metadata, &output).unwrap(), None);
        assert_eq!(f.metadata.keys().collect::<Vec<_>>(), [&shape_key("h.0.mlp.c_fc")]);
        assert!(checkpoint::load(&output).is_err(), "no longer a checkpoint");
        assert!(checkpoint::load(&input).is_ok(), "the input is left as it was");
    }

    #[test]
    fn errors_leave_no_output() {
        let dir = tempfile::tempdir().unwrap();
        let (input, output) = (dir.path().join("in.safetensors"), dir.path().join("out.safetensors"));
        assert!(args(&input, &output, 4, None).project().is_err());
        std::fs::write(&input, b"not safetensors").unwrap();
        assert!(args(&input, &output, 4, None).project().unwrap_err().to_string().contains("not a valid safetensors"));
        save_safetensors(&input, [("fc.weight", &Tensor::zeros([8, 8], DType::F32))], None).unwrap();
        assert!(args(&input, &output, 0, None).project().is_err());
        assert!(args(&input, &output, 4, Some("(")).project().is_err());
        assert!(args(&input, &output, 4, Some("nothing")).project().is_err());
        assert!(!output.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left behind");
    }
}
