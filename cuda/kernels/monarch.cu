// Monarch products as grouped, strided GEMMs (the stem matches tensor's monarch op).
//
// One launch computes, for every group g (a diagonal block) and all m < M, n < N:
//   C(g, m, n) = sum_{k < K} A(g, m, k) * B(g, n, k)
// where each operand is read through (group, first index, second index) strides, so the
// Monarch permutations can fold into the index arithmetic (strides of l).
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
// For 2 <= l <= 64 the launcher runs every product on unit strides instead: the
// permuted rows (out1, the output, dout, dout1) pass through group-major copies
// [b, ll*r+rr] / [b, ll*s+ss] made by `monarch_permute` (one coalesced pass each), since
// a stride-l store writes 2 bytes per 32-byte sector and a stride-l load repeats that
// once per column tile.
//
// Tiles (GemmConfig): bf16 128x64 outputs per block of 4 warps (2x2, 64x32 each), K in
// steps of 32 through a 3-stage cp.async pipeline, fragments by ldmatrix, products on
// tensor cores (mma.m16n8k16); f32 64x64, K steps of 16, 2 stages, the same layout with
// FMAs. Each operand's tile is loaded by the widest path its descriptor allows, decided
// per launch: 16-byte cp.async chunks along k (stored [x][k]) or along its first index
// (stored [k][x], read with ldmatrix.trans) where that stride is 1 and the others and the
// base are 16-byte multiples, else element by element along the smaller stride (the
// permuted operands of stride l when l > 64, ragged sizes). The grid is one-dimensional, (group, split) fastest,
// then column tiles, then row tiles, so the l groups that interleave within one row run
// side by side and share its cache lines. With k_splits > 1 each split writes f32
// partials to `partial` [split][g][M][N] and `grouped_gemm_splits` sums them.

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
    const void* bias;   // null, or added at the column: C = result + bias[column]
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
    const i64 col = column_of(g, m, n, c.sg, c.sx, c.sy, c.row_dim);
    if (col >= c.col_lim) return;
    if (c.bias) v += to_f32(reinterpret_cast<const T*>(c.bias)[col]);
    T* p = reinterpret_cast<T*>(c.p) + g * c.sg + m * c.sx + n * c.sy;
    *p = from_f32<T>(c.accumulate ? to_f32(*p) + v : v);
}

/// `gemm_store` of (m, n) and, if `both`, (m, n + 1): one paired access where the
/// columns are adjacent in memory (n stride 1, not the batch row), both live and aligned.
template <typename T>
__device__ __forceinline__ void gemm_store2(const GemmOutput& c, i64 g, i64 m, i64 n, float v0, float v1, bool both) {
    const i64 col = column_of(g, m, n, c.sg, c.sx, c.sy, c.row_dim);
    T* p = reinterpret_cast<T*>(c.p) + g * c.sg + m * c.sx + n;
    if (both && c.sy == 1 && c.row_dim != 2 && col + 1 < c.col_lim && aligned(p, 2 * sizeof(T))) {
        Pack<T, 2>* pp = reinterpret_cast<Pack<T, 2>*>(p);
        Pack<T, 2> w;
        if (c.accumulate) w = *pp;
        const T* bias = reinterpret_cast<const T*>(c.bias);
        v0 += (c.accumulate ? to_f32(w.v[0]) : 0.0f) + (bias ? to_f32(bias[col]) : 0.0f);
        v1 += (c.accumulate ? to_f32(w.v[1]) : 0.0f) + (bias ? to_f32(bias[col + 1]) : 0.0f);
        w.v[0] = from_f32<T>(v0);
        w.v[1] = from_f32<T>(v1);
        *pp = w;
        return;
    }
    gemm_store<T>(c, g, m, n, v0);
    if (both) gemm_store<T>(c, g, m, n + 1, v1);
}

