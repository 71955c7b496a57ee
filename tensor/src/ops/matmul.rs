//! Matrix products through the `gemm` crate: any leading batch dimensions (broadcast),
//! transposed or otherwise strided operands read in place through their strides.

use super::same_dtype;
use super::skinny_gemm::{SKINNY_ROWS, skinny_gemm};
use crate::cpu::items_per_task;
use crate::shape::Dims6;
use crate::{CpuStorage, DType, Error, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

/// [`skinny_gemm`]'s signature, for one element type.
type SkinnyGemm<T> = fn((usize, usize, usize), &mut [T], &[T], usize, &[T], usize, bool, bool);

/// Element types `gemm` multiplies natively.
pub(crate) trait GemmElem: Copy + Send + Sync + 'static {
    const ZERO: Self;
    const ONE: Self;
    /// The path `gemm_into` takes for products of a few rows (2 to [`SKINNY_ROWS`]; one
    /// row is `gemm`'s own vector path) with rows of `a` and columns of `b` contiguous,
    /// where the type has one: f32 and f64, which accumulate in their own precision.
    const SKINNY: Option<SkinnyGemm<Self>> = None;
}
impl GemmElem for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const SKINNY: Option<SkinnyGemm<Self>> = Some(skinny_gemm::<f32>);
}
impl GemmElem for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const SKINNY: Option<SkinnyGemm<Self>> = Some(skinny_gemm::<f64>);
}
impl GemmElem for half::f16 {
    const ZERO: Self = half::f16::ZERO;
    const ONE: Self = half::f16::ONE;
}

/// One strided matrix operand: element offset, row stride and column stride.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mat {
    pub offset: usize,
    pub rs: usize,
    pub cs: usize,
}

/// `dst (m×n, row-major at dst_off) (+)= lhs (m×k) · rhs (k×n)`, accumulating when
/// `accumulate`. The caller guarantees every strided access stays inside the slices.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_into<T: GemmElem>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    dst_off: usize,
    lhs: &[T],
    a: Mat,
    rhs: &[T],
    b: Mat,
    accumulate: bool,
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[dst_off + r * n..dst_off + (r + 1) * n].fill(T::ZERO);
            }
        }
        return;
    }
    let last = |x: Mat, rows: usize, cols: usize| x.offset + (rows - 1) * x.rs + (cols - 1) * x.cs;
    assert!(last(a, m, k) < lhs.len() && last(b, k, n) < rhs.len() && dst_off + m * n <= dst.len());
    if let Some(skinny) = T::SKINNY
        && (2..=SKINNY_ROWS).contains(&m)
        && a.cs == 1
        && b.rs == 1
    {
        let parallel = !matches!(par, Parallelism::None);
        let (out, lhs, rhs) = (&mut dst[dst_off..dst_off + m * n], &lhs[a.offset..], &rhs[b.offset..]);
        return skinny((m, n, k), out, lhs, a.rs, rhs, b.cs, accumulate, parallel);
    }
    // SAFETY: the assert above bounds every element gemm reads or writes.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().add(dst_off),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr().add(a.offset),
            a.cs as isize,
            a.rs as isize,
            rhs.as_ptr().add(b.offset),
            b.cs as isize,
            b.rs as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            par,
        )
    }
}

/// Whether [`skinny_bf16`] takes a product of these sizes with `b` laid out so.
fn skinny_bf16_fits((m, n, k): (usize, usize, usize), b: Mat) -> bool {
    (1..=SKINNY_ROWS).contains(&m) && n > 0 && k > 0 && b.rs == 1
}

/// `dst (+)= a · b` on the host, in f32, for bf16 `a` of a few rows and a bf16 matrix `b`
/// (in `w`) whose columns are contiguous: [`skinny_gemm`] reading `b`'s elements as they
/// are, not an f32 copy of it (a bf16 model decoding on the CPU reads half the bytes of
/// an f32 one). The caller checks [`skinny_bf16_fits`]; `dst` is the contiguous m × n.
fn skinny_bf16(
    a: &Tensor,
    w: &[half::bf16],
    b: Mat,
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    accumulate: bool,
) -> Result<()> {
    let rows = a.to_dtype(DType::F32)?.to_vec::<f32>()?;
    let parallel = m * n * k >= SMALL_GEMM;
    skinny_gemm::<half::bf16>((m, n, k), dst, &rows, k, &w[b.offset..], b.cs, accumulate, parallel);
    Ok(())
}

