// Shared prelude of every monarch kernel source. NVRTC compiles each `<stem>.cu` after
// this file; no CUDA header is included, so the dtype helpers, warp reductions and the
// tensor-core tile primitives the kernels use are defined here.
//
// Conventions: f32 accumulation everywhere; `bf16` is stored as its 16 raw bits and
// converted with round-to-nearest-even; kernels are `extern "C"` with the dtype as the
// name suffix (`_f32`, `_bf16`).

typedef long long i64;
typedef unsigned long long u64;

// ---------------------------------------------------------------- dtypes

/// bfloat16 as raw bits (the upper half of an IEEE single).
struct __align__(2) bf16 {
    unsigned short bits;
};

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) { return __uint_as_float(((unsigned)x.bits) << 16); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f32<bf16>(float x) {
    unsigned short r;
#ifdef MONARCH_EMULATE
    r = emu::cvt_rn_bf16_f32(x);
#else
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(x));
#endif
    bf16 b;
    b.bits = r;
    return b;
}

/// Packs two floats as bf16x2 (the first in the low half), rounding to nearest even.
__device__ __forceinline__ unsigned pack_bf16x2(float lo, float hi) {
    unsigned r;
#ifdef MONARCH_EMULATE
    r = emu::cvt_rn_bf16x2_f32(hi, lo);
#else
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
#endif
    return r;
}

/// tanh with f32 arithmetic accurate to the output's dtype: `tanh.approx.f32` (relative
/// error at most 2^-10.987, below bf16's 2^-9 rounding) when APPROX, else tanhf.
template <bool APPROX> __device__ __forceinline__ float tanh_of(float x) {
    if (!APPROX) return tanhf(x);
    float y;
#ifdef MONARCH_EMULATE
    y = emu::tanh_approx_f32(x);
#else
    asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
#endif
    return y;
}

#define SQRT_2_OVER_PI 0.7978845608028654f
#define GELU_C 0.044715f

/// GELU, tanh approximation: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))); A as for tanh_of.
template <bool A> __device__ __forceinline__ float gelu_tanh_f(float x) {
    return 0.5f * x * (1.0f + tanh_of<A>(SQRT_2_OVER_PI * (x + GELU_C * x * x * x)));
}

/// d/dx of gelu_tanh_f at x: 0.5·(1 + tanh u) + 0.5·x·sech²(u)·u'(x). sech² u is
/// 4e/(1 + e)² with e = exp(-2|u|), not 1 - tanh² u: that difference cancels for large
/// |u|, where x·u' grows like x³ (with tanh.approx's 2^-11 it was off by 0.06 at x = 10,
/// 0.4 at x = 19); accurate in f32, so bf16 data needs no approximate form.
__device__ __forceinline__ float gelu_tanh_df(float x) {
    const float x2 = x * x, u = SQRT_2_OVER_PI * (x + GELU_C * x2 * x);
    const float e = expf(-2.0f * fabsf(u)), inv = 1.0f / (1.0f + e);
    const float t = copysignf((1.0f - e) * inv, u), sech2 = 4.0f * e * inv * inv;
    return 0.5f * (1.0f + t) + 0.5f * x * sech2 * SQRT_2_OVER_PI * (1.0f + 3.0f * GELU_C * x2);
}

#define FRAC_1_SQRT_2 0.7071067811865476f
#define FRAC_1_SQRT_2PI 0.3989422804014327f

/// GELU, exact form: 0.5·x·(1 + erf(x/√2)).
__device__ __forceinline__ float gelu_erf_f(float x) { return 0.5f * x * (1.0f + erff(x * FRAC_1_SQRT_2)); }

/// d/dx of gelu_erf_f: Φ(x) + x·φ(x).
__device__ __forceinline__ float gelu_erf_df(float x) {
    return 0.5f * (1.0f + erff(x * FRAC_1_SQRT_2)) + x * expf(-0.5f * x * x) * FRAC_1_SQRT_2PI;
}

