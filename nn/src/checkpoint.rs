//! Saving and loading a module's parameters by name as safetensors.

use crate::Module;
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

/// Loads parameters of `m` by name from a safetensors file. Every parameter must be
/// present with its shape (converted to the parameter's dtype); names the module does
/// not have are an error unless `allow_unused`. Returns the file's metadata.
pub fn load_params(m: &dyn Module, path: impl AsRef<Path>, allow_unused: bool) -> Result<HashMap<String, String>> {
    let path = path.as_ref();
    let file = load_safetensors(path)?;
    let mut tensors: HashMap<String, Tensor> = file.tensors.into_iter().collect();
    let params = m.named_params();
    let missing: Vec<&str> = params.iter().filter(|(n, _)| !tensors.contains_key(n)).map(|(n, _)| n.as_str()).collect();
    if !missing.is_empty() {
        return Err(Error::invalid("load_params", format!("{}: missing parameters {missing:?}", path.display())));
    }
    for (name, p) in &params {
        let t = tensors.remove(name).expect("checked above");
        let current = p.value();
        if t.shape() != current.shape() {
            return Err(Error::invalid(
                "load_params",
                format!(
                    "{}: {name} has shape {} in the file but {} in the model",
                    path.display(),
                    t.shape(),
                    current.shape()
                ),
            ));
        }
        p.set(t.to_dtype(current.dtype())?)?;
    }
    if !allow_unused && !tensors.is_empty() {
        let mut extra: Vec<String> = tensors.into_keys().collect();
        extra.sort();
        return Err(Error::invalid("load_params", format!("{}: unexpected tensors {extra:?}", path.display())));
    }
    Ok(file.metadata)
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
