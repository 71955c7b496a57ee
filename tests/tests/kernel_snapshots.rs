//! The kernel suite's snapshots. Each case runs one kernel family's op on fixed seeded
//! inputs. On the CPU (f64) its outputs are summarised (shape, mean magnitude, sum and
//! first values in units of it) and compared with the snapshot in `snapshots/`, so a
//! change to a CPU reference shows up as a diff; on a GPU (without one, as in CI, on
//! the emulated device, which runs the same kernels on the CPU) the same case runs in
//! f32 and bf16 and must match the exact (f64) result on the same input values, rounded
//! to the dtype, within the dtype's tolerance relative to the output's mean magnitude:
//! 2e-5 for f32, 4e-2 for bf16 (whose kernels round intermediates too: attention's
//! gradients, measured on the emulator, are off by up to 3e-2 of it).

use monarch_tensor::ops::sgd_step;
use monarch_tensor::{
    AdamW, AttentionOpts, BlockMask, BlockSparsePlan, CrossEntropy, DType, Device, FlatButterfly, Tensor, UnaryOp,
    cuda_device,
};

/// A kernel family's op on inputs of `dt` placed on `dev`, returning its outputs.
type Case = fn(Device, DType) -> Vec<Tensor>;

thread_local! {
    /// The dtype inputs are rounded through before they take theirs: the GPU run's, when
    /// the CPU computes its reference in f64 from the same values.
    static ROUND_TO: std::cell::Cell<DType> = const { std::cell::Cell::new(DType::F64) };
}

/// Seeded N(0, 1) input of `shape`, as `dt` on `dev` (through [`ROUND_TO`] first).
fn input(shape: &[usize], seed: u64, dev: Device, dt: DType) -> Tensor {
    Tensor::randn(shape, 0.0, 1.0, seed)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_dtype(ROUND_TO.get())
        .unwrap()
        .to_dtype(dt)
        .unwrap()
        .to_device(dev)
        .unwrap()
}

fn copy(d: Device, t: DType) -> Vec<Tensor> {
    let x = input(&[5, 7], 1, d, t);
    vec![x.t().unwrap().contiguous().unwrap(), x.narrow(1, 2, 3).unwrap().contiguous().unwrap()]
}

fn binary(d: Device, t: DType) -> Vec<Tensor> {
    let (a, b, c) = (input(&[3, 4, 8], 2, d, t), input(&[8], 3, d, t), input(&[3, 1, 8], 4, d, t));
    vec![
        a.add(&b).unwrap(),
        a.mul(&c).unwrap(),
        a.sub(&c).unwrap().div(&b.unary(UnaryOp::Abs).unwrap().add_scalar(1.0).unwrap()).unwrap(),
    ]
}

/// Comparisons and selection (binary.cu's cmp and where), on comparisons whose outcome
/// no rounding can flip: `a > a/2` is `a > 0` in every dtype.
fn select(d: Device, t: DType) -> Vec<Tensor> {
    let (a, b) = (input(&[3, 4, 8], 35, d, t), input(&[8], 36, d, t));
    let positive = a.gt(&a.mul_scalar(0.5).unwrap()).unwrap();
    vec![
        positive.to_dtype(t).unwrap(),
        positive.where_cond(&a, &b).unwrap(),
        b.masked_fill(&b.lt(&b.mul_scalar(2.0).unwrap()).unwrap(), -1.5).unwrap(),
    ]
}

fn unary(d: Device, t: DType) -> Vec<Tensor> {
    let (x, g) = (input(&[300], 5, d, t), input(&[300], 6, d, t));
    let y = x.gelu_tanh().unwrap();
    vec![y, Tensor::unary_backward(UnaryOp::GeluTanh, &x, &g).unwrap(), x.unary(UnaryOp::Sigmoid).unwrap()]
}

fn reduce(d: Device, t: DType) -> Vec<Tensor> {
    let x = input(&[37, 65], 7, d, t);
    vec![x.sum(0).unwrap(), x.sum(1).unwrap(), x.max(1).unwrap(), x.argmax(0).unwrap()]
}

fn softmax(d: Device, t: DType) -> Vec<Tensor> {
    let (x, g) = (input(&[9, 70], 8, d, t), input(&[9, 70], 9, d, t));
    let y = x.softmax(-1).unwrap();
    vec![y.clone(), Tensor::softmax_backward(&y, &g, -1, false).unwrap()]
}

fn layer_norm(d: Device, t: DType) -> Vec<Tensor> {
    let (x, g) = (input(&[12, 96], 10, d, t), input(&[12, 96], 11, d, t));
    let (w, b) = (input(&[96], 12, d, t), input(&[96], 13, d, t));
    let f = x.layer_norm(Some(&w), Some(&b), 1e-5).unwrap();
    let (dx, dw, db) = Tensor::layer_norm_backward(&x, Some(&w), &f.mean, &f.rstd, &g).unwrap();
    vec![f.y, dx, dw, db]
}

