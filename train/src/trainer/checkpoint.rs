//! Checkpoints: model weights under their module names, optimiser state under
//! `optimizer.<name>.<buffer>`, and a JSON header (config, step, data position) in the
//! safetensors metadata. Written atomically; only the last K are kept.

use super::TrainError;
use monarch_nn::NamedParams;
use monarch_tensor::{SafetensorsFile, Tensor, load_safetensors_where, save_safetensors};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Prefix of optimiser-state tensors in a checkpoint.
pub const OPTIMIZER_PREFIX: &str = "optimizer.";
const META_KEY: &str = "monarch";

/// The JSON header of a checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CheckpointMeta {
    /// Steps completed.
    pub step: u64,
    /// Whether the structured layers had been replaced by dense ones (reverse sparsification).
    pub densified: bool,
    /// The run's full configuration.
    pub config: serde_json::Value,
    /// The training data loader's position.
    pub data: serde_json::Value,
}

/// The file name of the checkpoint after `step` steps.
pub fn file_name(step: u64) -> String {
    format!("ckpt-{step:08}.safetensors")
}

fn step_of(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_prefix("ckpt-")?.strip_suffix(".safetensors")?.parse().ok()
}

/// All checkpoints in `dir`, oldest first.
pub fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, TrainError> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|source| TrainError::Io { path: dir.to_path_buf(), source })?;
    for e in entries.flatten() {
        let p = e.path();
        if let Some(s) = step_of(&p) {
            out.push((s, p));
        }
    }
    out.sort();
    Ok(out)
}

/// The newest checkpoint in `dir`, if any.
pub fn latest(dir: &Path) -> Result<Option<PathBuf>, TrainError> {
    Ok(list(dir)?.pop().map(|(_, p)| p))
}

/// Writes a checkpoint and deletes all but the newest `keep` ones.
pub fn save(
    dir: &Path,
    params: &NamedParams,
    optimizer: Vec<(String, Tensor)>,
    meta: &CheckpointMeta,
    keep: usize,
) -> Result<PathBuf, TrainError> {
    let mut tensors: Vec<(String, Tensor)> = params.iter().map(|(n, p)| (n.clone(), p.value())).collect();
    tensors.extend(optimizer.into_iter().map(|(n, t)| (format!("{OPTIMIZER_PREFIX}{n}"), t)));
    let mut header = HashMap::new();
    set_header(&mut header, meta);
    let path = dir.join(file_name(meta.step));
    save_safetensors(&path, tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(&header))?;
    let all = list(dir)?;
    for (_, old) in all.iter().take(all.len().saturating_sub(keep.max(1))) {
        std::fs::remove_file(old).map_err(|source| TrainError::Io { path: old.clone(), source })?;
    }
    Ok(path)
}

/// A loaded checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    /// Its header.
    pub meta: CheckpointMeta,
    /// Model weights by name.
    pub weights: HashMap<String, Tensor>,
    /// Optimiser state by `<param>.<buffer>` name.
    pub optimizer: HashMap<String, Tensor>,
}

/// Reads a checkpoint written by [`save`].
pub fn load(path: &Path) -> Result<Checkpoint, TrainError> {
    read(path, true)
}

/// Reads a checkpoint's header and weights only: the optimiser state (twice the weights
/// for AdamW) is not read from disk. What inference needs.
pub fn load_weights(path: &Path) -> Result<Checkpoint, TrainError> {
    read(path, false)
}

/// The checkpoint header in a safetensors file's `metadata` (read from `path`), or None
/// for a file that is no run's checkpoint.
pub fn header(metadata: &HashMap<String, String>, path: &Path) -> Result<Option<CheckpointMeta>, TrainError> {
    metadata
        .get(META_KEY)
        .map(|raw| serde_json::from_str(raw))
        .transpose()
        .map_err(|e| TrainError::Other(format!("{}: bad checkpoint header: {e}", path.display())))
}

/// Sets `meta` as the checkpoint header in a safetensors file's `metadata`.
pub fn set_header(metadata: &mut HashMap<String, String>, meta: &CheckpointMeta) {
    metadata.insert(META_KEY.to_string(), serde_json::to_string(meta).expect("serialisable"));
}

/// Removes the checkpoint header from a safetensors file's `metadata`, leaving a plain
/// weights file's.
pub fn remove_header(metadata: &mut HashMap<String, String>) {
    metadata.remove(META_KEY);
}

fn read(path: &Path, with_optimizer: bool) -> Result<Checkpoint, TrainError> {
    let wanted = |name: &str| with_optimizer || !name.starts_with(OPTIMIZER_PREFIX);
    let SafetensorsFile { tensors, metadata } = load_safetensors_where(path, wanted)?;
    let meta = header(&metadata, path)?
        .ok_or_else(|| TrainError::Other(format!("{}: not a monarch checkpoint (no header)", path.display())))?;
    let (mut weights, mut optimizer) = (HashMap::new(), HashMap::new());
    for (name, t) in tensors {
        match name.strip_prefix(OPTIMIZER_PREFIX) {
            Some(rest) => optimizer.insert(rest.to_string(), t),
            None => weights.insert(name, t),
        };
    }
    Ok(Checkpoint { meta, weights, optimizer })
}

#[cfg(test)]
mod tests {
    use super::*;
    use monarch_autograd::Param;

    #[test]
    fn save_load_and_keep_the_last_k() {
        let dir = tempfile::tempdir().unwrap();
        let params = vec![("w".to_string(), Param::new(Tensor::from_vec(vec![1f32, 2.0], 2).unwrap()))];
        let opt = vec![("w.exp_avg".to_string(), Tensor::from_vec(vec![0.5f32, 0.25], 2).unwrap())];
        for step in [10, 20, 30] {
            let meta = CheckpointMeta {
                step,
                densified: false,
                config: serde_json::json!({"lr": 0.1}),
                data: serde_json::json!({"pos": step}),
            };
            save(dir.path(), &params, opt.clone(), &meta, 2).unwrap();
        }
        let steps: Vec<u64> = list(dir.path()).unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps, vec![20, 30]);
        let ck = load(&latest(dir.path()).unwrap().unwrap()).unwrap();
        assert_eq!(ck.meta.step, 30);
        assert_eq!(ck.meta.data["pos"], 30);
        assert_eq!(ck.optimizer["w.exp_avg"].to_vec::<f32>().unwrap(), vec![0.5, 0.25]);
        let only = load_weights(&latest(dir.path()).unwrap().unwrap()).unwrap();
        assert!(only.optimizer.is_empty() && only.weights.contains_key("w") && only.meta == ck.meta);
        params[0].1.set(Tensor::zeros(2, monarch_tensor::DType::F32)).unwrap();
        monarch_nn::assign_params(&params, ck.weights, false, "checkpoint", "test").unwrap();
        assert_eq!(params[0].1.value().to_vec::<f32>().unwrap(), vec![1.0, 2.0]);
        let plain = dir.path().join("plain.safetensors");
        save_safetensors(&plain, [("w", &params[0].1.value())], None).unwrap();
        assert!(load(&plain).unwrap_err().to_string().contains("not a monarch checkpoint"));
    }
}
