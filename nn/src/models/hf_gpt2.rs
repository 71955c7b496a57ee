//! Hugging Face GPT-2 checkpoints (`model.safetensors` of `gpt2`, `gpt2-medium`, ...):
//! the name map between Hugging Face's `GPT2Model`/`GPT2LMHeadModel` and [`Gpt2`].
//!
//! Hugging Face stores the four projections of each block (`attn.c_attn`, `attn.c_proj`,
//! `mlp.c_fc`, `mlp.c_proj`) as `Conv1D` weights of shape (in, out), the transpose of
//! PyTorch's `Linear`; it may prefix every name with `transformer.`, carries the causal
//! mask buffers `attn.bias` / `attn.masked_bias`, and `lm_head.weight` is tied to
//! `wte.weight`. Everything else has the same name and layout.

use super::{Gpt2, Gpt2Config};
use crate::{Module, assign_params};
use monarch_tensor::{Error, Result, Tensor, load_safetensors};
use std::collections::HashMap;
use std::path::Path;

const OP: &str = "hf_gpt2";

/// What a Hugging Face tensor name becomes in [`Gpt2`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HfName {
    /// The same tensor under this name; `transpose` for `Conv1D` weights.
    Param {
        /// The [`Gpt2`] parameter name.
        name: String,
        /// Whether the stored matrix is (in, out) and must be transposed.
        transpose: bool,
    },
    /// A buffer or tied copy with no parameter of its own (masks, `lm_head.weight`).
    Skip,
}

/// Maps one Hugging Face GPT-2 tensor name.
pub fn map_name(hf: &str) -> HfName {
    let name = hf.strip_prefix("transformer.").unwrap_or(hf);
    if name == "lm_head.weight" || name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias") {
        return HfName::Skip;
    }
    let conv1d = [".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight"];
    HfName::Param { name: name.to_string(), transpose: conv1d.iter().any(|s| name.ends_with(s)) }
}

/// The configuration of a Hugging Face checkpoint's tensors: vocabulary, positions,
/// layers and width read off the shapes; `n_head` (which the weights do not show) given.
pub fn infer_config(tensors: &HashMap<String, Tensor>, n_head: usize) -> Result<Gpt2Config> {
    let get = |n: &str| {
        tensors
            .get(n)
            .or_else(|| tensors.get(&format!("transformer.{n}")))
            .ok_or_else(|| Error::invalid(OP, format!("not a GPT-2 checkpoint: no {n} (nor transformer.{n})")))
    };
    let (wte, wpe) = (get("wte.weight")?, get("wpe.weight")?);
    let (&[vocab_size, n_embd], &[block_size, _]) = (wte.dims(), wpe.dims()) else {
        return Err(Error::invalid(OP, format!("wte {} and wpe {} must be matrices", wte.shape(), wpe.shape())));
    };
    let n_layer = (0..).take_while(|i| get(&format!("h.{i}.ln_1.weight")).is_ok()).count();
    Ok(Gpt2Config { vocab_size, block_size, n_layer, n_head, n_embd, ..Gpt2Config::small() })
}

/// A dense [`Gpt2`] of configuration `cfg` holding the tensors of a Hugging Face
/// checkpoint. Every parameter must be present with its shape; unknown tensors are an error.
pub fn from_tensors(cfg: &Gpt2Config, tensors: HashMap<String, Tensor>) -> Result<Gpt2> {
    build(cfg, tensors, "the checkpoint")
}

/// [`from_tensors`] naming `source` in errors.
fn build(cfg: &Gpt2Config, tensors: HashMap<String, Tensor>, source: &str) -> Result<Gpt2> {
    let dense =
        Gpt2Config { attn_linear: crate::LinearKind::Dense, mlp_linear: crate::LinearKind::Dense, ..cfg.clone() };
    let model = Gpt2::new(&dense, 0)?;
    let mut mapped: HashMap<String, Tensor> = HashMap::new();
    for (hf, t) in tensors {
        if let HfName::Param { name, transpose } = map_name(&hf) {
            let t = if transpose { t.t()?.contiguous()? } else { t };
            if mapped.insert(name.clone(), t).is_some() {
                return Err(Error::invalid(
                    OP,
                    format!("{source}: {name} appears twice (with and without transformer.)"),
                ));
            }
        }
    }
    assign_params(&model.named_params(), mapped, false, OP, source)?;
    Ok(model)
}

/// Loads a Hugging Face GPT-2 `model.safetensors` with `n_head` heads (12 for `gpt2`,
/// 16 for `gpt2-medium`, 20 for `gpt2-large`, 25 for `gpt2-xl`).
pub fn load(path: impl AsRef<Path>, n_head: usize) -> Result<Gpt2> {
    let path = path.as_ref();
    let tensors: HashMap<String, Tensor> = load_safetensors(path)?.tensors.into_iter().collect();
    let cfg = infer_config(&tensors, n_head).map_err(|e| Error::invalid(OP, format!("{}: {e}", path.display())))?;
    build(&cfg, tensors, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_as_hugging_face_writes_them() {
        let p = |n: &str, t: bool| HfName::Param { name: n.into(), transpose: t };
        assert_eq!(map_name("transformer.h.3.attn.c_attn.weight"), p("h.3.attn.c_attn.weight", true));
        assert_eq!(map_name("h.3.attn.c_attn.bias"), p("h.3.attn.c_attn.bias", false));
        assert_eq!(map_name("h.0.mlp.c_proj.weight"), p("h.0.mlp.c_proj.weight", true));
        assert_eq!(map_name("wte.weight"), p("wte.weight", false));
        assert_eq!(map_name("h.0.ln_1.weight"), p("h.0.ln_1.weight", false));
        assert_eq!(map_name("h.0.attn.bias"), HfName::Skip);
        assert_eq!(map_name("h.0.attn.masked_bias"), HfName::Skip);
        assert_eq!(map_name("lm_head.weight"), HfName::Skip);
    }
}
