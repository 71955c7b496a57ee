//! GPU kernels against independent CPU computations, on device 0; without a GPU (CI)
//! on the emulated device, which runs the same launchers and kernels on the CPU. On a GPU
//! machine: `cargo test -p monarch-cuda --release`.

use half::bf16;
use monarch_cuda::gemm::{self, GemmArgs, Precision};
use monarch_cuda::ops::{copy, dropout, flash_attention as fa, monarch, softmax, unary};
use monarch_cuda::{CudaDevice, DType};
use std::sync::Arc;

fn device() -> Option<Arc<CudaDevice>> {
    let gpu = CudaDevice::new(0);
    match gpu.or_else(|_| CudaDevice::emulated()) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("SKIPPED: {e}");
            None
        }
    }
}

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    (0..n).map(|i| dropout::counter_uniform(seed, i as u64) * 2.0 - 1.0).collect()
}

fn close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * (1.0 + w.abs()), "element {i}: got {g}, want {w}");
    }
}

#[test]
fn unary_gelu_and_its_backward_match_the_formulas() {
    let Some(dev) = device() else { return };
    let x = values(1000, 1);
    let xb = dev.htod(&x).unwrap();
    let mut y = dev.alloc(DType::F32, x.len()).unwrap();
    unary::unary(unary::UnaryOp::GeluErf, xb.view(), y.view_mut()).unwrap();
    let want: Vec<f32> =
        x.iter().map(|&v| (0.5 * v as f64 * (1.0 + libm_erf(v as f64 / 2f64.sqrt()))) as f32).collect();
    close(&y.to_host::<f32>().unwrap(), &want, 1e-5);
    let ones = dev.htod(&vec![1.0f32; x.len()]).unwrap();
    let mut dx = dev.alloc(DType::F32, x.len()).unwrap();
    unary::unary_backward(unary::UnaryOp::Sqr, xb.view(), ones.view(), dx.view_mut()).unwrap();
    close(&dx.to_host::<f32>().unwrap(), &x.iter().map(|v| 2.0 * v).collect::<Vec<_>>(), 1e-6);
}

