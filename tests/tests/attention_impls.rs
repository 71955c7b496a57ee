//! Every attention implementation selected by configuration computes the same exact
//! attention when its sparsity covers everything, in value and gradient, through the
//! autograd tape, with causal masking and a length that is not a multiple of the block.

use monarch_autograd::{Gradients, Var};
use monarch_nn::{AttentionFlags, AttentionImpl, SparseLayout};
use monarch_tensor::{AttentionOpts, DType, Tensor};

fn rnd(shape: [usize; 4], seed: u64) -> Tensor {
    Tensor::randn(shape, 0.0, 1.0, seed).unwrap().to_dtype(DType::F64).unwrap()
}

/// The output and the q, k, v gradients of `Σ out · c` for a fixed cotangent `c`.
fn run(imp: &AttentionImpl, opts: &AttentionOpts) -> Vec<Vec<f64>> {
    let shape = [2, 3, 100, 8];
    let [q, k, v] = [1, 2, 3].map(|s| Var::leaf(rnd(shape, s)));
    let out = imp.apply(&q, &k, &v, opts).unwrap();
    let loss = out.mul(&Var::constant(rnd(shape, 4))).unwrap().sum_all().unwrap();
    let mut grads = Gradients::new();
    loss.backward_into(&mut grads).unwrap();
    let mut all = vec![out.value().to_vec_f64().unwrap()];
    all.extend([&q, &k, &v].map(|x| grads.get(x).unwrap().to_vec_f64().unwrap()));
    all
}

#[test]
fn all_implementations_agree_when_nothing_is_sparse() {
    let dense_bs = AttentionImpl::BlockSparse { block: 32, layout: SparseLayout::Local { window: 3 } };
    let dense_sb = AttentionImpl::Scatterbrain { features: 4, block: 16, window: 6, seed: 0 };
    let flags = AttentionFlags { name: "flash".into(), ..Default::default() };
    for opts in [AttentionOpts { causal: true, ..Default::default() }, AttentionOpts::default()] {
        let want = run(&AttentionImpl::Naive, &opts);
        for imp in [AttentionImpl::from_flags(&flags).unwrap(), dense_bs.clone(), dense_sb.clone()] {
            for (got, want) in run(&imp, &opts).iter().zip(&want) {
                for (g, w) in got.iter().zip(want) {
                    assert!((g - w).abs() < 1e-10 * (1.0 + w.abs()), "{imp:?} {opts:?}: {g} vs {w}");
                }
            }
        }
    }
}

#[test]
fn dropout_draws_the_same_mask_in_naive_flash_and_block_sparse() {
    let opts = AttentionOpts { causal: true, dropout: 0.25, seed: 99 };
    let want = run(&AttentionImpl::Naive, &opts);
    let dense_bs = AttentionImpl::BlockSparse { block: 16, layout: SparseLayout::Local { window: 7 } };
    for imp in [AttentionImpl::Flash, dense_bs] {
        for (got, want) in run(&imp, &opts).iter().zip(&want) {
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-10 * (1.0 + w.abs()), "{imp:?}: {g} vs {w}");
            }
        }
    }
}
