//! Finite-difference gradient checks of the four attention implementations, with causal
//! masking, dropout, lengths that are not multiples of the tile, rows that see no key,
//! and strided (transposed) inputs.

use monarch_autograd::{GradcheckOpts, Var, gradcheck};
use monarch_tensor::ops::FLASH_TILE;
use monarch_tensor::{AttentionOpts, BlockMask, DType, Result, Scatterbrain, Tensor};

fn rnd(shape: [usize; 4], seed: u64) -> Tensor {
    Tensor::randn(shape, 0.0, 1.0, seed).unwrap().to_dtype(DType::F64).unwrap()
}

/// q (1, 2, nq, d), k and v (1, 2, nk, d).
fn qkv(nq: usize, nk: usize, d: usize) -> [Tensor; 3] {
    [rnd([1, 2, nq, d], 1), rnd([1, 2, nk, d], 2), rnd([1, 2, nk, d], 3)]
}

fn check(f: impl Fn(&[Var]) -> Result<Var>, inputs: &[Tensor]) {
    if let Err(e) = gradcheck(f, inputs, GradcheckOpts::default()) {
        panic!("{e}");
    }
}

const CAUSAL: AttentionOpts = AttentionOpts { causal: true, dropout: 0.0, seed: 0 };
const DROPOUT: AttentionOpts = AttentionOpts { causal: true, dropout: 0.3, seed: 17 };

#[test]
fn naive_attention() {
    for opts in [AttentionOpts::default(), CAUSAL, DROPOUT] {
        check(|x| x[0].naive_attention(&x[1], &x[2], &opts), &qkv(6, 6, 3));
    }
    // More queries than keys: the first rows see nothing under causal masking.
    check(|x| x[0].naive_attention(&x[1], &x[2], &CAUSAL), &qkv(7, 4, 3));
}

#[test]
fn flash_attention() {
    // Two tiles, the second partial.
    let n = FLASH_TILE + 5;
    for opts in [CAUSAL, DROPOUT] {
        check(|x| x[0].flash_attention(&x[1], &x[2], &opts), &qkv(n, n, 2));
    }
    check(|x| x[0].flash_attention(&x[1], &x[2], &AttentionOpts::default()), &qkv(5, 9, 3));
    check(|x| x[0].flash_attention(&x[1], &x[2], &CAUSAL), &qkv(7, 4, 3));
    // Strided inputs: (batch, seq, heads, d) data viewed as (batch, heads, seq, d).
    let raw = [rnd([1, 6, 2, 3], 4), rnd([1, 6, 2, 3], 5), rnd([1, 6, 2, 3], 6)];
    check(|x| x[0].transpose(1, 2)?.flash_attention(&x[1].transpose(1, 2)?, &x[2].transpose(1, 2)?, &CAUSAL), &raw);
}

#[test]
fn block_sparse_attention() {
    // 10 tokens in blocks of 4 (the last partial); block row 1 is empty.
    let set = [true, false, true, false, false, false, true, true, true];
    let mask = BlockMask::new(3, 3, 4, set.to_vec()).unwrap();
    for opts in [AttentionOpts::default(), CAUSAL, DROPOUT] {
        check(|x| x[0].block_sparse_attention(&x[1], &x[2], &mask, &opts), &qkv(10, 10, 3));
    }
    let local = BlockMask::local(3, 3, 4, 1).unwrap();
    check(|x| x[0].block_sparse_attention(&x[1], &x[2], &local, &CAUSAL), &qkv(10, 10, 3));
}

#[test]
fn scatterbrain_attention() {
    let cfg = Scatterbrain { features: 5, block: 3, window: 0, seed: 2 };
    for opts in [AttentionOpts::default(), CAUSAL] {
        check(|x| x[0].scatterbrain_attention(&x[1], &x[2], &cfg, &opts), &qkv(10, 10, 3));
    }
    let wide = Scatterbrain { window: 1, ..cfg };
    check(|x| x[0].scatterbrain_attention(&x[1], &x[2], &wide, &AttentionOpts::default()), &qkv(7, 11, 3));
}
