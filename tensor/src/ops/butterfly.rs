//! The classic butterfly product (Dao et al. 2019): `log₂ n` sparse factors with 2×2
//! blocks, applied with strides 1, 2, 4, …, n/2. Twiddles have shape
//! (stacks, log₂ n, n/2, 2, 2): stack `st` maps the zero-padded input (length n, a power
//! of two) to outputs `st·n .. (st+1)·n`, and the stacked outputs are truncated to `out`.
//!
//! Factor `f` pairs `a = blk·2h + i` with `b = a + h` (`h = 2^f`, pair index
//! `j = blk·h + i`) and maps `(x_a, x_b)` to `(t[j,0,0]·x_a + t[j,0,1]·x_b, t[j,1,0]·x_a + t[j,1,1]·x_b)`.

use super::compute_dtype;
use crate::cpu::items_per_task;
use crate::{CpuStorage, Error, Float, Result, Tensor, WithDType};
use rayon::prelude::*;

/// Sizes of one butterfly call.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    inp: usize,
    out: usize,
    n: usize,
    log_n: usize,
    stacks: usize,
}

impl Sizes {
    /// The kernels' sizes for an input of `elems` elements.
    fn kernel(&self, elems: usize) -> monarch_cuda::ops::butterfly::ButterflyDims {
        let Sizes { inp, out, log_n, stacks, .. } = *self;
        monarch_cuda::ops::butterfly::ButterflyDims { rows: elems / inp.max(1), inp, out, log_n, stacks }
    }
}

/// Why a GPU call runs on the CPU.
fn too_large() -> String {
    format!("runs on the GPU for butterflies of size up to {}", monarch_cuda::ops::butterfly::BUTTERFLY_MAX_N)
}

/// Applies factor `f` of one stack's twiddles `t` (log_n, n/2, 2, 2) to `x`, into `y`.
fn factor<T: Float>(t: &[T], f: usize, x: &[T], y: &mut [T]) {
    let (n, h) = (x.len(), 1 << f);
    let tf = &t[f * n * 2..(f + 1) * n * 2];
    for j in 0..n / 2 {
        let a = (j / h) * 2 * h + j % h;
        let (xa, xb) = (x[a], x[a + h]);
        let w = &tf[j * 4..j * 4 + 4];
        y[a] = w[0] * xa + w[1] * xb;
        y[a + h] = w[2] * xa + w[3] * xb;
    }
}

/// One row through every factor of stack `st`: fills `levels` ((log_n+1) × n) with the
/// input and each factor's output.
fn row_levels<T: Float>(tw: &[T], z: Sizes, st: usize, x: &[T], levels: &mut [T]) {
    let n = z.n;
    let t = &tw[st * z.log_n * n * 2..(st + 1) * z.log_n * n * 2];
    levels[..n].fill(T::zero());
    levels[..z.inp].copy_from_slice(x);
    for f in 0..z.log_n {
        let (done, rest) = levels.split_at_mut((f + 1) * n);
        factor(t, f, &done[f * n..], &mut rest[..n]);
    }
}

fn forward<T: Float>(x: &[T], tw: &[T], z: Sizes) -> Vec<T> {
    let rows = x.len() / z.inp.max(1);
    let mut y = vec![T::zero(); rows * z.out];
    let per_task = items_per_task(z.n * z.log_n.max(1) * z.stacks);
    y.par_chunks_mut((z.out * per_task).max(1)).enumerate().for_each(|(task, yc)| {
        let mut levels = vec![T::zero(); (z.log_n + 1) * z.n];
        for (i, yr) in yc.chunks_mut(z.out.max(1)).enumerate() {
            let row = task * per_task + i;
            let xr = &x[row * z.inp..(row + 1) * z.inp];
            for st in 0..z.stacks {
                let lo = st * z.n;
                if lo >= z.out {
                    break;
                }
                row_levels(tw, z, st, xr, &mut levels);
                let hi = (lo + z.n).min(z.out);
                yr[lo..hi].copy_from_slice(&levels[z.log_n * z.n..z.log_n * z.n + hi - lo]);
            }
        }
    });
    y
}