#define NEG_INF __int_as_float(0xff800000)
#define POS_INF __int_as_float(0x7f800000)

/// `N` elements of `T` moved as one aligned access (16 bytes for N = 16 / sizeof(T)).
template <typename T, int N> struct __align__(sizeof(T) * N) Pack {
    T v[N];
};

/// Whether every pointer given is aligned to `bytes`.
__device__ __forceinline__ bool aligned(const void* p, int bytes) { return ((u64)p % bytes) == 0; }

// ---------------------------------------------------------------- random numbers

/// A uniform number in [0, 1) from (seed, index): SplitMix64 of the combined counter, the
/// same bits as `counter_uniform` in tensor/src/ops/dropout.rs, so every dropout mask
/// (dropout.cu, attention dropout in flash_attention.cu) is the CPU's.
__device__ __forceinline__ float counter_uniform(u64 seed, u64 index) {
    u64 z = seed ^ (index * 0x9E3779B97F4A7C15ULL + 0xD1B54A32D192ED03ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return (float)(z >> 40) * (1.0f / 16777216.0f);
}

// ---------------------------------------------------------------- reductions

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/// Reduces `v` over the `blockDim.x` threads of one row group (threadIdx.y selects the
/// row, `blockDim.x` is a power of two >= 32). `scratch` holds 32 floats per row group.
/// Every thread of the row group gets the result.
template <bool IS_MAX> __device__ __forceinline__ float row_reduce(float v, float* scratch) {
    v = IS_MAX ? warp_max(v) : warp_sum(v);
    const int warps = blockDim.x >> 5;
    if (warps == 1) return v;
    float* s = scratch + threadIdx.y * 32;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) s[warp] = v;
    __syncthreads();
    v = lane < warps ? s[lane] : (IS_MAX ? NEG_INF : 0.0f);
    return IS_MAX ? warp_max(v) : warp_sum(v);
}

// ---------------------------------------------------------------- asynchronous copies, ldmatrix

/// The shared-state-space address of a generic pointer to shared memory.
__device__ __forceinline__ unsigned shared_address(const void* p) {
    unsigned a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

/// Starts copying 16 bytes global `src` -> shared `dst` (both 16-byte aligned): the first
/// `src_bytes` (0..16) from `src`, the rest zeros. Lands after a `cp_async_wait` that
/// covers its group (and a barrier, for the other threads of the block).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
#ifdef MONARCH_EMULATE
    emu::cp_async(dst, src, 16, src_bytes);
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(shared_address(dst)), "l"(src), "r"(src_bytes));
#endif
}

/// Closes the group of the copies started since the last commit.
__device__ __forceinline__ void cp_async_commit() {
#ifdef MONARCH_EMULATE
    emu::cp_async_commit();
#else
    asm volatile("cp.async.commit_group;");
#endif
}

/// Waits until at most `N` committed groups of this thread are still in flight.
template <int N> __device__ __forceinline__ void cp_async_wait() {
#ifdef MONARCH_EMULATE
    emu::cp_async_wait(N);
#else
    asm volatile("cp.async.wait_group %0;" ::"n"(N));
#endif
}

/// `ldmatrix.x4` (`.trans` if TRANS): four 8x8 bf16 matrices from shared memory, lane i
/// giving the (16-byte aligned) address of row i % 8 of matrix i / 8. Register j of lane
/// t gets row t / 4, columns 2(t % 4) and 2(t % 4) + 1 of matrix j, or with TRANS its
/// rows 2(t % 4), 2(t % 4) + 1 of column t / 4: exactly an mma operand register.
template <bool TRANS> __device__ __forceinline__ void ldmatrix_x4(unsigned* r, const void* row) {
#ifdef MONARCH_EMULATE
    emu::ldmatrix_x4<TRANS>(r, row);
#else
    if (TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(shared_address(row)));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(shared_address(row)));
#endif
}

