//! Every attention implementation against a from-the-definition reference written with
//! plain loops in f64, and the tiled ones against the naive one (forward and backward).

use super::*;
use crate::ops::counter_uniform;
use tiling::TilePlan;

fn randn(shape: [usize; 4], seed: u64) -> Tensor {
    Tensor::randn(shape, 0.0, 1.0, seed).unwrap().to_dtype(DType::F64).unwrap()
}

fn qkv(b: usize, h: usize, nq: usize, nk: usize, d: usize) -> [Tensor; 3] {
    [randn([b, h, nq, d], 1), randn([b, h, nk, d], 2), randn([b, h, nk, d], 3)]
}

/// `out_i = Σ_j w_ij z_ij v_j / Σ_j w_ij` with `w_ij = weight(bh, i, j, q_i·k_j/√d)`
/// (`None`: invisible) and `z` the dropout factors; rows with no visible key give 0.
fn reference(
    [q, k, v]: &[Tensor; 3],
    weight: impl Fn(usize, usize, usize, f64) -> Option<f64>,
    drop: Option<(f64, u64)>,
) -> Vec<f64> {
    let [b, h, nq, d] = q.dims().try_into().unwrap();
    let nk = k.dims()[2];
    let (q, k, v) = (q.to_vec_f64().unwrap(), k.to_vec_f64().unwrap(), v.to_vec_f64().unwrap());
    let mut out = vec![0.0; b * h * nq * d];
    for bh in 0..b * h {
        for i in 0..nq {
            let (mut num, mut den) = (vec![0.0; d], 0.0);
            for j in 0..nk {
                let s: f64 = (0..d).map(|c| q[(bh * nq + i) * d + c] * k[(bh * nk + j) * d + c]).sum();
                let Some(w) = weight(bh, i, j, s / (d as f64).sqrt()) else { continue };
                den += w;
                let z = match drop {
                    Some((p, seed)) if counter_uniform(seed, ((bh * nq + i) * nk + j) as u64) < p as f32 => 0.0,
                    Some((p, _)) => 1.0 / (1.0 - p),
                    None => 1.0,
                };
                (0..d).for_each(|c| num[c] += w * z * v[(bh * nk + j) * d + c]);
            }
            if den > 0.0 {
                (0..d).for_each(|c| out[(bh * nq + i) * d + c] = num[c] / den);
            }
        }
    }
    out
}

/// Exact attention weights, causal (bottom-right aligned) when asked.
fn exact(nq: usize, nk: usize, causal: bool) -> impl Fn(usize, usize, usize, f64) -> Option<f64> {
    move |_, i, j, s| (!causal || j as isize <= i as isize + nk as isize - nq as isize).then(|| s.exp())
}

fn close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        // Equal infinities (the log-sum-exp of a row that sees nothing) are close too.
        assert!(x == y || (x - y).abs() <= tol * (1.0 + y.abs()), "{what}[{i}]: {x} vs {y}");
    }
}

fn vec(t: &Tensor) -> Vec<f64> {
    t.to_vec_f64().unwrap()
}

#[test]
fn naive_and_flash_match_the_definition() {
    // 70 and 131 are not multiples of the tile; n_q > n_k with causal leaves rows that see nothing.
    for (nq, nk, causal, drop) in [
        (70, 70, false, None),
        (70, 70, true, None),
        (131, 70, true, None),
        (5, 131, true, Some((0.3, 9))),
        (70, 70, true, Some((0.2, 4))),
    ] {
        let x = qkv(2, 3, nq, nk, 8);
        let opts = AttentionOpts { causal, dropout: drop.map_or(0.0, |d| d.0), seed: drop.map_or(0, |d| d.1) };
        let want = reference(&x, exact(nq, nk, causal), drop);
        let naive = x[0].naive_attention(&x[1], &x[2], &opts).unwrap();
        let flash = x[0].flash_attention(&x[1], &x[2], &opts).unwrap();
        let what = format!("{nq}x{nk} causal {causal} dropout {drop:?}");
        close(&vec(&naive.out), &want, 1e-12, &format!("naive {what}"));
        close(&vec(&flash.out), &want, 1e-12, &format!("flash {what}"));
        // log-sum-exp from the naive scores.
        let lse = vec(&flash.lse);
        let [q, k] = [&x[0], &x[1]].map(|t| t.to_vec_f64().unwrap());
        for (row, &l) in lse.iter().enumerate() {
            let (bh, i) = (row / nq, row % nq);
            let limit =
                if causal { (i as isize + nk as isize - nq as isize + 1).clamp(0, nk as isize) as usize } else { nk };
            let sum: f64 = (0..limit)
                .map(|j| {
                    ((0..8).map(|c| q[(bh * nq + i) * 8 + c] * k[(bh * nk + j) * 8 + c]).sum::<f64>() / 8f64.sqrt())
                        .exp()
                })
                .sum();
            assert!(
                (l - sum.ln()).abs() < 1e-12 || (limit == 0 && l == f64::NEG_INFINITY),
                "lse {row}: {l} vs {}",
                sum.ln()
            );
        }
    }
}

