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

/// `C = alpha·op(A)·op(B) + beta·C` for row-major `op(A)` (m×k) and `op(B)` (k×n), `C`
/// (m×n) contiguous; `trans_a` means A is stored k×m, `trans_b` that B is stored n×k
/// (a Linear weight `(out, in)` is `B` with `trans_b`). With `batch` > 1 the matrices
/// repeat every `stride_*` elements.
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
    /// A plain `C = A·B` of one (m×k)·(k×n) product.
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
            alpha: 1.0,
            beta: 0.0,
            precision,
            epilogue: Epilogue::None,
        }
    }

    fn elems_needed(&self, stride: usize, one: usize) -> usize {
        if self.batch == 0 { 0 } else { stride * (self.batch - 1) + one }
    }
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
    let dt = if g.precision == Precision::Bf16 { DType::BF16 } else { DType::F32 };
    chk.input("a", &a, dt, g.elems_needed(g.stride_a, g.m * g.k))?;
    chk.input("b", &b, dt, g.elems_needed(g.stride_b, g.k * g.n))?;
    chk.output("c", &c, dt, g.elems_needed(g.stride_c, g.m * g.n))?;
    let needs_bias = matches!(g.epilogue, Epilogue::Bias | Epilogue::ReluBias | Epilogue::GeluBias);
    match (&bias, needs_bias) {
        (Some(v), true) => chk.input("bias", v, dt, g.n)?,
        (None, false) => {}
        _ => crate::error::bail!("matmul", "a bias is given exactly when the epilogue adds one"),
    }
    let dev = a.device().clone();
    chk.same_device(&dev, [b.device(), c.device()])?;
    if g.m * g.n * g.batch == 0 {
        return Ok(());
    }
    let blas = dev.blas.get_or_init(|| Blas::new(&dev)).as_ref().map_err(|lib| {
        if lib == "cuBLASLt" {
            CudaError::NoBlas { lib: "cuBLASLt" }
        } else {
            CudaError::Blas { op: "init", msg: lib.clone() }
        }
    })?;
    let err = CudaError::blas::<result::CublasError>;
    let ty = if dt == DType::BF16 { sys::cudaDataType::CUDA_R_16BF } else { sys::cudaDataType::CUDA_R_32F };
    let compute = if g.precision == Precision::Tf32 {
        sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
    } else {
        sys::cublasComputeType_t::CUBLAS_COMPUTE_32F
    };
    // Row-major C = A·B is column-major Cᵀ = Bᵀ·Aᵀ: cuBLASLt's "A" is our B.
    let layout = |rows: usize, cols: usize, ld: usize, stride: usize| -> Result<Guard<sys::cublasLtMatrixLayout_t>> {
        let l = result::create_matrix_layout(ty, rows as u64, cols as u64, ld as i64).map_err(err("layout"))?;
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
        Ok(guard)
    };
    let lt_a = if g.trans_b { layout(g.k, g.n, g.k, g.stride_b)? } else { layout(g.n, g.k, g.n, g.stride_b)? };
    let lt_b = if g.trans_a { layout(g.m, g.k, g.m, g.stride_a)? } else { layout(g.k, g.m, g.k, g.stride_a)? };
    let lt_c = layout(g.n, g.m, g.n, g.stride_c)?;
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
    let bias_ptr = bias.map_or(0u64, |v| v.ptr());
    if bias_ptr != 0 {
        set(A::CUBLASLT_MATMUL_DESC_BIAS_POINTER, (&bias_ptr as *const u64).cast(), 8)?;
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
            b.ptr() as *const c_void,
            lt_a.0,
            a.ptr() as *const c_void,
            lt_b.0,
            c.ptr() as *const c_void,
            lt_c.0,
            c.ptr() as *mut c_void,
            lt_c.0,
            &heuristic.algo,
            blas.workspace.device_ptr() as *mut c_void,
            ws,
            dev.stream().cu_stream() as sys::cudaStream_t,
        )
        .map_err(err("matmul"))
    })
}