// ---------------------------------------------------------------- tensor-core tiles
//
// One warp computes D(16x8) += A(16x16) * B(16x8) with `mma.m16n8k16` (bf16 in, f32
// accumulate). Lane `l` has group g = l / 4 and thread-in-group t = l % 4; it holds
//   A element e (0..7): row g + 8*((e>>1)&1), col 2t + (e&1) + 8*(e>>2)
//   B element e (0..3): k 2t + (e&1) + 8*(e>>1), col g
//   C element e (0..3): row g + 8*(e>>1),     col 2t + (e&1)
// The f32 variant keeps the same layouts and emulates the product with shuffles and
// FMAs, so that one kernel body serves both dtypes.

template <typename T> struct FragA;
template <typename T> struct FragB;
template <> struct FragA<bf16> { unsigned r[4]; };
template <> struct FragB<bf16> { unsigned r[2]; };
template <> struct FragA<float> { float v[8]; };
template <> struct FragB<float> { float v[4]; };

/// The 16x8 f32 accumulator of one warp.
struct Acc {
    float c[4];
};

__device__ __forceinline__ void acc_zero(Acc& a) {
#pragma unroll
    for (int e = 0; e < 4; e++) a.c[e] = 0.0f;
}

__device__ __forceinline__ int frag_a_row(int e) { return ((threadIdx.x & 31) >> 2) + 8 * ((e >> 1) & 1); }
__device__ __forceinline__ int frag_a_col(int e) { return 2 * (threadIdx.x & 3) + (e & 1) + 8 * (e >> 2); }
__device__ __forceinline__ int frag_b_k(int e) { return 2 * (threadIdx.x & 3) + (e & 1) + 8 * (e >> 1); }
__device__ __forceinline__ int frag_b_n() { return (threadIdx.x & 31) >> 2; }
__device__ __forceinline__ int acc_row(int e) { return ((threadIdx.x & 31) >> 2) + 8 * (e >> 1); }
__device__ __forceinline__ int acc_col(int e) { return 2 * (threadIdx.x & 3) + (e & 1); }

/// Loads the A fragment of the 16x16 tile whose element (m, k) is `s[m*sm + k*sk]`.
template <typename T> __device__ __forceinline__ void load_a(FragA<T>& a, const T* s, int sm, int sk);
template <> __device__ __forceinline__ void load_a<bf16>(FragA<bf16>& a, const bf16* s, int sm, int sk) {
#pragma unroll
    for (int r = 0; r < 4; r++) {
        const int m = frag_a_row(2 * r), k = frag_a_col(2 * r);
        a.r[r] = (unsigned)s[m * sm + k * sk].bits | ((unsigned)s[m * sm + (k + 1) * sk].bits << 16);
    }
}
template <> __device__ __forceinline__ void load_a<float>(FragA<float>& a, const float* s, int sm, int sk) {
#pragma unroll
    for (int e = 0; e < 8; e++) a.v[e] = s[frag_a_row(e) * sm + frag_a_col(e) * sk];
}

/// Loads the B fragment of the 16(k)x8(n) tile whose element (n, k) is `s[n*sn + k*sk]`.
template <typename T> __device__ __forceinline__ void load_b(FragB<T>& b, const T* s, int sn, int sk);
template <> __device__ __forceinline__ void load_b<bf16>(FragB<bf16>& b, const bf16* s, int sn, int sk) {
    const int n = frag_b_n();
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int k = frag_b_k(2 * r);
        b.r[r] = (unsigned)s[n * sn + k * sk].bits | ((unsigned)s[n * sn + (k + 1) * sk].bits << 16);
    }
}
template <> __device__ __forceinline__ void load_b<float>(FragB<float>& b, const float* s, int sn, int sk) {
    const int n = frag_b_n();
#pragma unroll
    for (int e = 0; e < 4; e++) b.v[e] = s[n * sn + frag_b_k(e) * sk];
}

