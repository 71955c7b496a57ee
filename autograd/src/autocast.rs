//! Mixed precision, per thread, as `torch.autocast` does it: inside [`autocast`], the
//! matrix products of f32 vars (`matmul`, `linear`, the Monarch and block-sparse layers,
//! attention) run in the given low-precision dtype: their operands are cast on the way
//! in and their results back to f32, so norms, softmax, losses, residual sums, and the
//! gradients reaching the f32 parameters (the master weights) all stay f32.
//!
//! An operand already in the autocast dtype enters as it is, and a product whose operands
//! are all in it runs as given, its result staying low: a model may keep activations that
//! only pass between products in the low dtype ([`low_precision`]), as attention's
//! queries, keys and values do, so that a layer's input may arrive in the autocast dtype
//! (as under `torch.autocast`). The gradient of a var kept low is summed in its dtype
//! where several ops read it (as under `torch.autocast`, too); a layer that reads its
//! input in several products widens it first (`PixelflyLinear`), so that the sum stays f32.

use crate::Var;
use monarch_tensor::{DType, Result};
use std::cell::Cell;

thread_local! {
    static DTYPE: Cell<Option<DType>> = const { Cell::new(None) };
    static KEEP_LOW: Cell<bool> = const { Cell::new(false) };
}

/// Restores the previous autocast state when dropped.
#[must_use = "autocast ends as soon as the guard is dropped"]
pub struct AutocastGuard {
    previous: Option<DType>,
}

/// Runs matrix products of f32 vars on this thread in `dtype` (bf16 for tensor cores)
/// until the returned guard is dropped; `None` turns autocast off inside.
pub fn autocast(dtype: Option<DType>) -> AutocastGuard {
    AutocastGuard { previous: DTYPE.with(|c| c.replace(dtype)) }
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        DTYPE.with(|c| c.set(self.previous));
    }
}

/// The dtype the product of `vars` runs in under autocast: the autocast dtype `d` when one
/// is set, every var is f32 or `d`, and at least one is f32; else `None` (the product runs
/// as given: all in `d`, or a dtype autocast leaves alone).
fn cast_dtype(vars: &[&Var]) -> Option<DType> {
    let d = DTYPE.with(|c| c.get())?;
    let all_f32_or_d = vars.iter().all(|v| v.dtype() == DType::F32 || v.dtype() == d);
    (all_f32_or_d && vars.iter().any(|v| v.dtype() == DType::F32)).then_some(d)
}

/// The low-precision original of `v` when `v` is an autocast product's result widened to
/// f32, else `v` itself. A model takes it for activations that only go on to other
/// products (attention's queries, keys and values): reshaping and copying them in bf16
/// moves half the bytes, and the next product takes them without a cast.
pub fn low_precision(v: &Var) -> Var {
    match DTYPE.with(|c| c.get()).and_then(|d| v.widened_from(d)) {
        Some(low) => low.clone(),
        None => v.clone(),
    }
}

/// Runs `product`, a single product (a layer such as a dense or Monarch linear), leaving
/// its result in the autocast dtype rather than widening it to f32, for a result that
/// only other products read; where autocast does not apply, the result is as `product`
/// gives it.
pub fn low_output(product: impl FnOnce() -> Result<Var>) -> Result<Var> {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            KEEP_LOW.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(KEEP_LOW.with(|c| c.replace(true)));
    product()
}

/// Runs `f` on `vars` cast to the autocast dtype and casts its result back to f32, or
/// returns `None` when autocast does not apply to them. A var already in that dtype
/// enters as it is. An input that is an earlier
/// product's result, widened here, is taken as that product's low-precision output
/// itself (e.g. a Monarch MLP's hidden activations into its second layer): the values
/// are the same, without rounding them again, and the gradient reaches it without two
/// casts.
pub(crate) fn cast<const N: usize>(vars: [&Var; N], f: impl FnOnce([Var; N]) -> Result<Var>) -> Option<Result<Var>> {
    let d = cast_dtype(&vars)?;
    let keep_low = KEEP_LOW.with(|c| c.replace(false));
    let run = || {
        let low: Vec<Var> = vars
            .iter()
            .map(|v| match v.widened_from(d) {
                Some(low) => Ok(low.clone()),
                None if v.dtype() == d => Ok((*v).clone()),
                None => v.to_dtype(d),
            })
            .collect::<Result<_>>()?;
        let low: [Var; N] = low.try_into().unwrap_or_else(|_| unreachable!("one cast per var"));
        let out = f(low)?;
        if keep_low {
            return Ok(out);
        }
        // bf16 and f16 values are all exact in f32.
        Ok(out.to_dtype(DType::F32)?.widening(out))
    };
    Some(run())
}

#[cfg(test)]
mod tests {
    use super::*;
    use monarch_tensor::Tensor;

