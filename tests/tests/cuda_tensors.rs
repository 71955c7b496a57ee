//! Tensors on a GPU against the same ops on the CPU. Without a GPU (CI) they run on the
//! emulated device, which runs the same launchers and kernels on the CPU (slowly; see
//! `monarch_cuda::emulator`); on a GPU machine run
//! `cargo test -p monarch-tests --release --test cuda_tensors`.

use monarch_autograd::{Gradients, Var};
use monarch_nn::{Activation, LinearKind, SeedableRng, StdRng};
use monarch_tensor::{
    AdamW, AttentionGrads, AttentionOpts, AttentionOut, BlockMask, CmpOp, CrossEntropy, DType, Device, Error, Tensor,
    UnaryOp, cuda_device,
};

const GPU: Device = Device::Cuda(0);

/// Picks device 0 before any test opens it: the GPU, else the emulated device.
fn pick_device() {
    static PICKED: std::sync::Once = std::sync::Once::new();
    PICKED.call_once(monarch_cuda::emulator::emulate_without_gpu);
}

/// Whether device 0 can be used; says SKIPPED when not.
fn gpu() -> bool {
    pick_device();
    match cuda_device(0) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("SKIPPED: {e}");
            false
        }
    }
}

fn rnd(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, 0.0, 1.0, seed).unwrap()
}

/// `got` (any device) equals `want` (CPU) within `tol` relative.
fn close(got: &Tensor, want: &Tensor, tol: f32) {
    assert_eq!(got.dims(), want.dims());
    let (g, w) = (got.to_vec_f32().unwrap(), want.to_vec_f32().unwrap());
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        assert!((a - b).abs() <= tol * (1.0 + b.abs()), "element {i}: {a} vs {b}");
    }
}

#[test]
fn moving_to_a_gpu_is_an_error_exactly_when_there_is_none() {
    pick_device();
    let x = rnd(&[3, 4], 0);
    match (cuda_device(0), x.to_device(GPU)) {
        (Ok(_), Ok(y)) => assert_eq!(y.device(), GPU),
        (Err(_), Err(Error::DeviceUnavailable { device, msg })) => {
            assert_eq!(device, GPU);
            assert!(!msg.is_empty());
        }
        (dev, moved) => panic!("device {:?} but move {:?}", dev.map(|_| ()), moved.map(|t| t.device())),
    }
    // f64 has no CUDA storage, with or without a GPU.
    assert!(x.to_dtype(DType::F64).unwrap().to_device(GPU).is_err());
}

#[test]
fn every_dtype_round_trips_and_views_download_as_views() {
    if !gpu() {
        return;
    }
    let x = rnd(&[5, 7], 1);
    assert!(x.to_dtype(DType::F16).unwrap().to_device(GPU).is_err(), "f16 has no kernels");
    for dt in [DType::U8, DType::I64, DType::BF16, DType::F32] {
        let h = x.to_dtype(dt).unwrap();
        let back = h.to_device(GPU).unwrap().to_device(Device::Cpu).unwrap();
        assert_eq!(back.dtype(), dt);
        assert_eq!(back.to_vec_f64().unwrap(), h.to_vec_f64().unwrap(), "{dt:?}");
    }
    let g = x.to_device(GPU).unwrap();
    let view = g.t().unwrap().narrow(0, 2, 3).unwrap();
    close(&view, &x.t().unwrap().narrow(0, 2, 3).unwrap(), 0.0);
    close(&view.contiguous().unwrap(), &x.t().unwrap().narrow(0, 2, 3).unwrap(), 0.0);
    let b = g.to_dtype(DType::BF16).unwrap();
    assert_eq!(b.device(), GPU);
    close(&b.to_dtype(DType::F32).unwrap(), &x.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap(), 0.0);
}

/// Concatenation along each dimension of parts that lie as views (a transpose, a narrow,
/// an empty part), in every dtype a part can have, against the CPU.
#[test]
fn concatenating_views_matches_the_cpu() {
    if !gpu() {
        return;
    }
    let a = rnd(&[4, 3, 5], 1);
    let b = rnd(&[5, 3, 4], 2).transpose(0, 2).unwrap();
    let c = rnd(&[4, 6, 5], 3).narrow(1, 1, 3).unwrap();
    for dt in [DType::F32, DType::BF16, DType::I64, DType::U8] {
        let parts: Vec<Tensor> = [&a, &b, &c].iter().map(|t| t.to_dtype(dt).unwrap()).collect();
        let on_gpu: Vec<Tensor> = parts.iter().map(|t| t.to_device(GPU).unwrap()).collect();
        for d in 0..3 {
            let empty = parts[0].narrow(d, 0, 0).unwrap();
            let want = Tensor::cat(&[&parts[0], &empty, &parts[1], &parts[2]], d).unwrap();
            let g_empty = on_gpu[0].narrow(d, 0, 0).unwrap();
            let got = Tensor::cat(&[&on_gpu[0], &g_empty, &on_gpu[1], &on_gpu[2]], d).unwrap();
            assert_eq!(got.device(), GPU);
            assert_eq!(got.dims(), want.dims(), "{dt:?} along {d}");
            let got = got.to_device(Device::Cpu).unwrap();
            assert_eq!(got.to_vec_f64().unwrap(), want.to_vec_f64().unwrap(), "{dt:?} along {d}");
        }
    }
}

#[test]
fn filling_on_the_gpu_converts_as_the_cpu_does() {
    if !gpu() {
        return;
    }
    // 1/3 rounds in bf16 and f32; -2.7 truncates to -2 as an integer (to 0 as a byte);
    // 300 saturates to 255 as a byte, as Rust's `as` converts on the CPU.
    for value in [1.0 / 3.0, -2.7, 300.0, 0.0] {
        for dt in [DType::U8, DType::I64, DType::BF16, DType::F32] {
            let got = Tensor::full_on(value, [3, 1000], dt, GPU).unwrap();
            assert_eq!(got.device(), GPU);
            assert_eq!(got.dtype(), dt);
            let want = Tensor::full(value, [3, 1000], dt);
            assert_eq!(got.to_vec_f64().unwrap(), want.to_vec_f64().unwrap(), "{value} as {dt:?}");
        }
    }
    assert!(Tensor::full_on(1.0, 4, DType::F16, GPU).is_err(), "f16 has no CUDA storage");
    assert_eq!(Tensor::full_on(1.0, [0, 4], DType::F32, GPU).unwrap().elem_count(), 0);
}

#[test]
fn broadcasting_arithmetic_and_reductions_match_the_cpu() {
    if !gpu() {
        return;
    }
    let (a, b, c) = (rnd(&[2, 3, 40], 2), rnd(&[40], 3), rnd(&[2, 1, 40], 4));
    let (ga, gb, gc) = (a.to_device(GPU).unwrap(), b.to_device(GPU).unwrap(), c.to_device(GPU).unwrap());
    close(&ga.add(&gb).unwrap(), &a.add(&b).unwrap(), 1e-6);
    close(&ga.mul(&gc).unwrap(), &a.mul(&c).unwrap(), 1e-6);
    close(&ga.t().unwrap().sub(&gc.t().unwrap()).unwrap(), &a.t().unwrap().sub(&c.t().unwrap()).unwrap(), 1e-6);
    assert!(ga.add(&b).is_err(), "mixed devices must be an error");
    let x = rnd(&[37, 300], 5);
    let gx = x.to_device(GPU).unwrap();
    close(&gx.sum(0).unwrap(), &x.sum(0).unwrap(), 1e-5);
    close(&gx.sum(1).unwrap(), &x.sum(1).unwrap(), 1e-5);
    close(&gx.max(1).unwrap(), &x.max(1).unwrap(), 0.0);
    assert_eq!(gx.argmax(0).unwrap().to_vec::<i64>().unwrap(), x.argmax(0).unwrap().to_vec::<i64>().unwrap());
    // Scalars from the host and the device (one copy for the device's), in order.
    let (s0, s1) = (x.sum_all().unwrap(), gx.max(0).unwrap().max(0).unwrap());
    let s2 = gx.sum_all().unwrap().to_dtype(DType::BF16).unwrap();
    let got = Tensor::read_scalars(&[&s1, &s0, &s2]).unwrap();
    let want = [x.max(0).unwrap().max(0).unwrap().to_scalar_f64().unwrap(), s0.to_scalar_f64().unwrap()];
    assert_eq!(&got[..2], &want, "device max, host sum");
    assert!((got[2] - want[1]).abs() <= 1e-2 * want[1].abs().max(1.0), "bf16 sum {} against {}", got[2], want[1]);
    assert!(Tensor::read_scalars(&[&gx]).is_err(), "not a scalar");
    // Full reductions of long rows fold into column partials first (with and without a tail).
    for n in [1 << 17, (1 << 17) + 333] {
        let x = rnd(&[n], 12);
        let gx = x.to_device(GPU).unwrap();
        close(&gx.sum_all().unwrap(), &x.sum_all().unwrap(), 1e-4);
        close(&gx.max(0).unwrap(), &x.max(0).unwrap(), 0.0);
        close(&gx.reshape([1, n]).unwrap().sum(1).unwrap(), &x.reshape([1, n]).unwrap().sum(1).unwrap(), 1e-4);
    }
}

