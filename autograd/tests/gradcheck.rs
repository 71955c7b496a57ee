//! A finite-difference gradient check for every differentiable op, on small random
//! shapes including broadcasting and non-contiguous (transposed, narrowed) views.

use monarch_autograd::{GradcheckOpts, Var, gradcheck};
use monarch_tensor::{CrossEntropy, DType, Result, Tensor, UnaryOp};

fn rnd(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, 0.0, 1.0, seed).unwrap().to_dtype(DType::F64).unwrap()
}

/// Strictly positive values away from zero (for log, sqrt, recip, powf).
fn pos(shape: &[usize], seed: u64) -> Tensor {
    rnd(shape, seed).abs().unwrap().add_scalar(0.5).unwrap()
}

fn check(f: impl Fn(&[Var]) -> Result<Var>, inputs: &[Tensor]) {
    if let Err(e) = gradcheck(f, inputs, GradcheckOpts::default()) {
        panic!("{e}");
    }
}

#[test]
fn unary_ops() {
    let ops = [
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::GeluTanh,
        UnaryOp::GeluErf,
        UnaryOp::Silu,
        UnaryOp::Sqr,
        UnaryOp::Affine { mul: -1.5, add: 0.25 },
    ];
    for op in ops {
        // Through a transposed view to exercise strided kernels.
        check(|v| v[0].t()?.unary(op), &[rnd(&[3, 4], 1)]);
    }
    for op in [UnaryOp::Log, UnaryOp::Sqrt, UnaryOp::Rsqrt, UnaryOp::Recip, UnaryOp::Powf(1.7)] {
        check(|v| v[0].unary(op), &[pos(&[2, 5], 2)]);
    }
    // Piecewise ops away from their kinks: |x| > 0.1 for relu/abs; clamp bounds away from samples.
    let away = Tensor::from_vec(vec![-1.3f64, -0.4, 0.3, 0.9, 2.2, -2.5], [2, 3]).unwrap();
    for op in [UnaryOp::Relu, UnaryOp::Abs, UnaryOp::Clamp { min: -1.0, max: 1.0 }] {
        check(|v| v[0].unary(op), std::slice::from_ref(&away));
    }
}

#[test]
fn binary_ops_with_broadcasting() {
    let a = rnd(&[2, 3, 4], 3);
    let row = rnd(&[4], 4);
    let col = rnd(&[3, 1], 5);
    check(|v| v[0].add(&v[1]), &[a.clone(), row.clone()]);
    check(|v| v[0].sub(&v[1]), &[col.clone(), a.clone()]);
    check(|v| v[0].mul(&v[1]), &[a.clone(), col.clone()]);
    check(|v| v[0].div(&v[1]), &[a.clone(), pos(&[3, 1], 6)]);
    check(|v| v[1].div(&v[0]), &[pos(&[4], 7), a.clone()]);
    // Max/min on inputs with no ties.
    check(|v| v[0].maximum(&v[1]), &[a.clone(), row.clone()]);
    check(|v| v[0].minimum(&v[1]), &[row.clone(), a.clone()]);
    // Same var on both sides and a transposed operand.
    check(|v| v[0].mul(&v[0].transpose(0, 1)?.transpose(0, 1)?), &[rnd(&[3, 3], 8)]);
    let mask = Tensor::from_vec(vec![1u8, 0, 1], [3, 1]).unwrap();
    check(|v| Var::where_cond(&mask, &v[0], &v[1]), &[a.clone(), row.clone()]);
    check(|v| v[0].masked_fill(&mask, -3.0), &[rnd(&[3, 4], 9)]);
}

#[test]
fn reductions() {
    let x = rnd(&[3, 4, 5], 10);
    for dims in [vec![0usize], vec![1], vec![2], vec![0, 2], vec![0, 1, 2]] {
        check(|v| v[0].sum(dims.clone()), std::slice::from_ref(&x));
        check(|v| v[0].mean_keepdim(dims.clone()), std::slice::from_ref(&x));
        check(|v| v[0].max(dims.clone()), std::slice::from_ref(&x));
        check(|v| v[0].min(dims.clone()), std::slice::from_ref(&x));
        check(|v| v[0].logsumexp(dims.clone(), false), std::slice::from_ref(&x));
    }
    check(|v| v[0].permute(&[2, 0, 1])?.sum(1), std::slice::from_ref(&x));
    check(|v| v[0].mean_all(), std::slice::from_ref(&x));
}

#[test]
fn matmul_and_linear() {
    // Batched with broadcast batch dims and a transposed operand.
    check(|v| v[0].matmul(&v[1]), &[rnd(&[2, 1, 3, 4], 11), rnd(&[3, 4, 2], 12)]);
    check(|v| v[0].matmul(&v[1].t()?), &[rnd(&[2, 3, 4], 13), rnd(&[5, 4], 14)]);
    check(|v| v[0].t()?.matmul(&v[1]), &[rnd(&[4, 3], 15), rnd(&[4, 2], 16)]);
    check(|v| v[0].linear(&v[1], Some(&v[2])), &[rnd(&[2, 3, 4], 17), rnd(&[5, 4], 18), rnd(&[5], 19)]);
    check(|v| v[0].narrow(1, 1, 3)?.linear(&v[1], None), &[rnd(&[2, 5, 4], 20), rnd(&[3, 4], 21)]);
}