    #[test]
    fn products_run_in_bf16_and_everything_else_stays_f32() {
        let x = Var::leaf(Tensor::randn([4, 24], 0.0, 1.0, 1).unwrap());
        let w = Var::leaf(Tensor::randn([8, 24], 0.0, 1.0, 2).unwrap());
        let exact = x.linear(&w, None).unwrap();
        let (low, grads) = {
            let _g = autocast(Some(DType::BF16));
            let y = x.linear(&w, None).unwrap();
            let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            (y, grads)
        };
        assert_eq!(low.dtype(), DType::F32);
        let (a, b) = (low.value().to_vec::<f32>().unwrap(), exact.value().to_vec::<f32>().unwrap());
        let diff = a.iter().zip(&b).map(|(p, q)| (p - q).abs()).fold(0.0, f32::max);
        // bf16 operands: differences of the order of 2^-8 of |y| ~ 5, but never exact.
        assert!(diff > 0.0 && diff < 0.2, "max difference {diff}");
        assert_eq!(grads.get(&w).unwrap().dtype(), DType::F32);
        assert_eq!(grads.get(&x).unwrap().dims(), &[4, 24]);
        // Off again once the guard is gone; f64 vars are never cast.
        assert_eq!(x.linear(&w, None).unwrap().value().to_vec::<f32>().unwrap(), b);
        let _g = autocast(Some(DType::BF16));
        let x64 = Var::constant(x.value().to_dtype(DType::F64).unwrap());
        let w64 = Var::constant(w.value().to_dtype(DType::F64).unwrap());
        assert_eq!(x64.matmul(&w64.t().unwrap()).unwrap().dtype(), DType::F64);
    }

    #[test]
    fn a_widened_product_output_enters_the_next_product_as_its_bf16_original() {
        let r = |shape: [usize; 2], seed| Var::leaf(Tensor::randn(shape, 0.0, 1.0, seed).unwrap());
        let (x, w1, w2) = (r([5, 16], 3), r([12, 16], 4), r([6, 12], 5));
        let run = |elide: bool| {
            let _g = autocast(Some(DType::BF16));
            let h = x.linear(&w1, None).unwrap();
            assert_eq!(h.dtype(), DType::F32);
            assert!(h.widened_from(DType::BF16).is_some(), "the product's bf16 output is kept");
            // Without the link (a fresh f32 var computed the same way), the second
            // product rounds h to bf16 again; the values must not change either way.
            let h = if elide { h } else { h.mul_scalar(1.0).unwrap() };
            let y = h.linear(&w2, None).unwrap();
            let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let g = |v: &Var| grads.get(v).unwrap().to_vec::<f32>().unwrap();
            (y.value().to_vec::<f32>().unwrap(), [g(&x), g(&w1), g(&w2)])
        };
        let (elided, composed) = (run(true), run(false));
        assert_eq!(elided.0, composed.0, "outputs");
        for (i, (a, b)) in elided.1.iter().zip(&composed.1).enumerate() {
            assert_eq!(a, b, "gradient {i}");
        }
        // Views and new values do not carry the link.
        let _g = autocast(Some(DType::BF16));
        let h = x.linear(&w1, None).unwrap();
        assert!(h.narrow(0, 0, 2).unwrap().widened_from(DType::BF16).is_none());
        assert!(h.detach().widened_from(DType::BF16).is_none());
        assert!(h.widened_from(DType::F16).is_none());
    }

    #[test]
    fn operands_already_low_enter_as_they_are_and_all_low_products_stay_low() {
        let r = |shape: [usize; 2], seed| Var::leaf(Tensor::randn(shape, 0.0, 1.0, seed).unwrap());
        let (x, w1, w2) = (r([5, 16], 6), r([12, 16], 7), r([6, 12], 8));
        let _g = autocast(Some(DType::BF16));
        let h = low_precision(&x.linear(&w1, None).unwrap());
        assert_eq!(h.dtype(), DType::BF16, "the product's bf16 original");
        assert_eq!(low_precision(&x).dtype(), DType::F32, "a var with no bf16 original is itself");
        // The same product with its output left low: the same bf16 values, and only the
        // one product so marked.
        let (kept, after) = (low_output(|| x.linear(&w1, None)).unwrap(), x.linear(&w1, None).unwrap());
        assert_eq!(kept.dtype(), DType::BF16);
        let f32s = |v: &Var| v.value().to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap();
        assert_eq!(f32s(&kept), f32s(&h));
        assert_eq!(after.dtype(), DType::F32);
        drop(_g);
        assert_eq!(low_output(|| x.linear(&w1, None)).unwrap().dtype(), DType::F32, "autocast off");
        let _g = autocast(Some(DType::BF16));
        // Mixed: only the f32 weight is cast; the result is f32 and equals the product of
        // the widened input, whose link autocast takes the same way.
        let mixed = h.linear(&w2, None).unwrap();
        assert_eq!(mixed.dtype(), DType::F32);
        let h32 = h.to_dtype(DType::F32).unwrap().widening(h.clone());
        assert_eq!(
            mixed.value().to_vec::<f32>().unwrap(),
            h32.linear(&w2, None).unwrap().value().to_vec::<f32>().unwrap()
        );
        // All low: runs as given, the result stays bf16, and so does the gradient.
        let hh = h.matmul(&h.t().unwrap()).unwrap();
        assert_eq!(hh.dtype(), DType::BF16);
        let grads = mixed.sum_all().unwrap().add(&hh.to_dtype(DType::F32).unwrap().sum_all().unwrap()).unwrap();
        let grads = grads.backward().unwrap();
        assert_eq!(grads.get(&w1).unwrap().dtype(), DType::F32);
        assert_eq!(grads.get(&x).unwrap().dims(), &[5, 16]);
    }
}