#[test]
fn matmul_of_views_and_batches_matches_the_cpu() {
    if !gpu() {
        return;
    }
    let (a, b) = (rnd(&[33, 20], 6), rnd(&[20, 17], 7));
    let (ga, gb) = (a.to_device(GPU).unwrap(), b.to_device(GPU).unwrap());
    close(&ga.matmul(&gb).unwrap(), &a.matmul(&b).unwrap(), 1e-5);
    let (at, bt) = (a.t().unwrap().contiguous().unwrap(), b.t().unwrap().contiguous().unwrap());
    let (gat, gbt) = (at.to_device(GPU).unwrap(), bt.to_device(GPU).unwrap());
    close(&gat.t().unwrap().matmul(&gbt.t().unwrap()).unwrap(), &a.matmul(&b).unwrap(), 1e-5);
    let (x, w) = (rnd(&[2, 3, 9, 20], 8), rnd(&[3, 20, 5], 9));
    let (gx, gw) = (x.to_device(GPU).unwrap(), w.to_device(GPU).unwrap());
    close(&gx.matmul(&gw).unwrap(), &x.matmul(&w).unwrap(), 1e-5);
    close(&gx.matmul(&gb).unwrap(), &x.matmul(&b).unwrap(), 1e-5);
    let bf = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
    close(&bf(&ga).matmul(&bf(&gb)).unwrap(), &a.matmul(&b).unwrap(), 3e-2);
    // The bias epilogue: a dense layer's x·wᵀ + b, single and batched (merged rows or not).
    let (w, bias) = (rnd(&[17, 20], 10), rnd(&[17], 11));
    let (gw, gbias) = (w.to_device(GPU).unwrap(), bias.to_device(GPU).unwrap());
    let want = a.matmul(&w.t().unwrap()).unwrap().add(&bias).unwrap();
    close(&ga.matmul_bias(&gw.t().unwrap(), &gbias).unwrap(), &want, 1e-5);
    close(&bf(&ga).matmul_bias(&bf(&gw).t().unwrap(), &bf(&gbias)).unwrap(), &want, 3e-2);
    let want = x.matmul(&w.t().unwrap()).unwrap().add(&bias).unwrap();
    close(&gx.matmul_bias(&gw.t().unwrap(), &gbias).unwrap(), &want, 1e-5);
    let xt = x.transpose(1, 2).unwrap().contiguous().unwrap().transpose(1, 2).unwrap();
    let gxt = gx.transpose(1, 2).unwrap().contiguous().unwrap().transpose(1, 2).unwrap();
    close(
        &gxt.matmul_bias(&gw.t().unwrap(), &gbias).unwrap(),
        &xt.matmul(&w.t().unwrap()).unwrap().add(&bias).unwrap(),
        1e-5,
    );
}

#[test]
fn layers_train_on_the_gpu_as_on_the_cpu() {
    if !gpu() {
        return;
    }
    let sparse = LinearKind::BlockSparse { butterfly_size: 4, n_factors: 1, block: 16 };
    let pixelfly = LinearKind::Pixelfly {
        butterfly_size: 4,
        n_factors: 2,
        block: 16,
        rank: monarch_nn::Rank::Fixed(3),
        gate: monarch_nn::Gate::Learned,
    };
    let cases = [
        (LinearKind::Dense, vec![(48, 48), (30, 50), (50, 22)]),
        (LinearKind::Monarch { nblocks: 4 }, vec![(48, 48), (30, 50), (50, 22)]),
        (LinearKind::Monarch { nblocks: 3 }, vec![(48, 48), (30, 50), (50, 22)]),
        (LinearKind::BlockDiag { nblocks: 4 }, vec![(48, 48), (30, 50)]),
        (LinearKind::LowRank { rank: monarch_nn::Rank::Fraction(0.25) }, vec![(48, 48), (30, 50)]),
        (LinearKind::Butterfly, vec![(16, 16), (10, 37)]),
        (sparse, vec![(64, 128), (128, 64)]),
        (pixelfly, vec![(64, 128), (128, 64)]),
    ];
    for (kind, shapes) in cases {
        for (inp, out) in shapes {
            let cpu = kind.build(inp, out, true, &mut StdRng::seed_from_u64(10)).unwrap();
            let dev = kind.build(inp, out, true, &mut StdRng::seed_from_u64(10)).unwrap();
            monarch_nn::to_device(&*dev, GPU).unwrap();
            let (x, dy) = (rnd(&[2, 7, inp], 11), rnd(&[2, 7, out], 12));
            // The layer alone, then with each MLP activation (fused for Monarch).
            for act in [None, Some(Activation::GeluTanh), Some(Activation::GeluErf), Some(Activation::Relu)] {
                let run = |layer: &dyn monarch_nn::LinearLayer, d: Device| {
                    let xv = Var::leaf(x.to_device(d).unwrap());
                    let y = match act {
                        Some(a) => layer.forward_act(&xv, a),
                        None => layer.forward(&xv),
                    }
                    .unwrap();
                    let mut grads = Gradients::new();
                    y.backward_with(dy.to_device(d).unwrap(), &mut grads).unwrap();
                    let mut all = vec![y.value().clone(), grads.get(&xv).unwrap().clone()];
                    all.extend(layer.named_params().iter().map(|(_, p)| grads.get(p).unwrap().clone()));
                    // The input's and every parameter's gradient, summed on the device.
                    (all, grads.global_norm().unwrap())
                };
                let ((on_gpu, gpu_norm), (on_cpu, cpu_norm)) = (run(&*dev, GPU), run(&*cpu, Device::Cpu));
                for (i, (g, c)) in on_gpu.iter().zip(on_cpu).enumerate() {
                    assert_eq!(g.device(), GPU, "{kind:?} {act:?} output {i}");
                    close(g, &c, 1e-4);
                }
                assert!((gpu_norm - cpu_norm).abs() <= 1e-4 * cpu_norm, "{kind:?}: norm {gpu_norm} vs {cpu_norm}");
            }
        }
    }
}

/// bf16 Monarch layers of the MLP block (768 → 3072 and 3072 → 768, four blocks)
/// on the GPU, through the bf16 16-byte load paths and the group-major copies (several
/// permutation chunks a row), against the CPU in f32 on the same bf16-rounded weights and
/// inputs: output, input gradient and every parameter gradient.
#[test]
fn bf16_monarch_layers_on_the_gpu_match_the_cpu() {
    if !gpu() {
        return;
    }
    let kind = LinearKind::Monarch { nblocks: 4 };
    let round = bf16_rounded;
    for (inp, out) in [(768, 3072), (3072, 768)] {
        let cpu = kind.build(inp, out, true, &mut StdRng::seed_from_u64(20)).unwrap();
        let dev = kind.build(inp, out, true, &mut StdRng::seed_from_u64(20)).unwrap();
        for ((_, c), (_, g)) in cpu.named_params().iter().zip(dev.named_params()) {
            c.update(|v| round(v).to_dtype(DType::F32).map(|r| *v = r)).unwrap();
            g.update(|v| v.to_dtype(DType::BF16).map(|r| *v = r)).unwrap();
        }
        monarch_nn::to_device(&*dev, GPU).unwrap();
        let (x, dy) = (round(&rnd(&[64, inp], 21)), round(&rnd(&[64, out], 22)));
        let run = |layer: &dyn monarch_nn::LinearLayer, d: Device, dt: DType, act: Option<Activation>| {
            let xv = Var::leaf(x.to_dtype(dt).unwrap().to_device(d).unwrap());
            let y = match act {
                Some(a) => layer.forward_act(&xv, a),
                None => layer.forward(&xv),
            }
            .unwrap();
            let mut grads = Gradients::new();
            y.backward_with(dy.to_dtype(dt).unwrap().to_device(d).unwrap(), &mut grads).unwrap();
            let mut all = vec![y.value().clone(), grads.get(&xv).unwrap().clone()];
            all.extend(layer.named_params().iter().map(|(_, p)| grads.get(p).unwrap().clone()));
            all
        };
        // The layer alone, then with the GELUs: fused into the permutation passes in the
        // default layout (the pre-activation kept group-major for the backward).
        for act in [None, Some(Activation::GeluTanh), Some(Activation::GeluErf)] {
            let want = run(&*cpu, Device::Cpu, DType::F32, act);
            for (i, (g, c)) in run(&*dev, GPU, DType::BF16, act).iter().zip(&want).enumerate() {
                assert_eq!((g.device(), g.dtype()), (GPU, DType::BF16), "{inp}->{out} {act:?} output {i}");
                // Relative to the output's largest magnitude: bf16 products of 192-768 terms.
                close_to_scale(g, c, 2e-2);
            }
        }
        // Without the layout switches, the activation is fused (not composed) here.
        let env = |k: &str| std::env::var(k).unwrap_or_default();
        if env("MONARCH_GROUP_MAJOR") != "0" && env("MONARCH_STRIDED_STORES") != "1" {
            let p: Vec<Tensor> = dev.named_params().iter().map(|(_, p)| p.value()).collect();
            let xg = x.to_dtype(DType::BF16).unwrap().to_device(GPU).unwrap();
            assert!(xg.monarch_linear_act(&p[0], &p[1], p.get(2), out, UnaryOp::GeluTanh).unwrap().is_some());
        }
    }
}

