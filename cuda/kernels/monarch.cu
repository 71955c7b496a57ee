// Monarch products as grouped, strided GEMMs (the stem matches tensor's monarch op).
//
// One launch computes, for every group g (a diagonal block) and all m < M, n < N:
//   C(g, m, n) = sum_{k < K} A(g, m, k) * B(g, n, k)
// where each operand is read through (group, first index, second index) strides, so the
// Monarch permutations fold into the index arithmetic and never cost a pass of their own.
// With x (batch, n_in), blkdiag1 (k, q, p), blkdiag2 (l, s, r), out1 (batch, k*q):
//   forward:  out1[b, kk*q+qq]  = sum_pp w1[kk,qq,pp] x[b, kk*p+pp]
//             out[b, ss*l+ll]   = sum_rr w2[ll,ss,rr] out1[b, rr*l+ll]
//   backward: dout1[b, rr*l+ll] = sum_ss dout[b, ss*l+ll] w2[ll,ss,rr]
//             dx[b, kk*p+pp]    = sum_qq dout1[b, kk*q+qq] w1[kk,qq,pp]
//             dw1[kk,qq,pp]     = sum_b dout1[b, kk*q+qq] x[b, kk*p+pp]
//             dw2[ll,ss,rr]     = sum_b dout[b, ss*l+ll] out1[b, rr*l+ll]
// (cuda/src/ops/monarch.rs builds the six descriptors). Entries whose column (offset
// without the batch-row term) reaches `col_lim` read as 0 and are not written: this is
// the zero padding of inputs and the truncation of outputs of non-divisible sizes.
//
// Tiles: 64x64 outputs per block of 4 warps (2x2), K in steps of 32 through shared
// memory, bf16 on tensor cores (mma.m16n8k16), f32 on the same layout with FMAs.
// Grid: (ceil(M/64), ceil(N/64), groups * k_splits): row tiles on x, whose limit is
// 2^31 - 1 (M is the batch in four of the six products), column tiles on y. With
// k_splits > 1 each split writes f32 partials to `partial` [split][g][M][N] and
// `grouped_gemm_splits` sums them.

struct GemmOperand {
    const void* p;
    i64 sg, sx, sy;  // strides of the group, the first index (m or n) and k
    i64 col_lim;     // entries whose column reaches this read as zero
    int row_dim;     // which index is the batch row (excluded from the column): 0 none, 1 first, 2 k
    int pad_;
};

struct GemmOutput {
    void* p;
    i64 sg, sx, sy;  // strides of the group, m and n
    i64 col_lim;     // entries whose column reaches this are not written
    int row_dim;     // 0 none, 1 m, 2 n
    int accumulate;  // C += result instead of C = result
};

struct GroupedGemm {
    GemmOperand a, b;
    GemmOutput c;
    int M, N, K, groups, k_splits, pad_;
    float* partial;
};

__device__ __forceinline__ i64 column_of(i64 g, i64 x, i64 y, i64 sg, i64 sx, i64 sy, int row_dim) {
    return g * sg + (row_dim == 1 ? 0 : x * sx) + (row_dim == 2 ? 0 : y * sy);
}

template <typename T>
__device__ __forceinline__ void gemm_store(const GemmOutput& c, i64 g, i64 m, i64 n, float v) {
    if (column_of(g, m, n, c.sg, c.sx, c.sy, c.row_dim) >= c.col_lim) return;
    T* p = reinterpret_cast<T*>(c.p) + g * c.sg + m * c.sx + n * c.sy;
    *p = from_f32<T>(c.accumulate ? to_f32(*p) + v : v);
}

#define GG_BM 64
#define GG_BN 64
#define GG_BK 32

template <typename T> __device__ void grouped_gemm_run(const GroupedGemm& P) {
    typedef TileMma<T, GG_BM, GG_BN, GG_BK, 2, 2> Tile;
    __shared__ T a_s[GG_BM * Tile::LDS];
    __shared__ T b_s[GG_BN * Tile::LDS];
    const int g = blockIdx.z / P.k_splits, split = blockIdx.z % P.k_splits;
    const int m0 = blockIdx.x * GG_BM, n0 = blockIdx.y * GG_BN;
    const int chunk = ((P.K + P.k_splits - 1) / P.k_splits + GG_BK - 1) / GG_BK * GG_BK;
    const int kb = split * chunk, ke = min(P.K, kb + chunk);
    const GemmOperand& A = P.a;
    const GemmOperand& B = P.b;
    const T* a_base = reinterpret_cast<const T*>(A.p) + g * A.sg;
    const T* b_base = reinterpret_cast<const T*>(B.p) + g * B.sg;
    Tile tile;
    tile.zero();
    for (int k0 = kb; k0 < ke; k0 += GG_BK) {
        load_tile<T, GG_BM, GG_BK, Tile::THREADS>(
            a_s, Tile::LDS, a_base + (i64)m0 * A.sx + (i64)k0 * A.sy, A.sx, A.sy, [&](int r, int c) {
                return m0 + r < P.M && k0 + c < ke &&
                       column_of(g, m0 + r, k0 + c, A.sg, A.sx, A.sy, A.row_dim) < A.col_lim;
            });
        load_tile<T, GG_BN, GG_BK, Tile::THREADS>(
            b_s, Tile::LDS, b_base + (i64)n0 * B.sx + (i64)k0 * B.sy, B.sx, B.sy, [&](int r, int c) {
                return n0 + r < P.N && k0 + c < ke &&
                       column_of(g, n0 + r, k0 + c, B.sg, B.sx, B.sy, B.row_dim) < B.col_lim;
            });
        __syncthreads();
        tile.step(a_s, b_s);
        __syncthreads();
    }
    tile.for_each([&](int r, int c, float v) {
        const int m = m0 + r, n = n0 + c;
        if (m >= P.M || n >= P.N) return;
        if (P.k_splits == 1) gemm_store<T>(P.c, g, m, n, v);
        else P.partial[(((i64)split * P.groups + g) * P.M + m) * P.N + n] = v;
    });
}

template <typename T> __device__ void grouped_gemm_splits_run(const GroupedGemm& P) {
    const i64 total = (i64)P.groups * P.M * P.N;
    const i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < total; i += stride) {
        float v = 0.0f;
        for (int s = 0; s < P.k_splits; s++) v += P.partial[s * total + i];
        const i64 n = i % P.N, m = (i / P.N) % P.M, g = i / ((i64)P.N * P.M);
        gemm_store<T>(P.c, g, m, n, v);
    }
}

#define MONARCH_KERNELS(T, SUF)                                                                                  \
    extern "C" __global__ void __launch_bounds__(128) grouped_gemm_##SUF(GroupedGemm p) {                       \
        grouped_gemm_run<T>(p);                                                                                  \
    }                                                                                                            \
    extern "C" __global__ void grouped_gemm_splits_##SUF(GroupedGemm p) { grouped_gemm_splits_run<T>(p); }

MONARCH_KERNELS(float, f32)
MONARCH_KERNELS(bf16, bf16)
