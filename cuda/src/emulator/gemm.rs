//! cuBLASLt's GEMM on the emulated device: [`GemmArgs`]' definition computed on the host
//! over the raw addresses the launcher checked, in f32 arithmetic (bf16 operands
//! widened, a bf16 result rounded to nearest even), with the same epilogues.

use crate::gemm::{Epilogue, GemmArgs};

/// Reads element `i` of an f32 or bf16 array at `base`.
///
/// # Safety
/// `base` must hold at least `i + 1` elements of that type.
unsafe fn load(base: u64, i: usize, bf16: bool) -> f32 {
    // SAFETY: the caller guarantees the element exists.
    unsafe {
        if bf16 { f32::from_bits((*(base as *const u16).add(i) as u32) << 16) } else { *(base as *const f32).add(i) }
    }
}

/// Writes `v` to element `i` (bf16 rounded to nearest even).
///
/// # Safety
/// As [`load`], and nothing else may access the element meanwhile.
unsafe fn store(base: u64, i: usize, bf16: bool, v: f32) {
    // SAFETY: as above.
    unsafe {
        if bf16 {
            *(base as *mut u16).add(i) = half::bf16::from_f32(v).to_bits();
        } else {
            *(base as *mut f32).add(i) = v;
        }
    }
}

/// cuBLASLt's GELU epilogue (the tanh approximation).
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + (0.797_884_6 * (x + 0.044_715 * x * x * x)).tanh())
}

/// `C = alpha·op(A)·op(B) + beta·C`, then the epilogue, for each batch.
///
/// # Safety
/// The addresses must hold every element `g` lays out (as `gemm::matmul` checks), `bias`
/// `g.n` elements when the epilogue adds one, and C must not overlap A, B or the bias.
pub(crate) unsafe fn matmul(g: &GemmArgs, [a, b, bias, c]: [u64; 4]) {
    use crate::DType::BF16;
    let (bf16, bf16_c) = (g.dtypes().0 == BF16, g.dtypes().1 == BF16);
    let (m, n, k) = (g.m, g.n, g.k);
    let (mut lhs, mut rhs, mut acc) = (vec![0f32; m * k], vec![0f32; k * n], vec![0f32; n]);
    for i in 0..g.batch {
        // SAFETY (all loads and stores): the caller guarantees the laid-out elements.
        for r in 0..m {
            for j in 0..k {
                let at = if g.trans_a { j * g.ld_a + r } else { r * g.ld_a + j };
                lhs[r * k + j] = unsafe { load(a, i * g.stride_a + at, bf16) };
            }
        }
        for r in 0..k {
            for j in 0..n {
                let at = if g.trans_b { j * g.ld_b + r } else { r * g.ld_b + j };
                rhs[r * n + j] = unsafe { load(b, i * g.stride_b + at, bf16) };
            }
        }
        for r in 0..m {
            acc.fill(0.0);
            for j in 0..k {
                let x = lhs[r * k + j];
                for (s, &y) in acc.iter_mut().zip(&rhs[j * n..(j + 1) * n]) {
                    *s = x.mul_add(y, *s);
                }
            }
            for (col, &s) in acc.iter().enumerate() {
                let at = i * g.stride_c + r * g.ld_c + col;
                let mut v = g.alpha * s;
                if g.beta != 0.0 {
                    v += g.beta * unsafe { load(c, at, bf16_c) };
                }
                if matches!(g.epilogue, Epilogue::Bias | Epilogue::ReluBias | Epilogue::GeluBias) {
                    v += unsafe { load(bias, col, bf16_c) };
                }
                v = match g.epilogue {
                    Epilogue::Relu | Epilogue::ReluBias => v.max(0.0),
                    Epilogue::Gelu | Epilogue::GeluBias => gelu(v),
                    Epilogue::None | Epilogue::Bias => v,
                };
                unsafe { store(c, at, bf16_c, v) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gemm::Precision;

    #[test]
    fn matches_the_definition_with_transposes_batches_and_epilogues() {
        // Two batches of op(A) 2x3 (stored transposed, 3x2) times B 3x2 plus C and a bias.
        let mut g = GemmArgs::new(2, 2, 3, Precision::F32);
        g.trans_a = true;
        g.batch = 2;
        g.stride_a = 6;
        g.stride_b = 0;
        g.stride_c = 4;
        g = g.packed();
        g.alpha = 2.0;
        g.beta = 1.0;
        g.epilogue = Epilogue::ReluBias;
        let a: Vec<f32> = (0..12).map(|v| v as f32 - 5.0).collect();
        let b: Vec<f32> = vec![1.0, -1.0, 0.5, 2.0, -2.0, 0.0];
        let bias = [0.25f32, -0.5];
        let mut c: Vec<f32> = vec![1.0, 2.0, 3.0, 4.0, -1.0, -2.0, -3.0, -4.0];
        let mut want = c.clone();
        for i in 0..2 {
            for r in 0..2 {
                for col in 0..2 {
                    let dot: f32 = (0..3).map(|j| a[i * 6 + j * 2 + r] * b[j * 2 + col]).sum();
                    let at = i * 4 + r * 2 + col;
                    want[at] = (2.0 * dot + c[at] + bias[col]).max(0.0);
                }
            }
        }
        // SAFETY: the vectors hold every element g lays out.
        unsafe {
            matmul(&g, [a.as_ptr() as u64, b.as_ptr() as u64, bias.as_ptr() as u64, c.as_mut_ptr() as u64]);
        }
        assert_eq!(c, want);
    }

    #[test]
    fn bf16_results_round_to_nearest_even() {
        // 1 + s with s above half a bf16 ulp at 1 (2^-8) rounds up; exactly half, to even.
        let bits = |v: f32| half::bf16::from_f32(v).to_bits();
        let ones = [bits(1.0), bits(1.0)];
        for (s, want) in [(0.005_859_375f32, 1.0 + 1.0 / 128.0), (1.0 / 256.0, 1.0)] {
            let a = [bits(1.0), bits(s)];
            let mut c = [0u16];
            let g = GemmArgs::new(1, 1, 2, Precision::Bf16);
            // SAFETY: a is 1x2, b 2x1, c 1x1.
            unsafe { matmul(&g, [a.as_ptr() as u64, ones.as_ptr() as u64, 0, c.as_mut_ptr() as u64]) };
            assert_eq!(half::bf16::from_bits(c[0]).to_f32(), want, "1 + {s}");
        }
        assert!((gelu(1.0) - 0.841_192).abs() < 1e-5);
    }

    #[test]
    fn bf16_products_into_f32_accumulate_unrounded() {
        // 1 + 2^-10 is no bf16 value: with an f32 C it stays, with beta 1 it adds to C.
        let bits = |v: f32| half::bf16::from_f32(v).to_bits();
        let (a, b) = ([bits(1.0 / 32.0)], [bits(1.0 / 32.0)]);
        let mut c = [1.0f32];
        let mut g = GemmArgs::new(1, 1, 1, Precision::Bf16F32);
        g.beta = 1.0;
        for want in [1.0 + 1.0 / 1024.0, 1.0 + 2.0 / 1024.0] {
            // SAFETY: a, b and c are 1x1.
            unsafe { matmul(&g, [a.as_ptr() as u64, b.as_ptr() as u64, 0, c.as_mut_ptr() as u64]) };
            assert_eq!(c[0], want);
        }
    }
}
