//! Dense GEMM through cuBLASLt, the vendor's fastest path: f32, TF32 (f32 data on
//! tensor cores) and bf16 with f32 accumulation, optionally strided-batched, with the
//! bias and GELU / ReLU epilogues fused. Matrices are row-major, as in the tensor crate.

use crate::buffer::Check;
use crate::{CudaDevice, CudaError, DType, DeviceBuffer, Result, View, ViewMut};
use cudarc::cublaslt::{result, sys};
use std::ffi::c_void;
use std::sync::Arc;

/// The arithmetic of a GEMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// f32 data, full f32 arithmetic.
    F32,
    /// f32 data, tensor cores with TF32 inputs and f32 accumulation.
    Tf32,
    /// bf16 data (A, B, C and bias), f32 accumulation.
    Bf16,
    /// bf16 A and B, f32 C, f32 accumulation: bf16 products kept in f32, e.g. summed
    /// into an f32 gradient with `beta` 1 without a rounded bf16 copy. No epilogue.
    Bf16F32,
}

/// What is applied to `alpha·A·B + beta·C` before it is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    /// Nothing.
    None,
    /// `+ bias` (one value per output column).
    Bias,
    /// ReLU.
    Relu,
    /// `+ bias`, then ReLU.
    ReluBias,
    /// GELU (tanh approximation).
    Gelu,
    /// `+ bias`, then GELU.
    GeluBias,
}

/// `C = alpha·op(A)·op(B) + beta·C` for row-major `op(A)` (m×k), `op(B)` (k×n) and `C`
/// (m×n); `trans_a` means A is stored k×m, `trans_b` that B is stored n×k (a Linear
/// weight `(out, in)` is `B` with `trans_b`). Each stored matrix has rows `ld_*` elements
/// apart (at least its row length; [`GemmArgs::new`] packs them). With `batch` > 1 the
/// matrices repeat every `stride_*` elements; batches may interleave (a stride smaller
/// than a matrix) as long as no two C elements coincide.
#[derive(Clone, Copy, Debug)]
pub struct GemmArgs {
    /// Rows of C.
    pub m: usize,
    /// Columns of C.
    pub n: usize,
    /// The contracted size.
    pub k: usize,
    /// A is stored k×m.
    pub trans_a: bool,
    /// B is stored n×k.
    pub trans_b: bool,
    /// Independent products.
    pub batch: usize,
    /// Elements between consecutive A (0 repeats one A).
    pub stride_a: usize,
    /// Elements between consecutive B (0 repeats one B).
    pub stride_b: usize,
    /// Elements between consecutive C.
    pub stride_c: usize,
    /// Elements between rows of the stored A (m, or k with `trans_a`, when packed).
    pub ld_a: usize,
    /// Elements between rows of the stored B (n, or k with `trans_b`, when packed).
    pub ld_b: usize,
    /// Elements between rows of C (n when packed).
    pub ld_c: usize,
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of the old C (0: C is only written).
    pub beta: f32,
    /// Arithmetic.
    pub precision: Precision,
    /// Fused epilogue; those with a bias need `bias` (n elements, C's dtype).
    pub epilogue: Epilogue,
}

impl GemmArgs {
    /// A plain `C = A·B` of one (m×k)·(k×n) product, every matrix packed.
    pub fn new(m: usize, n: usize, k: usize, precision: Precision) -> Self {
        GemmArgs {
            m,
            n,
            k,
            trans_a: false,
            trans_b: false,
            batch: 1,
            stride_a: m * k,
            stride_b: k * n,
            stride_c: m * n,
            ld_a: k,
            ld_b: n,
            ld_c: n,
            alpha: 1.0,
            beta: 0.0,
            precision,
            epilogue: Epilogue::None,
        }
    }

    /// Packed leading dimensions for the transposes set: `ld_a`, `ld_b` and `ld_c` the
    /// stored matrices' row lengths.
    pub fn packed(self) -> Self {
        let ld_a = if self.trans_a { self.m } else { self.k };
        let ld_b = if self.trans_b { self.k } else { self.n };
        GemmArgs { ld_a, ld_b, ld_c: self.n, ..self }
    }