fn cross_entropy(d: Device, t: DType) -> Vec<Tensor> {
    let logits = input(&[10, 37], 14, d, t);
    let targets = Tensor::from_vec(vec![0i64, 36, 5, -100, 5, 12, 30, 7, 1, 2], 10).unwrap();
    let o = CrossEntropy { ignore_index: Some(-100), label_smoothing: 0.1 };
    let (loss, lse) = logits.cross_entropy(&targets, o).unwrap();
    vec![loss, Tensor::cross_entropy_backward(&logits, &targets, &lse, &Tensor::scalar(0.5f32), o).unwrap()]
}

fn embedding(d: Device, t: DType) -> Vec<Tensor> {
    let table = input(&[13, 16], 15, d, t);
    let ids = Tensor::from_vec(vec![4i64, 0, 12, 4, 9, 4], 6).unwrap();
    let src = input(&[6, 16], 16, d, t);
    vec![table.index_select(&ids, 0).unwrap(), table.index_add(&ids, &src, 0).unwrap()]
}

/// The per-element forms of embedding.cu: gather and scatter-add along a middle dimension.
fn gather(d: Device, t: DType) -> Vec<Tensor> {
    let x = input(&[3, 5, 4], 37, d, t);
    let idx: Vec<i64> = (0..3 * 6 * 4).map(|i| (i * 7 % 5) as i64).collect();
    let idx = Tensor::from_vec(idx, [3, 6, 4]).unwrap();
    let src = input(&[3, 6, 4], 38, d, t);
    vec![x.gather(&idx, 1).unwrap(), x.scatter_add(&idx, &src, 1).unwrap()]
}

fn matmul(d: Device, t: DType) -> Vec<Tensor> {
    let (a, b) = (input(&[33, 40], 17, d, t), input(&[40, 17], 18, d, t));
    let batched = input(&[2, 3, 9, 40], 19, d, t);
    vec![a.matmul(&b).unwrap(), b.t().unwrap().matmul(&a.t().unwrap()).unwrap(), batched.matmul(&b).unwrap()]
}

fn monarch(d: Device, t: DType) -> Vec<Tensor> {
    // MonarchLinear(30 → 50, 4 blocks): blocks of 8 inputs, 13 outputs.
    let (x, g) = (input(&[6, 30], 20, d, t), input(&[6, 50], 21, d, t));
    let (w1, w2, b) = (input(&[4, 8, 8], 22, d, t), input(&[4, 13, 8], 23, d, t), input(&[50], 24, d, t));
    let f = x.monarch_linear(&w1, &w2, Some(&b), 50).unwrap();
    let [dx, dw1, dw2] = Tensor::monarch_backward(&x, &w1, &w2, &f.mid, &g, [true; 3]).unwrap();
    vec![f.y, dx.unwrap(), dw1.unwrap(), dw2.unwrap()]
}

fn block_sparse(d: Device, t: DType) -> Vec<Tensor> {
    let cfg = FlatButterfly { butterfly_size: 4, n_factors: 1, block: 16, global_size: 0, shuffle: false };
    let plan = BlockSparsePlan::new(BlockMask::flat_butterfly(64, 128, cfg).unwrap());
    let (x, g) = (input(&[5, 128], 25, d, t), input(&[5, 64], 26, d, t));
    let values = input(&[plan.values_len()], 27, d, t);
    let y = x.block_sparse_linear(&values, &plan, None).unwrap();
    let [dx, dv] = Tensor::block_sparse_backward(&x, &values, &plan, &g, [true; 2]).unwrap();
    vec![y, dx.unwrap(), dv.unwrap()]
}

fn butterfly(d: Device, t: DType) -> Vec<Tensor> {
    // 13 inputs padded to 16; two stacks of 16 truncated to 20 outputs.
    let (x, tw, g) = (input(&[7, 13], 42, d, t), input(&[2, 4, 8, 2, 2], 43, d, t), input(&[7, 20], 44, d, t));
    let y = x.butterfly_mul(&tw, 20).unwrap();
    let (dx, dtw) = Tensor::butterfly_backward(&x, &tw, &g).unwrap();
    vec![y, dx, dtw]
}

fn flash_attention(d: Device, t: DType) -> Vec<Tensor> {
    let shape = [1, 2, 128, 32];
    let (q, k, v, g) =
        (input(&shape, 28, d, t), input(&shape, 29, d, t), input(&shape, 30, d, t), input(&shape, 31, d, t));
    let opts = AttentionOpts { causal: true, ..Default::default() };
    let f = q.flash_attention(&k, &v, &opts).unwrap();
    let grads = Tensor::flash_attention_backward(&q, &k, &v, &f, &g, &opts).unwrap();
    vec![f.out, grads.dq, grads.dk, grads.dv]
}