#[test]
fn elementwise_softmax_and_layer_norm_with_their_gradients_match_the_cpu() {
    if !gpu() {
        return;
    }
    let (x, dy) = (rnd(&[6, 50], 13), rnd(&[6, 50], 14));
    let (gx, gdy) = (x.to_device(GPU).unwrap(), dy.to_device(GPU).unwrap());
    for op in [UnaryOp::GeluTanh, UnaryOp::Exp, UnaryOp::Affine { mul: 0.5, add: -1.0 }] {
        close(&gx.unary(op).unwrap(), &x.unary(op).unwrap(), 1e-5);
        let saved = |t: &Tensor| if op.grad_from_output() { t.unary(op).unwrap() } else { t.clone() };
        let want = Tensor::unary_backward(op, &saved(&x), &dy).unwrap();
        close(&Tensor::unary_backward(op, &saved(&gx), &gdy).unwrap(), &want, 1e-5);
    }
    for (dim, log) in [(1, false), (0, true)] {
        let sm = |t: &Tensor| if log { t.log_softmax(dim).unwrap() } else { t.softmax(dim).unwrap() };
        let (y, gy) = (sm(&x), sm(&gx));
        close(&gy, &y, 1e-5);
        let want = Tensor::softmax_backward(&y, &dy, dim, log).unwrap();
        close(&Tensor::softmax_backward(&gy, &gdy, dim, log).unwrap(), &want, 1e-5);
    }
    let (w, b) = (rnd(&[50], 15), rnd(&[50], 16));
    let (gw, gb) = (w.to_device(GPU).unwrap(), b.to_device(GPU).unwrap());
    let (c, g) = (x.layer_norm(Some(&w), Some(&b), 1e-5).unwrap(), gx.layer_norm(Some(&gw), Some(&gb), 1e-5).unwrap());
    close(&g.y, &c.y, 1e-4);
    let want = Tensor::layer_norm_backward(&x, Some(&w), &c.mean, &c.rstd, &dy).unwrap();
    let got = Tensor::layer_norm_backward(&gx, Some(&gw), &g.mean, &g.rstd, &gdy).unwrap();
    for (a, e) in [(&got.0, &want.0), (&got.1, &want.1), (&got.2, &want.2)] {
        close(a, e, 1e-4);
    }
}

#[test]
fn the_fused_head_on_the_gpu_matches_the_cpu() {
    if !gpu() {
        return;
    }
    // 300 rows in chunks of 128 (a ragged last chunk), ignored targets, device targets.
    let (x, w) = (rnd(&[300, 64], 40), rnd(&[1000, 64], 41).mul_scalar(0.1).unwrap());
    let ids: Vec<i64> = (0..300).map(|i| if i % 7 == 3 { -100 } else { i * 37 % 1000 }).collect();
    let targets = Tensor::from_vec(ids, 300).unwrap();
    let o = CrossEntropy { ignore_index: Some(-100), label_smoothing: 0.0 };
    let want = Tensor::linear_cross_entropy(&x, &w, &targets, o, 128, [true, true]).unwrap();
    let on = |t: &Tensor, dt: DType| t.to_dtype(dt).unwrap().to_device(GPU).unwrap();
    for (dt, tol) in [(DType::F32, 1e-4), (DType::BF16, 3e-2)] {
        let got =
            Tensor::linear_cross_entropy(&on(&x, dt), &on(&w, dt), &on(&targets, DType::I64), o, 128, [true, true])
                .unwrap();
        assert_eq!(got.loss.dtype(), DType::F32);
        close(&got.loss, &want.loss, tol);
        close(got.dx.as_ref().unwrap(), want.dx.as_ref().unwrap(), tol);
        close(got.dw.as_ref().unwrap(), want.dw.as_ref().unwrap(), tol);
    }
    // Targets made on the device (no upload bounds: read once for the check).
    let gt = on(&targets, DType::I64);
    let made = gt.cmp_scalar(0.0, CmpOp::Ge).unwrap().where_cond(&gt, &gt).unwrap();
    let got =
        Tensor::linear_cross_entropy(&on(&x, DType::F32), &on(&w, DType::F32), &made, o, 128, [true, true]).unwrap();
    close(&got.loss, &want.loss, 1e-4);
    close(got.dw.as_ref().unwrap(), want.dw.as_ref().unwrap(), 1e-4);
    // The head's loss reads bf16 logits as they are: the same as widening them first.
    let logits = on(&x, DType::BF16).matmul(&on(&w, DType::BF16).t().unwrap()).unwrap();
    let (loss, lse) = logits.cross_entropy_wide(&gt, o).unwrap();
    let (want_loss, want_lse) = logits.to_dtype(DType::F32).unwrap().cross_entropy(&gt, o).unwrap();
    assert_eq!((loss.dtype(), lse.dtype()), (DType::F32, DType::F32));
    assert_eq!(loss.to_vec_f32().unwrap(), want_loss.to_vec_f32().unwrap());
    assert_eq!(lse.to_vec_f32().unwrap(), want_lse.to_vec_f32().unwrap());
}

#[test]
fn embedding_cross_entropy_and_adamw_match_the_cpu() {
    if !gpu() {
        return;
    }
    let table = rnd(&[11, 8], 17);
    let ids = Tensor::from_vec(vec![3i64, 0, 10, 3, 7], 5).unwrap();
    let gt = table.to_device(GPU).unwrap();
    close(&gt.index_select(&ids, 0).unwrap(), &table.index_select(&ids, 0).unwrap(), 0.0);
    let src = rnd(&[5, 8], 18);
    let want = table.index_add(&ids, &src, 0).unwrap();
    close(&gt.index_add(&ids.to_device(GPU).unwrap(), &src.to_device(GPU).unwrap(), 0).unwrap(), &want, 1e-6);
    assert!(gt.index_select(&Tensor::from_vec(vec![11i64], 1).unwrap(), 0).is_err(), "index past the table");
    let gids = Tensor::from_vec(vec![3i64, 0, 10, 3, 7, 11], 6).unwrap().to_device(GPU).unwrap();
    let err = gt.index_select(&gids, 0).unwrap_err().to_string();
    assert_eq!(err, "index_select: index 11 out of range for size 11");
    close(&gt.index_select(&gids.narrow(0, 0, 5).unwrap(), 0).unwrap(), &table.index_select(&ids, 0).unwrap(), 0.0);

    let logits = rnd(&[9, 30], 19);
    let targets = Tensor::from_vec(vec![1i64, 29, 0, -100, 5, 5, 12, 7, 3], 9).unwrap();
    let o = CrossEntropy { ignore_index: Some(-100), label_smoothing: 0.1 };
    let gl = logits.to_device(GPU).unwrap();
    let ((loss, lse), (gloss, glse)) =
        (logits.cross_entropy(&targets, o).unwrap(), gl.cross_entropy(&targets, o).unwrap());
    close(&gloss, &loss, 1e-5);
    let dloss = Tensor::scalar(0.7f32);
    let want = Tensor::cross_entropy_backward(&logits, &targets, &lse, &dloss, o).unwrap();
    close(&Tensor::cross_entropy_backward(&gl, &targets, &glse, &dloss, o).unwrap(), &want, 1e-5);
    // Device targets and a device loss gradient, checked from their upload bounds.
    let (gt, gd) = (targets.to_device(GPU).unwrap(), dloss.to_device(GPU).unwrap());
    let (gloss, glse) = gl.cross_entropy(&gt, o).unwrap();
    close(&gloss, &loss, 1e-5);
    close(&Tensor::cross_entropy_backward(&gl, &gt, &glse, &gd, o).unwrap(), &want, 1e-5);
    let plain = CrossEntropy::default();
    assert!(gl.cross_entropy(&gt, plain).is_err(), "-100 is not ignored without ignore_index");
    let bad = Tensor::from_vec(vec![1i64, 30, 0, 4, 5, 5, 12, 7, 3], 9).unwrap().to_device(GPU).unwrap();
    let err = gl.cross_entropy(&bad, o).unwrap_err().to_string();
    assert_eq!(err, "cross_entropy: index 30 out of range for size 30");
    // A view without the bad target passes (its values are read: the bounds cannot tell).
    let tail = Tensor::from_vec(vec![0i64, 4, 5, 5, 12, 7, 3], 7).unwrap();
    let (want_tail, _) = logits.narrow(0, 2, 7).unwrap().cross_entropy(&tail, o).unwrap();
    close(&gl.narrow(0, 2, 7).unwrap().cross_entropy(&bad.narrow(0, 2, 7).unwrap(), o).unwrap().0, &want_tail, 1e-5);

    // f32 and bf16 gradients (the kernels read bf16 as it is), the CPU on the same values.
    let opt = AdamW { lr: 1e-2, ..AdamW::default() };
    let mv = |t: &Tensor| t.to_device(GPU).unwrap();
    for gdt in [DType::F32, DType::BF16] {
        let (mut p, g) = (rnd(&[1000], 20), bf16_rounded(&rnd(&[1000], 21)));
        let (mut m, mut v) = (Tensor::zeros([1000], DType::F32), Tensor::zeros([1000], DType::F32));
        let (mut gp, mut gm, mut gv, gg) = (mv(&p), mv(&m), mv(&v), mv(&g.to_dtype(gdt).unwrap()));
        let shared = gp.clone(); // the update must not write through another handle
        for step in 1..=3 {
            opt.step(&mut p, &g, &mut m, &mut v, step).unwrap();
            opt.step(&mut gp, &gg, &mut gm, &mut gv, step).unwrap();
        }
        close(&gp, &p, 1e-5);
        close(&gm, &m, 1e-5);
        close(&gv, &v, 1e-5);
        close(&shared, &rnd(&[1000], 20), 0.0);
    }
}

