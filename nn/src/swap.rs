//! Swapping a model's linear layers in place: reverse sparsification (every structured
//! layer replaced by its exact dense equivalent) and dense-to-structured projection.

use crate::structured::{LinearKind, LinearLayer};
use monarch_tensor::Result;

/// A model whose linear layers can be replaced by others of the same shape.
pub trait SwapLinears {
    /// Every replaceable linear layer with its full parameter prefix (`h.0.mlp.c_fc`).
    fn linears_mut(&mut self) -> Vec<(String, &mut Box<dyn LinearLayer>)>;
}

/// Replaces every structured layer by the dense layer computing the same function
/// ("reverse sparsification"); returns how many were replaced. Dense layers are kept.
pub fn densify(model: &mut dyn SwapLinears) -> Result<usize> {
    let mut n = 0;
    for (_, layer) in model.linears_mut() {
        if layer.kind() != LinearKind::Dense {
            *layer = Box::new(layer.to_dense()?);
            n += 1;
        }
    }
    Ok(n)
}

/// Replaces each layer whose prefix `select` accepts by its projection onto `kind`
/// (Frobenius-optimal where the structure allows, see [`LinearKind::project`]), going
/// through the dense equivalent of whatever the layer is now; returns the names replaced.
pub fn project(model: &mut dyn SwapLinears, select: &dyn Fn(&str) -> bool, kind: &LinearKind) -> Result<Vec<String>> {
    let mut done = Vec::new();
    for (name, layer) in model.linears_mut() {
        if select(&name) {
            *layer = kind
                .project(&layer.to_dense()?)
                .map_err(|e| monarch_tensor::Error::invalid("project", format!("layer {name}: {e}")))?;
            done.push(name);
        }
    }
    Ok(done)
}

/// `(prefix.name, layer)` for each of a block's named layers.
pub fn prefixed_linears<'a, const N: usize>(
    prefix: &str,
    layers: [(&'static str, &'a mut Box<dyn LinearLayer>); N],
) -> impl Iterator<Item = (String, &'a mut Box<dyn LinearLayer>)> {
    let prefix = prefix.to_string();
    layers.into_iter().map(move |(n, l)| (format!("{prefix}.{n}"), l))
}
