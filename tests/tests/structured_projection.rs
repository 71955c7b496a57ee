//! Dense → Monarch projection: exact where the matrix is a Monarch matrix (a random
//! one, a Kronecker product, the Walsh–Hadamard matrix), Frobenius-optimal otherwise
//! (the error is the energy of the discarded singular values of each block), and
//! densification inverts it. Also the other projections and their round trips.

use monarch_nn::Linear;
use monarch_nn::structured::project::singular_values;
use monarch_nn::{LinearKind, LinearLayer, MonarchLinear, Rank, SeedableRng, StdRng};
use monarch_tensor::{DType, MonarchShape, Tensor};

fn dense_of(w: Vec<f64>, out: usize, inp: usize) -> Linear {
    Linear::from_weights(Tensor::from_vec(w, [out, inp]).unwrap(), None).unwrap()
}

fn weight(l: &dyn LinearLayer) -> Vec<f64> {
    l.to_dense().unwrap().weight.value().to_vec_f64().unwrap()
}

fn sq_err(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum()
}

fn f64_dense(inp: usize, out: usize, seed: u64) -> Linear {
    let w = Tensor::randn([out, inp], 0.0, 1.0, seed).unwrap().to_dtype(DType::F64).unwrap();
    Linear::from_weights(w, None).unwrap()
}

#[test]
fn projecting_a_monarch_matrix_recovers_it() {
    let mut rng = StdRng::seed_from_u64(0);
    for (inp, out, nb) in [(16, 16, 4), (30, 22, 4), (22, 37, 3), (64, 64, 8)] {
        let m = MonarchLinear::new(inp, out, nb, false, &mut rng).unwrap();
        let w = weight(&m);
        let p = MonarchLinear::project(&dense_of(w.clone(), out, inp), nb).unwrap();
        assert_eq!(p.blkdiag1.value().shape(), m.blkdiag1.value().shape());
        let err = sq_err(&weight(&p), &w).sqrt() / w.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!(err < 1e-6, "{inp}x{out}/{nb}: relative error {err}");
    }
}

/// `A ⊗ B` for A (a×a) and B (b×b).
fn kron(a: &[f64], na: usize, b: &[f64], nb: usize) -> Vec<f64> {
    let n = na * nb;
    (0..n * n).map(|e| (e / n, e % n)).map(|(i, j)| a[(i / nb) * na + j / nb] * b[(i % nb) * nb + j % nb]).collect()
}

#[test]
fn kronecker_products_and_hadamard_are_exact() {
    let a = Tensor::randn([4, 4], 0.0, 1.0, 1).unwrap().to_vec_f64().unwrap();
    let b = Tensor::randn([8, 8], 0.0, 1.0, 2).unwrap().to_vec_f64().unwrap();
    let k = dense_of(kron(&a, 4, &b, 8), 32, 32);
    let hadamard = dense_of(
        (0..64 * 64usize).map(|e| if ((e / 64) & (e % 64)).count_ones() % 2 == 0 { 1.0 } else { -1.0 }).collect(),
        64,
        64,
    );
    for (d, n) in [(&k, 32), (&hadamard, 64)] {
        let w = weight(d);
        let mut projections: Vec<Box<dyn LinearLayer>> = vec![Box::new(MonarchLinear::project_square(d).unwrap())];
        projections.push(LinearKind::Monarch { nblocks: 4 }.project(d).unwrap());
        for p in projections {
            let err = sq_err(&weight(&*p), &w) / sq_err(&w, &vec![0.0; n * n]);
            assert!(err < 1e-24, "{n}: relative squared error {err}");
        }
    }
    // The square projection uses the factor pair closest to √n: 32 = 4·8.
    assert_eq!(MonarchLinear::project_square(&k).unwrap().shape(), MonarchShape { k: 4, q: 8, p: 8, l: 8, s: 4, r: 4 });
}

#[test]
fn random_matrices_lose_exactly_the_discarded_singular_energy() {
    for (inp, out, nb) in [(16, 16, 4), (30, 22, 4), (22, 37, 3), (40, 24, 2)] {
        let d = f64_dense(inp, out, 10 + inp as u64);
        let w = weight(&d);
        let p = MonarchLinear::project(&d, nb).unwrap();
        let MonarchShape { k, q, p: pw, l, s, .. } = p.shape();
        // Independently: each (kk, ll) block keeps its `#{qq : (kk·q+qq) mod l = ll}` largest singular values.
        let w = &w;
        let mut discarded = 0.0;
        for kk in 0..k {
            for ll in 0..l {
                let rank = (0..q).filter(|qq| (kk * q + qq) % l == ll).count();
                let rows: Vec<usize> = (0..s).map(|ss| ss * l + ll).filter(|&r| r < out).collect();
                let cols: Vec<usize> = (0..pw).map(|pp| kk * pw + pp).filter(|&c| c < inp).collect();
                let block: Vec<f64> = rows.iter().flat_map(|&r| cols.iter().map(move |&c| w[r * inp + c])).collect();
                let sv = singular_values(&block, rows.len(), cols.len()).unwrap();
                discarded += sv.iter().skip(rank).map(|x| x * x).sum::<f64>();
            }
        }
        let err = sq_err(&weight(&p), w);
        assert!((err - discarded).abs() < 1e-9 * (1.0 + discarded), "{inp}x{out}/{nb}: {err} vs {discarded}");
        assert!(discarded > 0.0);
        // Optimality: perturbing the projected factors never helps.
        for seed in 0..5 {
            let noise =
                |t: &Tensor| t.add(&Tensor::randn(t.dims(), 0.0, 1e-3, seed).unwrap().to_dtype(DType::F64).unwrap());
            let q = MonarchLinear::from_factors(
                noise(&p.blkdiag1.value()).unwrap(),
                noise(&p.blkdiag2.value()).unwrap(),
                None,
                inp,
                out,
            )
            .unwrap();
            assert!(sq_err(&weight(&q), w) >= err);
        }
    }
}

#[test]
fn other_projections_are_optimal_and_unsupported_ones_say_so() {
    let d = f64_dense(32, 32, 5);
    let w = weight(&d);
    // Low rank: the error is the tail of the singular values.
    let sv = singular_values(&w, 32, 32).unwrap();
    let lr = LinearKind::LowRank { rank: Rank::Fixed(5) }.project(&d).unwrap();
    let tail: f64 = sv.iter().skip(5).map(|x| x * x).sum();
    assert!((sq_err(&weight(&*lr), &w) - tail).abs() < 1e-9 * tail);
    // Block-diagonal and block-sparse keep exactly the entries inside their pattern.
    let bd = weight(&*LinearKind::BlockDiag { nblocks: 4 }.project(&d).unwrap());
    for (e, (&x, &y)) in bd.iter().zip(&w).enumerate() {
        let inside = (e / 32) / 8 == (e % 32) / 8;
        assert_eq!(x, if inside { y } else { 0.0 });
    }
    let d64 = f64_dense(64, 64, 6);
    let fly = LinearKind::BlockSparse { butterfly_size: 4, n_factors: 1, block: 16 };
    let bs = weight(&*fly.project(&d64).unwrap());
    let w64 = weight(&d64);
    assert!(bs.iter().zip(&w64).all(|(&x, &y)| x == 0.0 || x == y));
    assert_eq!(bs.iter().filter(|&&x| x != 0.0).count(), 64 * 64 / 2);
    let err = LinearKind::Butterfly.project(&d).unwrap_err().to_string();
    assert!(err.contains("not supported"), "{err}");
}