#[test]
fn comparisons_selection_gather_and_sgd_match_the_cpu() {
    if !gpu() {
        return;
    }
    let mv = |t: &Tensor| t.to_device(GPU).unwrap();
    let (a, b) = (rnd(&[4, 30], 22), rnd(&[30], 23));
    let (ga, gb) = (mv(&a), mv(&b));
    for op in [CmpOp::Eq, CmpOp::Ne, CmpOp::Lt, CmpOp::Le, CmpOp::Gt, CmpOp::Ge] {
        let want = a.cmp(&b, op).unwrap();
        let got = ga.cmp(&gb, op).unwrap();
        assert_eq!((got.device(), got.dtype()), (GPU, DType::U8));
        assert_eq!(got.to_vec::<u8>().unwrap(), want.to_vec::<u8>().unwrap(), "{op:?}");
    }
    assert_eq!(
        ga.cmp_scalar(0.0, CmpOp::Gt).unwrap().to_vec::<u8>().unwrap(),
        a.gt(&Tensor::scalar(0f32)).unwrap().to_vec::<u8>().unwrap()
    );
    let mask = a.gt(&b).unwrap();
    close(&mv(&mask).where_cond(&ga, &gb).unwrap(), &mask.where_cond(&a, &b).unwrap(), 0.0);
    close(&ga.masked_fill(&mv(&mask), -3.0).unwrap(), &a.masked_fill(&mask, -3.0).unwrap(), 0.0);
    close(&ga.tril(1).unwrap(), &a.tril(1).unwrap(), 0.0);
    // The mask itself, made on the device: more keys than queries (causal) and fewer.
    for (r, c, dg) in [(5, 9, 4), (9, 5, -4), (300, 70, 0)] {
        let m = Tensor::tril_mask_on(r, c, dg, GPU).unwrap();
        assert_eq!((m.device(), m.dtype()), (GPU, DType::U8));
        close(&m, &Tensor::tril_mask(r, c, dg), 0.0);
    }
    close(&ga.t().unwrap().triu(0).unwrap(), &a.t().unwrap().triu(0).unwrap(), 0.0);
    close(&ga.maximum(&gb).unwrap(), &a.maximum(&b).unwrap(), 0.0);
    // where on integer values: padding targets masked out.
    let targets = Tensor::from_vec((0..30i64).collect::<Vec<_>>(), 30).unwrap();
    let pad = targets.gt(&Tensor::scalar(20i64)).unwrap();
    let want = targets.masked_fill(&pad, -100.0).unwrap().to_vec::<i64>().unwrap();
    assert_eq!(mv(&targets).masked_fill(&mv(&pad), -100.0).unwrap().to_vec::<i64>().unwrap(), want);

    // gather / scatter_add along the middle dimension of (3, 5, 4), and their gradients.
    let x = rnd(&[3, 5, 4], 24);
    let idx: Vec<i64> = (0..3 * 2 * 4).map(|i| (i * 7 % 5) as i64).collect();
    let idx = Tensor::from_vec(idx, [3, 2, 4]).unwrap();
    close(&mv(&x).gather(&mv(&idx), 1).unwrap(), &x.gather(&idx, 1).unwrap(), 0.0);
    let src = rnd(&[3, 2, 4], 25);
    close(&mv(&x).scatter_add(&idx, &mv(&src), 1).unwrap(), &x.scatter_add(&idx, &src, 1).unwrap(), 1e-6);
    assert!(mv(&x).gather(&Tensor::full(5.0, [3, 2, 4], DType::I64), 1).is_err(), "index past the dimension");
    // Integer values move too: i64 token ids (past f32's and f64's exact range) and u8 masks.
    let tokens: Vec<i64> = (0..60).map(|i| (1i64 << 60) + i * 1_000_003).collect();
    let tokens = Tensor::from_vec(tokens, [3, 5, 4]).unwrap();
    let mask = Tensor::from_vec((0..60).map(|i| (i * 37 % 251) as u8).collect::<Vec<u8>>(), [3, 5, 4]).unwrap();
    let rows = Tensor::from_vec(vec![4i64, 0, 4, 2], 4).unwrap();
    let same = |got: Tensor, want: Tensor| {
        assert_eq!((got.device(), got.dtype(), got.dims()), (GPU, want.dtype(), want.dims()));
        match want.dtype() {
            DType::I64 => assert_eq!(got.to_vec::<i64>().unwrap(), want.to_vec::<i64>().unwrap()),
            _ => assert_eq!(got.to_vec::<u8>().unwrap(), want.to_vec::<u8>().unwrap()),
        }
    };
    for t in [&tokens, &mask] {
        same(mv(t).gather(&mv(&idx), 1).unwrap(), t.gather(&idx, 1).unwrap());
        same(mv(t).index_select(&rows, 1).unwrap(), t.index_select(&rows, 1).unwrap());
    }

    // SGD with and without momentum, three steps, from f32 and from bf16 gradients.
    for gdt in [DType::F32, DType::BF16] {
        let (mut p, g) = (rnd(&[1000], 26), bf16_rounded(&rnd(&[1000], 27)));
        let (mut gp, gg) = (mv(&p), mv(&g.to_dtype(gdt).unwrap()));
        let mut buf = Tensor::zeros([1000], DType::F32);
        let mut gbuf = mv(&buf);
        for _ in 0..3 {
            monarch_tensor::ops::sgd_step(&mut p, &g, Some(&mut buf), 0.1, 0.9, 0.01).unwrap();
            monarch_tensor::ops::sgd_step(&mut gp, &gg, Some(&mut gbuf), 0.1, 0.9, 0.01).unwrap();
            monarch_tensor::ops::sgd_step(&mut p, &g, None, 0.05, 0.0, 0.0).unwrap();
            monarch_tensor::ops::sgd_step(&mut gp, &gg, None, 0.05, 0.0, 0.0).unwrap();
        }
        close(&gp, &p, 1e-5);
        close(&gbuf, &buf, 1e-5);
    }
}