/// d += a * b for one warp.
__device__ __forceinline__ void mma(Acc& d, const FragA<bf16>& a, const FragB<bf16>& b) {
#ifdef MONARCH_EMULATE
    emu::mma_m16n8k16_bf16(d.c, a.r, b.r);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d.c[0]), "+f"(d.c[1]), "+f"(d.c[2]), "+f"(d.c[3])
        : "r"(a.r[0]), "r"(a.r[1]), "r"(a.r[2]), "r"(a.r[3]), "r"(b.r[0]), "r"(b.r[1]));
#endif
}

/// The f32 emulation is not inlined: it is long, and inlining it at every call site of
/// the unrolled tile loops multiplies compile time without helping the f32 path's speed
/// much (bf16 is the fast path).
__device__ __noinline__ Acc mma_f32(Acc d, FragA<float> a, FragB<float> b) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int k = 0; k < 16; k++) {
        const int owner = (k & 7) >> 1;          // thread-in-group holding column/row k
        const int ea = (k & 1) + 4 * (k >> 3);   // A register of (row g, col k); +2 for row g+8
        const int eb = (k & 1) + 2 * (k >> 3);   // B register of (k, col)
        const float a_lo = __shfl_sync(0xffffffffu, a.v[ea], g * 4 + owner);
        const float a_hi = __shfl_sync(0xffffffffu, a.v[ea + 2], g * 4 + owner);
        const float b0 = __shfl_sync(0xffffffffu, b.v[eb], (2 * t) * 4 + owner);
        const float b1 = __shfl_sync(0xffffffffu, b.v[eb], (2 * t + 1) * 4 + owner);
        d.c[0] = fmaf(a_lo, b0, d.c[0]);
        d.c[1] = fmaf(a_lo, b1, d.c[1]);
        d.c[2] = fmaf(a_hi, b0, d.c[2]);
        d.c[3] = fmaf(a_hi, b1, d.c[3]);
    }
    return d;
}

__device__ __forceinline__ void mma(Acc& d, const FragA<float>& a, const FragB<float>& b) { d = mma_f32(d, a, b); }

/// The A fragment (16 rows x 16 k) formed by two neighbouring accumulators (columns
/// 0..7 and 8..15), rounded to T: how a softmax tile P in registers feeds P*V.
template <typename T> __device__ __forceinline__ void acc_to_a(FragA<T>& a, const Acc& lo, const Acc& hi);
template <> __device__ __forceinline__ void acc_to_a<bf16>(FragA<bf16>& a, const Acc& lo, const Acc& hi) {
    a.r[0] = pack_bf16x2(lo.c[0], lo.c[1]);
    a.r[1] = pack_bf16x2(lo.c[2], lo.c[3]);
    a.r[2] = pack_bf16x2(hi.c[0], hi.c[1]);
    a.r[3] = pack_bf16x2(hi.c[2], hi.c[3]);
}
template <> __device__ __forceinline__ void acc_to_a<float>(FragA<float>& a, const Acc& lo, const Acc& hi) {
#pragma unroll
    for (int e = 0; e < 4; e++) {
        a.v[e] = lo.c[e];
        a.v[e + 4] = hi.c[e];
    }
}

/// The A fragment of the 16x16 tile at (m0, k0) of a shared tile stored `[m][k]` with
/// row length `ld` or, if `trans`, `[k][m]`. bf16 through `ldmatrix` (rows 16-byte
/// aligned: `ld` and the offsets multiples of 8).
__device__ __forceinline__ void frag_a(FragA<bf16>& a, const bf16* s, int ld, bool trans, int m0, int k0) {
    const int i = threadIdx.x & 31;
    if (trans) ldmatrix_x4<true>(a.r, s + (k0 + (i & 7) + 8 * (i >> 4)) * ld + m0 + 8 * ((i >> 3) & 1));
    else ldmatrix_x4<false>(a.r, s + (m0 + (i & 7) + 8 * ((i >> 3) & 1)) * ld + k0 + 8 * (i >> 4));
}
__device__ __forceinline__ void frag_a(FragA<float>& a, const float* s, int ld, bool trans, int m0, int k0) {
    if (trans) load_a(a, s + k0 * ld + m0, 1, ld);
    else load_a(a, s + m0 * ld + k0, ld, 1);
}