    /// The element types of A and B, and of C and the bias.
    pub(crate) fn dtypes(&self) -> (DType, DType) {
        match self.precision {
            Precision::Bf16 => (DType::BF16, DType::BF16),
            Precision::Bf16F32 => (DType::BF16, DType::F32),
            Precision::F32 | Precision::Tf32 => (DType::F32, DType::F32),
        }
    }

    /// The stored (rows, columns) of A, B and C.
    fn stored(&self) -> [(usize, usize); 3] {
        let (m, n, k) = (self.m, self.n, self.k);
        [if self.trans_a { (k, m) } else { (m, k) }, if self.trans_b { (n, k) } else { (k, n) }, (m, n)]
    }

    /// Elements a buffer must hold from its start for one operand: the last batch's last
    /// row's last element, plus one (0 for an empty operand; `usize::MAX`, which no
    /// buffer holds, when that overflows).
    fn elems_needed(&self, stride: usize, (rows, cols): (usize, usize), ld: usize) -> usize {
        if self.batch == 0 || rows == 0 || cols == 0 {
            return 0;
        }
        let last_batch = stride.checked_mul(self.batch - 1);
        let last_row = (rows - 1).checked_mul(ld);
        last_batch.zip(last_row).and_then(|(b, r)| b.checked_add(r)?.checked_add(cols)).unwrap_or(usize::MAX)
    }

    /// Refuses leading dimensions shorter than the rows they separate.
    pub(crate) fn check_ld(&self) -> Result<()> {
        let [a, b, c] = self.stored();
        for (name, (_, cols), ld) in [("a", a, self.ld_a), ("b", b, self.ld_b), ("c", c, self.ld_c)] {
            if ld < cols.max(1) {
                crate::error::bail!("matmul", "{name}'s rows are {ld} elements apart but {cols} long");
            }
        }
        Ok(())
    }
}

/// The largest power of two up to 256 dividing every byte address an operand's batches
/// start at: what cuBLASLt may assume of the pointer (its default assumption is 256).
fn alignment(ptr: u64, stride_bytes: u64, batch: usize) -> u32 {
    let bits = if batch > 1 { ptr | stride_bytes } else { ptr } | 256;
    1 << bits.trailing_zeros()
}

/// A cuBLASLt handle and its workspace (32 MiB on Hopper, 4 MiB before).
pub(crate) struct Blas {
    handle: sys::cublasLtHandle_t,
    workspace: DeviceBuffer,
}

// SAFETY: the handle is used only on the device's stream, behind the device's OnceLock.
unsafe impl Send for Blas {}
// SAFETY: as above; cuBLASLt handles may be shared when calls are ordered by one stream.
unsafe impl Sync for Blas {}

impl Blas {
    fn new(dev: &Arc<CudaDevice>) -> std::result::Result<Blas, String> {
        // SAFETY: only probes whether the library can be opened.
        if !unsafe { sys::is_culib_present() } {
            return Err("cuBLASLt".into());
        }
        let handle = result::create_handle().map_err(|e| format!("{e:?}"))?;
        let ws = if dev.arch() >= "sm_90" { 32 << 20 } else { 4 << 20 };
        let workspace = dev.alloc(DType::U8, ws).map_err(|e| e.to_string())?;
        Ok(Blas { handle, workspace })
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        // SAFETY: the handle was created by `create_handle` and is destroyed once.
        let _ = unsafe { result::destroy_handle(self.handle) };
    }
}

/// A cuBLASLt descriptor destroyed on drop.
struct Guard<T: Copy>(T, unsafe fn(T) -> std::result::Result<(), result::CublasError>);

impl<T: Copy> Drop for Guard<T> {
    fn drop(&mut self) {
        // SAFETY: each guard owns one descriptor created just before it.
        let _ = unsafe { (self.1)(self.0) };
    }
}