#[test]
fn naive_attention_and_max_gradients_match_the_cpu() {
    if !gpu() {
        return;
    }
    let mv = |t: &Tensor| t.to_device(GPU).unwrap();
    let (q, k, v, dout) =
        (rnd(&[2, 3, 70, 32], 28), rnd(&[2, 3, 50, 32], 29), rnd(&[2, 3, 50, 32], 30), rnd(&[2, 3, 70, 32], 31));
    for opts in [AttentionOpts::default(), AttentionOpts { causal: true, dropout: 0.2, seed: 5 }] {
        let want = q.naive_attention(&k, &v, &opts).unwrap();
        let got = mv(&q).naive_attention(&mv(&k), &mv(&v), &opts).unwrap();
        close(&got.out, &want.out, 1e-5);
        close(&got.probs, &want.probs, 1e-5);
        let wg = Tensor::naive_attention_backward(&q, &k, &v, &want.probs, &dout, &opts).unwrap();
        let gg = Tensor::naive_attention_backward(&mv(&q), &mv(&k), &mv(&v), &got.probs, &mv(&dout), &opts).unwrap();
        close(&gg.dq, &wg.dq, 1e-4);
        close(&gg.dk, &wg.dk, 1e-4);
        close(&gg.dv, &wg.dv, 1e-4);
    }
    // Flash attention with dropout draws the CPU's mask.
    let (q, k, v, dout) =
        (rnd(&[2, 3, 100, 64], 33), rnd(&[2, 3, 100, 64], 34), rnd(&[2, 3, 100, 64], 35), rnd(&[2, 3, 100, 64], 36));
    let opts = AttentionOpts { causal: true, dropout: 0.25, seed: 8 };
    let want = q.flash_attention(&k, &v, &opts).unwrap();
    let got = mv(&q).flash_attention(&mv(&k), &mv(&v), &opts).unwrap();
    close(&got.out, &want.out, 1e-5);
    let wg = Tensor::flash_attention_backward(&q, &k, &v, &want, &dout, &opts).unwrap();
    let gg = Tensor::flash_attention_backward(&mv(&q), &mv(&k), &mv(&v), &got, &mv(&dout), &opts).unwrap();
    close(&gg.dq, &wg.dq, 1e-4);
    close(&gg.dk, &wg.dk, 1e-4);
    close(&gg.dv, &wg.dv, 1e-4);
    // Scatterbrain with blocks of 32 (not a multiple of the band kernels' 64-token tile)
    // runs through the host, results back on the device.
    let sb = monarch_tensor::Scatterbrain { features: 16, block: 32, window: 1, seed: 3 };
    let opts = AttentionOpts { causal: true, ..Default::default() };
    let q = rnd(&[1, 2, 96, 32], 37);
    let want = q.scatterbrain_attention(&q, &q, &sb, &opts).unwrap();
    let got = mv(&q).scatterbrain_attention(&mv(&q), &mv(&q), &sb, &opts).unwrap();
    assert_eq!(got.out.device(), GPU);
    close(&got.out, &want.out, 0.0);
    let wg = Tensor::scatterbrain_attention_backward(&q, &q, &q, &sb, &want, &q, &opts).unwrap();
    let gg = Tensor::scatterbrain_attention_backward(&mv(&q), &mv(&q), &mv(&q), &sb, &got, &mv(&q), &opts).unwrap();
    close(&gg.dq, &wg.dq, 0.0);
    // The gradient of a max reduction goes through a comparison on the device.
    let x = rnd(&[6, 40], 32);
    let grad_of = |t: Tensor| {
        let xv = Var::leaf(t);
        let g = xv.max(1).unwrap().sum_all().unwrap().backward().unwrap();
        g.get(&xv).unwrap().clone()
    };
    close(&grad_of(mv(&x)), &grad_of(x), 0.0);
}

/// bf16 flash and block-sparse attention on the GPU, through the kernels' bf16 work split
/// (32 query rows a warp in 128-row forward blocks, 128-key backward blocks, each warp
/// masked by its own 64x64 tile), against the CPU in f32 on the same bf16-rounded inputs:
/// seq 300 (five tiles, ragged), causal or not, a mask where the second query tile of a
/// forward block visits a key tile the first does not, and the other way round.
#[test]
fn attention_heads_below_the_kernels_sizes_are_padded_exactly() {
    if !gpu() {
        return;
    }
    // head_dim 16 and 48 run as 32 and 64 with zero padding, at their own scale.
    for (d, seed) in [(16, 50), (48, 54)] {
        let shape = [1, 2, 70, d];
        let (q, k, v, dout) = (rnd(&shape, seed), rnd(&shape, seed + 1), rnd(&shape, seed + 2), rnd(&shape, seed + 3));
        let on_gpu = |t: &Tensor| t.to_device(GPU).unwrap();
        let opts = AttentionOpts { causal: true, dropout: 0.2, seed: 9 };
        let want = q.flash_attention(&k, &v, &opts).unwrap();
        let got = on_gpu(&q).flash_attention(&on_gpu(&k), &on_gpu(&v), &opts).unwrap();
        assert_eq!(got.out.dims(), [1, 2, 70, d]);
        close(&got.out, &want.out, 1e-4);
        close(&got.lse, &want.lse, 1e-4);
        let wg = Tensor::flash_attention_backward(&q, &k, &v, &want, &dout, &opts).unwrap();
        let gg = Tensor::flash_attention_backward(&on_gpu(&q), &on_gpu(&k), &on_gpu(&v), &got, &on_gpu(&dout), &opts)
            .unwrap();
        close(&gg.dq, &wg.dq, 1e-4);
        close(&gg.dk, &wg.dk, 1e-4);
        close(&gg.dv, &wg.dv, 1e-4);
    }
    let big = rnd(&[1, 1, 8, 192], 60).to_device(GPU).unwrap();
    let err = big.flash_attention(&big, &big, &AttentionOpts::default()).unwrap_err().to_string();
    assert!(err.contains("head_dim up to 128"), "{err}");
}

#[test]
fn bf16_attention_on_the_gpu_matches_the_cpu() {
    if !gpu() {
        return;
    }
    let shape = [1, 2, 300, 64];
    let bf = |t: Tensor| t.to_dtype(DType::BF16).unwrap();
    let (q, k, v, dout) = (bf(rnd(&shape, 40)), bf(rnd(&shape, 41)), bf(rnd(&shape, 42)), bf(rnd(&shape, 43)));
    let f32s = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    let on_gpu = |t: &Tensor| t.to_device(GPU).unwrap();
    let mut set: Vec<bool> = (0..25).map(|i| i / 5 == i % 5 || (i / 5 * 7 + i % 5 * 5) % 3 != 0).collect();
    (set[2 * 5], set[3 * 5], set[5 + 3], set[4]) = (false, true, true, false);
    let mask = BlockMask::new(5, 5, 64, set).unwrap();
    for causal in [false, true] {
        let opts = AttentionOpts { causal, ..Default::default() };
        let (qc, kc, vc, dc) = (f32s(&q), f32s(&k), f32s(&v), f32s(&dout));
        let (qg, kg, vg, dg) = (on_gpu(&q), on_gpu(&k), on_gpu(&v), on_gpu(&dout));
        for masked in [false, true] {
            let (want, wg) = attention_and_grads([&qc, &kc, &vc, &dc], masked.then_some(&mask), &opts);
            let (got, gg) = attention_and_grads([&qg, &kg, &vg, &dg], masked.then_some(&mask), &opts);
            close(&got.out, &want.out, 3e-2);
            close(&gg.dq, &wg.dq, 5e-2);
            close(&gg.dk, &wg.dk, 5e-2);
            close(&gg.dv, &wg.dv, 5e-2);
        }
    }
}

/// Flash attention (no mask) or block-sparse attention (`mask`) of (q, k, v, the output
/// gradient), forward and backward, on the tensors' device.
fn attention_and_grads(
    [q, k, v, dout]: [&Tensor; 4],
    mask: Option<&BlockMask>,
    opts: &AttentionOpts,
) -> (AttentionOut, AttentionGrads) {
    match mask {
        Some(m) => {
            let out = q.block_sparse_attention(k, v, m, opts).unwrap();
            let grads = Tensor::block_sparse_attention_backward(q, k, v, m, &out, dout, opts).unwrap();
            (out, grads)
        }
        None => {
            let out = q.flash_attention(k, v, opts).unwrap();
            let grads = Tensor::flash_attention_backward(q, k, v, &out, dout, opts).unwrap();
            (out, grads)
        }
    }
}

/// Flash and block-sparse attention with more keys than queries (decoding after a key
/// cache: one query, or a ragged 70) and more queries than keys (causal rows that see no
/// key: output 0, lse -inf, no gradient), f32 (with dropout) and bf16 through its own work
/// split, against the CPU in f32 on the same inputs: the causal mask aligns the last query
/// with the last key, and a mask of 2x2 tiles covers queries and keys separately.
#[test]
fn attention_with_unequal_queries_and_keys_matches_the_cpu() {
    if !gpu() {
        return;
    }
    let on_gpu = |t: &Tensor| t.to_device(GPU).unwrap();
    let f32s = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    // (queries, keys, the mask's 1x2 or 2x1 blocks of 128)
    for (nq, nk, set) in [(1usize, 150usize, [false, true]), (70, 200, [true, false]), (200, 70, [false, true])] {
        let mask = BlockMask::new(nq.div_ceil(128), nk.div_ceil(128), 128, set.to_vec()).unwrap();
        for dtype in [DType::F32, DType::BF16] {
            let (tol, gtol) = if dtype == DType::F32 { (1e-4, 1e-4) } else { (3e-2, 5e-2) };
            let low = |t: Tensor| t.to_dtype(dtype).unwrap();
            let (qs, ks) = ([2, 2, nq, 32], [2, 2, nk, 32]);
            let (q, k, v, dout) = (low(rnd(&qs, 70)), low(rnd(&ks, 71)), low(rnd(&ks, 72)), low(rnd(&qs, 73)));
            let (qc, kc, vc, dc) = (f32s(&q), f32s(&k), f32s(&v), f32s(&dout));
            let (qg, kg, vg, dg) = (on_gpu(&q), on_gpu(&k), on_gpu(&v), on_gpu(&dout));
            let dropout = if dtype == DType::F32 { 0.2 } else { 0.0 };
            for (causal, dropout, masked) in [(true, 0.0, false), (false, dropout, false), (true, 0.0, true)] {
                let opts = AttentionOpts { causal, dropout, seed: 4 };
                let what = format!("{nq} queries, {nk} keys, {dtype:?}, {opts:?}, masked {masked}");
                let (want, wg) = attention_and_grads([&qc, &kc, &vc, &dc], masked.then_some(&mask), &opts);
                let (got, gg) = attention_and_grads([&qg, &kg, &vg, &dg], masked.then_some(&mask), &opts);
                assert_eq!(got.out.dims(), [2, 2, nq, 32], "{what}");
                close(&got.out, &want.out, tol);
                let (gl, wl) = (got.lse.to_vec_f32().unwrap(), want.lse.to_vec_f32().unwrap());
                for (a, b) in gl.iter().zip(&wl) {
                    assert!(a == b || (a - b).abs() <= tol * (1.0 + b.abs()), "{what}: lse {a} vs {b}");
                }
                assert_eq!((gg.dq.dims(), gg.dk.dims()), (&qs[..], &ks[..]), "{what}");
                close(&gg.dq, &wg.dq, gtol);
                close(&gg.dk, &wg.dk, gtol);
                close(&gg.dv, &wg.dv, gtol);
            }
        }
    }
}