#[test]
fn views_and_joins() {
    let x = rnd(&[2, 3, 4], 22);
    check(|v| v[0].reshape([6, 4])?.t()?.contiguous(), std::slice::from_ref(&x));
    check(|v| v[0].permute(&[1, 2, 0])?.mul(&v[0].permute(&[1, 2, 0])?), std::slice::from_ref(&x));
    check(|v| v[0].narrow(2, 1, 2)?.sqr(), std::slice::from_ref(&x));
    check(|v| v[0].unsqueeze(1)?.squeeze(1)?.flatten_from(1), std::slice::from_ref(&x));
    check(|v| v[0].broadcast_as([3, 2, 4])?.sqr(), &[rnd(&[2, 1], 23)]);
    check(|v| Var::cat(&[&v[0], &v[1].t()?], 1), &[rnd(&[2, 3], 24), rnd(&[4, 2], 25)]);
    check(|v| Var::stack(&[&v[0], &v[1]], 1)?.sqr(), &[rnd(&[2, 3], 26), rnd(&[2, 3], 27)]);
    check(
        |v| {
            let p = v[0].split(&[1, 3], 1)?;
            p[0].mul(&p[1].narrow(1, 0, 1)?)
        },
        &[rnd(&[2, 4], 28)],
    );
    check(|v| v[0].chunk(2, 0)?[1].sqr(), &[rnd(&[4, 2], 29)]);
}

/// Narrows of one earlier node (not a leaf), whose gradients backward gathers as slices:
/// tiling it (one join), with gaps, overlapping, along two dims, beside a use of the
/// whole, and a narrow of a narrow.
#[test]
fn slices_of_one_node() {
    /// A narrow: (dim, start, len).
    type Narrow = (usize, usize, usize);
    // Sum of `parts` (narrows of h = 1.5·x) each weighted by a different function.
    fn f(v: &[Var], parts: &[Narrow], whole: bool) -> Result<Var> {
        let h = v[0].mul_scalar(1.5)?;
        let mut total = if whole { h.tanh()?.sum_all()? } else { h.narrow(0, 0, 1)?.mul_scalar(0.0)?.sum_all()? };
        for (i, &(dim, start, len)) in parts.iter().enumerate() {
            let p = h.narrow(dim, start, len)?;
            let term = if i % 2 == 0 { p.sqr()? } else { p.mul_scalar(i as f64 + 0.5)?.tanh()? };
            total = total.add(&term.sum_all()?)?;
        }
        Ok(total)
    }
    let x = rnd(&[6, 5], 30);
    let cases: [(&[Narrow], bool); 6] = [
        (&[(0, 0, 2), (0, 2, 2), (0, 4, 2)], false),
        (&[(0, 4, 2), (0, 0, 1)], false),
        (&[(0, 0, 3), (0, 1, 4), (0, 1, 4)], false),
        (&[(0, 1, 2), (1, 2, 3), (0, 3, 3)], false),
        (&[(1, 0, 2), (1, 2, 3)], true),
        (&[(0, 5, 1)], true),
    ];
    for (parts, whole) in cases {
        check(|v| f(v, parts, whole), std::slice::from_ref(&x));
    }
    check(|v| v[0].sqr()?.narrow(0, 1, 4)?.narrow(0, 1, 2)?.tanh(), std::slice::from_ref(&x));
}

#[test]
fn indexing() {
    let ids = Tensor::from_vec(vec![2i64, 0, 2, 3], 4).unwrap();
    check(|v| v[0].index_select(&ids, 0), &[rnd(&[4, 3], 30)]);
    check(|v| v[0].t()?.index_select(&ids, 1), &[rnd(&[4, 2], 31)]);
    let idx = Tensor::from_vec(vec![1i64, 0, 2, 2, 1, 1], [3, 2]).unwrap();
    check(|v| v[0].gather(&idx, 1), &[rnd(&[3, 4], 32)]);
}

#[test]
fn softmax_loss_norm_dropout() {
    let x = rnd(&[3, 5], 33);
    check(|v| v[0].softmax(1), std::slice::from_ref(&x));
    check(|v| v[0].softmax(0), std::slice::from_ref(&x));
    check(|v| v[0].t()?.log_softmax(-1), std::slice::from_ref(&x));
    let targets = Tensor::from_vec(vec![4i64, -1, 0], 3).unwrap();
    let o = CrossEntropy { ignore_index: Some(-1), label_smoothing: 0.1 };
    check(|v| v[0].cross_entropy(&targets, o)?.mul_scalar(3.0), std::slice::from_ref(&x));
    let plain = Tensor::from_vec(vec![4i64, 1, 0], 3).unwrap();
    check(|v| v[0].cross_entropy(&plain, CrossEntropy::default()), std::slice::from_ref(&x));
    let (w, b) = (rnd(&[5], 34), rnd(&[5], 35));
    check(|v| v[0].layer_norm(Some(&v[1]), Some(&v[2]), 1e-5), &[rnd(&[2, 3, 5], 36), w.clone(), b.clone()]);
    check(|v| v[0].t()?.layer_norm(None, None, 1e-5), &[rnd(&[4, 3], 37)]);
    check(|v| v[0].layer_norm(Some(&v[1]), None, 1e-5), &[rnd(&[3, 5], 38), w]);
    check(|v| v[0].dropout(0.3, 42), &[rnd(&[6, 7], 39)]);
}

#[test]
fn linear_cross_entropy_over_chunks() {
    // Seven rows in chunks of 3 (a ragged last chunk), the second chunk all ignored.
    let targets = Tensor::from_vec(vec![4i64, 0, 2, -1, -1, -1, 3], 7).unwrap();
    let o = CrossEntropy { ignore_index: Some(-1), label_smoothing: 0.2 };
    for chunk in [1, 3, 7, 10] {
        check(
            |v| v[0].t()?.linear_cross_entropy(&v[1], &targets, o, Some(chunk))?.mul_scalar(2.0),
            &[rnd(&[4, 7], 40), rnd(&[5, 4], 41)],
        );
    }
}
