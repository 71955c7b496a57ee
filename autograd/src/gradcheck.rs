//! Finite-difference gradient checking in f64.

use crate::{Var, no_grad};
use monarch_tensor::{DType, Error, Result, Tensor};

/// Tolerances and step of [`gradcheck`].
#[derive(Clone, Copy, Debug)]
pub struct GradcheckOpts {
    /// Central-difference step.
    pub eps: f64,
    /// Absolute tolerance.
    pub atol: f64,
    /// Relative tolerance (to the numerical gradient).
    pub rtol: f64,
    /// Seed of the random output cotangent.
    pub seed: u64,
}

impl Default for GradcheckOpts {
    fn default() -> Self {
        GradcheckOpts { eps: 1e-6, atol: 1e-6, rtol: 1e-5, seed: 0 }
    }
}

/// `Σ f(xs) · c` for a fixed cotangent `c`, the scalar whose gradient is checked.
fn project(f: &impl Fn(&[Var]) -> Result<Var>, vars: &[Var], cot: &mut Option<Tensor>, seed: u64) -> Result<Var> {
    let out = f(vars)?;
    if out.dtype() != DType::F64 {
        return Err(Error::invalid("gradcheck", format!("the function returned {}, expected f64", out.dtype())));
    }
    let c = match cot {
        Some(c) => c.clone(),
        None => cot.insert(Tensor::randn(out.shape(), 0.0, 1.0, seed)?.to_dtype(DType::F64)?).clone(),
    };
    out.mul(&Var::constant(c))?.sum_all()
}

/// Compares the gradients backward computes for `f` at `inputs` with central finite
/// differences, for every element of every input. Inputs are converted to f64; `f` may
/// take views (transpose, narrow, broadcast) of them to exercise strided paths. Returns
/// the largest absolute error, or an error describing the first mismatches.
pub fn gradcheck(f: impl Fn(&[Var]) -> Result<Var>, inputs: &[Tensor], opts: GradcheckOpts) -> Result<f64> {
    let xs: Vec<Tensor> = inputs.iter().map(|t| t.to_dtype(DType::F64)?.contiguous()).collect::<Result<_>>()?;
    let leaves: Vec<Var> = xs.iter().map(|t| Var::leaf(t.clone())).collect();
    let mut cot = None;
    let grads = project(&f, &leaves, &mut cot, opts.seed)?.backward()?;
    let _guard = no_grad();
    let eval = |i: usize, x: Tensor, cot: &mut Option<Tensor>| -> Result<f64> {
        let mut vars: Vec<Var> = xs.iter().map(|t| Var::constant(t.clone())).collect();
        vars[i] = Var::constant(x);
        project(&f, &vars, cot, opts.seed)?.value().to_scalar_f64()
    };
    let (mut worst, mut failures) = (0.0f64, Vec::new());
    for (i, x) in xs.iter().enumerate() {
        let analytic = match grads.get(&leaves[i]) {
            Some(g) => g.to_vec::<f64>()?,
            None => vec![0.0; x.elem_count()],
        };
        let base = x.to_vec::<f64>()?;
        for j in 0..base.len() {
            let mut v = base.clone();
            v[j] = base[j] + opts.eps;
            let plus = eval(i, Tensor::from_vec(v.clone(), x.shape())?, &mut cot)?;
            v[j] = base[j] - opts.eps;
            let minus = eval(i, Tensor::from_vec(v, x.shape())?, &mut cot)?;
            let numeric = (plus - minus) / (2.0 * opts.eps);
            let err = (analytic[j] - numeric).abs();
            worst = worst.max(err);
            // Written so that a NaN error counts as a failure.
            let within = err <= opts.atol + opts.rtol * numeric.abs();
            if !within && failures.len() < 5 {
                failures.push(format!("input {i} element {j}: analytic {} vs numeric {numeric}", analytic[j]));
            }
        }
    }
    if failures.is_empty() { Ok(worst) } else { Err(Error::invalid("gradcheck", failures.join("; "))) }
}
