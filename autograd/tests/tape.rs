//! Tape behaviour (consumption, accumulation, frozen inputs, no_grad, merging
//! branches) and closed-form gradients.

use monarch_autograd::{Gradients, Param, Var, no_grad};
use monarch_tensor::{DType, Tensor};

fn t(v: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape).unwrap()
}

#[test]
fn least_squares_gradient_matches_closed_form() {
    // L = Σ (X w - y)²  =>  dL/dw = 2 Xᵀ (X w - y)
    let x = t(&[1., 2., 3., 4., 5., 6.], &[3, 2]);
    let y = t(&[1., 0., -1.], &[3, 1]);
    let w = Param::new(t(&[0.5, -0.25], &[2, 1]));
    let r = Var::constant(x.clone()).matmul(&w.var()).unwrap().sub(&Var::constant(y.clone())).unwrap();
    let grads = r.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let resid = x.matmul(&w.value()).unwrap().sub(&y).unwrap();
    let want = x.t().unwrap().matmul(&resid).unwrap().mul_scalar(2.0).unwrap();
    assert_eq!(grads.get(&w).unwrap().to_vec::<f64>().unwrap(), want.to_vec::<f64>().unwrap());
}

#[test]
fn a_tape_is_consumed_once() {
    let w = Param::new(t(&[1., 2.], &[2]));
    let loss = w.var().sqr().unwrap().sum_all().unwrap();
    loss.backward().unwrap();
    let err = loss.backward().unwrap_err().to_string();
    assert!(err.contains("already consumed"), "{err}");
    let err = loss.mul_scalar(2.0).unwrap_err().to_string();
    assert!(err.contains("already consumed"), "{err}");
    // Detached values are still usable.
    assert_eq!(loss.detach().mul_scalar(2.0).unwrap().value().to_scalar_f64().unwrap(), 10.0);
}

#[test]
fn micro_batches_accumulate_and_params_used_twice_sum() {
    let w = Param::new(t(&[3.], &[1]));
    let mut grads = Gradients::new();
    for _ in 0..2 {
        // w·w + w: d/dw = 2w + 1 = 7 per pass.
        let v = w.var();
        v.mul(&v).unwrap().add(&w.var()).unwrap().sum_all().unwrap().backward_into(&mut grads).unwrap();
    }
    assert_eq!(grads.get(&w).unwrap().to_vec::<f64>().unwrap(), vec![14.0]);
    grads.scale(0.5).unwrap();
    assert_eq!(grads.get(&w).unwrap().to_vec::<f64>().unwrap(), vec![7.0]);
    assert_eq!(grads.clip_global_norm(3.5).unwrap(), 7.0);
    assert_eq!(grads.get(&w).unwrap().to_vec::<f64>().unwrap(), vec![3.5]);
}

#[test]
fn frozen_params_and_no_grad_record_nothing() {
    let w = Param::new(t(&[1., 2.], &[2]));
    let frozen = Param::new(t(&[5., 6.], &[2]));
    frozen.set_requires_grad(false);
    let grads = w.var().mul(&frozen.var()).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&frozen).is_none());
    assert_eq!(grads.get(&w).unwrap().to_vec::<f64>().unwrap(), vec![5., 6.]);
    let only_frozen = frozen.var().sqr().unwrap().sum_all().unwrap();
    assert!(!only_frozen.requires_grad());
    assert!(only_frozen.backward().is_err());
    {
        let _g = no_grad();
        let y = w.var().sqr().unwrap();
        assert!(!y.requires_grad());
    }
    assert!(w.var().sqr().unwrap().requires_grad());
}

#[test]
fn branches_from_one_leaf_merge_into_one_graph() {
    let x = Var::leaf(t(&[1., 2., 3.], &[3]));
    let a = x.exp().unwrap(); // one tape
    let b = x.sqr().unwrap(); // another
    let c = x.mul_scalar(3.0).unwrap().sum_all().unwrap(); // a third, joined later
    let loss = a.add(&b).unwrap().sum_all().unwrap().add(&c).unwrap();
    let g = loss.backward().unwrap();
    let want: Vec<f64> = [1f64, 2., 3.].iter().map(|v| v.exp() + 2.0 * v + 3.0).collect();
    let got = g.get(&x).unwrap().to_vec::<f64>().unwrap();
    for (a, b) in got.iter().zip(&want) {
        assert!((a - b).abs() < 1e-12);
    }
}

#[test]
fn dtype_casts_carry_gradients_back() {
    let x = Var::leaf(t(&[1.5, -2.0], &[2]));
    let g = x.to_dtype(DType::F32).unwrap().sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let gx = g.get(&x).unwrap();
    assert_eq!(gx.dtype(), DType::F64);
    assert_eq!(gx.to_vec::<f64>().unwrap(), vec![3.0, -4.0]);
}

#[test]
fn shape_errors_are_errors() {
    let a = Var::leaf(t(&[1., 2., 3.], &[3]));
    let b = Var::leaf(t(&[1., 2.], &[2]));
    assert_eq!(a.add(&b).unwrap_err().to_string(), "add: shapes [3] and [2] cannot be broadcast together");
    let w = Var::leaf(t(&[1., 2., 3., 4.], &[2, 2]));
    let e = a.reshape([1, 3]).unwrap().linear(&w, None).unwrap_err();
    assert_eq!(e.to_string(), "linear: shape mismatch between [1, 3] and [2, 2]");
    assert!(a.backward().is_err(), "non-scalar output needs backward_with");
    assert!(Param::new(t(&[1.], &[1])).set(t(&[1., 2.], &[2])).is_err());
}