/// Products smaller than this many multiply-adds run single-threaded; a batch of them
/// is spread over rayon instead.
const SMALL_GEMM: usize = 1 << 21;

/// A batch of products `out[i] = lhs[i] · rhs[i]` where operand `i` starts at the
/// given offsets; out is contiguous (batch × m × n).
#[allow(clippy::too_many_arguments)]
fn batched<T: GemmElem>(
    (m, n, k): (usize, usize, usize),
    lhs: &[T],
    a: Mat,
    a_offsets: &[usize],
    rhs: &[T],
    b: Mat,
    b_offsets: &[usize],
) -> Vec<T> {
    let batch = a_offsets.len();
    let mut out = vec![T::ZERO; batch * m * n];
    let one = |(i, dst): (usize, &mut [T]), par| {
        let a = Mat { offset: a_offsets[i], ..a };
        let b = Mat { offset: b_offsets[i], ..b };
        gemm_into((m, n, k), dst, 0, lhs, a, rhs, b, false, par);
    };
    if m * n * k < SMALL_GEMM && batch > 1 {
        out.par_chunks_mut(m * n)
            .with_min_len(items_per_task(m * n * k / 16))
            .enumerate()
            .for_each(|x| one(x, Parallelism::None));
    } else {
        out.chunks_mut((m * n).max(1)).enumerate().for_each(|x| one(x, Parallelism::Rayon(0)));
    }
    out
}

/// The single stride that walks all rows of `dims` (batch dims then rows) in order,
/// when there is one; dimensions of size 1 do not constrain it.
fn merged_row_stride(dims: &[usize], strides: &[usize]) -> Option<usize> {
    let big: Vec<(usize, usize)> = dims.iter().copied().zip(strides.iter().copied()).filter(|&(d, _)| d != 1).collect();
    if big.windows(2).all(|w| w[0].1 == w[1].1 * w[1].0) { Some(big.last().map_or(1, |&(_, s)| s)) } else { None }
}

/// Offsets of each batch element for a layout whose batch dims are broadcast to `batch`.
fn batch_offsets(l: &Layout, batch: &[usize]) -> Vec<usize> {
    let rank = l.shape().rank();
    let strides = &l.strides()[..rank - 2];
    let count: usize = batch.iter().product();
    (0..count)
        .map(|mut i| {
            let mut off = l.offset();
            for d in (0..batch.len()).rev() {
                off += (i % batch[d]) * strides[d];
                i /= batch[d];
            }
            off
        })
        .collect()
}