/// Runs the GEMM described by `g` on `dev`'s stream (see [`GemmArgs`]).
pub fn matmul(g: &GemmArgs, a: View<'_>, b: View<'_>, bias: Option<View<'_>>, c: ViewMut<'_>) -> Result<()> {
    let chk = Check { op: "matmul" };
    let (dt, dt_c) = g.dtypes();
    g.check_ld()?;
    if g.precision == Precision::Bf16F32 && g.epilogue != Epilogue::None {
        crate::error::bail!("matmul", "bf16 products into f32 take no epilogue (got {:?})", g.epilogue);
    }
    let [sa, sb, sc] = g.stored();
    chk.input("a", &a, dt, g.elems_needed(g.stride_a, sa, g.ld_a))?;
    chk.input("b", &b, dt, g.elems_needed(g.stride_b, sb, g.ld_b))?;
    chk.output("c", &c, dt_c, g.elems_needed(g.stride_c, sc, g.ld_c))?;
    let needs_bias = matches!(g.epilogue, Epilogue::Bias | Epilogue::ReluBias | Epilogue::GeluBias);
    match (&bias, needs_bias) {
        (Some(v), true) => chk.input("bias", v, dt_c, g.n)?,
        (None, false) => {}
        _ => crate::error::bail!("matmul", "a bias is given exactly when the epilogue adds one"),
    }
    let dev = a.device().clone();
    chk.same_device(&dev, [b.device(), c.device()])?;
    let bias = bias.map_or(0, |v| v.ptr());
    matmul_at(&dev, g, [a.ptr(), b.ptr(), bias, c.ptr()])
}