/// `(dx, dtwiddle)`: each row recomputes its factor inputs, then runs back through the
/// factors; twiddle gradients are summed per task and then across tasks.
fn backward<T: Float>(x: &[T], tw: &[T], dy: &[T], z: Sizes) -> (Vec<T>, Vec<T>) {
    let (n, log_n) = (z.n, z.log_n);
    let rows = x.len() / z.inp.max(1);
    let mut dx = vec![T::zero(); rows * z.inp];
    let per_task = items_per_task(3 * n * log_n.max(1) * z.stacks);
    let task = |(task, dxc): (usize, &mut [T])| -> Vec<T> {
        let mut dt = vec![T::zero(); tw.len()];
        let mut levels = vec![T::zero(); (log_n + 1) * n];
        let (mut g, mut g2) = (vec![T::zero(); n], vec![T::zero(); n]);
        for (i, dxr) in dxc.chunks_mut(z.inp.max(1)).enumerate() {
            let row = task * per_task + i;
            for st in 0..z.stacks {
                let lo = st * n;
                if lo >= z.out {
                    break;
                }
                row_levels(tw, z, st, &x[row * z.inp..(row + 1) * z.inp], &mut levels);
                let hi = (lo + n).min(z.out);
                g.fill(T::zero());
                g[..hi - lo].copy_from_slice(&dy[row * z.out + lo..row * z.out + hi]);
                let base = st * log_n * n * 2;
                for f in (0..log_n).rev() {
                    let h = 1 << f;
                    let xin = &levels[f * n..(f + 1) * n];
                    let t = &tw[base + f * n * 2..base + (f + 1) * n * 2];
                    let d = &mut dt[base + f * n * 2..base + (f + 1) * n * 2];
                    for j in 0..n / 2 {
                        let a = (j / h) * 2 * h + j % h;
                        let (ga, gb, xa, xb) = (g[a], g[a + h], xin[a], xin[a + h]);
                        let w = &t[j * 4..j * 4 + 4];
                        g2[a] = w[0] * ga + w[2] * gb;
                        g2[a + h] = w[1] * ga + w[3] * gb;
                        let dw = &mut d[j * 4..j * 4 + 4];
                        dw[0] += ga * xa;
                        dw[1] += ga * xb;
                        dw[2] += gb * xa;
                        dw[3] += gb * xb;
                    }
                    std::mem::swap(&mut g, &mut g2);
                }
                for (d, &v) in dxr.iter_mut().zip(&g[..z.inp]) {
                    *d += v;
                }
            }
        }
        dt
    };
    let add = |mut a: Vec<T>, b: Vec<T>| {
        a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
        a
    };
    let dt =
        dx.par_chunks_mut((z.inp * per_task).max(1)).enumerate().map(task).reduce(|| vec![T::zero(); tw.len()], add);
    (dx, dt)
}

impl Tensor {
    /// Checks the operands of a butterfly product.
    fn butterfly_sizes(&self, twiddle: &Tensor, out: usize, op: &'static str) -> Result<Sizes> {
        super::same_dtype(self, twiddle, op)?;
        let &[stacks, log_n, half, 2, 2] = twiddle.dims() else {
            crate::bail!(op, "twiddle must have shape (stacks, log2 n, n/2, 2, 2), got {}", twiddle.shape());
        };
        let n = 2 * half;
        if n < 2 || 1usize << log_n != n {
            crate::bail!(op, "twiddle shape {} does not describe a power-of-two butterfly", twiddle.shape());
        }
        let inp = match self.dims().last() {
            Some(&i) if i >= 1 && i <= n => i,
            _ => crate::bail!(op, "input of shape {} must have 1..={n} features", self.shape()),
        };
        if out == 0 || out > stacks * n {
            crate::bail!(op, "{out} outputs asked from {stacks} stacks of {n}");
        }
        Ok(Sizes { inp, out, n, log_n, stacks })
    }

    /// The butterfly product `x (.., in) → (.., out)` with `twiddle` of shape
    /// (stacks, log₂ n, n/2, 2, 2); see the module documentation.
    pub fn butterfly_mul(&self, twiddle: &Tensor, out: usize) -> Result<Tensor> {
        let op = "butterfly_mul";
        let z = self.butterfly_sizes(twiddle, out, op)?;
        if let Some(dev) = crate::cuda::off_host(op, &[self, twiddle])? {
            if crate::cuda::butterfly::fits(z.n) {
                return self.cuda_butterfly(twiddle, z.kernel(self.elem_count()));
            }
            let [x, t] = crate::cuda::through_host(op, &too_large(), [self, twiddle])?;
            return x.butterfly_mul(&t, out)?.to_device(dev);
        }
        let (x, t) = (compute_dtype(self, op)?.contiguous()?, compute_dtype(twiddle, op)?.contiguous()?);
        let y = match (x.cpu(op)?, t.cpu(op)?) {
            (CpuStorage::F32(_), _) => CpuStorage::from(forward::<f32>(sl(&x, op)?, sl(&t, op)?, z)),
            _ => CpuStorage::from(forward::<f64>(sl(&x, op)?, sl(&t, op)?, z)),
        };
        let mut dims = self.dims().to_vec();
        *dims.last_mut().expect("rank checked") = out;
        Tensor::from_cpu(y, dims).to_dtype(self.dtype())
    }

