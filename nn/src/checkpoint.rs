//! Saving and loading a module's parameters by name as safetensors.

use crate::{Module, NamedParams};
use monarch_tensor::{Error, Result, Tensor, load_safetensors, save_safetensors};
use std::collections::HashMap;
use std::path::Path;

/// Saves every parameter of `m` under its hierarchical name (atomically), with
/// optional string metadata.
pub fn save_params(m: &dyn Module, path: impl AsRef<Path>, metadata: Option<&HashMap<String, String>>) -> Result<()> {
    let params = m.named_params();
    let values: Vec<(String, Tensor)> = params.iter().map(|(n, p)| (n.clone(), p.value())).collect();
    save_safetensors(path, values.iter().map(|(n, t)| (n.as_str(), t)), metadata)
}

/// Loads parameters of `m` by name from a safetensors file (see [`assign_params`]).
/// Returns the file's metadata.
pub fn load_params(m: &dyn Module, path: impl AsRef<Path>, allow_unused: bool) -> Result<HashMap<String, String>> {
    let path = path.as_ref();
    let file = load_safetensors(path)?;
    let tensors = file.tensors.into_iter().collect();
    assign_params(&m.named_params(), tensors, allow_unused, "load_params", &path.display().to_string())?;
    Ok(file.metadata)
}

/// Sets every parameter of `params` from `tensors` by name, converted to the parameter's
/// dtype. Every parameter must be present with its shape, and names no parameter has are
/// an error unless `allow_unused`; everything is checked before any parameter changes.
/// Errors name `op` and `source` (the file or checkpoint the tensors came from).
pub fn assign_params(
    params: &NamedParams,
    mut tensors: HashMap<String, Tensor>,
    allow_unused: bool,
    op: &'static str,
    source: &str,
) -> Result<()> {
    let missing: Vec<&str> = params.iter().filter(|(n, _)| !tensors.contains_key(n)).map(|(n, _)| n.as_str()).collect();
    if !missing.is_empty() {
        return Err(Error::invalid(op, format!("{source} lacks {}", missing.join(", "))));
    }
    for (name, p) in params {
        let (t, current) = (&tensors[name], p.value());
        if t.shape() != current.shape() {
            let msg =
                format!("{source}: {name} has shape {} in the file but {} in the model", t.shape(), current.shape());
            return Err(Error::invalid(op, msg));
        }
    }
    let mut values = Vec::with_capacity(params.len());
    for (name, p) in params {
        let t = tensors.remove(name).expect("checked above");
        values.push(t.to_dtype(p.value().dtype())?);
    }
    if !allow_unused && !tensors.is_empty() {
        let mut extra: Vec<String> = tensors.into_keys().collect();
        extra.sort();
        return Err(Error::invalid(op, format!("{source}: unexpected tensors {extra:?}")));
    }
    for ((_, p), v) in params.iter().zip(values) {
        p.set(v)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Linear;
    use rand::SeedableRng;

    #[test]
    fn round_trip_and_mismatches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let a = Linear::new(3, 2, true, &mut rng).unwrap();
        let b = Linear::new(3, 2, true, &mut rng).unwrap();
        let meta = HashMap::from([("step".into(), "7".into())]);
        save_params(&a, &path, Some(&meta)).unwrap();
        assert_eq!(load_params(&b, &path, false).unwrap()["step"], "7");
        assert_eq!(a.weight.value().to_vec::<f32>().unwrap(), b.weight.value().to_vec::<f32>().unwrap());
        let wrong = Linear::new(4, 2, true, &mut rng).unwrap();
        let e = load_params(&wrong, &path, false).unwrap_err().to_string();
        assert!(e.contains("weight has shape [2, 3] in the file but [2, 4]"), "{e}");
        let no_bias = Linear::new(3, 2, false, &mut rng).unwrap();
        assert!(load_params(&no_bias, &path, false).unwrap_err().to_string().contains("unexpected tensors [\"bias\"]"));
        load_params(&no_bias, &path, true).unwrap();
    }
}