/// [`matmul`] on raw addresses `[a, b, bias (0: none), c]` that the caller has checked
/// against `g` (the Monarch products run here on their descriptors' buffers).
pub(crate) fn matmul_at(dev: &Arc<CudaDevice>, g: &GemmArgs, [a, b, bias, c]: [u64; 4]) -> Result<()> {
    if g.m * g.n * g.batch == 0 {
        return Ok(());
    }
    let Some(driver) = dev.driver() else {
        // SAFETY: the caller checked the addresses against `g`.
        unsafe { crate::emulator::gemm::matmul(g, [a, b, bias, c]) };
        return Ok(());
    };
    let (dt, dt_c) = g.dtypes();
    let blas = driver.blas.get_or_init(|| Blas::new(dev)).as_ref().map_err(|lib| {
        if lib == "cuBLASLt" {
            CudaError::NoBlas { lib: "cuBLASLt" }
        } else {
            CudaError::Blas { op: "init", msg: lib.clone() }
        }
    })?;
    let err = CudaError::blas::<result::CublasError>;
    let ty = |d: DType| if d == DType::BF16 { sys::cudaDataType::CUDA_R_16BF } else { sys::cudaDataType::CUDA_R_32F };
    let compute = if g.precision == Precision::Tf32 {
        sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
    } else {
        sys::cublasComputeType_t::CUBLAS_COMPUTE_32F
    };
    // Row-major C = A·B is column-major Cᵀ = Bᵀ·Aᵀ: cuBLASLt's "A" is our B.
    let layout = |d: DType, rows: usize, cols: usize, ld: usize, stride: usize| {
        let l = result::create_matrix_layout(ty(d), rows as u64, cols as u64, ld as i64).map_err(err("layout"))?;
        let guard = Guard(l, result::destroy_matrix_layout);
        if g.batch > 1 {
            let (count, stride) = (g.batch as i32, stride as i64);
            // SAFETY: valid layout; the attribute values have the documented types.
            unsafe {
                result::set_matrix_layout_attribute(
                    l,
                    sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                    (&count as *const i32).cast(),
                    4,
                )
                .map_err(err("layout"))?;
                result::set_matrix_layout_attribute(
                    l,
                    sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                    (&stride as *const i64).cast(),
                    8,
                )
                .map_err(err("layout"))?;
            }
        }
        Ok::<_, CudaError>(guard)
    };
    // A row-major r×c matrix with rows ld apart is a column-major c×r one with ld.
    let lt_a =
        if g.trans_b { layout(dt, g.k, g.n, g.ld_b, g.stride_b)? } else { layout(dt, g.n, g.k, g.ld_b, g.stride_b)? };
    let lt_b =
        if g.trans_a { layout(dt, g.m, g.k, g.ld_a, g.stride_a)? } else { layout(dt, g.k, g.m, g.ld_a, g.stride_a)? };
    let lt_c = layout(dt_c, g.n, g.m, g.ld_c, g.stride_c)?;
    let desc = result::create_matmul_desc(compute, sys::cudaDataType::CUDA_R_32F).map_err(err("desc"))?;
    let desc = Guard(desc, result::destroy_matmul_desc);
    let set = |attr, ptr: *const c_void, size: usize| -> Result<()> {
        // SAFETY: valid descriptor; `ptr` points at a value of the attribute's type.
        unsafe { result::set_matmul_desc_attribute(desc.0, attr, ptr, size) }.map_err(err("desc"))
    };
    type A = sys::cublasLtMatmulDescAttributes_t;
    let (ta, tb) = (g.trans_b as i32, g.trans_a as i32);
    set(A::CUBLASLT_MATMUL_DESC_TRANSA, (&ta as *const i32).cast(), 4)?;
    set(A::CUBLASLT_MATMUL_DESC_TRANSB, (&tb as *const i32).cast(), 4)?;
    type E = sys::cublasLtEpilogue_t;
    let epi = match g.epilogue {
        Epilogue::None => E::CUBLASLT_EPILOGUE_DEFAULT,
        Epilogue::Bias => E::CUBLASLT_EPILOGUE_BIAS,
        Epilogue::Relu => E::CUBLASLT_EPILOGUE_RELU,
        Epilogue::ReluBias => E::CUBLASLT_EPILOGUE_RELU_BIAS,
        Epilogue::Gelu => E::CUBLASLT_EPILOGUE_GELU,
        Epilogue::GeluBias => E::CUBLASLT_EPILOGUE_GELU_BIAS,
    };
    set(A::CUBLASLT_MATMUL_DESC_EPILOGUE, (&epi as *const E).cast(), std::mem::size_of::<E>())?;
    if bias != 0 {
        set(A::CUBLASLT_MATMUL_DESC_BIAS_POINTER, (&bias as *const u64).cast(), 8)?;
    }
    let pref = Guard(result::create_matmul_pref().map_err(err("preference"))?, result::destroy_matmul_pref);
    let ws = blas.workspace.len();
    // SAFETY: valid preference; the value is a size_t.
    unsafe {
        result::set_matmul_pref_attribute(
            pref.0,
            sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
            (&ws as *const usize).cast(),
            8,
        )
    }
    .map_err(err("preference"))?;
    // Views start anywhere in a buffer: tell the heuristic how aligned the operands are,
    // else it may pick an algorithm that assumes 256 bytes.
    type P = sys::cublasLtMatmulPreferenceAttributes_t;
    for (attr, ptr, stride, d) in [
        (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, b, g.stride_b, dt),
        (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, a, g.stride_a, dt),
        (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, c, g.stride_c, dt_c),
        (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, c, g.stride_c, dt_c),
    ] {
        let bytes = alignment(ptr, stride as u64 * d.size() as u64, g.batch);
        // SAFETY: valid preference; the value is a uint32_t.
        unsafe { result::set_matmul_pref_attribute(pref.0, attr, (&bytes as *const u32).cast(), 4) }
            .map_err(err("preference"))?;
    }
    // SAFETY: all descriptors are valid and describe the checked buffers.
    let heuristic =
        unsafe { result::get_matmul_algo_heuristic(blas.handle, desc.0, lt_a.0, lt_b.0, lt_c.0, lt_c.0, pref.0) }
            .map_err(err("heuristic"))?;
    let (alpha, beta) = (g.alpha, g.beta);
    // SAFETY: the buffers were checked to hold every element the layouts address, and the
    // call is queued on the device's stream after all earlier work on them.
    dev.timed("cublasLt_matmul", || unsafe {
        result::matmul(
            blas.handle,
            desc.0,
            (&alpha as *const f32).cast(),
            (&beta as *const f32).cast(),
            b as *const c_void,
            lt_a.0,
            a as *const c_void,
            lt_b.0,
            c as *const c_void,
            lt_c.0,
            c as *mut c_void,
            lt_c.0,
            &heuristic.algo,
            blas.workspace.device_ptr() as *mut c_void,
            ws,
            driver.stream().cu_stream() as sys::cudaStream_t,
        )
        .map_err(err("matmul"))
    })
}

/// [`GemmArgs`]' definition run on the host, for checking what is mapped onto cuBLASLt.
#[cfg(test)]
pub(crate) mod host {
    use super::GemmArgs;