/// Decoding shapes (1 to 4 queries), which split the keys across blocks and merge the
/// splits by their log-sum-exps: one split, several (a ragged last one), and causal rows
/// that see no key at all (output 0, lse -inf), each head size, f32 and bf16, against
/// the CPU in f32 on the same inputs; and for 4 queries the gradients through the saved lse.
#[test]
fn decoding_attention_splits_the_keys_as_the_cpu_computes_them_whole() {
    if !gpu() {
        return;
    }
    let f32s = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    for (bh, nq, nk, d) in [(2, 1, 1100, 64), (1, 4, 300, 32), (3, 3, 2, 128), (2, 2, 129, 128), (300, 1, 70, 64)] {
        for dtype in [DType::F32, DType::BF16] {
            let tol = if dtype == DType::F32 { 1e-4 } else { 3e-2 };
            let low = |t: Tensor| t.to_dtype(dtype).unwrap();
            let (qs, ks) = ([bh, 1, nq, d], [bh, 1, nk, d]);
            let (q, k, v, dout) = (low(rnd(&qs, 90)), low(rnd(&ks, 91)), low(rnd(&ks, 92)), low(rnd(&qs, 93)));
            for causal in [false, true] {
                let opts = AttentionOpts { causal, ..Default::default() };
                let what = format!("{bh} heads, {nq} queries, {nk} keys, d {d}, {dtype:?}, causal {causal}");
                let want = f32s(&q).flash_attention(&f32s(&k), &f32s(&v), &opts).unwrap();
                let g = |t: &Tensor| t.to_device(GPU).unwrap();
                let got = g(&q).flash_attention(&g(&k), &g(&v), &opts).unwrap();
                close(&got.out, &want.out, tol);
                let (gl, wl) = (got.lse.to_vec_f32().unwrap(), want.lse.to_vec_f32().unwrap());
                for (a, b) in gl.iter().zip(&wl) {
                    assert!(a == b || (a - b).abs() <= tol * (1.0 + b.abs()), "{what}: lse {a} vs {b}");
                }
                if causal && nk < nq {
                    assert_eq!(wl[0], f32::NEG_INFINITY, "{what}: the first query sees no key");
                }
                if nq == 4 {
                    let (_, wg) = attention_and_grads([&f32s(&q), &f32s(&k), &f32s(&v), &f32s(&dout)], None, &opts);
                    let (_, gg) = attention_and_grads([&g(&q), &g(&k), &g(&v), &g(&dout)], None, &opts);
                    close(&gg.dq, &wg.dq, 2.0 * tol);
                    close(&gg.dv, &wg.dv, 2.0 * tol);
                }
            }
        }
    }
}

/// A key cache on the device: `slice_assign` writes new positions (from a transposed
/// source) in place as on the CPU, a clone taken before keeps its values, and flash
/// attention forward and backward read keys and values as views of the longer buffer (their
/// heads further apart than their rows) as the CPU reads them packed; f32 and bf16.
#[test]
fn attention_reads_a_key_cache_in_place_as_the_cpu_reads_it_packed() {
    if !gpu() {
        return;
    }
    for dtype in [DType::F32, DType::BF16] {
        let (tol, gtol) = if dtype == DType::F32 { (1e-4, 1e-4) } else { (3e-2, 5e-2) };
        let low = |t: Tensor| t.to_dtype(dtype).unwrap();
        // A (2, 3, 200, 64) cache holding 150 positions, the last 20 written as a transposed view.
        let (mut kc, mut vc) = (Tensor::zeros([2, 3, 200, 64], dtype), Tensor::zeros([2, 3, 200, 64], dtype));
        let (k_old, v_old) = (low(rnd(&[2, 3, 130, 64], 80)), low(rnd(&[2, 3, 130, 64], 81)));
        let (k_new, v_new) = (low(rnd(&[2, 3, 64, 20], 82)), low(rnd(&[2, 3, 64, 20], 83)));
        let (mut kg, mut vg) = (kc.to_device(GPU).unwrap(), vc.to_device(GPU).unwrap());
        for (c, g, old, new) in [(&mut kc, &mut kg, &k_old, &k_new), (&mut vc, &mut vg, &v_old, &v_new)] {
            c.slice_assign(2, 0, old).unwrap();
            g.slice_assign(2, 0, &old.to_device(GPU).unwrap()).unwrap();
            let before = g.clone();
            c.slice_assign(2, 130, &new.t().unwrap()).unwrap();
            g.slice_assign(2, 130, &new.to_device(GPU).unwrap().t().unwrap()).unwrap();
            assert_eq!(g.device(), GPU);
            close(g, c, 0.0);
            close(&before.narrow(2, 130, 20).unwrap(), &Tensor::zeros([2, 3, 20, 64], dtype), 0.0);
        }
        let (k, v) = (kg.narrow(2, 0, 150).unwrap(), vg.narrow(2, 0, 150).unwrap());
        let f32s = |t: &Tensor| t.to_dtype(DType::F32).unwrap().contiguous().unwrap();
        let (kp, vp) = (f32s(&kc.narrow(2, 0, 150).unwrap()), f32s(&vc.narrow(2, 0, 150).unwrap()));
        for nq in [1, 70] {
            let (q, dout) = (low(rnd(&[2, 3, nq, 64], 84)), low(rnd(&[2, 3, nq, 64], 85)));
            let opts = AttentionOpts { causal: true, ..Default::default() };
            let (want, wg) = attention_and_grads([&f32s(&q), &kp, &vp, &f32s(&dout)], None, &opts);
            let (qg, dg) = (q.to_device(GPU).unwrap(), dout.to_device(GPU).unwrap());
            let (got, gg) = attention_and_grads([&qg, &k, &v, &dg], None, &opts);
            close(&got.out, &want.out, tol);
            close(&gg.dq, &wg.dq, gtol);
            close(&gg.dk, &wg.dk, gtol);
            close(&gg.dv, &wg.dv, gtol);
        }
    }
}

/// Scatterbrain composed on the GPU (block-sparse kernels for the band, batched products
/// for the low-rank part) against the fused CPU kernel: f32 and bf16 (the CPU in f32 on
/// the same bf16-rounded inputs), causal or not, seq 200 (a ragged last block), window 1.
#[test]
fn scatterbrain_composed_on_the_gpu_matches_the_cpu() {
    if !gpu() {
        return;
    }
    let sb = monarch_tensor::Scatterbrain { features: 32, block: 64, window: 1, seed: 9 };
    let shape = [2, 2, 200, 64];
    for dtype in [DType::F32, DType::BF16] {
        let (tol, gtol) = if dtype == DType::F32 { (1e-4, 1e-3) } else { (3e-2, 5e-2) };
        let low = |t: Tensor| t.to_dtype(dtype).unwrap();
        let (q, k, v, dout) = (low(rnd(&shape, 50)), low(rnd(&shape, 51)), low(rnd(&shape, 52)), low(rnd(&shape, 53)));
        let f32s = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let on_gpu = |t: &Tensor| t.to_device(GPU).unwrap();
        let (qc, kc, vc, dc) = (f32s(&q), f32s(&k), f32s(&v), f32s(&dout));
        let (qg, kg, vg, dg) = (on_gpu(&q), on_gpu(&k), on_gpu(&v), on_gpu(&dout));
        for causal in [false, true] {
            let opts = AttentionOpts { causal, ..Default::default() };
            let want = qc.scatterbrain_attention(&kc, &vc, &sb, &opts).unwrap();
            let got = qg.scatterbrain_attention(&kg, &vg, &sb, &opts).unwrap();
            assert_eq!((got.out.device(), got.out.dtype()), (GPU, dtype));
            close(&got.out, &want.out, tol);
            close(&got.lse, &want.lse, tol);
            let wg = Tensor::scatterbrain_attention_backward(&qc, &kc, &vc, &sb, &want, &dc, &opts).unwrap();
            let gg = Tensor::scatterbrain_attention_backward(&qg, &kg, &vg, &sb, &got, &dg, &opts).unwrap();
            close(&gg.dq, &wg.dq, gtol);
            close(&gg.dk, &wg.dk, gtol);
            close(&gg.dv, &wg.dv, gtol);
        }
    }
}

