//! Elementwise maps over strided inputs into a new contiguous buffer, with a
//! vectorisable fast path for contiguous data and rayon for large tensors.

use super::walk::Walk;
use super::{PAR_MIN, items_per_task};
use crate::Layout;
use rayon::prelude::*;

/// Splits `out` (in row-major order of the walk) into tasks of whole runs and calls
/// `fill(out_run, run_index, starts)` for each run.
fn fill_runs<U: Send, const N: usize>(walk: &Walk<N>, out: &mut [U], fill: impl Fn(&mut [U], [usize; N]) + Sync) {
    let inner = walk.inner;
    if inner == 0 {
        return;
    }
    let per_task = items_per_task(inner);
    let task = |(t, chunk): (usize, &mut [U])| {
        let first = t * per_task;
        let count = chunk.len() / inner;
        let mut runs = chunk.chunks_mut(inner);
        walk.for_runs(first..first + count, |_, s| fill(runs.next().expect("one run per chunk"), s));
    };
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(per_task * inner).enumerate().for_each(task);
    } else {
        out.chunks_mut(per_task * inner).enumerate().for_each(task);
    }
}

/// `f` applied to every element of a strided input.
pub(crate) fn map1<T: Copy + Sync, U: Copy + Send + Default>(
    src: &[T],
    layout: &Layout,
    f: impl Fn(T) -> U + Sync,
) -> Vec<U> {
    let n = layout.shape().elem_count();
    if let Some(r) = layout.contiguous_range() {
        let src = &src[r];
        return if n >= PAR_MIN {
            src.par_iter().with_min_len(PAR_MIN).map(|&x| f(x)).collect()
        } else {
            src.iter().map(|&x| f(x)).collect()
        };
    }
    let mut out = vec![U::default(); n];
    let walk = Walk::new(layout.shape().dims(), [layout.strides()], [layout.offset()]);
    let [sa] = walk.inner_strides;
    fill_runs(&walk, &mut out, |o, [a]| {
        for (j, o) in o.iter_mut().enumerate() {
            *o = f(src[a + j * sa]);
        }
    });
    out
}

/// `f` applied pairwise to two strided inputs of the same logical shape (broadcast
/// operands carry stride 0).
pub(crate) fn map2<A: Copy + Sync, B: Copy + Sync, U: Copy + Send + Default>(
    a: &[A],
    la: &Layout,
    b: &[B],
    lb: &Layout,
    f: impl Fn(A, B) -> U + Sync,
) -> Vec<U> {
    let n = la.shape().elem_count();
    if let (Some(ra), Some(rb)) = (la.contiguous_range(), lb.contiguous_range()) {
        let (a, b) = (&a[ra], &b[rb]);
        return if n >= PAR_MIN {
            a.par_iter().zip(b.par_iter()).with_min_len(PAR_MIN).map(|(&x, &y)| f(x, y)).collect()
        } else {
            a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect()
        };
    }
    let mut out = vec![U::default(); n];
    let walk = Walk::new(la.shape().dims(), [la.strides(), lb.strides()], [la.offset(), lb.offset()]);
    let [sa, sb] = walk.inner_strides;
    fill_runs(&walk, &mut out, |o, [oa, ob]| match (sa, sb) {
        (1, 1) => {
            for ((o, &x), &y) in o.iter_mut().zip(&a[oa..]).zip(&b[ob..]) {
                *o = f(x, y);
            }
        }
        (1, 0) => {
            let y = b[ob];
            for (o, &x) in o.iter_mut().zip(&a[oa..]) {
                *o = f(x, y);
            }
        }
        (0, 1) => {
            let x = a[oa];
            for (o, &y) in o.iter_mut().zip(&b[ob..]) {
                *o = f(x, y);
            }
        }
        _ => {
            for (j, o) in o.iter_mut().enumerate() {
                *o = f(a[oa + j * sa], b[ob + j * sb]);
            }
        }
    });
    out
}

/// `f` applied to three strided inputs of the same logical shape.
pub(crate) fn map3<A: Copy + Sync, B: Copy + Sync, C: Copy + Sync, U: Copy + Send + Default>(
    (a, la): (&[A], &Layout),
    (b, lb): (&[B], &Layout),
    (c, lc): (&[C], &Layout),
    f: impl Fn(A, B, C) -> U + Sync,
) -> Vec<U> {
    let mut out = vec![U::default(); la.shape().elem_count()];
    let walk = Walk::new(
        la.shape().dims(),
        [la.strides(), lb.strides(), lc.strides()],
        [la.offset(), lb.offset(), lc.offset()],
    );
    let [sa, sb, sc] = walk.inner_strides;
    fill_runs(&walk, &mut out, |o, [oa, ob, oc]| {
        for (j, o) in o.iter_mut().enumerate() {
            *o = f(a[oa + j * sa], b[ob + j * sb], c[oc + j * sc]);
        }
    });
    out
}

/// Copies the strided elements into `dst` (row-major), which must hold exactly the
/// layout's element count.
pub(crate) fn copy_into<T: Copy + Send + Sync>(src: &[T], layout: &Layout, dst: &mut [T]) {
    if let Some(r) = layout.contiguous_range() {
        dst.copy_from_slice(&src[r]);
        return;
    }
    let walk = Walk::new(layout.shape().dims(), [layout.strides()], [layout.offset()]);
    let [sa] = walk.inner_strides;
    fill_runs(&walk, dst, |o, [a]| {
        if sa == 1 {
            o.copy_from_slice(&src[a..a + o.len()]);
        } else {
            for (j, o) in o.iter_mut().enumerate() {
                *o = src[a + j * sa];
            }
        }
    });
}

/// `[f(0), f(1), ..., f(n-1)]`, in parallel for large `n`.
pub(crate) fn from_fn<U: Send>(n: usize, f: impl Fn(usize) -> U + Sync + Send) -> Vec<U> {
    if n >= PAR_MIN { (0..n).into_par_iter().with_min_len(PAR_MIN).map(f).collect() } else { (0..n).map(f).collect() }
}