impl Tensor {
    /// Matrix product over the last two dimensions, `(.., m, k) · (.., k, n) → (.., m, n)`,
    /// broadcasting leading batch dimensions. Transposed views are read through their
    /// strides without a copy.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.matmul_with(rhs, None)
    }

    /// `self · rhs + bias`, the bias (n) added to every row: on a GPU one GEMM whose
    /// epilogue adds the bias (no second pass over the output); on the CPU the product,
    /// then the sum. The forward of a dense layer with `rhs = wᵀ`.
    pub fn matmul_bias(&self, rhs: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let op = "matmul_bias";
        same_dtype(self, bias, op)?;
        if bias.rank() != 1 || rhs.dims().last() != bias.dims().first() {
            return Err(Error::ShapeMismatch { op, lhs: rhs.shape().clone(), rhs: bias.shape().clone() });
        }
        self.matmul_with(rhs, Some(bias))
    }

    /// [`matmul`](Self::matmul), adding `bias` (checked by the caller) in the GEMM on a GPU.
    fn matmul_with(&self, rhs: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let op = "matmul";
        same_dtype(self, rhs, op)?;
        let ((m, k), (k2, n)) = (self.shape().matrix_dims(op)?, rhs.shape().matrix_dims(op)?);
        let mismatch = || Error::ShapeMismatch { op, lhs: self.shape().clone(), rhs: rhs.shape().clone() };
        if k != k2 {
            return Err(mismatch());
        }
        let (ra, rb) = (self.rank(), rhs.rank());
        let batch_a = Shape::from(&self.dims()[..ra - 2]);
        let batch_b = Shape::from(&rhs.dims()[..rb - 2]);
        let batch = batch_a.broadcast_with(&batch_b, op).map_err(|_| mismatch())?;
        let mut out_dims: Dims6 = batch.dims().into();
        out_dims.extend([m, n]);
        // A batched lhs against one rhs whose rows merge into one tall matrix: one gemm.
        if batch_b.elem_count() == 1 && ra > 2 && batch.dims() == batch_a.dims() {
            if let Some(rs) = merged_row_stride(&self.dims()[..ra - 1], &self.layout().strides()[..ra - 1]) {
                let flat = self.with_layout(Layout::new(
                    Shape::from([batch.elem_count() * m, k]),
                    [rs, self.layout().strides()[ra - 1]].into_iter().collect(),
                    self.layout().offset(),
                ));
                let rhs2 = rhs.reshape_to_matrix()?;
                return flat.matmul_with(&rhs2, bias)?.reshape(out_dims);
            }
        }
        if self.device() != crate::Device::Cpu || rhs.device() != crate::Device::Cpu {
            return self.cuda_matmul(rhs, &batch, (m, n, k), bias);
        }
        if let Some(b) = bias {
            return self.matmul(rhs)?.add(b);
        }
        let full = |t: &Tensor| -> Result<Layout> {
            let mut dims: Dims6 = batch.dims().into();
            dims.extend_from_slice(&t.dims()[t.rank() - 2..]);
            t.layout().broadcast_as(&dims.into())
        };
        let (la, lb) = (full(self)?, full(rhs)?);
        let (ao, bo) = (batch_offsets(&la, batch.dims()), batch_offsets(&lb, batch.dims()));
        let mat = |l: &Layout| {
            let s = l.strides();
            Mat { offset: 0, rs: s[s.len() - 2], cs: s[s.len() - 1] }
        };
        let (a, b) = (mat(&la), mat(&lb));
        let dims = (m, n, k);
        crate::storage::check_host_alloc(
            op,
            ao.len().saturating_mul(m).saturating_mul(n),
            self.dtype().size_in_bytes(),
        )?;
        let out = match (self.cpu(op)?, rhs.cpu(op)?) {
            (CpuStorage::F32(x), CpuStorage::F32(y)) => CpuStorage::F32(batched(dims, x, a, &ao, y, b, &bo)),
            (CpuStorage::F64(x), CpuStorage::F64(y)) => CpuStorage::F64(batched(dims, x, a, &ao, y, b, &bo)),
            (CpuStorage::F16(x), CpuStorage::F16(y)) => CpuStorage::F16(batched(dims, x, a, &ao, y, b, &bo)),
            (CpuStorage::BF16(_), CpuStorage::BF16(y)) if ao.len() == 1 && skinny_bf16_fits(dims, b) => {
                let mut out = vec![0f32; m * n];
                skinny_bf16(self, &y[bo[0]..], b, dims, &mut out, false)?;
                CpuStorage::BF16(out.into_iter().map(half::bf16::from_f32).collect())
            }
            (CpuStorage::BF16(_), _) => {
                let (x, y) = (self.to_dtype(DType::F32)?, rhs.to_dtype(DType::F32)?);
                return x.matmul(&y)?.to_dtype(DType::BF16);
            }
            (s, _) => return Err(Error::UnsupportedDType { op, dtype: s.dtype() }),
        };
        Ok(Tensor::from_cpu(out, out_dims))
    }

    /// `self += a · b` in place, for (m, k) `a`, (k, n) `b` and (m, n) `self`: one
    /// dtype for all three, or f32 `self` with bf16 `a` and `b`, whose products are then
    /// summed in f32 without a rounded bf16 copy (on a GPU one cuBLASLt GEMM with beta 1
    /// into `self`). What summing a weight gradient over chunks of rows needs.
    pub fn add_matmul(&mut self, a: &Tensor, b: &Tensor) -> Result<()> {
        let op = "add_matmul";
        same_dtype(a, b, op)?;
        let wide = (self.dtype(), a.dtype()) == (DType::F32, DType::BF16);
        if !wide && self.dtype() != a.dtype() {
            return Err(Error::DTypeMismatch { op, lhs: self.dtype(), rhs: a.dtype() });
        }
        let mismatch = |rhs: &Tensor| Error::ShapeMismatch { op, lhs: self.shape().clone(), rhs: rhs.shape().clone() };
        if a.rank() != 2 || b.rank() != 2 || self.rank() != 2 {
            return Err(mismatch(if a.rank() != 2 { a } else { b }));
        }
        let ((m, k), (k2, n)) = (a.shape().matrix_dims(op)?, b.shape().matrix_dims(op)?);
        if k != k2 {
            return Err(Error::ShapeMismatch { op, lhs: a.shape().clone(), rhs: b.shape().clone() });
        }
        if self.dims() != [m, n] {
            return Err(mismatch(a));
        }
        if [a, b].iter().any(|t| t.device() != self.device()) {
            let other = if a.device() != self.device() { a } else { b };
            return Err(Error::DeviceMismatch { op, lhs: self.device(), rhs: other.device() });
        }
        if self.device() != crate::Device::Cpu {
            return self.cuda_add_matmul(a, b, (m, n, k));
        }
        let mat =
            |t: &Tensor| Mat { offset: t.layout().offset(), rs: t.layout().strides()[0], cs: t.layout().strides()[1] };
        if wide && skinny_bf16_fits((m, n, k), mat(b)) {
            return skinny_bf16(a, b.cpu_slice(op)?, mat(b), (m, n, k), self.as_mut_slice::<f32>()?, true);
        }
        let (a, b) = if wide { (a.to_dtype(DType::F32)?, b.to_dtype(DType::F32)?) } else { (a.clone(), b.clone()) };
        let (ma, mb) = (mat(&a), mat(&b));
        let par = if m * n * k < SMALL_GEMM { Parallelism::None } else { Parallelism::Rayon(0) };
        // f32 and f64 accumulate in place (gemm reads the old sum); bf16 and f16 round
        // the sum once, as a product then an add.
        match (a.cpu(op)?, b.cpu(op)?) {
            (CpuStorage::F32(x), CpuStorage::F32(y)) => {
                gemm_into((m, n, k), self.as_mut_slice::<f32>()?, 0, x, ma, y, mb, true, par)
            }
            (CpuStorage::F64(x), CpuStorage::F64(y)) => {
                gemm_into((m, n, k), self.as_mut_slice::<f64>()?, 0, x, ma, y, mb, true, par)
            }
            _ => *self = self.add(&a.matmul(&b)?)?,
        }
        Ok(())
    }

    /// A rank-2 view of a matrix whose leading dims are all 1.
    fn reshape_to_matrix(&self) -> Result<Tensor> {
        let (r, c) = self.shape().matrix_dims("matmul")?;
        let mut l = self.layout().clone();
        while l.shape().rank() > 2 {
            l = l.squeeze(0)?;
        }
        debug_assert_eq!(l.shape().dims(), &[r, c]);
        Ok(self.with_layout(l))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n = shape.iter().product();
        Tensor::from_vec((0..n).map(|_| rng.random_range(-1.0..1.0)).collect::<Vec<f64>>(), shape).unwrap()
    }

    /// Reference product by the definition, on contiguous row-major data.
    fn naive(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    fn close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-10, "{x} vs {y}");
        }
    }

    #[test]
    fn matches_the_definition_with_transposes_and_broadcast_batches() {
        let (m, k, n) = (5, 7, 3);
        let a = rand(&[2, m, k], 1);
        let b = rand(&[k, n], 2);
        let c = a.matmul(&b).unwrap();
        assert_eq!(c.dims(), &[2, m, n]);
        let (av, bv) = (a.to_vec::<f64>().unwrap(), b.to_vec::<f64>().unwrap());
        let cv = c.to_vec::<f64>().unwrap();
        for i in 0..2 {
            close(&cv[i * m * n..(i + 1) * m * n], &naive(&av[i * m * k..(i + 1) * m * k], &bv, m, k, n));
        }
        // Transposed operands via strides: (Bᵀ Aᵀ)ᵀ = A B.
        let bt = b.t().unwrap().contiguous().unwrap().t().unwrap();
        close(&a.matmul(&bt).unwrap().to_vec::<f64>().unwrap(), &cv);
        // Broadcast batch on the right: (3,1,m,k) x (2,k,n) -> (3,2,m,n).
        let a1 = rand(&[3, 1, m, k], 3);
        let b2 = rand(&[2, k, n], 4);
        let c2 = a1.matmul(&b2).unwrap();
        assert_eq!(c2.dims(), &[3, 2, m, n]);
        let (a1v, b2v, c2v) = (a1.to_vec::<f64>().unwrap(), b2.to_vec::<f64>().unwrap(), c2.to_vec::<f64>().unwrap());
        for i in 0..3 {
            for j in 0..2 {
                let want = naive(&a1v[i * m * k..(i + 1) * m * k], &b2v[j * k * n..(j + 1) * k * n], m, k, n);
                close(&c2v[(i * 2 + j) * m * n..(i * 2 + j + 1) * m * n], &want);
            }
        }
    }

    #[test]
    fn shape_errors_name_both_shapes() {
        let err = rand(&[2, 3], 0).matmul(&rand(&[4, 5], 0)).unwrap_err();
        assert_eq!(err.to_string(), "matmul: shape mismatch between [2, 3] and [4, 5]");
        assert!(rand(&[3], 0).matmul(&rand(&[3, 1], 0)).is_err());
        assert!(rand(&[2, 2, 3], 0).matmul(&rand(&[3, 3, 1], 0)).is_err());
    }

    #[test]
    fn f32_f16_bf16_and_empty() {
        let a = rand(&[4, 6], 5);
        let b = rand(&[6, 2], 6);
        let want = a.matmul(&b).unwrap().to_vec::<f64>().unwrap();
        for dt in [DType::F32, DType::F16, DType::BF16] {
            let got = a.to_dtype(dt).unwrap().matmul(&b.to_dtype(dt).unwrap()).unwrap();
            assert_eq!(got.dtype(), dt);
            let tol = if dt == DType::F32 { 1e-5 } else { 3e-2 };
            for (x, y) in got.to_vec_f64().unwrap().iter().zip(&want) {
                assert!((x - y).abs() < tol * 6.0, "{dt:?}: {x} vs {y}");
            }
        }
        let z = rand(&[3, 0], 7).matmul(&rand(&[0, 2], 8)).unwrap();
        assert_eq!(z.to_vec::<f64>().unwrap(), vec![0.0; 6]);
    }

    /// bf16 products of a few rows by a matrix with contiguous columns (`x · wᵀ`, a bf16
    /// layer's) read the bf16 matrix in place and sum in f32: the exact product of the
    /// bf16 values rounded once; added into an f32 sum, not rounded at all.
    #[test]
    fn bf16_products_of_a_few_rows_round_their_f32_sum_once() {
        let bf = |t: Tensor| t.to_dtype(DType::BF16).unwrap();
        for (m, k, n) in [(1, 70, 9), (3, 33, 5), (16, 20, 4)] {
            let (a, w) = (bf(rand(&[1, m, k], 1)), bf(rand(&[n, k], 2)));
            let wt = w.t().unwrap();
            let want = naive(&a.to_vec_f64().unwrap(), &wt.to_vec_f64().unwrap(), m, k, n);
            let got = a.matmul(&wt).unwrap();
            assert_eq!((got.dtype(), got.dims()), (DType::BF16, &[1, m, n][..]));
            for (g, w) in got.to_vec_f64().unwrap().iter().zip(&want) {
                // Half a bf16 step (at most 2^-8 relative), and the f32 sum's own error.
                assert!((g - w).abs() <= 2f64.powi(-8) * w.abs() + 1e-5, "{m}x{k}x{n}: {g} vs {w}");
            }
            let mut acc = Tensor::full(0.5, [m, n], DType::F32);
            acc.add_matmul(&a.reshape([m, k]).unwrap(), &wt).unwrap();
            for (g, w) in acc.to_vec_f64().unwrap().iter().zip(&want) {
                assert!((g - (w + 0.5)).abs() <= 1e-5 * (1.0 + w.abs()), "{m}x{k}x{n} into f32: {g} vs {w} + 0.5");
            }
        }
    }

    #[test]
    fn matmul_bias_adds_one_value_per_column_and_checks_its_shape() {
        let (a, b) = (rand(&[3, 4], 1), rand(&[4, 2], 2));
        let bias = Tensor::from_vec(vec![10.0f64, -20.0], 2).unwrap();
        let got = a.matmul_bias(&b, &bias).unwrap().to_vec::<f64>().unwrap();
        let want = naive(&a.to_vec().unwrap(), &b.to_vec().unwrap(), 3, 4, 2);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - (w + [10.0, -20.0][i % 2])).abs() < 1e-12);
        }
        assert!(a.matmul_bias(&b, &Tensor::from_vec(vec![1.0f64; 3], 3).unwrap()).is_err());
        assert!(a.matmul_bias(&b, &Tensor::from_vec(vec![1.0f64; 4], [2, 2]).unwrap()).is_err());
        assert!(a.matmul_bias(&b, &bias.to_dtype(DType::F32).unwrap()).is_err());
    }

    #[test]
    fn add_matmul_adds_the_product_in_place_and_keeps_bf16_products_unrounded() {
        let (a, b, c) = (rand(&[4, 3], 7), rand(&[3, 5], 8), rand(&[4, 5], 9));
        let (av, bv, cv) = (a.to_vec::<f64>().unwrap(), b.to_vec::<f64>().unwrap(), c.to_vec::<f64>().unwrap());
        let want: Vec<f64> = naive(&av, &bv, 4, 3, 5).iter().zip(&cv).map(|(p, c)| p + c).collect();
        let mut acc = c.clone();
        acc.add_matmul(&a, &b).unwrap();
        close(&acc.to_vec::<f64>().unwrap(), &want);
        assert_eq!(c.to_vec::<f64>().unwrap(), cv, "another handle of the old value is untouched");
        // A transposed view reads in place: (aᵀ)ᵀ · b again.
        let mut acc = c.clone();
        acc.add_matmul(&a.t().unwrap().contiguous().unwrap().t().unwrap(), &b).unwrap();
        close(&acc.to_vec::<f64>().unwrap(), &want);
        // 1 + 2^-10 is no bf16 value: an f32 sum of bf16 products keeps it.
        let tiny = Tensor::full(1.0 / 32.0, [1, 1], DType::BF16);
        let mut acc = Tensor::full(1.0, [1, 1], DType::F32);
        for step in 1..=2 {
            acc.add_matmul(&tiny, &tiny).unwrap();
            assert_eq!(acc.to_vec::<f32>().unwrap(), [1.0 + step as f32 / 1024.0]);
        }
        let err = |acc: &mut Tensor, a: &Tensor, b: &Tensor| acc.add_matmul(a, b).unwrap_err().to_string();
        let mut acc = c.clone();
        assert!(err(&mut acc, &b, &a).contains("add_matmul"), "inner sizes 5 and 4");
        assert!(err(&mut acc, &a, &rand(&[3, 4], 1)).contains("add_matmul"), "a 4x4 product into 4x5");
        assert!(err(&mut acc, &a.reshape([1, 4, 3]).unwrap(), &b).contains("add_matmul"), "rank 3");
        let bf = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
        assert!(err(&mut acc, &bf(&a), &bf(&b)).contains("add_matmul"), "bf16 into f64");
        assert!(err(&mut acc, &bf(&a), &b).contains("add_matmul"), "mixed operands");
        assert_eq!(acc.to_vec::<f64>().unwrap(), cv, "a refused update changes nothing");
    }
}