fn dropout(d: Device, t: DType) -> Vec<Tensor> {
    vec![input(&[500], 32, d, t).dropout(0.3, 77).unwrap()]
}

fn adamw(d: Device, _: DType) -> Vec<Tensor> {
    // The update is defined on f32 parameters and moments.
    let f32s = |seed| input(&[700], seed, d, DType::F32);
    let (mut p, g) = (f32s(33), f32s(34));
    let (mut m, mut v) =
        (Tensor::zeros_on([700], DType::F32, d).unwrap(), Tensor::zeros_on([700], DType::F32, d).unwrap());
    let opt = AdamW { lr: 1e-2, ..AdamW::default() };
    for step in 1..=3 {
        opt.step(&mut p, &g, &mut m, &mut v, step).unwrap();
    }
    vec![p, m, v]
}

fn sgd(d: Device, _: DType) -> Vec<Tensor> {
    // The update is defined on f32 parameters and velocity.
    let (mut p, g) = (input(&[700], 39, d, DType::F32), input(&[700], 40, d, DType::F32));
    let mut buf = Tensor::zeros_on([700], DType::F32, d).unwrap();
    for _ in 0..3 {
        sgd_step(&mut p, &g, Some(&mut buf), 0.1, 0.9, 0.01).unwrap();
    }
    let mut plain = input(&[700], 41, d, DType::F32);
    sgd_step(&mut plain, &g, None, 0.1, 0.0, 0.01).unwrap();
    vec![p, buf, plain]
}

const CASES: [(&str, Case); 18] = [
    ("copy", copy),
    ("binary", binary),
    ("select", select),
    ("unary", unary),
    ("reduce", reduce),
    ("softmax", softmax),
    ("layer_norm", layer_norm),
    ("cross_entropy", cross_entropy),
    ("embedding", embedding),
    ("gather", gather),
    ("matmul", matmul),
    ("monarch", monarch),
    ("block_sparse", block_sparse),
    ("butterfly", butterfly),
    ("flash_attention", flash_attention),
    ("dropout", dropout),
    ("adamw", adamw),
    ("sgd", sgd),
];

/// Shape, mean magnitude, and the sum and first values in units of that magnitude rounded
/// to 6 decimals (so that sums that cancel to rounding noise read 0 on every machine).
fn summary(outputs: &[Tensor]) -> String {
    let mut s = String::new();
    for (i, t) in outputs.iter().enumerate() {
        let v = t.to_vec_f64().unwrap();
        let scale = v.iter().map(|x| x.abs()).sum::<f64>() / v.len().max(1) as f64;
        // `+ 0.0` turns a rounded -0 into 0.
        let unit = |x: f64| if scale > 0.0 { (x / scale * 1e6).round() / 1e6 + 0.0 } else { x };
        let first: Vec<String> = v.iter().take(4).map(|&x| format!("{:.6}", unit(x))).collect();
        s += &format!(
            "output {i}: shape {:?} mean|x| {scale:.6e} sum {:.6} first [{}]\n",
            t.dims(),
            unit(v.iter().sum::<f64>()),
            first.join(", ")
        );
    }
    s
}

#[test]
fn cpu_references_match_their_snapshots() {
    for (name, case) in CASES {
        insta::assert_snapshot!(name, summary(&case(Device::Cpu, DType::F64)));
    }
}

#[test]
fn gpu_kernels_match_the_cpu_references() {
    monarch_cuda::emulator::emulate_without_gpu();
    if let Err(e) = cuda_device(0) {
        eprintln!("SKIPPED: {e}");
        return;
    }
    for (name, case) in CASES {
        for (dt, tol) in [(DType::F32, 2e-5), (DType::BF16, 4e-2)] {
            // The exact result (f64) on the values the GPU run gets.
            ROUND_TO.set(dt);
            let want: Vec<Vec<f64>> = case(Device::Cpu, DType::F64).iter().map(|t| t.to_vec_f64().unwrap()).collect();
            ROUND_TO.set(DType::F64);
            let got = case(Device::Cuda(0), dt);
            assert_eq!(got.len(), want.len(), "{name}");
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let g = g.to_vec_f64().unwrap();
                assert_eq!(g.len(), w.len(), "{name} output {i}");
                let scale = w.iter().map(|x| x.abs()).sum::<f64>() / w.len().max(1) as f64;
                for (j, (a, b)) in g.iter().zip(w).enumerate() {
                    assert!((a - b).abs() <= tol * (b.abs() + scale), "{name} {dt:?} output {i}[{j}]: {a} vs {b}");
                }
            }
        }
    }
}