/// Backward of naive and of a tiled forward, for the same output gradient.
fn grads(
    x: &[Tensor; 3],
    opts: &AttentionOpts,
    tiled: impl Fn(&AttentionOut, &Tensor) -> AttentionGrads,
) -> [Vec<f64>; 6] {
    let dout = randn(x[0].dims().try_into().unwrap(), 7);
    let naive = x[0].naive_attention(&x[1], &x[2], opts).unwrap();
    let a = Tensor::naive_attention_backward(&x[0], &x[1], &x[2], &naive.probs, &dout, opts).unwrap();
    let b = tiled(&x[0].flash_attention(&x[1], &x[2], opts).unwrap(), &dout);
    [vec(&a.dq), vec(&a.dk), vec(&a.dv), vec(&b.dq), vec(&b.dk), vec(&b.dv)]
}

#[test]
fn flash_backward_matches_naive_backward() {
    for (nq, nk, causal, dropout) in
        [(70, 70, true, 0.0), (131, 70, true, 0.0), (67, 130, false, 0.25), (70, 70, true, 0.1)]
    {
        let x = qkv(1, 2, nq, nk, 16);
        let opts = AttentionOpts { causal, dropout, seed: 11 };
        let [dq, dk, dv, fq, fk, fv] = grads(&x, &opts, |fwd, dout| {
            Tensor::flash_attention_backward(&x[0], &x[1], &x[2], fwd, dout, &opts).unwrap()
        });
        let what = format!("{nq}x{nk} causal {causal} dropout {dropout}");
        close(&fq, &dq, 1e-11, &format!("dq {what}"));
        close(&fk, &dk, 1e-11, &format!("dk {what}"));
        close(&fv, &dv, 1e-11, &format!("dv {what}"));
        if nq > nk && causal {
            // Rows that see no key: output 0 and no gradient.
            assert!(fq[..(nq - nk) * 16].iter().all(|&g| g == 0.0));
        }
    }
}

/// The backward in one pass per head and in two passes (chosen by the thread count: two
/// heads on one thread take one pass, on four threads two) both match naive attention.
#[test]
fn one_pass_and_two_pass_backwards_match_naive() {
    assert!(tiling::one_pass_pays(2, 1) && tiling::one_pass_pays(4, 2) && tiling::one_pass_pays(3, 2));
    assert!(!tiling::one_pass_pays(2, 4) && !tiling::one_pass_pays(1, 2));
    for (nq, nk, causal, dropout) in [(131, 70, true, 0.0), (67, 260, false, 0.25), (200, 200, true, 0.1)] {
        let x = qkv(1, 2, nq, nk, 16);
        let opts = AttentionOpts { causal, dropout, seed: 5 };
        let on = |threads| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                grads(&x, &opts, |fwd, dout| {
                    Tensor::flash_attention_backward(&x[0], &x[1], &x[2], fwd, dout, &opts).unwrap()
                })
            })
        };
        let [dq, dk, dv, q1, k1, v1] = on(1);
        let [_, _, _, q4, k4, v4] = on(4);
        for (name, naive, one, two) in [("dq", dq, q1, q4), ("dk", dk, k1, k4), ("dv", dv, v1, v4)] {
            let what = format!("{name} {nq}x{nk} causal {causal} dropout {dropout}");
            close(&one, &naive, 1e-11, &format!("one pass: {what}"));
            close(&two, &naive, 1e-11, &format!("two passes: {what}"));
        }
    }
}