/// Tile shape and pipeline depth per dtype (the launcher's `gemm_tile` must agree).
template <typename T> struct GemmConfig;
template <> struct GemmConfig<bf16> { static constexpr int BM = 128, BN = 64, BK = 32, STAGES = 3; };
template <> struct GemmConfig<float> { static constexpr int BM = 64, BN = 64, BK = 16, STAGES = 2; };

/// How an operand's tile travels to shared memory.
enum LoadMode { LOAD_K, LOAD_X, LOAD_ELEMENTS };

/// The widest load `o` allows: 16-byte chunks along k or along its first index x.
template <typename T> __device__ __forceinline__ LoadMode load_mode(const GemmOperand& o) {
    constexpr int V = 16 / sizeof(T);
    if (!aligned(o.p, 16) || o.sg % V != 0) return LOAD_ELEMENTS;
    if (o.sy == 1 && o.sx % V == 0) return LOAD_K;
    if (o.sx == 1 && o.sy % V == 0) return LOAD_X;
    return LOAD_ELEMENTS;
}

/// How many of the `V` elements from (x, k) along the unit-stride index (k if `along_k`,
/// else x) are live: in range and with their column below `col_lim`. A prefix, as the
/// column grows by one per element unless the unit-stride index is the batch row.
__device__ __forceinline__ int live_prefix(const GemmOperand& o, int V, i64 g, int x, int k, int xe, int ke,
                                           bool along_k) {
    if (x >= xe || k >= ke) return 0;
    int n = min(V, along_k ? ke - k : xe - x);
    const i64 col = column_of(g, x, k, o.sg, o.sx, o.sy, o.row_dim);
    if (o.row_dim == (along_k ? 2 : 1)) return col < o.col_lim ? n : 0;
    const i64 room = o.col_lim - col;
    return room <= 0 ? 0 : (int)(room < n ? room : n);
}

/// Starts loading the `BX x BK` tile of operand `o` (group g, first index from x0 below
/// xe, k from k0 below ke) into `s`: `[x][BK + 8]`, or `[k][BX + 8]` for LOAD_X. Chunked
/// modes are asynchronous (the caller commits and waits); LOAD_ELEMENTS stores directly.
template <typename T, int BX, int BK, int THREADS>
__device__ __forceinline__ void load_operand(T* s, LoadMode mode, const GemmOperand& o, int g, int x0, int xe, int k0,
                                             int ke) {
    constexpr int V = 16 / sizeof(T), LDK = BK + 8, LDX = BX + 8;
    const T* base = reinterpret_cast<const T*>(o.p) + g * o.sg;
    if (mode == LOAD_K) {
#pragma unroll
        for (int c = threadIdx.x; c < BX * BK / V; c += THREADS) {
            const int x = c / (BK / V), k = c % (BK / V) * V;
            const int n = live_prefix(o, V, g, x0 + x, k0 + k, xe, ke, true);
            cp_async16(s + x * LDK + k, n ? base + (i64)(x0 + x) * o.sx + (k0 + k) : base, n * (int)sizeof(T));
        }
    } else if (mode == LOAD_X) {
#pragma unroll
        for (int c = threadIdx.x; c < BX * BK / V; c += THREADS) {
            const int k = c / (BX / V), x = c % (BX / V) * V;
            const int n = live_prefix(o, V, g, x0 + x, k0 + k, xe, ke, false);
            cp_async16(s + k * LDX + x, n ? base + (x0 + x) + (i64)(k0 + k) * o.sy : base, n * (int)sizeof(T));
        }
    } else {
        const bool k_inner = (o.sy < 0 ? -o.sy : o.sy) <= (o.sx < 0 ? -o.sx : o.sx);
#pragma unroll 4
        for (int i = threadIdx.x; i < BX * BK; i += THREADS) {
            const int x = k_inner ? i / BK : i % BX, k = k_inner ? i % BK : i / BX;
            const int gx = x0 + x, gk = k0 + k;
            const bool ok = gx < xe && gk < ke && column_of(g, gx, gk, o.sg, o.sx, o.sy, o.row_dim) < o.col_lim;
            s[x * LDK + k] = ok ? base[(i64)gx * o.sx + (i64)gk * o.sy] : from_f32<T>(0.0f);
        }
    }
}