    /// Gradients `(dx, dtwiddle)` of [`butterfly_mul`](Self::butterfly_mul).
    pub fn butterfly_backward(x: &Tensor, twiddle: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
        let op = "butterfly_backward";
        let out = *dy.dims().last().unwrap_or(&0);
        let z = x.butterfly_sizes(twiddle, out, op)?;
        let mut dims = x.dims().to_vec();
        *dims.last_mut().expect("rank checked") = out;
        if dy.dims() != dims {
            return Err(Error::ShapeMismatch { op, lhs: x.shape().clone(), rhs: dy.shape().clone() });
        }
        if let Some(dev) = crate::cuda::off_host(op, &[x, twiddle, dy])? {
            if crate::cuda::butterfly::fits(z.n) {
                return Tensor::cuda_butterfly_backward(x, twiddle, dy, z.kernel(x.elem_count()));
            }
            let [x, t, g] = crate::cuda::through_host(op, &too_large(), [x, twiddle, dy])?;
            let (dx, dt) = Tensor::butterfly_backward(&x, &t, &g)?;
            return Ok((dx.to_device(dev)?, dt.to_device(dev)?));
        }
        let c = |t: &Tensor| compute_dtype(t, op)?.contiguous();
        let (xc, tc, gc) = (c(x)?, c(twiddle)?, c(dy)?);
        let (dx, dt) = match xc.cpu(op)? {
            CpuStorage::F32(_) => {
                let (a, b) = backward::<f32>(sl(&xc, op)?, sl(&tc, op)?, sl(&gc, op)?, z);
                (CpuStorage::from(a), CpuStorage::from(b))
            }
            _ => {
                let (a, b) = backward::<f64>(sl(&xc, op)?, sl(&tc, op)?, sl(&gc, op)?, z);
                (CpuStorage::from(a), CpuStorage::from(b))
            }
        };
        Ok((
            Tensor::from_cpu(dx, x.shape()).to_dtype(x.dtype())?,
            Tensor::from_cpu(dt, twiddle.shape()).to_dtype(twiddle.dtype())?,
        ))
    }
}

/// The elements of a contiguous tensor from its offset on.
fn sl<'a, T: WithDType>(t: &'a Tensor, op: &'static str) -> Result<&'a [T]> {
    Ok(&t.cpu_slice::<T>(op)?[t.layout().offset()..t.layout().offset() + t.elem_count()])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    fn rnd(shape: &[usize], seed: u64) -> Tensor {
        Tensor::randn(shape, 0.0, 1.0, seed).unwrap().to_dtype(DType::F64).unwrap()
    }

    /// The dense matrix of one stack: the product of its factors, each built explicitly.
    fn dense(t: &[f64], n: usize) -> Vec<Vec<f64>> {
        let log_n = n.trailing_zeros() as usize;
        let mut m: Vec<Vec<f64>> = (0..n).map(|i| (0..n).map(|j| (i == j) as u8 as f64).collect()).collect();
        for f in 0..log_n {
            let h = 1 << f;
            let mut b = vec![vec![0.0; n]; n];
            for j in 0..n / 2 {
                let a = (j / h) * 2 * h + j % h;
                let w = &t[(f * n / 2 + j) * 4..(f * n / 2 + j) * 4 + 4];
                (b[a][a], b[a][a + h], b[a + h][a], b[a + h][a + h]) = (w[0], w[1], w[2], w[3]);
            }
            m = (0..n).map(|i| (0..n).map(|j| (0..n).map(|k| b[i][k] * m[k][j]).sum()).collect()).collect();
        }
        m
    }

    #[test]
    fn matches_the_product_of_explicit_factors_with_padding_and_stacks() {
        // 5 inputs padded to 8; two stacks give 16 outputs truncated to 11.
        let t = rnd(&[2, 3, 4, 2, 2], 1);
        let x = rnd(&[3, 5], 2);
        let y = x.butterfly_mul(&t, 11).unwrap();
        let (tv, xv, yv) = (t.to_vec::<f64>().unwrap(), x.to_vec::<f64>().unwrap(), y.to_vec::<f64>().unwrap());
        for st in 0..2 {
            let m = dense(&tv[st * 48..(st + 1) * 48], 8);
            for row in 0..3 {
                for o in 0..8 {
                    if st * 8 + o >= 11 {
                        continue;
                    }
                    let want: f64 = (0..5).map(|i| m[o][i] * xv[row * 5 + i]).sum();
                    assert!((yv[row * 11 + st * 8 + o] - want).abs() < 1e-10);
                }
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let t = rnd(&[1, 3, 4, 2, 2], 1);
        assert!(rnd(&[2, 9], 0).butterfly_mul(&t, 8).is_err());
        assert!(rnd(&[2, 8], 0).butterfly_mul(&t, 9).is_err());
        assert!(rnd(&[2, 8], 0).butterfly_mul(&rnd(&[1, 2, 4, 2, 2], 0), 8).is_err());
        assert!(rnd(&[2, 8], 0).butterfly_mul(&rnd(&[1, 3, 4, 2], 0), 8).is_err());
        assert!(Tensor::butterfly_backward(&rnd(&[2, 8], 0), &t, &rnd(&[3, 8], 0)).is_err());
    }
}