#[test]
fn block_sparse_matches_the_definition_and_equals_flash_when_dense() {
    let (nq, nk, block) = (70, 70, 16);
    let x = qkv(2, 2, nq, nk, 8);
    let (rows, cols) = (nq.div_ceil(block), nk.div_ceil(block));
    // A user layout with an empty block row (rows 16..32 see nothing) and off-diagonal blocks.
    let set: Vec<bool> = (0..rows * cols).map(|k| k / cols != 1 && (k % 3 == 0 || k / cols == k % cols)).collect();
    let mask = BlockMask::new(rows, cols, block, set).unwrap();
    for causal in [false, true] {
        let opts = AttentionOpts { causal, dropout: 0.2, seed: 5 };
        let base = exact(nq, nk, causal);
        let want = reference(
            &x,
            |bh, i, j, s| if mask.get(i / block, j / block) { base(bh, i, j, s) } else { None },
            Some((0.2, 5)),
        );
        let got = x[0].block_sparse_attention(&x[1], &x[2], &mask, &opts).unwrap();
        close(&vec(&got.out), &want, 1e-12, &format!("block sparse causal {causal}"));
        assert!(vec(&got.out)[16 * 8..32 * 8].iter().all(|&o| o == 0.0));
        let dense = BlockMask::new(rows, cols, block, vec![true; rows * cols]).unwrap();
        let dout = randn([2, 2, nq, 8], 8);
        let bs = x[0].block_sparse_attention(&x[1], &x[2], &dense, &opts).unwrap();
        let fl = x[0].flash_attention(&x[1], &x[2], &opts).unwrap();
        close(&vec(&bs.out), &vec(&fl.out), 1e-12, "dense block sparse");
        let g1 = Tensor::block_sparse_attention_backward(&x[0], &x[1], &x[2], &dense, &bs, &dout, &opts).unwrap();
        let g2 = Tensor::flash_attention_backward(&x[0], &x[1], &x[2], &fl, &dout, &opts).unwrap();
        for (a, b) in [(&g1.dq, &g2.dq), (&g1.dk, &g2.dk), (&g1.dv, &g2.dv)] {
            close(&vec(a), &vec(b), 1e-11, "dense block sparse grads");
        }
    }
}

#[test]
fn scatterbrain_is_exact_when_the_band_covers_everything_and_matches_its_definition() {
    let (n, block, d) = (40, 8, 4);
    let x = qkv(1, 2, n, n, d).map(|t| t.affine(0.5, 0.0).unwrap());
    for causal in [false, true] {
        let opts = AttentionOpts { causal, ..Default::default() };
        let full = Scatterbrain { features: 4, block, window: 5, seed: 1 };
        let got = x[0].scatterbrain_attention(&x[1], &x[2], &full, &opts).unwrap();
        close(&vec(&got.out), &reference(&x, exact(n, n, causal), None), 1e-12, "scatterbrain, full band");
        // A narrow band: exact inside, φ(q)·φ(k) with the same projection outside.
        let cfg = Scatterbrain { features: 6, block, window: 1, seed: 3 };
        let w: Vec<f64> = cfg.projection::<f64>(d).unwrap();
        let feats = |t: &Tensor| -> Vec<Vec<f64>> {
            let v = t.to_vec_f64().unwrap();
            v.chunks(d)
                .map(|x| {
                    let xs: Vec<f64> = x.iter().map(|a| a / (d as f64).powf(0.25)).collect();
                    let h = xs.iter().map(|a| a * a).sum::<f64>() / 2.0;
                    w.chunks(d)
                        .map(|wr| (wr.iter().zip(&xs).map(|(a, b)| a * b).sum::<f64>() - h).exp() / 6f64.sqrt())
                        .collect()
                })
                .collect()
        };
        let (fq, fk) = (feats(&x[0]), feats(&x[1]));
        let weight = |bh: usize, i: usize, j: usize, s: f64| {
            if causal && j > i {
                None
            } else if (i / block).abs_diff(j / block) <= 1 {
                Some(s.exp())
            } else {
                Some(fq[bh * n + i].iter().zip(&fk[bh * n + j]).map(|(a, b)| a * b).sum())
            }
        };
        let got = x[0].scatterbrain_attention(&x[1], &x[2], &cfg, &opts).unwrap();
        close(&vec(&got.out), &reference(&x, weight, None), 1e-12, "scatterbrain, narrow band");
    }
}