/// erf by its Taylor series (|x| ≤ 1 here), independent of any library.
fn libm_erf(x: f64) -> f64 {
    let (mut term, mut sum) = (x, x);
    for n in 1..40 {
        term *= -x * x / n as f64;
        sum += term / (2 * n + 1) as f64;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

/// A (4, 5, 6) array read as its (2, 0, 1) permutation with a repeated (stride 0) leading
/// dimension, through `copy_strided`, in each integer dtype: host loops give the order.
#[test]
fn strided_copies_of_integers_read_the_view_they_are_given() {
    let Some(dev) = device() else { return };
    let (shape, strides) = ([2usize, 6, 4, 5], [0usize, 1, 30, 6]);
    let mut order = Vec::new();
    for _ in 0..shape[0] {
        for k in 0..shape[1] {
            for i in 0..shape[2] {
                for j in 0..shape[3] {
                    order.push(i * 30 + j * 6 + k);
                }
            }
        }
    }
    fn check<T: monarch_cuda::Element + Copy + PartialEq + std::fmt::Debug>(
        dev: &Arc<CudaDevice>,
        src: &[T],
        order: &[usize],
        (shape, strides): (&[usize], &[usize]),
        dtype: DType,
    ) {
        let s = dev.htod(src).unwrap();
        let mut d = dev.alloc(dtype, order.len()).unwrap();
        copy::copy_strided(s.view(), shape, strides, d.view_mut()).unwrap();
        let want: Vec<T> = order.iter().map(|&o| src[o]).collect();
        assert_eq!(d.to_host::<T>().unwrap(), want, "{dtype:?}");
    }
    let dims = (&shape[..], &strides[..]);
    let wide: Vec<i64> = (0..120).map(|i| (1i64 << 40) * i - 7).collect();
    check(&dev, &wide, &order, dims, DType::I64);
    check(&dev, &(0..120).map(|i| i * 1_000_003 - 60_000_000).collect::<Vec<i32>>(), &order, dims, DType::I32);
    check(&dev, &(0..120).map(|i| (i * 37 % 251) as u8).collect::<Vec<u8>>(), &order, dims, DType::U8);
}

#[test]
fn softmax_rows_sum_to_one_in_bf16() {
    let Some(dev) = device() else { return };
    let (rows, cols) = (37, 1000);
    let x: Vec<bf16> = values(rows * cols, 2).iter().map(|&v| bf16::from_f32(4.0 * v)).collect();
    let xb = dev.htod(&x).unwrap();
    let mut y = dev.alloc(DType::BF16, rows * cols).unwrap();
    softmax::softmax(xb.view(), rows, cols, false, y.view_mut()).unwrap();
    let y = y.to_host::<bf16>().unwrap();
    for r in 0..rows {
        let s: f32 = y[r * cols..(r + 1) * cols].iter().map(|v| v.to_f32()).sum();
        assert!((s - 1.0).abs() < 2e-2, "row {r} sums to {s}");
    }
}

#[test]
fn dropout_draws_the_cpu_mask() {
    let Some(dev) = device() else { return };
    let n = 10_000;
    let x = dev.htod(&vec![1.0f32; n]).unwrap();
    let mut y = dev.alloc(DType::F32, n).unwrap();
    dropout::dropout(x.view(), 0.3, 42, 0, y.view_mut()).unwrap();
    let want: Vec<f32> =
        (0..n).map(|i| if dropout::counter_uniform(42, i as u64) < 0.3 { 0.0 } else { 1.0 / 0.7 }).collect();
    assert_eq!(y.to_host::<f32>().unwrap(), want);
}

#[test]
fn monarch_forward_matches_the_closed_form_on_a_rectangular_padded_shape_with_bias() {
    let Some(dev) = device() else { return };
    // n_in = 10 padded to k·p = 12, m_out = 14 of l·s = 15; l·r = k·q = 6.
    let d = monarch::MonarchDims { batch: 5, n_in: 10, m_out: 14, k: 3, q: 2, p: 4, l: 3, s: 5, r: 2 };
    let (x, w1, w2) = (values(5 * 10, 3), values(3 * 2 * 4, 4), values(3 * 5 * 2, 5));
    let bias = values(d.m_out, 9);
    let (xb, w1b, w2b, bb) =
        (dev.htod(&x).unwrap(), dev.htod(&w1).unwrap(), dev.htod(&w2).unwrap(), dev.htod(&bias).unwrap());
    let mut out1 = dev.alloc(DType::F32, d.batch * d.mid()).unwrap();
    let mut out = dev.alloc(DType::F32, d.batch * d.m_out).unwrap();
    let (xv, av, bv) = (xb.view(), w1b.view(), w2b.view());
    monarch::monarch_forward(d, xv, av, bv, Some(bb.view()), out1.view_mut(), out.view_mut()).unwrap();
    // M[ss·l+ll, kk·p+pp] = Σ_{qq: (kk·q+qq) mod l = ll} w2[ll, ss, (kk·q+qq) div l] · w1[kk, qq, pp]
    let mut want = vec![0f32; d.batch * d.m_out];
    for b in 0..d.batch {
        for (ss, ll) in (0..d.s).flat_map(|ss| (0..d.l).map(move |ll| (ss, ll))) {
            let row = ss * d.l + ll;
            if row >= d.m_out {
                continue;
            }
            let mut acc = 0f32;
            for kk in 0..d.k {
                for qq in 0..d.q {
                    let j = kk * d.q + qq;
                    if j % d.l != ll {
                        continue;
                    }
                    for pp in 0..d.p {
                        let col = kk * d.p + pp;
                        if col < d.n_in {
                            acc += w2[(ll * d.s + ss) * d.r + j / d.l]
                                * w1[(kk * d.q + qq) * d.p + pp]
                                * x[b * d.n_in + col];
                        }
                    }
                }
            }
            want[b * d.m_out + row] = acc + bias[row];
        }
    }
    close(&out.to_host::<f32>().unwrap(), &want, 1e-5);
}

/// cuBLASLt with batches interleaved along the rows (as the Monarch products run under
/// MONARCH_CUBLAS=1), a transposed A, rows wider than the matrices, accumulation into C,
/// and operands starting 2 bytes past an aligned address: against loops over the same
/// indices.
#[test]
fn strided_batched_matmul_with_interleaved_unaligned_operands_matches_loops() {
    let Some(dev) = device() else { return };
    // 3 groups; A (k=40 × m=24 stored, ld 130), B (k × n=16, ld 50), C (m × n, ld 49).
    let (m, n, k, groups) = (24, 16, 40, 3);
    let g = GemmArgs {
        trans_a: true,
        batch: groups,
        stride_a: m,
        stride_b: n,
        stride_c: n,
        ld_a: 130,
        ld_b: 50,
        ld_c: 49,
        beta: 1.0,
        ..GemmArgs::new(m, n, k, Precision::F32)
    };
    let (la, lb, lc) = (1 + k * 130, 1 + k * 50, 1 + m * 49);
    let (a, b, c0) = (values(la, 11), values(lb, 12), values(lc, 13));
    let (ab, bb) = (dev.htod(&a).unwrap(), dev.htod(&b).unwrap());
    let mut cb = dev.htod(&c0).unwrap();
    let (av, bv) = (ab.slice(1, la - 1).unwrap(), bb.slice(1, lb - 1).unwrap());
    gemm::matmul(&g, av, bv, None, cb.slice_mut(1, lc - 1).unwrap()).unwrap();
    let mut want = c0.clone();
    for gi in 0..groups {
        for (mi, ni) in (0..m).flat_map(|mi| (0..n).map(move |ni| (mi, ni))) {
            let dot: f32 = (0..k).map(|ki| a[1 + gi * m + ki * 130 + mi] * b[1 + gi * n + ki * 50 + ni]).sum();
            want[1 + gi * n + mi * 49 + ni] += dot;
        }
    }
    close(&cb.to_host::<f32>().unwrap(), &want, 1e-5);
}

/// bf16 A (stored transposed) and B summed into an f32 C with beta 1, twice: the
/// head's weight-gradient sum. The f32 sums of exact bf16 products match host loops to
/// f32 rounding, and no epilogue is taken with this precision.
#[test]
fn bf16_products_accumulate_into_f32_with_beta_one() {
    let Some(dev) = device() else { return };
    let (m, n, k) = (48, 40, 72);
    let g = GemmArgs { trans_a: true, beta: 1.0, ..GemmArgs::new(m, n, k, Precision::Bf16F32) }.packed();
    let (a, b) = (values(k * m, 14), values(k * n, 15));
    let (a, b): (Vec<bf16>, Vec<bf16>) =
        (a.iter().map(|&v| bf16::from_f32(v)).collect(), b.iter().map(|&v| bf16::from_f32(v)).collect());
    let c0 = values(m * n, 16);
    let (ab, bb) = (dev.htod(&a).unwrap(), dev.htod(&b).unwrap());
    let mut cb = dev.htod(&c0).unwrap();
    for _ in 0..2 {
        gemm::matmul(&g, ab.view(), bb.view(), None, cb.view_mut()).unwrap();
    }
    let mut want = c0.clone();
    for (mi, ni) in (0..m).flat_map(|mi| (0..n).map(move |ni| (mi, ni))) {
        let dot: f64 = (0..k).map(|ki| a[ki * m + mi].to_f64() * b[ki * n + ni].to_f64()).sum();
        want[mi * n + ni] += 2.0 * dot as f32;
    }
    close(&cb.to_host::<f32>().unwrap(), &want, 1e-5);
    let gelu = GemmArgs { epilogue: gemm::Epilogue::Gelu, ..g };
    let err = gemm::matmul(&gelu, ab.view(), bb.view(), None, cb.view_mut()).unwrap_err().to_string();
    assert!(err.contains("no epilogue"), "{err}");
}

#[test]
fn flash_attention_matches_naive_attention_with_causal_mask_and_ragged_length() {
    let Some(dev) = device() else { return };
    let d = fa::AttentionDims {
        batch_heads: 2,
        seq_q: 100,
        seq_k: 100,
        kv_stride: 100 * 32,
        head_dim: 32,
        scale: 1.0 / 32f32.sqrt(),
        causal: true,
        dropout: 0.0,
        seed: 0,
    };
    let n = d.batch_heads * d.seq_q * d.head_dim;
    let (q, k, v) = (values(n, 6), values(n, 7), values(n, 8));
    let (qb, kb, vb) = (dev.htod(&q).unwrap(), dev.htod(&k).unwrap(), dev.htod(&v).unwrap());
    let mut o = dev.alloc(DType::F32, n).unwrap();
    let mut lse = dev.alloc(DType::F32, d.batch_heads * d.seq_q).unwrap();
    fa::flash_attention_forward(d, qb.view(), kb.view(), vb.view(), None, o.view_mut(), lse.view_mut()).unwrap();
    let (s, hd) = (d.seq_q, d.head_dim);
    let mut want = vec![0f32; n];
    for h in 0..d.batch_heads {
        for i in 0..s {
            let scores: Vec<f64> = (0..=i)
                .map(|j| (0..hd).map(|t| (q[(h * s + i) * hd + t] * k[(h * s + j) * hd + t]) as f64).sum::<f64>())
                .map(|x| x / (hd as f64).sqrt())
                .collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = scores.iter().map(|x| (x - m).exp()).sum();
            for t in 0..hd {
                let acc: f64 = (0..=i).map(|j| (scores[j] - m).exp() / z * v[(h * s + j) * hd + t] as f64).sum();
                want[(h * s + i) * hd + t] = acc as f32;
            }
        }
    }
    close(&o.to_host::<f32>().unwrap(), &want, 1e-4);
}

/// Host-to-device copies staged through pinned memory: more copies than staging slots,
/// of sizes that grow past the slots made first (so slots are waited for and remade) and
/// one over the staged limit, each source overwritten right after its copy returns and
/// each copy followed by a kernel reading it, arrive intact and in stream order.
#[test]
fn staged_uploads_arrive_intact_when_their_sources_are_reused() {
    let Some(dev) = device() else { return };
    let mut source = Vec::new();
    let mut outs = Vec::new();
    for (i, n) in [10, 70_000, 3, 300_000, 1 << 20, 5, 2_000_000, 17, 4_500_000, 9, 100, 250_000].iter().enumerate() {
        source.clear();
        source.extend(values(*n, i as u64));
        let buf = dev.htod(&source).unwrap();
        // The host copy is scribbled over at once: a copy still reading it would see this.
        source.iter_mut().for_each(|v| *v = f32::NAN);
        let mut y = dev.alloc(DType::F32, *n).unwrap();
        unary::unary(unary::UnaryOp::Sqr, buf.view(), y.view_mut()).unwrap();
        outs.push((i, *n, y));
    }
    for (i, n, y) in outs {
        let want: Vec<f32> = values(n, i as u64).iter().map(|v| v * v).collect();
        close(&y.to_host::<f32>().unwrap(), &want, 0.0);
    }
}
