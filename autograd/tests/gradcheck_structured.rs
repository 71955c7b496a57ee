//! Finite-difference gradient checks of the structured-matrix ops (Monarch,
//! block-sparse, butterfly) on small shapes, including padding, truncation, bias,
//! batch dimensions and strided inputs.

use monarch_autograd::{GradcheckOpts, Var, gradcheck};
use monarch_tensor::{BlockMask, BlockSparsePlan, DType, FlatButterfly, MONARCH_FUSED_ACTS, Result, Tensor, UnaryOp};
use std::sync::Arc;

fn rnd(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, 0.0, 1.0, seed).unwrap().to_dtype(DType::F64).unwrap()
}

fn check(f: impl Fn(&[Var]) -> Result<Var>, inputs: &[Tensor]) {
    if let Err(e) = gradcheck(f, inputs, GradcheckOpts::default()) {
        panic!("{e}");
    }
}

#[test]
fn monarch_square_rectangular_padded_and_truncated() {
    // Square product over a batch of (2, 3) rows.
    check(|v| v[0].monarch_mul(&v[1], &v[2]), &[rnd(&[2, 3, 8], 1), rnd(&[2, 3, 4], 2), rnd(&[3, 2, 2], 3)]);
    // Rectangular factors with l ≠ k, input padded (7 of 9) and output truncated (5 of 6), with bias.
    check(
        |v| v[0].monarch_linear(&v[1], &v[2], Some(&v[3]), 5),
        &[rnd(&[4, 7], 4), rnd(&[3, 2, 3], 5), rnd(&[2, 3, 3], 6), rnd(&[5], 7)],
    );
    // q not a multiple of l: the kernels take the explicit permutation pass.
    check(|v| v[0].monarch_mul(&v[1], &v[2]), &[rnd(&[3, 4], 18), rnd(&[2, 3, 2], 19), rnd(&[2, 2, 3], 20)]);
    // A transposed (strided) input.
    check(|v| v[0].t()?.monarch_mul(&v[1], &v[2]), &[rnd(&[6, 3], 8), rnd(&[2, 2, 3], 9), rnd(&[2, 2, 2], 10)]);
}

/// The Monarch layer with each MLP activation fused into the permutation passes (on the
/// CPU as on a GPU), with and without the bias, padded and truncated, q % l != 0; and its
/// value and gradients against the two ops applied one after the other.
#[test]
fn monarch_with_its_activation() {
    let inputs = [rnd(&[4, 7], 21), rnd(&[3, 2, 3], 22), rnd(&[2, 3, 3], 23), rnd(&[5], 24)];
    for act in MONARCH_FUSED_ACTS {
        check(|v| v[0].monarch_linear_act(&v[1], &v[2], Some(&v[3]), 5, act), &inputs);
        check(|v| v[0].monarch_linear_act(&v[1], &v[2], None, 6, act), &inputs[..3]);
        check(
            |v| v[0].monarch_linear_act(&v[1], &v[2], Some(&v[3]), 4, act),
            &[rnd(&[2, 3, 4], 25), rnd(&[2, 3, 2], 26), rnd(&[2, 2, 3], 27), rnd(&[4], 28)],
        );
        assert!(Tensor::monarch_linear_act(&inputs[0], &inputs[1], &inputs[2], None, 6, act).unwrap().is_some());
        let grads = |fused: bool| {
            let v: Vec<Var> = inputs.iter().map(|t| Var::leaf(t.clone())).collect();
            let y = if fused {
                v[0].monarch_linear_act(&v[1], &v[2], Some(&v[3]), 5, act)
            } else {
                v[0].monarch_linear(&v[1], &v[2], Some(&v[3]), 5).and_then(|y| y.unary(act))
            }
            .unwrap();
            let mut g = monarch_autograd::Gradients::new();
            y.backward_with(rnd(&[4, 5], 29), &mut g).unwrap();
            let mut all = vec![y.value().to_vec_f64().unwrap()];
            all.extend(v.iter().map(|x| g.get(x).unwrap().to_vec_f64().unwrap()));
            all
        };
        for (i, (f, c)) in grads(true).iter().zip(grads(false)).enumerate() {
            for (a, b) in f.iter().zip(&c) {
                assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()), "{act:?} output {i}: fused {a} vs composed {b}");
            }
        }
    }
    // Other activations are composed, not fused.
    assert!(Tensor::monarch_linear_act(&inputs[0], &inputs[1], &inputs[2], None, 6, UnaryOp::Exp).unwrap().is_none());
}

#[test]
fn block_sparse_on_an_irregular_and_a_flat_butterfly_mask() {
    let irregular = BlockMask::new(3, 3, 2, vec![true, false, true, false, false, false, true, true, true]).unwrap();
    let fly = FlatButterfly { butterfly_size: 4, n_factors: 1, block: 2, global_size: 2, shuffle: false };
    for mask in [irregular, BlockMask::flat_butterfly(8, 4, fly).unwrap()] {
        let plan = Arc::new(BlockSparsePlan::new(mask));
        let (inp, out) = (plan.in_features(), plan.out_features());
        let inputs = [rnd(&[2, 2, inp], 11), rnd(&[plan.values_len()], 12), rnd(&[out], 13)];
        check(|v| v[0].block_sparse_linear(&v[1], &plan, Some(&v[2])), &inputs);
        check(|v| v[0].block_sparse_linear(&v[1], &plan, None), &inputs[..2]);
    }
}

#[test]
fn butterfly_with_padding_and_stacks() {
    // 6 inputs padded to 8, two stacks truncated to 11 outputs.
    check(|v| v[0].butterfly_mul(&v[1], 11), &[rnd(&[3, 6], 14), rnd(&[2, 3, 4, 2, 2], 15)]);
    check(|v| v[0].butterfly_mul(&v[1], 3), &[rnd(&[2, 4], 16), rnd(&[1, 2, 2, 2, 2], 17)]);
}