/// The butterfly product's kernels against the CPU: f32 and bf16 (the CPU in f32 on the
/// same bf16-rounded inputs), inputs padded to the size, stacks truncated or unused,
/// leading dimensions, several rows a block and one row a block (n = 8192); a size over
/// the kernels' runs through the host, its results back on the device.
#[test]
fn butterfly_on_the_gpu_matches_the_cpu() {
    if !gpu() {
        return;
    }
    // (leading dims, inputs, log2 n, stacks, outputs)
    let cases: [(&[usize], usize, usize, usize, usize); 5] = [
        (&[3, 5], 13, 4, 2, 20),
        (&[70], 64, 6, 2, 50),
        (&[300], 768, 10, 3, 3072),
        (&[4], 8192, 13, 1, 8000),
        (&[2], 9000, 14, 1, 16384),
    ];
    for (lead, inp, log_n, stacks, out) in cases {
        for dtype in [DType::F32, DType::BF16] {
            let (tol, gtol) = if dtype == DType::F32 { (1e-4, 1e-3) } else { (2e-2, 5e-2) };
            let low = |t: Tensor| t.to_dtype(dtype).unwrap();
            let n = 1usize << log_n;
            let xs: Vec<usize> = lead.iter().copied().chain([inp]).collect();
            let gs: Vec<usize> = lead.iter().copied().chain([out]).collect();
            // Twiddles of variance 1/2: values keep their size through the factors.
            let tw = low(rnd(&[stacks, log_n, n / 2, 2, 2], 61).affine(std::f64::consts::FRAC_1_SQRT_2, 0.0).unwrap());
            let (x, dy) = (low(rnd(&xs, 60)), low(rnd(&gs, 62)));
            let f32s = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let want = f32s(&x).butterfly_mul(&f32s(&tw), out).unwrap();
            let got = x.to_device(GPU).unwrap().butterfly_mul(&tw.to_device(GPU).unwrap(), out).unwrap();
            assert_eq!((got.device(), got.dtype()), (GPU, dtype));
            close(&got, &want, tol);
            let (wx, wt) = Tensor::butterfly_backward(&f32s(&x), &f32s(&tw), &f32s(&dy)).unwrap();
            let on = |t: &Tensor| t.to_device(GPU).unwrap();
            let (gx, gt) = Tensor::butterfly_backward(&on(&x), &on(&tw), &on(&dy)).unwrap();
            close(&gx, &wx, gtol);
            close(&gt, &wt, gtol);
        }
    }
}

#[test]
fn a_gpt2_step_on_the_gpu_matches_the_cpu() {
    if !gpu() {
        return;
    }
    use monarch_nn::Ctx;
    use monarch_nn::models::{Gpt2, Gpt2Config};
    for kind in [LinearKind::Dense, LinearKind::Monarch { nblocks: 4 }] {
        let cfg = Gpt2Config {
            vocab_size: 97,
            block_size: 64,
            n_layer: 2,
            n_head: 2,
            n_embd: 64,
            dropout: 0.0,
            attn_linear: kind.clone(),
            mlp_linear: kind.clone(),
            ..Gpt2Config::small()
        };
        let (cpu, dev) = (Gpt2::new(&cfg, 3).unwrap(), Gpt2::new(&cfg, 3).unwrap());
        monarch_nn::to_device(&dev, GPU).unwrap();
        let toks = |seed: u64| {
            let v: Vec<i64> = (0..2 * 64).map(|i| ((i as u64 * 2654435761 + seed * 97) % 97) as i64).collect();
            Tensor::from_vec(v, [2, 64]).unwrap()
        };
        let (x, y) = (toks(1), toks(2));
        let step = |m: &Gpt2| {
            let loss = m.loss(&x, &y, -1, &Ctx::eval()).unwrap();
            let grads = loss.backward().unwrap();
            let mut all = vec![loss.value().clone()];
            all.extend(monarch_nn::Module::named_params(m).iter().map(|(_, p)| grads.get(p).unwrap().clone()));
            all
        };
        for (i, (g, c)) in step(&dev).iter().zip(step(&cpu)).enumerate() {
            close(g, &c, 2e-3);
            assert!(i == 0 || g.device() == GPU, "{kind:?} gradient {i} left the GPU");
        }
    }
}

/// Cached decoding on the GPU (a prefill of 4, then single tokens and a pair: fewer
/// queries than keys, through the flash kernels) gives the CPU's hidden states, in f32
/// and with the weights in bf16 (the split-key decoding kernels of both dtypes).
#[test]
fn cached_gpt2_decoding_on_the_gpu_matches_the_cpu() {
    if !gpu() {
        return;
    }
    use monarch_nn::models::{Gpt2, Gpt2Cache, Gpt2Config};
    let cfg = Gpt2Config { vocab_size: 97, block_size: 16, n_layer: 2, n_head: 2, n_embd: 64, ..Gpt2Config::small() };
    let ids: Vec<i64> = (0..8).map(|i| (i * 37 + 11) % 97).collect();
    let ids = Tensor::from_vec(ids, [1, 8]).unwrap();
    for dtype in [DType::F32, DType::BF16] {
        let (cpu, dev) = (Gpt2::new(&cfg, 5).unwrap(), Gpt2::new(&cfg, 5).unwrap());
        for m in [&cpu, &dev] {
            monarch_nn::params_to_dtype(&monarch_nn::Module::named_params(m), dtype).unwrap();
        }
        monarch_nn::to_device(&dev, GPU).unwrap();
        let (mut cc, mut gc) = (Gpt2Cache::default(), Gpt2Cache::default());
        for (start, len) in [(0, 4), (4, 1), (5, 1), (6, 2)] {
            let part = ids.narrow(1, start, len).unwrap().contiguous().unwrap();
            let want = cpu.hidden_cached(&part, &mut cc).unwrap();
            let got = dev.hidden_cached(&part, &mut gc).unwrap();
            assert_eq!((got.value().device(), got.value().dtype()), (GPU, dtype));
            match dtype {
                DType::F32 => close(got.value(), want.value(), 1e-3),
                _ => close_to_scale(got.value(), want.value(), 2e-2),
            }
        }
    }
}

/// `t` rounded to bf16 and back: the values a bf16 computation and its f32 CPU reference
/// share.
fn bf16_rounded(t: &Tensor) -> Tensor {
    t.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap()
}

/// `got` equals `want` within `tol` of `want`'s largest magnitude (bf16 sums of many terms).
fn close_to_scale(got: &Tensor, want: &Tensor, tol: f32) {
    let scale = want.to_vec_f32().unwrap().iter().fold(1e-6f32, |m, v| m.max(v.abs())) as f64;
    close(&got.mul_scalar(1.0 / scale).unwrap(), &want.mul_scalar(1.0 / scale).unwrap(), tol);
}

/// Block-sparse layers with blocks of 32 and 64 (the kernels' other two tile shapes; the
/// layer test above uses 16), in f32 and in bf16 (the CPU in f32 on the same bf16-rounded
/// weights and inputs): output, input gradient and weight gradient on the stored blocks.
#[test]
fn block_sparse_layers_of_blocks_32_and_64_match_the_cpu_in_f32_and_bf16() {
    if !gpu() {
        return;
    }
    for (block, inp, out) in [(32, 128, 256), (32, 256, 128), (64, 256, 512), (64, 512, 256)] {
        let kind = LinearKind::BlockSparse { butterfly_size: 4, n_factors: 2, block };
        for dt in [DType::F32, DType::BF16] {
            let cpu = kind.build(inp, out, true, &mut StdRng::seed_from_u64(30)).unwrap();
            let dev = kind.build(inp, out, true, &mut StdRng::seed_from_u64(30)).unwrap();
            for ((_, c), (_, g)) in cpu.named_params().iter().zip(dev.named_params()) {
                c.update(|v| bf16_rounded(v).to_dtype(DType::F32).map(|r| *v = r)).unwrap();
                g.update(|v| bf16_rounded(v).to_dtype(dt).map(|r| *v = r)).unwrap();
            }
            monarch_nn::to_device(&*dev, GPU).unwrap();
            let (x, dy) = (bf16_rounded(&rnd(&[3, 30, inp], 31)), bf16_rounded(&rnd(&[3, 30, out], 32)));
            let run = |layer: &dyn monarch_nn::LinearLayer, d: Device, dt: DType| {
                let xv = Var::leaf(x.to_dtype(dt).unwrap().to_device(d).unwrap());
                let y = layer.forward(&xv).unwrap();
                let mut grads = Gradients::new();
                y.backward_with(dy.to_dtype(dt).unwrap().to_device(d).unwrap(), &mut grads).unwrap();
                let mut all = vec![y.value().clone(), grads.get(&xv).unwrap().clone()];
                all.extend(layer.named_params().iter().map(|(_, p)| grads.get(p).unwrap().clone()));
                all
            };
            let tol = if dt == DType::F32 { 1e-4 } else { 2e-2 };
            let want = run(&*cpu, Device::Cpu, DType::F32);
            for (i, (g, c)) in run(&*dev, GPU, dt).iter().zip(&want).enumerate() {
                assert_eq!((g.device(), g.dtype()), (GPU, dt), "block {block} {inp}->{out} output {i}");
                close_to_scale(g, c, tol);
            }
        }
    }
}

