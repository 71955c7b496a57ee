//! Tensors on a GPU against the same ops on the CPU. Without a CUDA driver every test
//! but the first says SKIPPED and returns (CI has no GPU); on a GPU machine run
//! `cargo test -p monarch-tests --release --test cuda_tensors`.

use monarch_autograd::{Gradients, Var};
use monarch_nn::{LinearKind, SeedableRng, StdRng};
use monarch_tensor::{DType, Device, Error, Tensor, cuda_device};

const GPU: Device = Device::Cuda(0);

/// Whether device 0 can be used; says SKIPPED when not.
fn gpu() -> bool {
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
    for dt in [DType::U8, DType::I64, DType::BF16, DType::F16, DType::F32] {
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
}

#[test]
fn layers_train_on_the_gpu_as_on_the_cpu() {
    if !gpu() {
        return;
    }
    for kind in [LinearKind::Dense, LinearKind::Monarch { nblocks: 4 }, LinearKind::Monarch { nblocks: 3 }] {
        for (inp, out) in [(48, 48), (30, 50), (50, 22)] {
            let cpu = kind.build(inp, out, true, &mut StdRng::seed_from_u64(10)).unwrap();
            let dev = kind.build(inp, out, true, &mut StdRng::seed_from_u64(10)).unwrap();
            monarch_nn::to_device(&*dev, GPU).unwrap();
            let (x, dy) = (rnd(&[2, 7, inp], 11), rnd(&[2, 7, out], 12));
            let run = |layer: &dyn monarch_nn::LinearLayer, d: Device| {
                let xv = Var::leaf(x.to_device(d).unwrap());
                let y = layer.forward(&xv).unwrap();
                let mut grads = Gradients::new();
                y.backward_with(dy.to_device(d).unwrap(), &mut grads).unwrap();
                let mut all = vec![y.value().clone(), grads.get(&xv).unwrap().clone()];
                all.extend(layer.named_params().iter().map(|(_, p)| grads.get(p).unwrap().clone()));
                all
            };
            for (i, (g, c)) in run(&*dev, GPU).iter().zip(run(&*cpu, Device::Cpu)).enumerate() {
                assert_eq!(g.device(), GPU, "{kind:?} output {i}");
                close(g, &c, 1e-4);
            }
        }
    }
}
