//! `monarch densify IN OUT`: replaces each `<name>.blkdiag1` / `<name>.blkdiag2` pair by
//! the dense `<name>.weight` (reverse sparsification), inverting `monarch project`. A
//! training run's checkpoint stays one: its header says densified (so `monarch generate`
//! and `--resume` build the dense model), and the optimiser state of the replaced
//! factors goes, as when a run densifies itself (`densify_at`).

use super::CliError;
use super::project::shape_key;
use crate::trainer::checkpoint::{self, OPTIMIZER_PREFIX};
use clap::Args;
use monarch_nn::MonarchLinear;
use monarch_tensor::{MonarchShape, Tensor, load_safetensors, save_safetensors};
use std::path::PathBuf;

/// Arguments of `monarch densify`.
#[derive(Args, Debug)]
pub struct DensifyArgs {
    /// Input safetensors file with Monarch factors, or a run's output folder (its newest
    /// checkpoint).
    input: PathBuf,
    /// Output safetensors file (written atomically).
    output: PathBuf,
}

impl DensifyArgs {
    /// Densifies every factor pair, writes the output and prints one line per layer.
    ///
    /// The dense shape comes from the metadata `monarch project` writes; otherwise `out`
    /// is the bias length (or `l·s`) and `in` is `k·p`.
    pub fn run(self) -> Result<(), CliError> {
        for (name, [o, i]) in self.densify()? {
            println!("{name}: monarch -> dense {o}x{i}");
        }
        Ok(())
    }

    fn densify(&self) -> Result<Vec<(String, [usize; 2])>, CliError> {
        let path = super::input_file(&self.input)?;
        let file = load_safetensors(&path)?;
        let mut metadata = file.metadata.clone();
        let mut out: Vec<(String, Tensor)> = Vec::new();
        let mut done = Vec::new();
        for (name, t) in &file.tensors {
            if let Some(layer) = name.strip_suffix(".blkdiag2") {
                if file.get(&format!("{layer}.blkdiag1")).is_none() {
                    return Err(format!("{}: {name} has no matching {layer}.blkdiag1", self.input.display()).into());
                }
                continue;
            }
            let Some(layer) = name.strip_suffix(".blkdiag1") else {
                out.push((name.clone(), t.clone()));
                continue;
            };
            let w2 = file
                .get(&format!("{layer}.blkdiag2"))
                .ok_or_else(|| format!("{}: {name} has no matching {layer}.blkdiag2", self.input.display()))?;
            let sh = MonarchShape::of(t.shape(), w2.shape())?;
            let bias = file.get(&format!("{layer}.bias"));
            let [o, i] = match metadata.remove(&shape_key(layer)) {
                Some(s) => parse_shape(&s)
                    .ok_or_else(|| format!("{}: bad metadata {s:?} for {layer}", self.input.display()))?,
                None => [bias.map_or(sh.m(), |b| b.elem_count()), sh.n()],
            };
            let m = MonarchLinear::from_factors(t.clone(), w2.clone(), None, i, o)?;
            out.push((format!("{layer}.weight"), m.dense_weight()?));
            done.push((layer.to_string(), [o, i]));
        }
        if done.is_empty() {
            return Err(format!("{}: no `.blkdiag1`/`.blkdiag2` factor pair found", self.input.display()).into());
        }
        if let Some(mut meta) = checkpoint::header(&metadata, &path)? {
            let replaced = |name: &str| {
                let Some(state) = name.strip_prefix(OPTIMIZER_PREFIX) else { return false };
                done.iter().any(|(layer, _)| {
                    let rest = state.strip_prefix(layer.as_str()).unwrap_or("");
                    rest.starts_with(".blkdiag1.") || rest.starts_with(".blkdiag2.")
                })
            };
            out.retain(|(name, _)| !replaced(name));
            meta.densified = true;
            checkpoint::set_header(&mut metadata, &meta);
        }
        save_safetensors(&self.output, out.iter().map(|(n, t)| (n.as_str(), t)), Some(&metadata))?;
        Ok(done)
    }
}