/// Attention with head_dim 128 (the kernels' largest head, its own tiles and shared
/// memory), causal or not, in f32 and bf16, with a ragged last block (seq 150).
#[test]
fn head_dim_128_attention_matches_the_cpu_in_f32_and_bf16() {
    if !gpu() {
        return;
    }
    let shape = [1, 2, 150, 128];
    let (q, k, v, dout) = (
        bf16_rounded(&rnd(&shape, 70)),
        bf16_rounded(&rnd(&shape, 71)),
        bf16_rounded(&rnd(&shape, 72)),
        bf16_rounded(&rnd(&shape, 73)),
    );
    for dt in [DType::F32, DType::BF16] {
        let on_gpu = |t: &Tensor| t.to_dtype(dt).unwrap().to_device(GPU).unwrap();
        let (qg, kg, vg, dg) = (on_gpu(&q), on_gpu(&k), on_gpu(&v), on_gpu(&dout));
        let tol = if dt == DType::F32 { 1e-4 } else { 3e-2 };
        for causal in [false, true] {
            let opts = AttentionOpts { causal, ..Default::default() };
            let want = q.flash_attention(&k, &v, &opts).unwrap();
            let got = qg.flash_attention(&kg, &vg, &opts).unwrap();
            assert_eq!((got.out.dtype(), got.out.dims()), (dt, &shape[..]));
            close_to_scale(&got.out, &want.out, tol);
            close(&got.lse, &want.lse, tol);
            let wg = Tensor::flash_attention_backward(&q, &k, &v, &want, &dout, &opts).unwrap();
            let gg = Tensor::flash_attention_backward(&qg, &kg, &vg, &got, &dg, &opts).unwrap();
            for (name, g, w) in [("dq", &gg.dq, &wg.dq), ("dk", &gg.dk, &wg.dk), ("dv", &gg.dv, &wg.dv)] {
                assert_eq!(g.dtype(), dt, "{name}");
                close_to_scale(g, w, 2.0 * tol);
            }
        }
    }
}

/// An f32 Monarch layer over 300 rows: its weight-gradient products have too few output
/// tiles to fill the device, so they split K (`grouped_gemm_splits_f32` sums the splits).
#[test]
fn f32_monarch_weight_gradients_split_over_long_batches_match_the_cpu() {
    if !gpu() {
        return;
    }
    let kind = LinearKind::Monarch { nblocks: 4 };
    let cpu = kind.build(64, 64, true, &mut StdRng::seed_from_u64(80)).unwrap();
    let dev = kind.build(64, 64, true, &mut StdRng::seed_from_u64(80)).unwrap();
    monarch_nn::to_device(&*dev, GPU).unwrap();
    let (x, dy) = (rnd(&[2, 150, 64], 81), rnd(&[2, 150, 64], 82));
    let run = |layer: &dyn monarch_nn::LinearLayer, d: Device| {
        let xv = Var::leaf(x.to_device(d).unwrap());
        let y = layer.forward(&xv).unwrap();
        let mut grads = Gradients::new();
        y.backward_with(dy.to_device(d).unwrap(), &mut grads).unwrap();
        layer.named_params().iter().map(|(_, p)| grads.get(p).unwrap().clone()).collect::<Vec<_>>()
    };
    for (g, c) in run(&*dev, GPU).iter().zip(run(&*cpu, Device::Cpu)) {
        close_to_scale(g, &c, 1e-5);
    }
}

/// Kernel variants the tests above do not reach: i64 and u8 views made contiguous on the
/// device, selection between u8 values, and bf16 reductions along rows and along columns.
#[test]
fn integer_views_u8_selection_and_bf16_reductions_match_the_cpu() {
    if !gpu() {
        return;
    }
    let mv = |t: &Tensor| t.to_device(GPU).unwrap();
    let tokens: Vec<i64> = (0..60).map(|i| (1i64 << 50) + i * 7919).collect();
    let tokens = Tensor::from_vec(tokens, [3, 4, 5]).unwrap();
    let bytes = Tensor::from_vec((0..60).map(|i| (i * 37 % 251) as u8).collect::<Vec<u8>>(), [3, 4, 5]).unwrap();
    let view = |t: &Tensor| t.permute(&[2, 0, 1]).unwrap().contiguous().unwrap();
    let on_gpu = view(&mv(&tokens));
    assert_eq!((on_gpu.device(), on_gpu.dtype()), (GPU, DType::I64));
    assert_eq!(on_gpu.to_vec::<i64>().unwrap(), view(&tokens).to_vec::<i64>().unwrap());
    assert_eq!(view(&mv(&bytes)).to_vec::<u8>().unwrap(), view(&bytes).to_vec::<u8>().unwrap());
    let mask = bytes.gt(&Tensor::scalar(100u8)).unwrap();
    let other = Tensor::full(7.0, [5], DType::U8);
    let want = mask.where_cond(&bytes, &other).unwrap().to_vec::<u8>().unwrap();
    assert_eq!(mv(&mask).where_cond(&mv(&bytes), &mv(&other)).unwrap().to_vec::<u8>().unwrap(), want);

    let x = bf16_rounded(&rnd(&[37, 300], 83));
    let gx = mv(&x.to_dtype(DType::BF16).unwrap());
    for dim in [0, 1] {
        let (s, m) = (gx.sum(dim).unwrap(), gx.max(dim).unwrap());
        assert_eq!((s.dtype(), m.dtype()), (DType::BF16, DType::BF16));
        close_to_scale(&s, &x.sum(dim).unwrap(), 1e-2);
        close(&m, &x.max(dim).unwrap(), 0.0);
        assert_eq!(gx.argmax(dim).unwrap().to_vec::<i64>().unwrap(), x.argmax(dim).unwrap().to_vec::<i64>().unwrap());
    }
    // A long bf16 row is widened before it folds into (f32) column partials.
    let long = bf16_rounded(&rnd(&[1 << 17], 87));
    let sum = mv(&long.to_dtype(DType::BF16).unwrap()).sum_all().unwrap();
    assert_eq!(sum.dtype(), DType::BF16);
    close_to_scale(&sum, &long.sum_all().unwrap(), 1e-2);
}

/// `add_matmul` on the device (one cuBLASLt GEMM with beta 1) against the CPU: bf16
/// products into f32 with a transposed operand (the fused head's weight-gradient sum),
/// and f32 and bf16 into their own dtype; another handle of the old sum stays as it was.
#[test]
fn add_matmul_on_the_gpu_matches_the_cpu() {
    if !gpu() {
        return;
    }
    let (g, x) = (bf16_rounded(&rnd(&[40, 24], 90)), bf16_rounded(&rnd(&[40, 16], 91)));
    let sum = rnd(&[24, 16], 92);
    for (acc_dt, in_dt) in [(DType::F32, DType::BF16), (DType::F32, DType::F32), (DType::BF16, DType::BF16)] {
        let (gt, xt) = (g.to_dtype(in_dt).unwrap(), x.to_dtype(in_dt).unwrap());
        let mut want = sum.to_dtype(acc_dt).unwrap();
        let mut got = want.to_device(GPU).unwrap();
        let old = got.clone();
        for _ in 0..2 {
            want.add_matmul(&gt.t().unwrap(), &xt).unwrap();
            got.add_matmul(&gt.to_device(GPU).unwrap().t().unwrap(), &xt.to_device(GPU).unwrap()).unwrap();
        }
        assert_eq!((got.device(), got.dtype()), (GPU, acc_dt));
        close_to_scale(&got, &want, if acc_dt == DType::BF16 { 1e-2 } else { 1e-5 });
        close(&old, &sum.to_dtype(acc_dt).unwrap(), 0.0);
    }
}