/// The B fragments of the 16(k)x8 tiles at (n0, k0) and (n0 + 8, k0) of a shared tile
/// stored `[n][k]` with row length `ld` or, if `trans`, `[k][n]` (bf16: one `ldmatrix`).
__device__ __forceinline__ void frag_b2(FragB<bf16>& b0, FragB<bf16>& b1, const bf16* s, int ld, bool trans, int n0,
                                        int k0) {
    const int i = threadIdx.x & 31;
    unsigned r[4];
    if (trans) ldmatrix_x4<true>(r, s + (k0 + (i & 7) + 8 * ((i >> 3) & 1)) * ld + n0 + 8 * (i >> 4));
    else ldmatrix_x4<false>(r, s + (n0 + (i & 7) + 8 * (i >> 4)) * ld + k0 + 8 * ((i >> 3) & 1));
    b0.r[0] = r[0];
    b0.r[1] = r[1];
    b1.r[0] = r[2];
    b1.r[1] = r[3];
}
__device__ __forceinline__ void frag_b2(FragB<float>& b0, FragB<float>& b1, const float* s, int ld, bool trans,
                                        int n0, int k0) {
    if (trans) {
        load_b(b0, s + k0 * ld + n0, 1, ld);
        load_b(b1, s + k0 * ld + n0 + 8, 1, ld);
    } else {
        load_b(b0, s + n0 * ld + k0, ld, 1);
        load_b(b1, s + (n0 + 8) * ld + k0, ld, 1);
    }
}

/// `acc[t] += a · B(n0 + 8t .. n0 + 8t + 8, k0 .. k0 + 16)` for t < N/8: one A fragment
/// (16 rows, 16 k) against N columns of a shared B tile stored `[n][k]` with row length
/// `ld` or, if `trans`, `[k][n]`, the B fragments loaded two at a time.
template <int N, typename T>
__device__ __forceinline__ void mma_row(Acc* acc, const FragA<T>& a, const T* s, int ld, bool trans, int n0, int k0) {
    static_assert(N % 16 == 0, "pairs of 8-column tiles");
#pragma unroll
    for (int t = 0; t < N / 8; t += 2) {
        FragB<T> b0, b1;
        frag_b2(b0, b1, s, ld, trans, n0 + t * 8, k0);
        mma(acc[t], a, b0);
        mma(acc[t + 1], a, b1);
    }
}