template <typename T> __device__ void grouped_gemm_run(const GroupedGemm& P) {
    typedef GemmConfig<T> C;
    constexpr int BM = C::BM, BN = C::BN, BK = C::BK, S = C::STAGES;
    typedef TileMma<T, BM, BN, BK, 2, 2> Tile;
    // Per stage: A as [BM][BK+8] or [BK][BM+8], B as [BN][BK+8] or [BK][BN+8].
    constexpr int A_SIZE = BM * (BK + 8) > BK * (BM + 8) ? BM * (BK + 8) : BK * (BM + 8);
    constexpr int B_SIZE = BN * (BK + 8) > BK * (BN + 8) ? BN * (BK + 8) : BK * (BN + 8);
    __shared__ __align__(16) T smem[S * (A_SIZE + B_SIZE)];
    const int gs = P.groups * P.k_splits, n_tiles = (P.N + BN - 1) / BN;
    const int gz = blockIdx.x % gs, tile_id = blockIdx.x / gs;
    const int g = gz / P.k_splits, split = gz % P.k_splits;
    const int m0 = tile_id / n_tiles * BM, n0 = tile_id % n_tiles * BN;
    const int chunk = ((P.K + P.k_splits - 1) / P.k_splits + BK - 1) / BK * BK;
    const int kb = split * chunk, ke = min(P.K, kb + chunk);
    const int k_tiles = ke > kb ? (ke - kb + BK - 1) / BK : 0;
    const LoadMode am = load_mode<T>(P.a), bm = load_mode<T>(P.b);
    Tile tile;
    tile.zero();
    pipeline<S>(
        k_tiles,
        [&](int t, int stage) {
            T* st = smem + stage * (A_SIZE + B_SIZE);
            load_operand<T, BM, BK, Tile::THREADS>(st, am, P.a, g, m0, P.M, kb + t * BK, ke);
            load_operand<T, BN, BK, Tile::THREADS>(st + A_SIZE, bm, P.b, g, n0, P.N, kb + t * BK, ke);
        },
        [&](int stage) {
            const T* st = smem + stage * (A_SIZE + B_SIZE);
            tile.step(st, am == LOAD_X ? BM + 8 : BK + 8, am == LOAD_X, st + A_SIZE, bm == LOAD_X ? BN + 8 : BK + 8,
                      bm == LOAD_X);
        });
    tile.for_each_pair([&](int r, int c, float v0, float v1) {
        const int m = m0 + r, n = n0 + c;
        if (m >= P.M || n >= P.N) return;
        if (P.k_splits == 1) {
            gemm_store2<T>(P.c, g, m, n, v0, v1, n + 1 < P.N);
        } else {
            float* p = P.partial + (((i64)split * P.groups + g) * P.M + m) * P.N + n;
            p[0] = v0;
            if (n + 1 < P.N) p[1] = v1;
        }
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

/// Between a row's natural order [b, ss*l + ll] (length mout <= l*s) and group-major
/// order [b, ll*s + ss] (length l*s). `to_group`: dst (group-major) = src (natural), 0
/// past mout: the output gradient of the backward, so that the two products reading it
/// grouped by ll read unit strides. Else dst (natural, first mout) = src (group-major) +
/// bias[j] if given: the forward's output, written group-major by the second product (a
/// stride-l store writes 2 bytes per 32-byte sector). One block per (row, chunk of
/// MP_CHUNK / l values of ss): both sides of a chunk are l*n or n contiguous elements,
/// read and written coalesced through shared memory. Grid rows * ceil(s / (MP_CHUNK / l))
/// on x, 256 threads.
/// `act` fuses the activation `fn` that follows a Monarch layer (MP_GELU_TANH,
/// MP_GELU_ERF, MP_RELU): MP_ACT (back only) stores f(src + bias) instead of src + bias;
/// MP_ACT_GRAD (to group-major only) stores dh = src · f'(aux + bias), src the natural
/// gradient of the activation's output and aux the group-major pre-activation that
/// MP_ACT read (bias not added), 0 past mout.
#define MP_CHUNK 2048
#define MP_ACT 1
#define MP_ACT_GRAD 2
#define MP_GELU_TANH 0
#define MP_GELU_ERF 1
#define MP_RELU 2

/// The activation `fn` at x; A as for tanh_of.
template <bool A> __device__ __forceinline__ float act_f(int fn, float x) {
    return fn == MP_GELU_TANH ? gelu_tanh_f<A>(x) : fn == MP_GELU_ERF ? gelu_erf_f(x) : fmaxf(x, 0.0f);
}

/// Its derivative at x.
__device__ __forceinline__ float act_df(int fn, float x) {
    return fn == MP_GELU_TANH ? gelu_tanh_df(x) : fn == MP_GELU_ERF ? gelu_erf_df(x) : (x > 0.0f ? 1.0f : 0.0f);
}

/// The MP_ACT_GRAD value of group-major entry gi (natural column j) of one row.
template <typename T>
__device__ __forceinline__ T act_grad_at(T da, const T* __restrict__ aux_row, const T* __restrict__ bias, i64 gi, i64 j,
                                         int mout, int fn) {
    if (j >= mout) return from_f32<T>(0.0f);
    const float h = to_f32(aux_row[gi]) + (bias ? to_f32(bias[j]) : 0.0f);
    return from_f32<T>(to_f32(da) * act_df(fn, h));
}

/// The back-permuted value v plus its bias b, through the activation with MP_ACT.
template <typename T> __device__ __forceinline__ T biased(T v, float b, int act, int fn) {
    const float x = to_f32(v) + b;
    return from_f32<T>(act == MP_ACT ? act_f<sizeof(T) == 2>(fn, x) : x);
}

template <typename T>
__device__ void monarch_permute_run(const T* __restrict__ src, T* __restrict__ dst, const T* __restrict__ bias,
                                    const T* __restrict__ aux, int l, int s, int mout, int to_group, int act,
                                    int fn) {
    constexpr int V = 16 / sizeof(T);
    typedef Pack<T, V> P;
    __shared__ __align__(16) T tile[MP_CHUNK];  // the chunk in natural order: tile[ss*l + ll]
    const int per = MP_CHUNK / l, chunks = (s + per - 1) / per;
    const i64 b = blockIdx.x / chunks, ls = (i64)l * s;
    const int s0 = (int)(blockIdx.x % chunks) * per, n = min(per, s - s0), nl = n * l;
    const T* in = src + b * (to_group ? mout : ls);
    T* out = dst + b * (to_group ? ls : mout);
    const T* aux_row = aux ? aux + b * ls : nullptr;  // act 2 only
    // The chunk's natural side: nl elements from column s0*l (those past mout are zeros or
    // not written); its group-major side: l runs of n from ll*s + s0. Each side moves in
    // 16-byte chunks where its addresses allow (mout or s, n a multiple of V).
    const T* nat_in = in + (i64)s0 * l;
    T* nat_out = out + (i64)s0 * l;
    const bool nat_vec = mout % V == 0 && aligned(to_group ? (const void*)nat_in : (const void*)nat_out, 16) &&
                         (!bias || aligned(bias + (i64)s0 * l, 16));
    const bool grp_vec = s % V == 0 && n % V == 0 && aligned(to_group ? (const void*)(out + s0) : (const void*)(in + s0), 16);
    const int nv = grp_vec ? n / V : 0;
    // Fill the tile from src.
    if (to_group && nat_vec) {
        for (int i = threadIdx.x; i < nl / V; i += blockDim.x) {
            P v;
            if (s0 * l + i * V < mout) v = reinterpret_cast<const P*>(nat_in)[i];
            else
#pragma unroll
                for (int e = 0; e < V; e++) v.v[e] = from_f32<T>(0.0f);
            reinterpret_cast<P*>(tile)[i] = v;
        }
    } else if (!to_group && grp_vec) {
        for (int i = threadIdx.x; i < l * nv; i += blockDim.x) {
            const int ll = i / nv, ss = i % nv * V;
            const P v = *reinterpret_cast<const P*>(in + (i64)ll * s + s0 + ss);
#pragma unroll
            for (int e = 0; e < V; e++) tile[(ss + e) * l + ll] = v.v[e];
        }
    }
    // The elements [first, last) no chunk moved: all, the natural side's tail, or none.
    int first = 0, last = nl;
    if (to_group && nat_vec) first = nl / V * V;
    if (!to_group && grp_vec) last = 0;
    for (int i = first + threadIdx.x; i < last; i += blockDim.x) {
        if (to_group) {
            const int j = s0 * l + i;
            tile[i] = j < mout ? nat_in[i] : from_f32<T>(0.0f);
        } else {
            const int ll = i / n, ss = i % n;
            tile[ss * l + ll] = in[(i64)ll * s + s0 + ss];
        }
    }
    __syncthreads();
    // Write the tile to dst.
    if (to_group && grp_vec) {
        for (int i = threadIdx.x; i < l * nv; i += blockDim.x) {
            const int ll = i / nv, ss = i % nv * V;
            P v;
            const i64 gi = (i64)ll * s + s0 + ss;
#pragma unroll
            for (int e = 0; e < V; e++) {
                const T t = tile[(ss + e) * l + ll];
                v.v[e] = act == MP_ACT_GRAD
                             ? act_grad_at(t, aux_row, bias, gi + e, (i64)(s0 + ss + e) * l + ll, mout, fn)
                             : t;
            }
            *reinterpret_cast<P*>(out + gi) = v;
        }
    } else if (!to_group && nat_vec) {
        for (int i = threadIdx.x; i < nl / V && s0 * l + i * V < mout; i += blockDim.x) {
            P v = reinterpret_cast<const P*>(tile)[i];
            if (bias || act) {
                P bv;
                if (bias) bv = reinterpret_cast<const P*>(bias + (i64)s0 * l)[i];
#pragma unroll
                for (int e = 0; e < V; e++) v.v[e] = biased(v.v[e], bias ? to_f32(bv.v[e]) : 0.0f, act, fn);
            }
            reinterpret_cast<P*>(nat_out)[i] = v;
        }
    }
    // What no chunk stored: all or nothing (in chunks, the natural side's tail lies past
    // mout, as mout and the chunk's start are multiples of V).
    last = (to_group && grp_vec) || (!to_group && nat_vec) ? 0 : nl;
    for (int i = threadIdx.x; i < last; i += blockDim.x) {
        if (to_group) {
            const int ll = i / n, ss = i % n;
            const i64 gi = (i64)ll * s + s0 + ss;
            const T t = tile[ss * l + ll];
            out[gi] = act == MP_ACT_GRAD ? act_grad_at(t, aux_row, bias, gi, (i64)(s0 + ss) * l + ll, mout, fn) : t;
        } else {
            const int j = s0 * l + i;
            if (j < mout) nat_out[i] = bias || act ? biased(tile[i], bias ? to_f32(bias[j]) : 0.0f, act, fn) : tile[i];
        }
    }
}

#define MONARCH_KERNELS(T, SUF)                                                                                  \
    extern "C" __global__ void __launch_bounds__(128, 3) grouped_gemm_##SUF(GroupedGemm p) {                    \
        grouped_gemm_run<T>(p);                                                                                  \
    }                                                                                                            \
    extern "C" __global__ void grouped_gemm_splits_##SUF(GroupedGemm p) { grouped_gemm_splits_run<T>(p); }     \
    extern "C" __global__ void monarch_permute_##SUF(const T* src, T* dst, const T* bias, const T* aux, int l,     \
                                                     int s, int mout, int to_group, int act, int fn) {            \
        monarch_permute_run<T>(src, dst, bias, aux, l, s, mout, to_group, act, fn);                              \
    }

MONARCH_KERNELS(float, f32)
MONARCH_KERNELS(bf16, bf16)
