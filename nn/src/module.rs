//! The module trait: anything that owns named parameters.

use monarch_autograd::Param;
use monarch_tensor::{DType, Device, Result};

/// Parameters with their hierarchical names (`h.0.mlp.c_fc.weight`), in a stable order.
pub type NamedParams = Vec<(String, Param)>;

/// A model component that owns parameters. Names are relative to the module and
/// joined with `.` by containers, following PyTorch's `named_parameters`.
pub trait Module {
    /// Every parameter with its name, in a stable order.
    fn named_params(&self) -> NamedParams;

    /// The parameters of `child` under `prefix.` (a helper for containers).
    fn prefixed(prefix: &str, child: &dyn Module) -> NamedParams
    where
        Self: Sized,
    {
        prefixed(prefix, child.named_params())
    }
}

/// `params` renamed under `prefix.` (for containers holding trait objects).
pub fn prefixed(prefix: &str, params: NamedParams) -> NamedParams {
    params.into_iter().map(|(n, p)| (format!("{prefix}.{n}"), p)).collect()
}

/// Total number of parameter elements of a module.
pub fn param_count(m: &dyn Module) -> usize {
    m.named_params().iter().map(|(_, p)| p.value().elem_count()).sum()
}

/// Moves every parameter of `m` to `device`, in place (shapes and dtypes unchanged).
pub fn to_device(m: &(impl Module + ?Sized), device: Device) -> Result<()> {
    params_to_device(&m.named_params(), device)
}

/// Moves each of `params` to `device`, in place.
pub fn params_to_device(params: &NamedParams, device: Device) -> Result<()> {
    for (_, p) in params {
        p.set(p.value().to_device(device)?)?;
    }
    Ok(())
}

/// Casts each of `params` to `dtype`, in place (shapes and devices unchanged): a model
/// for inference in bf16, say, reads half the bytes per step. Training keeps f32 weights
/// and casts per product instead (`autocast`).
pub fn params_to_dtype(params: &NamedParams, dtype: DType) -> Result<()> {
    for (_, p) in params {
        p.update(|v| v.to_dtype(dtype).map(|c| *v = c))?;
    }
    Ok(())
}