#[test]
fn strided_views_half_precision_and_f32_agree() {
    // (batch, seq, heads, d) data viewed as (batch, heads, seq, d): every input strided.
    let raw = |seed| Tensor::randn([2, 37, 3, 8], 0.0, 1.0, seed).unwrap().to_dtype(DType::F64).unwrap();
    let x = [raw(1), raw(2), raw(3)].map(|t| t.transpose(1, 2).unwrap());
    let xc = x.clone().map(|t| t.contiguous().unwrap());
    let opts = AttentionOpts { causal: true, ..Default::default() };
    let want = vec(&xc[0].naive_attention(&xc[1], &xc[2], &opts).unwrap().out);
    close(&vec(&x[0].flash_attention(&x[1], &x[2], &opts).unwrap().out), &want, 1e-12, "strided flash");
    close(&vec(&x[0].naive_attention(&x[1], &x[2], &opts).unwrap().out), &want, 1e-12, "strided naive");
    let x32 = xc.clone().map(|t| t.to_dtype(DType::F32).unwrap());
    let f32_out = x32[0].flash_attention(&x32[1], &x32[2], &opts).unwrap();
    assert_eq!(f32_out.out.dtype(), DType::F32);
    close(&vec(&f32_out.out), &want, 1e-5, "f32 flash");
    let xb = xc.map(|t| t.to_dtype(DType::BF16).unwrap());
    let bf = xb[0].flash_attention(&xb[1], &xb[2], &opts).unwrap();
    assert_eq!((bf.out.dtype(), bf.lse.dtype()), (DType::BF16, DType::F32));
    close(&vec(&bf.out), &want, 5e-2, "bf16 flash");
}

#[test]
fn bad_inputs_are_errors() {
    let [q, k, v] = qkv(1, 2, 8, 8, 4);
    let opts = AttentionOpts::default();
    let flat = q.reshape([2, 8, 4]).unwrap();
    assert!(flat.flash_attention(&k, &v, &opts).is_err());
    assert!(q.naive_attention(&k.narrow(2, 0, 4).unwrap(), &v, &opts).is_err());
    assert!(q.flash_attention(&k, &v.to_dtype(DType::F32).unwrap(), &opts).is_err());
    assert!(q.flash_attention(&k, &v, &AttentionOpts { dropout: 1.0, ..opts }).is_err());
    let ints = Tensor::zeros([1, 2, 8, 4], DType::I64);
    assert!(ints.flash_attention(&ints, &ints, &opts).is_err());
    let mask = BlockMask::local(2, 2, 8, 0).unwrap();
    let err = q.block_sparse_attention(&k, &v, &mask, &opts).unwrap_err().to_string();
    assert!(err.contains("does not cover 8 queries"), "{err}");
    let fwd = q.flash_attention(&k, &v, &opts).unwrap();
    assert!(Tensor::flash_attention_backward(&q, &k, &v, &fwd, &k.narrow(2, 0, 4).unwrap(), &opts).is_err());
    let sb = Scatterbrain { features: 4, block: 4, window: 0, seed: 0 };
    assert!(q.scatterbrain_attention(&k, &v, &sb, &AttentionOpts { dropout: 0.1, ..opts }).is_err());
    assert!(q.scatterbrain_attention(&k, &v, &Scatterbrain { features: 0, ..sb }, &opts).is_err());
    let short = q.narrow(2, 0, 4).unwrap();
    assert!(short.scatterbrain_attention(&k, &v, &sb, &AttentionOpts { causal: true, ..opts }).is_err());
}