    /// `C = alpha·op(A)·op(B) + beta·C` over `a`, `b`, `c` as `g` lays them out: element
    /// (i, r, col) of a stored matrix at `i·stride + r·ld + col`. With `beta` 0, C is
    /// only written (a NaN there stays out of the result, as in cuBLAS).
    pub(crate) fn gemm(g: &GemmArgs, a: &[f64], b: &[f64], c: &mut [f64]) {
        for i in 0..g.batch {
            for m in 0..g.m {
                for n in 0..g.n {
                    let av = |k: usize| a[i * g.stride_a + if g.trans_a { k * g.ld_a + m } else { m * g.ld_a + k }];
                    let bv = |k: usize| b[i * g.stride_b + if g.trans_b { n * g.ld_b + k } else { k * g.ld_b + n }];
                    let v = g.alpha as f64 * (0..g.k).map(|k| av(k) * bv(k)).sum::<f64>();
                    let dst = &mut c[i * g.stride_c + m * g.ld_c + n];
                    *dst = if g.beta == 0.0 { v } else { v + g.beta as f64 * *dst };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two interleaved 2×2 products written out by hand: batch i's A is columns 2i..2i+2
    /// of a 2×4 array, its C the same columns of another; B is stored transposed.
    #[test]
    fn interleaved_batches_follow_the_definition() {
        let g = GemmArgs {
            trans_b: true,
            batch: 2,
            stride_a: 2,
            stride_b: 4,
            stride_c: 2,
            ld_a: 4,
            ld_b: 2,
            ld_c: 4,
            ..GemmArgs::new(2, 2, 2, Precision::F32)
        };
        let a = [1.0, 2.0, 5.0, 6.0, 3.0, 4.0, 7.0, 8.0]; // A0 = [[1,2],[3,4]], A1 = [[5,6],[7,8]]
        let b = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 2.0, 0.0]; // B0ᵀ = [[1,0],[1,1]], B1ᵀ = [[0,1],[2,0]]
        let mut c = [f64::NAN; 8];
        host::gemm(&g, &a, &b, &mut c);
        // C0 = A0·B0 = [[1,3],[3,7]]; C1 = A1·B1 = [[6,10],[8,14]].
        assert_eq!(c, [1.0, 3.0, 6.0, 10.0, 3.0, 7.0, 8.0, 14.0]);
        g.check_ld().unwrap();
        let [sa, sb, sc] = g.stored();
        assert_eq!(
            [
                g.elems_needed(g.stride_a, sa, g.ld_a),
                g.elems_needed(g.stride_b, sb, g.ld_b),
                g.elems_needed(g.stride_c, sc, g.ld_c)
            ],
            [8, 8, 8]
        );
    }

    #[test]
    fn leading_dimensions_are_checked_and_packed() {
        let g = GemmArgs { trans_a: true, ..GemmArgs::new(3, 5, 4, Precision::Bf16) }.packed();
        assert_eq!((g.ld_a, g.ld_b, g.ld_c), (3, 5, 5));
        assert!(g.check_ld().is_ok());
        assert!(GemmArgs { ld_b: 4, ..g }.check_ld().is_err());
        assert!(GemmArgs { ld_c: 4, ..g }.check_ld().is_err());
        let t = GemmArgs { trans_b: true, ..g }.packed();
        assert_eq!(t.ld_b, 4);
        assert_eq!(g.elems_needed(0, (4, 3), 7), 3 * 7 + 3);
        assert_eq!(GemmArgs { batch: 0, ..g }.elems_needed(9, (4, 3), 7), 0);
        assert_eq!(GemmArgs { batch: 3, ..g }.elems_needed(usize::MAX / 2, (4, 3), 7), usize::MAX, "overflow");
    }

    #[test]
    fn alignment_is_what_every_batch_start_shares() {
        assert_eq!(alignment(0x1000, 0, 1), 256);
        assert_eq!(alignment(0x1002, 0, 1), 2);
        // 192 bf16 elements (384 bytes) between batches: 128-byte aligned starts.
        assert_eq!(alignment(0x1000, 384, 4), 128);
        assert_eq!(alignment(0x1000, 384, 1), 256);
        assert_eq!(alignment(0x1008, 64, 2), 8);
    }
}