/// `"out,in"` as two sizes.
fn parse_shape(s: &str) -> Option<[usize; 2]> {
    let (o, i) = s.split_once(',')?;
    Some([o.trim().parse().ok()?, i.trim().parse().ok()?])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::project::tests::args;
    use monarch_nn::{LinearLayer, SeedableRng, StdRng};
    use monarch_tensor::DType;

    #[test]
    fn densify_inverts_project_on_monarch_weights() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        // A Monarch layer with padding (10 inputs into 3 blocks of 4) densified is projected exactly.
        let m = MonarchLinear::new(10, 7, 3, true, &mut StdRng::seed_from_u64(0)).unwrap();
        let dense = m.to_dense().unwrap();
        let (w, b) = (dense.weight.value(), dense.bias.as_ref().unwrap().value());
        save_safetensors(p("dense"), [("fc.weight", &w), ("fc.bias", &b)], None).unwrap();
        args(&p("dense"), &p("monarch"), 3, None).project().unwrap();
        let done = DensifyArgs { input: p("monarch"), output: p("back") }.densify().unwrap();
        assert_eq!(done, [("fc".to_string(), [7, 10])]);
        let back = load_safetensors(p("back")).unwrap();
        let names: Vec<&str> = back.tensors.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["fc.bias", "fc.weight"]);
        for (x, y) in back.get("fc.weight").unwrap().to_vec::<f32>().unwrap().iter().zip(w.to_vec::<f32>().unwrap()) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
    }

    #[test]
    fn a_run_checkpoint_stays_one_marked_densified_without_the_factors_optimiser_state() {
        use crate::trainer::checkpoint::{CheckpointMeta, load, save};
        use monarch_nn::Module;
        let dir = tempfile::tempdir().unwrap();
        let m = MonarchLinear::new(8, 8, 2, true, &mut StdRng::seed_from_u64(1)).unwrap();
        let params = monarch_nn::prefixed("fc", m.named_params());
        let state: Vec<(String, Tensor)> =
            params.iter().map(|(n, p)| (format!("{n}.exp_avg"), p.value().affine(0.5, 0.0).unwrap())).collect();
        let meta = CheckpointMeta {
            step: 7,
            densified: false,
            config: serde_json::json!({"x": 1}),
            data: serde_json::json!(3),
        };
        save(dir.path(), &params, state, &meta, 1).unwrap();
        // The run's folder names its newest checkpoint.
        let out = dir.path().join("dense.safetensors");
        DensifyArgs { input: dir.path().to_path_buf(), output: out.clone() }.densify().unwrap();
        let ck = load(&out).unwrap();
        assert_eq!(ck.meta, CheckpointMeta { densified: true, ..meta });
        let mut weights: Vec<&str> = ck.weights.keys().map(String::as_str).collect();
        weights.sort();
        assert_eq!(weights, ["fc.bias", "fc.weight"]);
        let optimizer: Vec<&str> = ck.optimizer.keys().map(String::as_str).collect();
        assert_eq!(optimizer, ["fc.bias.exp_avg"], "the factors' state goes, the bias's stays");
        let want = m.dense_weight().unwrap().to_vec::<f32>().unwrap();
        assert_eq!(ck.weights["fc.weight"].to_vec::<f32>().unwrap(), want);
        // A folder without checkpoints is an error.
        let empty = tempfile::tempdir().unwrap();
        let err = DensifyArgs { input: empty.path().to_path_buf(), output: out }.densify().unwrap_err();
        assert!(err.to_string().contains("no checkpoint"), "{err}");
    }

    #[test]
    fn without_metadata_the_shape_comes_from_bias_and_factors() {
        let dir = tempfile::tempdir().unwrap();
        let (input, output) = (dir.path().join("m"), dir.path().join("d"));
        let (w1, w2) = (Tensor::ones([2, 3, 4], DType::F32), Tensor::ones([3, 2, 2], DType::F32));
        save_safetensors(
            &input,
            [("a.blkdiag1", &w1), ("a.blkdiag2", &w2), ("a.bias", &Tensor::zeros([5], DType::F32))],
            None,
        )
        .unwrap();
        let done = DensifyArgs { input: input.clone(), output: output.clone() }.densify().unwrap();
        assert_eq!(done, [("a".to_string(), [5, 8])]);
        // Unpaired or misshapen factors are errors, and nothing is written.
        let output2 = dir.path().join("d2");
        save_safetensors(&input, [("a.blkdiag1", &w1)], None).unwrap();
        assert!(DensifyArgs { input: input.clone(), output: output2.clone() }.densify().is_err());
        save_safetensors(&input, [("a.blkdiag1", &w1), ("a.blkdiag2", &Tensor::ones([3, 2], DType::F32))], None)
            .unwrap();
        assert!(DensifyArgs { input: input.clone(), output: output2.clone() }.densify().is_err());
        save_safetensors(&input, [("a.weight", &Tensor::ones([3, 2], DType::F32))], None).unwrap();
        assert!(DensifyArgs { input, output: output2.clone() }.densify().is_err());
        assert!(!output2.exists());
    }
}
