//! Every structured linear layer computes exactly what its dense equivalent computes,
//! trains (gradients for every named parameter), round-trips through a checkpoint by
//! name, and reports the kind it was built from.

use monarch_autograd::Var;
use monarch_nn::{Gate, LinearKind, Rank, SeedableRng, StdRng, load_params, save_params};
use monarch_tensor::Tensor;

fn kinds() -> Vec<LinearKind> {
    vec![
        LinearKind::Dense,
        LinearKind::Monarch { nblocks: 4 },
        LinearKind::Monarch { nblocks: 3 },
        LinearKind::BlockDiag { nblocks: 4 },
        LinearKind::LowRank { rank: Rank::Fraction(0.25) },
        LinearKind::Butterfly,
        LinearKind::BlockSparse { butterfly_size: 4, n_factors: 1, block: 16 },
        LinearKind::Pixelfly { butterfly_size: 4, n_factors: 2, block: 16, rank: Rank::Fixed(3), gate: Gate::Half },
        LinearKind::Pixelfly { butterfly_size: 4, n_factors: 1, block: 16, rank: Rank::Fixed(2), gate: Gate::Learned },
    ]
}

/// Shapes each kind supports: block-sparse kinds need multiples of block × butterfly size.
fn shapes(kind: &LinearKind) -> Vec<(usize, usize)> {
    match kind {
        LinearKind::BlockSparse { .. } | LinearKind::Pixelfly { .. } => vec![(64, 128), (128, 64)],
        _ => vec![(48, 48), (30, 22), (22, 37)],
    }
}

fn close(a: &Tensor, b: &Tensor, tol: f32) {
    assert_eq!(a.dims(), b.dims());
    for (x, y) in a.to_vec::<f32>().unwrap().iter().zip(b.to_vec::<f32>().unwrap()) {
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{x} vs {y}");
    }
}

#[test]
fn layers_equal_their_dense_equivalent_and_train() {
    let mut rng = StdRng::seed_from_u64(0);
    for kind in kinds() {
        for (inp, out) in shapes(&kind) {
            let layer = kind.build(inp, out, true, &mut rng).unwrap();
            assert_eq!((layer.in_features(), layer.out_features()), (inp, out), "{kind:?}");
            assert_eq!(layer.kind(), kind);
            let x = Var::constant(Tensor::randn([2, 3, inp], 0.0, 1.0, 7).unwrap());
            let y = layer.forward(&x).unwrap();
            assert_eq!(y.dims(), &[2, 3, out]);
            match layer.to_dense() {
                Ok(dense) => close(y.value(), dense.forward(&x).unwrap().value(), 2e-5),
                Err(e) => assert!(matches!(kind, LinearKind::Pixelfly { gate: Gate::Learned, .. }), "{kind:?}: {e}"),
            }
            // Every named parameter gets a gradient of its own shape.
            let params = layer.named_params();
            let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            for (name, p) in &params {
                let g = grads.get(p).unwrap_or_else(|| panic!("{kind:?}: no gradient for {name}"));
                assert_eq!(g.shape(), p.value().shape(), "{kind:?} {name}");
            }
            assert!(layer.macs_per_row() <= inp * out + inp || matches!(kind, LinearKind::Pixelfly { .. }));
        }
    }
}

#[test]
fn macs_and_parameter_counts_of_the_paper_shapes() {
    let mut rng = StdRng::seed_from_u64(1);
    let dense = LinearKind::Dense.build(1024, 1024, false, &mut rng).unwrap();
    let monarch = LinearKind::Monarch { nblocks: 4 }.build(1024, 1024, false, &mut rng).unwrap();
    assert_eq!(monarch.macs_per_row() * 2, dense.macs_per_row());
    assert_eq!(monarch_nn::param_count(&*monarch) * 2, monarch_nn::param_count(&*dense));
    let fly = LinearKind::BlockSparse { butterfly_size: 16, n_factors: 2, block: 32 };
    let sparse = fly.build(1024, 1024, false, &mut rng).unwrap();
    assert_eq!(sparse.macs_per_row() as f64 / dense.macs_per_row() as f64, 0.1875);
}

#[test]
fn checkpoints_round_trip_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(2);
    for kind in kinds() {
        let (inp, out) = shapes(&kind)[0];
        let a = kind.build(inp, out, true, &mut rng).unwrap();
        let b = kind.build(inp, out, true, &mut rng).unwrap();
        let path = dir.path().join("layer.safetensors");
        save_params(&*a, &path, None).unwrap();
        load_params(&*b, &path, false).unwrap();
        let x = Var::constant(Tensor::randn([4, inp], 0.0, 1.0, 3).unwrap());
        close(a.forward(&x).unwrap().value(), b.forward(&x).unwrap().value(), 0.0);
    }
}

#[test]
fn bad_configurations_are_errors_not_panics() {
    let mut rng = StdRng::seed_from_u64(3);
    let bad = [
        (LinearKind::Monarch { nblocks: 0 }, 16, 16),
        (LinearKind::BlockDiag { nblocks: 0 }, 16, 16),
        (LinearKind::LowRank { rank: Rank::Fixed(20) }, 16, 16),
        (LinearKind::LowRank { rank: Rank::Fraction(0.0) }, 16, 16),
        (LinearKind::BlockSparse { butterfly_size: 4, n_factors: 1, block: 24 }, 96, 96),
        (LinearKind::BlockSparse { butterfly_size: 4, n_factors: 1, block: 16 }, 100, 64),
        (LinearKind::BlockSparse { butterfly_size: 6, n_factors: 1, block: 16 }, 96, 96),
        (LinearKind::Butterfly, 0, 4),
    ];
    for (kind, inp, out) in bad {
        assert!(kind.build(inp, out, true, &mut rng).is_err(), "{kind:?}");
    }
    let layer = LinearKind::Monarch { nblocks: 4 }.build(16, 16, true, &mut rng).unwrap();
    assert!(layer.forward(&Var::constant(Tensor::zeros([2, 15], monarch_tensor::DType::F32))).is_err());
}