#[test]
fn visited_fractions() {
    assert_eq!(visited_fraction(128, 128, None, false), 1.0);
    assert_eq!(visited_fraction(4 * FLASH_TILE, 4 * FLASH_TILE, None, true), 10.0 / 16.0);
    let diag = BlockMask::local(4, 4, 16, 0).unwrap();
    assert_eq!(visited_fraction(64, 64, Some(&diag), true), 0.25);
}

/// A few queries a head over many keys (cached decoding): the decoding path, which reads
/// keys and values in their own dtype, against the definition and against the tiled path
/// (output and log-sum-exp) in f64; and bf16 inputs, which `flash_attention` sends there,
/// against the tiled path on the same bf16 values (computed in f32, rounded to bf16 once).
/// Keys and values are views of a longer buffer as a cache's are; causal rows that see
/// no key give 0.
#[test]
fn decoding_a_few_queries_reads_the_cache_in_its_dtype_and_matches_the_tiled_path() {
    let tiled = TilePlan { tile: FLASH_TILE, mask: None };
    for (nq, nk, d, causal) in [(1, 131, 64, true), (3, 70, 8, true), (4, 2, 20, true), (2, 50, 33, false)] {
        let q = randn([2, 3, nq, d], 1);
        let (kbuf, vbuf) = (randn([2, 3, nk + 5, d], 2), randn([2, 3, nk + 5, d], 3));
        let cached = |buf: &Tensor| buf.narrow(2, 0, nk).unwrap();
        let (k, v) = (cached(&kbuf), cached(&vbuf));
        let opts = AttentionOpts { causal, ..Default::default() };
        let dims = Dims::check(&q, &k, &v, &opts, "test").unwrap();
        let what = format!("{nq}x{nk} d {d} causal {causal}");
        let got = decode::forward_tensors("test", [&q, &k, &v], dims, causal).unwrap();
        let x = [q.clone(), k.clone(), v.clone()];
        close(&vec(&got.out), &reference(&x, exact(nq, nk, causal), None), 1e-12, &what);
        let want = tiling::forward_tensors("test", [&q, &k, &v], dims, tiled, &opts).unwrap();
        close(&vec(&got.lse), &vec(&want.lse), 1e-12, &format!("lse {what}"));
        if causal && nk < nq {
            assert_eq!(vec(&got.lse)[0], f64::NEG_INFINITY, "{what}: the first query sees nothing");
        }
        let bf = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
        let (q, k, v) = (bf(&q), cached(&bf(&kbuf)), cached(&bf(&vbuf)));
        assert!(decode::applies(&dims, &opts, &k, &v));
        let got = q.flash_attention(&k, &v, &opts).unwrap();
        let want = tiling::forward_tensors("test", [&q, &k, &v], dims, tiled, &opts).unwrap();
        assert_eq!((got.out.dtype(), got.lse.dtype()), (DType::BF16, DType::F32));
        // Two f32 sums a rounding apart may round to neighbouring bf16 values.
        close(&vec(&got.out), &vec(&want.out), 2f64.powi(-7), &format!("bf16 {what}"));
        close(&vec(&got.lse), &vec(&want.lse), 1e-5, &format!("bf16 lse {what}"));
    }
    // f32, dropout, more queries, or keys whose head dimension is strided: the tiled path.
    let bf = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
    let x: Vec<Tensor> = qkv(1, 2, 3, 40, 8).iter().map(bf).collect();
    let opts = AttentionOpts::default();
    let dims = Dims::check(&x[0], &x[1], &x[2], &opts, "test").unwrap();
    assert!(decode::applies(&dims, &opts, &x[1], &x[2]));
    let f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    assert!(!decode::applies(&dims, &opts, &f32(&x[1]), &f32(&x[2])));
    assert!(!decode::applies(&dims, &AttentionOpts { dropout: 0.1, ..opts }, &x[1], &x[2]));
    let wide = qkv(1, 2, 5, 40, 8);
    let wide_dims = Dims::check(&wide[0], &wide[1], &wide[2], &opts, "test").unwrap();
    assert!(!decode::applies(&wide_dims, &opts, &bf(&wide[1]), &bf(&wide[2])));
    let kt = bf(&randn([1, 2, 8, 40], 5)).transpose(2, 3).unwrap();
    assert!(!decode::applies(&dims, &opts, &kt, &x[2]));
}