/// Block-level tile GEMM on shared memory: `BM x BN` outputs from an A tile (BM x BK)
/// and a B tile (BN x BK), each stored k-contiguous or transposed (see `step`), with
/// `WM x WN` warps each owning a `(BM/WM) x (BN/WN)` sub-tile of `MI x NI` accumulators.
template <typename T, int BM, int BN, int BK, int WM, int WN> struct TileMma {
    static constexpr int THREADS = WM * WN * 32;
    static constexpr int MI = BM / WM / 16, NI = BN / WN / 8;
    static_assert(BM % (WM * 16) == 0 && BN % (WN * 8) == 0 && BK % 16 == 0, "tile shape");

    Acc acc[MI][NI];

    __device__ __forceinline__ void zero() {
#pragma unroll
        for (int i = 0; i < MI; i++)
#pragma unroll
            for (int j = 0; j < NI; j++) acc_zero(acc[i][j]);
    }

    /// Accumulates the product of the shared tiles over their BK columns: A stored
    /// `[m][k]` with row length `lda`, or `[k][m]` if `a_trans`; B `[n][k]` or `[k][n]`.
    __device__ __forceinline__ void step(const T* a_s, int lda, bool a_trans, const T* b_s, int ldb, bool b_trans) {
        const int warp = threadIdx.x >> 5, wm = warp / WN, wn = warp % WN;
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            FragA<T> a[MI];
            FragB<T> b[NI];
#pragma unroll
            for (int i = 0; i < MI; i++) frag_a(a[i], a_s, lda, a_trans, wm * MI * 16 + i * 16, kk);
#pragma unroll
            for (int j = 0; j + 1 < NI; j += 2) frag_b2(b[j], b[j + 1], b_s, ldb, b_trans, wn * NI * 8 + j * 8, kk);
            if (NI % 2) {
                const int n0 = wn * NI * 8 + (NI - 1) * 8;
                if (b_trans) load_b(b[NI - 1], b_s + kk * ldb + n0, 1, ldb);
                else load_b(b[NI - 1], b_s + n0 * ldb + kk, ldb, 1);
            }
#pragma unroll
            for (int i = 0; i < MI; i++)
#pragma unroll
                for (int j = 0; j < NI; j++) mma(acc[i][j], a[i], b[j]);
        }
    }

    /// Calls `f(row, col, v0, v1)` for every pair of accumulators at (row, col) and
    /// (row, col + 1) (col even), with tile-local coordinates.
    template <typename F> __device__ __forceinline__ void for_each_pair(F f) const {
        const int warp = threadIdx.x >> 5, wm = warp / WN, wn = warp % WN;
#pragma unroll
        for (int i = 0; i < MI; i++)
#pragma unroll
            for (int j = 0; j < NI; j++)
#pragma unroll
                for (int e = 0; e < 4; e += 2)
                    f(wm * MI * 16 + i * 16 + acc_row(e), wn * NI * 8 + j * 8 + acc_col(e), acc[i][j].c[e],
                      acc[i][j].c[e + 1]);
    }

    /// Calls `f(row, col, value)` for every accumulator, with tile-local coordinates.
    template <typename F> __device__ __forceinline__ void for_each(F f) const {
        for_each_pair([&](int r, int c, float v0, float v1) {
            f(r, c, v0);
            f(r, c + 1, v1);
        });
    }
};

/// Starts loading `R` rows of `C` contiguous elements, row r at `src + r*sr`, into
/// `dst[r*ld + c]`; rows from `valid` on are zeros. With `vec` (src and sr 16-byte
/// aligned) as 16-byte `cp_async16` chunks, which land after the caller's commit, wait and
/// barrier; else with plain loads and stores (visible after the barrier alone).
template <typename T, int R, int C, int THREADS>
__device__ __forceinline__ void load_rows(T* dst, int ld, const T* src, i64 sr, int valid, bool vec) {
    constexpr int V = 16 / sizeof(T);
    static_assert(C % V == 0, "rows of whole 16-byte chunks");
    if (vec) {
#pragma unroll
        for (int i = threadIdx.x; i < R * C / V; i += THREADS) {
            const int r = i / (C / V), c = i % (C / V) * V;
            cp_async16(dst + r * ld + c, r < valid ? src + r * sr + c : src, r < valid ? 16 : 0);
        }
    } else {
#pragma unroll 4
        for (int i = threadIdx.x; i < R * C; i += THREADS) {
            const int r = i / C, c = i % C;
            dst[r * ld + c] = r < valid ? src[r * sr + c] : from_f32<T>(0.0f);
        }
    }
}

/// Runs `steps` K steps through `S` (>= 2) shared-memory stages: `load(t, stage)` starts
/// loading step t into a stage (cp.async chunks or plain stores), `compute(stage)` then
/// reads it; step t + S - 1 loads while step t computes. No barrier follows the last
/// compute: a caller that writes shared memory after the loop synchronises first.
template <int S, typename L, typename C> __device__ __forceinline__ void pipeline(int steps, L load, C compute) {
#pragma unroll
    for (int t = 0; t < S - 1; t++) {
        if (t < steps) load(t, t);
        cp_async_commit();
    }
    for (int t = 0; t < steps; t++) {
        cp_async_wait<S - 2>();
        __syncthreads();  // step t is in for every thread; stage (t - 1) % S is free
        if (t + S - 1 < steps) load(t + S - 1, (t + S - 1) % S);
        cp_async_commit();
        compute(t % S);
    }
}
