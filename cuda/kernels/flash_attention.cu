// FlashAttention (Dao et al. 2022; the FA2 work split) for q (batch, heads, seq_q, D)
// contiguous and k, v (batch, heads, seq_k, D) with rows contiguous and heads `kv_stride`
// elements apart (seq_k·D packed; more for views of a longer key cache; dK, dV are
// written packed), D in {32, 64, 128}, softmax scale `scale`
// (1/sqrt(D)), optional causal mask aligned at the last query and key (key j visible to
// query i iff j <= i + seq_k - seq_q: new queries see a whole key cache) and optional
// block mask: u8 (n_q_tiles x n_k_tiles), tile 64 x 64, 1 = visit. Only O and the per-row
// log-sum-exp (f32) are saved; the backward recomputes the score tiles. No N x N buffer
// exists. Rows with no visible key (fully masked) give O = 0 and lse = -inf, and no
// gradient. Attention dropout (p_drop > 0): probability (bh, i, j) is dropped iff
// counter_uniform(seed, (bh*seq_q + i)*seq_k + j) < p_drop, the CPU's mask, and kept ones are
// scaled by drop_scale = 1/(1-p): P∘Z multiplies V in the forward (the normaliser sums the
// undropped P), and the backward uses dV = (P∘Z)ᵀdO, dS = P∘(dP∘Z − delta), the CPU's rule.
//
// Forward:  grid (ceil(seq_q/BR), batch*heads; heads past 65535 on z), 128 threads (4 warps x 16·MQ query
//           rows, FaFwdRows: BR = 128 for bf16 up to head_dim 64, else 64),
//           dynamic shared memory fwd_smem (two stages of K, V tiles: the next visited key
//           tile loads with cp.async while this one computes; V read with ldmatrix.trans).
// Backward: (1) flash_bwd_delta: delta_i = sum_d dO_id O_id, grid ceil(bh*seq_q/4), 128 threads;
//           (2) flash_bwd: grid (ceil(seq_k/BC), batch*heads), FaBwdShape's threads (warps of 16
//               keys; bf16 8 warps, BC = 128; f32 4 warps, BC = 64),
//               dynamic shared memory bwd_smem (K, V, dS and the stages of Q, dO tiles); dK, dV written, dQ added in f32 to
//               `dq_accum` (zeroed by the caller) with atomics;
//           (3) flash_bwd_dq_finish: dq = dq_accum, grid-stride.
// Decoding: flash_decode / flash_decode_combine, keys split across blocks (below).

#define FA_BR 64
#define FA_BC 64
#define FA_PAD 8

struct FlashParams {
    const void* q;
    const void* k;
    const void* v;
    void* o;
    float* lse;
    const void* dout;
    void* dq;
    void* dk;
    void* dv;
    float* dq_accum;
    float* delta;
    const unsigned char* mask;  // null: visit every tile
    int bh;                     // batch * heads
    int seq_q;                  // queries per head
    int seq_k;                  // keys per head
    float scale;
    int causal;
    int n_k_tiles;              // row length of `mask`
    float p_drop;               // attention dropout probability (0: none)
    float drop_scale;           // 1 / (1 - p_drop)
    u64 seed;                   // of the dropout mask
    i64 kv_stride;              // elements from one head's k (and v) to the next's, >= seq_k * D
};

extern __shared__ __align__(16) unsigned char fa_smem[];

/// The dropout factor of probability (bh, i, j): 0 when dropped, else 1/(1-p); 1 without dropout.
__device__ __forceinline__ float fa_keep(const FlashParams& P, int bh, int i, int j) {
    if (P.p_drop <= 0.0f) return 1.0f;
    const u64 index = ((u64)bh * P.seq_q + i) * P.seq_k + j;
    return counter_uniform(P.seed, index) < P.p_drop ? 0.0f : P.drop_scale;
}

/// Whether causal masking hides key j from query i.
__device__ __forceinline__ bool fa_hidden(const FlashParams& P, int i, int j) {
    return P.causal && j > i + (P.seq_k - P.seq_q);
}

/// Whether the block mask visits the tile of query q0 and key j0 (both in range).
__device__ __forceinline__ bool fa_visit(const FlashParams& P, int q0, int j0) {
    return !P.mask || P.mask[(i64)(q0 / FA_BR) * P.n_k_tiles + j0 / FA_BC];
}

/// The forward's work split. bf16: Q in its own shared tile, its fragments read per k
/// step, and 16·MQ query rows per warp, MQ = 2 up to head_dim 64 (two 16-row tiles share
/// every K and V fragment: half the shared-memory reads per mma; 1 at 128, registers).
/// f32: Q fragments in registers (the Q tile passes through a K/V stage), MQ = 1, so that
/// D = 128 fits Ampere's shared memory. A block holds BR = 64·MQ query rows.
template <typename T, int D> struct FaFwdRows {
    static constexpr bool Q_SHARED = sizeof(T) == 2;
    static constexpr int MQ = Q_SHARED && D <= 64 ? 2 : 1, BR = 64 * MQ;
};

/// The first key tile at or after `j0` that any query row of [q0, q_last] visits (`seq_k`
/// if none): the causal bound and the block mask, whose rows are 64 queries.
__device__ __forceinline__ int fa_next_key_tile(const FlashParams& P, int q0, int q_last, int j0) {
    for (; j0 < P.seq_k; j0 += FA_BC) {
        if (fa_hidden(P, q_last, j0)) return P.seq_k;
        for (int r = q0; r <= q_last; r += FA_BR)
            if (fa_visit(P, r, j0)) return j0;
    }
    return P.seq_k;
}

template <typename T, int D> __device__ void flash_fwd_run(const FlashParams& P) {
    // Two stages of (K, V), each FA_BC x LD, natural layout, then (Q_SHARED) the Q tile,
    // BR x LD; else the Q tile passes through stage 1 into registers. The next visited
    // tile loads (cp.async) while this one computes.
    typedef FaFwdRows<T, D> R;
    constexpr int MQ = R::MQ, BR = R::BR;
    constexpr int LD = D + FA_PAD, TILE = FA_BC * LD;
    T* smem = reinterpret_cast<T*>(fa_smem);
    // Heads past 65535 continue on grid z (the whole block returns: no barrier is skipped).
    // Causal: the last query blocks, which visit the most keys, start first (no tail of a
    // few long blocks on an otherwise idle device).
    const int q_block = P.causal ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
    const int bh = blockIdx.y + blockIdx.z * gridDim.y, q0 = q_block * BR, warp = threadIdx.x >> 5;
    if (bh >= P.bh) return;
    const int seq_q = P.seq_q, seq_k = P.seq_k;
    const i64 base_q = (i64)bh * seq_q * D, base_kv = (i64)bh * P.kv_stride;
    const T* q = reinterpret_cast<const T*>(P.q) + base_q;
    const T* k = reinterpret_cast<const T*>(P.k) + base_kv;
    const T* v = reinterpret_cast<const T*>(P.v) + base_kv;
    const bool vec = aligned(P.q, 16) && aligned(P.k, 16) && aligned(P.v, 16);
    const int q_last = min(q0 + BR, seq_q) - 1;
    // This warp's rows row0 .. row0 + 16·MQ - 1: one row of the block mask (none when
    // the block's last rows lie past the queries).
    const int row0 = q0 + warp * 16 * MQ, w_last = min(row0 + 16 * MQ, seq_q) - 1;
    auto load_kv = [&](int j0, int stage) {
        load_rows<T, FA_BC, D, 128>(smem + 2 * stage * TILE, LD, k + (i64)j0 * D, D, seq_k - j0, vec);
        load_rows<T, FA_BC, D, 128>(smem + (2 * stage + 1) * TILE, LD, v + (i64)j0 * D, D, seq_k - j0, vec);
    };

    int j0 = fa_next_key_tile(P, q0, q_last, 0);
    T* q_s = smem + (R::Q_SHARED ? 4 : 2) * TILE;
    load_rows<T, BR, D, 128>(q_s, LD, q + (i64)q0 * D, D, seq_q - q0, vec);
    if (j0 < seq_k) load_kv(j0, 0);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    // f32: every Q fragment in registers (R::Q_SHARED: read per k step below).
    FragA<T> qr[R::Q_SHARED ? 1 : D / 16];
    if constexpr (!R::Q_SHARED) {
#pragma unroll
        for (int kd = 0; kd < D / 16; kd++) frag_a(qr[kd], q_s, LD, false, warp * 16, kd * 16);
        __syncthreads();  // stage 1 is free for the first prefetch
    }

    Acc o[MQ][D / 8];
#pragma unroll
    for (int mi = 0; mi < MQ; mi++)
#pragma unroll
        for (int dt = 0; dt < D / 8; dt++) acc_zero(o[mi][dt]);
    // Running max (in log2 units: scores times scale·log2 e, so exp2 is the exponential)
    // and sum of each of the thread's two rows per 16-row tile.
    float m_r[MQ][2], l_r[MQ][2];
#pragma unroll
    for (int mi = 0; mi < MQ; mi++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            m_r[mi][h] = NEG_INF;
            l_r[mi][h] = 0.0f;
        }
    const float scale2 = P.scale * 1.4426950408889634f;

    for (int stage = 0; j0 < seq_k; stage ^= 1) {
        const int j_next = fa_next_key_tile(P, q0, q_last, j0 + FA_BC);
        if (j_next < seq_k) load_kv(j_next, stage ^ 1);
        cp_async_commit();
        const T* k_s = smem + 2 * stage * TILE;
        const T* v_s = k_s + TILE;
        // A warp whose rows this tile does not reach (mask row, causal bound) skips it.
        if (MQ == 1 || (row0 < seq_q && !fa_hidden(P, w_last, j0) && fa_visit(P, row0, j0))) {
            Acc s[MQ][FA_BC / 8];
#pragma unroll
            for (int mi = 0; mi < MQ; mi++)
#pragma unroll
                for (int nt = 0; nt < FA_BC / 8; nt++) acc_zero(s[mi][nt]);
#pragma unroll
            for (int kd = 0; kd < D / 16; kd++) {
                FragA<T> qf[MQ];
#pragma unroll
                for (int mi = 0; mi < MQ; mi++) {
                    if constexpr (R::Q_SHARED) frag_a(qf[mi], q_s, LD, false, warp * 16 * MQ + mi * 16, kd * 16);
                    else qf[mi] = qr[kd];
                }
#pragma unroll
                for (int nt = 0; nt < FA_BC / 8; nt += 2) {
                    FragB<T> b0, b1;
                    frag_b2(b0, b1, k_s, LD, false, nt * 8, kd * 16);
#pragma unroll
                    for (int mi = 0; mi < MQ; mi++) {
                        mma(s[mi][nt], qf[mi], b0);
                        mma(s[mi][nt + 1], qf[mi], b1);
                    }
                }
            }
#pragma unroll
            for (int mi = 0; mi < MQ; mi++) {
                const int r0 = row0 + mi * 16;
                float mx[2] = {NEG_INF, NEG_INF};
#pragma unroll
                for (int nt = 0; nt < FA_BC / 8; nt++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int j = j0 + nt * 8 + acc_col(e), i = r0 + acc_row(e);
                        float val = s[mi][nt].c[e] * scale2;
                        if (j >= seq_k || fa_hidden(P, i, j)) val = NEG_INF;
                        s[mi][nt].c[e] = val;
                        mx[e >> 1] = fmaxf(mx[e >> 1], val);
                    }
                float alpha[2], mnew[2], rs[2] = {0.0f, 0.0f};
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
                    mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
                    mnew[h] = fmaxf(m_r[mi][h], mx[h]);
                    alpha[h] = mnew[h] == NEG_INF ? 1.0f : exp2f(m_r[mi][h] - mnew[h]);
                }
#pragma unroll
                for (int nt = 0; nt < FA_BC / 8; nt++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int h = e >> 1;
                        const float p = mnew[h] == NEG_INF ? 0.0f : exp2f(s[mi][nt].c[e] - mnew[h]);
                        rs[h] += p;
                        s[mi][nt].c[e] = p;
                    }
                // Attention dropout after the normaliser's sum (which counts every P).
                if (P.p_drop > 0.0f)
#pragma unroll
                    for (int nt = 0; nt < FA_BC / 8; nt++)
#pragma unroll
                        for (int e = 0; e < 4; e++)
                            s[mi][nt].c[e] *= fa_keep(P, bh, r0 + acc_row(e), j0 + nt * 8 + acc_col(e));
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    rs[h] += __shfl_xor_sync(0xffffffffu, rs[h], 1);
                    rs[h] += __shfl_xor_sync(0xffffffffu, rs[h], 2);
                    l_r[mi][h] = l_r[mi][h] * alpha[h] + rs[h];
                    m_r[mi][h] = mnew[h];
                }
#pragma unroll
                for (int dt = 0; dt < D / 8; dt++)
#pragma unroll
                    for (int e = 0; e < 4; e++) o[mi][dt].c[e] *= alpha[e >> 1];
            }
            // O += P V: B(n = d, k = j) is V[j][d], stored [k][n]: ldmatrix.trans.
#pragma unroll
            for (int kt = 0; kt < FA_BC / 16; kt++) {
                FragA<T> pa[MQ];
#pragma unroll
                for (int mi = 0; mi < MQ; mi++) acc_to_a(pa[mi], s[mi][2 * kt], s[mi][2 * kt + 1]);
#pragma unroll
                for (int dt = 0; dt < D / 8; dt += 2) {
                    FragB<T> b0, b1;
                    frag_b2(b0, b1, v_s, LD, true, dt * 8, kt * 16);
#pragma unroll
                    for (int mi = 0; mi < MQ; mi++) {
                        mma(o[mi][dt], pa[mi], b0);
                        mma(o[mi][dt + 1], pa[mi], b1);
                    }
                }
            }
        }
        cp_async_wait<0>();
        __syncthreads();  // the next tile is in; this stage is free
        j0 = j_next;
    }

    T* out = reinterpret_cast<T*>(P.o) + base_q;
#pragma unroll
    for (int mi = 0; mi < MQ; mi++) {
        const int r0 = row0 + mi * 16;
#pragma unroll
        for (int dt = 0; dt < D / 8; dt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int i = r0 + acc_row(e), h = e >> 1;
                if (i < seq_q)
                    out[(i64)i * D + dt * 8 + acc_col(e)] =
                        from_f32<T>(l_r[mi][h] > 0.0f ? o[mi][dt].c[e] / l_r[mi][h] : 0.0f);
            }
        if ((threadIdx.x & 3) == 0)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int i = r0 + acc_row(2 * h);
                // The natural log-sum-exp: m_r is in log2 units.
                if (i < seq_q)
                    P.lse[(i64)bh * seq_q + i] =
                        l_r[mi][h] > 0.0f ? m_r[mi][h] * 0.6931471805599453f + logf(l_r[mi][h]) : NEG_INF;
            }
    }
}

/// delta_i = sum_d dO_id * O_id, one warp per row.
template <typename T, int D> __device__ void flash_bwd_delta_run(const FlashParams& P) {
    const i64 row = blockIdx.x * 4 + (threadIdx.x >> 5), rows = (i64)P.bh * P.seq_q;
    if (row >= rows) return;
    const T* o = reinterpret_cast<const T*>(P.o) + row * D;
    const T* g = reinterpret_cast<const T*>(P.dout) + row * D;
    float s = 0.0f;
    for (int d = threadIdx.x & 31; d < D; d += 32) s += to_f32(o[d]) * to_f32(g[d]);
    s = warp_sum(s);
    if ((threadIdx.x & 31) == 0) P.delta[row] = s;
}

/// The backward's shape: WARPS warps of 16 keys each (a key block of BC = 16·WARPS) and
/// S stages of (Q, dO, lse, delta) tiles. bf16: 8 warps, 128 keys (each Q and dO tile
/// loaded, and each dQ partial added, for twice the keys of 64), 2 stages (the next
/// query tile loads while this one computes); f32: 4 warps, 64 keys, 1 stage (its
/// D = 128 tiles fit Ampere's shared memory).
template <typename T> struct FaBwdShape {
    static constexpr int WARPS = sizeof(T) == 2 ? 8 : 4, BC = 16 * WARPS, THREADS = 32 * WARPS;
    static constexpr int S = sizeof(T) == 2 ? 2 : 1;
};

/// The first query tile at or after `i0` that visits any 64-key tile of the key block
/// [j0, j0 + bc) (`seq_q` if none).
__device__ __forceinline__ int fa_next_query_tile(const FlashParams& P, int j0, int bc, int i0) {
    for (; i0 < P.seq_q; i0 += FA_BR)
        for (int c = j0; c < j0 + bc && c < P.seq_k; c += FA_BC)
            if (fa_visit(P, i0, c)) return i0;
    return P.seq_q;
}

template <typename T, int D> __device__ void flash_bwd_run(const FlashParams& P) {
    typedef FaBwdShape<T> B;
    constexpr int LD = D + FA_PAD, LDT = FA_BR + FA_PAD, TILE = FA_BR * LD, S = B::S, BC = B::BC, NT = B::THREADS;
    // Per stage st: Q at smem + 2·st·TILE, dO after it; then K, V (BC x LD each), dS
    // transposed (key, query; BC x LDT), and per stage the tile's lse (times log2 e) and delta.
    T* smem = reinterpret_cast<T*>(fa_smem);
    T* k_s = smem + 2 * S * TILE;
    T* v_s = k_s + BC * LD;
    T* ds_s = v_s + BC * LD;
    float* lse_s = reinterpret_cast<float*>(ds_s + BC * LDT);  // [S][FA_BR]
    float* delta_s = lse_s + S * FA_BR;                        // [S][FA_BR]
    const int bh = blockIdx.y + blockIdx.z * gridDim.y, j0 = blockIdx.x * BC, warp = threadIdx.x >> 5;
    if (bh >= P.bh) return;
    const int seq_q = P.seq_q, seq_k = P.seq_k;
    const i64 base_q = (i64)bh * seq_q * D, base_k = (i64)bh * seq_k * D, base_kv = (i64)bh * P.kv_stride;
    const T* q = reinterpret_cast<const T*>(P.q) + base_q;
    const T* k = reinterpret_cast<const T*>(P.k) + base_kv;
    const T* v = reinterpret_cast<const T*>(P.v) + base_kv;
    const T* dout = reinterpret_cast<const T*>(P.dout) + base_q;
    const bool vec = aligned(P.q, 16) && aligned(P.k, 16) && aligned(P.v, 16) && aligned(P.dout, 16);
    auto load_q_tile = [&](int i0, int st) {
        load_rows<T, FA_BR, D, NT>(smem + 2 * st * TILE, LD, q + (i64)i0 * D, D, seq_q - i0, vec);
        load_rows<T, FA_BR, D, NT>(smem + (2 * st + 1) * TILE, LD, dout + (i64)i0 * D, D, seq_q - i0, vec);
        for (int i = threadIdx.x; i < FA_BR; i += NT) {
            const bool ok = i0 + i < seq_q;
            lse_s[st * FA_BR + i] = ok ? P.lse[(i64)bh * seq_q + i0 + i] * 1.4426950408889634f : NEG_INF;
            delta_s[st * FA_BR + i] = ok ? P.delta[(i64)bh * seq_q + i0 + i] : 0.0f;
        }
    };

    load_rows<T, BC, D, NT>(k_s, LD, k + (i64)j0 * D, D, seq_k - j0, vec);
    load_rows<T, BC, D, NT>(v_s, LD, v + (i64)j0 * D, D, seq_k - j0, vec);
    // Causal: the first query that sees key j0 is j0 - (seq_k - seq_q).
    const int first_q = P.causal ? max(0, j0 - (seq_k - seq_q)) : 0;
    int i0 = first_q >= seq_q ? seq_q : fa_next_query_tile(P, j0, BC, first_q / FA_BR * FA_BR);
    if (i0 < seq_q) load_q_tile(i0, 0);
    cp_async_commit();

    Acc dk[D / 8], dv[D / 8];
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++) {
        acc_zero(dk[dt]);
        acc_zero(dv[dt]);
    }
    const int key0 = j0 + warp * 16;  // this warp's keys: key0 + acc_row(e)
    const float scale2 = P.scale * 1.4426950408889634f;

    for (int st = 0; i0 < seq_q;) {
        cp_async_wait<0>();
        __syncthreads();  // tile i0 is in stage st (and K, V on the first pass)
        const int i_next = fa_next_query_tile(P, j0, BC, i0 + FA_BR);
        if (S == 2 && i_next < seq_q) load_q_tile(i_next, st ^ 1);
        cp_async_commit();
        const T* q_s = smem + 2 * st * TILE;
        const T* do_s = q_s + TILE;
        const float* lse_t = lse_s + st * FA_BR;
        const float* delta_t = delta_s + st * FA_BR;
        // This warp's keys lie in one 64-key tile of the block mask (none past the keys).
        const bool warp_visits = key0 < seq_k && fa_visit(P, i0, key0);

        // S^T and dP^T for this warp's 16 keys x FA_BR queries.
        Acc sc[FA_BR / 8], dpt[FA_BR / 8];
#pragma unroll
        for (int nt = 0; nt < FA_BR / 8; nt++) {
            acc_zero(sc[nt]);
            acc_zero(dpt[nt]);
        }
#pragma unroll
        for (int kd = 0; kd < D / 16; kd++) {
            FragA<T> ka, va;
            frag_a(ka, k_s, LD, false, warp * 16, kd * 16);
            frag_a(va, v_s, LD, false, warp * 16, kd * 16);
            mma_row<FA_BR>(sc, ka, q_s, LD, false, 0, kd * 16);
            mma_row<FA_BR>(dpt, va, do_s, LD, false, 0, kd * 16);
        }
        // P^T = exp(S^T * scale - lse); dS^T = P^T * (dP^T * Z^T - delta); dV uses (P∘Z)^T
#pragma unroll
        for (int nt = 0; nt < FA_BR / 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int j = key0 + acc_row(e), il = nt * 8 + acc_col(e), i = i0 + il;
                const float L = lse_t[il];
                const bool ok = warp_visits && j < seq_k && i < seq_q && !fa_hidden(P, i, j) && L != NEG_INF;
                const float p = ok ? exp2f(sc[nt].c[e] * scale2 - L) : 0.0f;
                const float z = ok ? fa_keep(P, bh, i, j) : 0.0f;
                sc[nt].c[e] = p * z;
                dpt[nt].c[e] = p * (dpt[nt].c[e] * z - delta_t[il]);
            }
        // dV += P^T dO, dK += dS^T Q: B(n = d, k = i) is X[i][d], stored [k][n] (ldmatrix.trans).
#pragma unroll
        for (int kt = 0; kt < FA_BR / 16; kt++) {
            FragA<T> pa, sa;
            acc_to_a(pa, sc[2 * kt], sc[2 * kt + 1]);
            acc_to_a(sa, dpt[2 * kt], dpt[2 * kt + 1]);
            mma_row<D>(dv, pa, do_s, LD, true, 0, kt * 16);
            mma_row<D>(dk, sa, q_s, LD, true, 0, kt * 16);
        }
        // Stage dS^T, then dQ (FA_BR x D) += dS K over the block's BC keys: warp w takes
        // queries (w % 4)·16.. and the (w / 4)-th of WARPS / 4 column ranges of DP, CH at a
        // time; A(m = i, k = j) is dS^T[j][i], stored [k][m]; B(n = d, k = j) is K[j][d].
#pragma unroll
        for (int nt = 0; nt < FA_BR / 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                ds_s[(warp * 16 + acc_row(e)) * LDT + nt * 8 + acc_col(e)] = from_f32<T>(dpt[nt].c[e]);
        __syncthreads();
        constexpr int DP = D / (B::WARPS / 4), CH = DP < 32 ? DP : 32;
        const int qw = (warp & 3) * 16, d_first = (warp >> 2) * DP;
#pragma unroll
        for (int d0 = d_first; d0 < d_first + DP; d0 += CH) {
            Acc dq[CH / 8];
#pragma unroll
            for (int t = 0; t < CH / 8; t++) acc_zero(dq[t]);
#pragma unroll
            for (int kt = 0; kt < BC / 16; kt++) {
                FragA<T> a;
                frag_a(a, ds_s, LDT, true, qw, kt * 16);
                mma_row<CH>(dq, a, k_s, LD, true, d0, kt * 16);
            }
#pragma unroll
            for (int t = 0; t < CH / 8; t++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int i = i0 + qw + acc_row(e);
                    if (i < seq_q) atomicAdd(P.dq_accum + base_q + (i64)i * D + d0 + t * 8 + acc_col(e), dq[t].c[e] * P.scale);
                }
        }
        __syncthreads();  // stage st and dS are free
        if (S == 1 && i_next < seq_q) load_q_tile(i_next, 0);
        cp_async_commit();
        i0 = i_next;
        if (S == 2) st ^= 1;
    }
    cp_async_wait<0>();  // K and V of a key tile no query tile visits

    T* dkp = reinterpret_cast<T*>(P.dk) + base_k;
    T* dvp = reinterpret_cast<T*>(P.dv) + base_k;
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int j = key0 + acc_row(e);
            if (j >= seq_k) continue;
            const i64 at = (i64)j * D + dt * 8 + acc_col(e);
            dkp[at] = from_f32<T>(dk[dt].c[e] * P.scale);
            dvp[at] = from_f32<T>(dv[dt].c[e]);
        }
}

template <typename T> __device__ void flash_bwd_dq_finish_run(const FlashParams& P, int d) {
    const i64 n = (i64)P.bh * P.seq_q * d, stride = (i64)gridDim.x * blockDim.x;
    T* dq = reinterpret_cast<T*>(P.dq);
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += stride) dq[i] = from_f32<T>(P.dq_accum[i]);
}

// ---------------------------------------------------------------- split-key decoding

// Decoding (at most FD_MAX_Q queries, no block mask, no dropout) leaves the forward's
// 64-row query tiles nearly empty and its grid at one block per head. Instead the keys
// are split (FlashDecoding): flash_decode grid (splits, batch*heads; heads past 65535 on
// z), 128 threads, each block a run of `split_keys` keys (a multiple of FD_KEYS) for
// every query of its head, FD_KEYS keys per step, one key per thread for the scores and
// (query, dim) pairs per thread for P·V. With one split it writes o and lse; else each
// split's normalised output and log-sum-exp go to `part` ((bh, split, query) rows of
// D + 1 floats) and flash_decode_combine (grid ceil(bh*seq_q / 4), 128 threads, a warp
// per row) merges them by their log-sum-exps.

#define FD_MAX_Q 4
#define FD_KEYS 128
#define FD_LN2 0.6931471805599453f
#define FD_LOG2E 1.4426950408889634f

template <typename T, int D> __device__ void flash_decode_run(const FlashParams& P, float* part, int split_keys) {
    constexpr int OWN = FD_MAX_Q * D / FD_KEYS;  // (query, dim) pairs per thread
    __shared__ float q_s[FD_MAX_Q][D];
    __shared__ float p_s[FD_MAX_Q][FD_KEYS];
    __shared__ float scratch[32];
    const int bh = blockIdx.y + blockIdx.z * gridDim.y, t = threadIdx.x;
    if (bh >= P.bh) return;  // the whole block: no barrier is skipped
    const int nq = P.seq_q, split = blockIdx.x, splits = gridDim.x;
    const int k_begin = split * split_keys, k_end = min(P.seq_k, k_begin + split_keys);
    const T* q = reinterpret_cast<const T*>(P.q) + (i64)bh * nq * D;
    const T* k = reinterpret_cast<const T*>(P.k) + (i64)bh * P.kv_stride;
    const T* v = reinterpret_cast<const T*>(P.v) + (i64)bh * P.kv_stride;
    // Scores in base 2: q scaled by scale·log2(e).
    for (int e = t; e < nq * D; e += FD_KEYS) q_s[e / D][e % D] = to_f32(q[e]) * P.scale * FD_LOG2E;
    float acc[OWN], m[FD_MAX_Q], l[FD_MAX_Q], alpha[FD_MAX_Q];
#pragma unroll
    for (int r = 0; r < OWN; r++) acc[r] = 0.0f;
#pragma unroll
    for (int i = 0; i < FD_MAX_Q; i++) m[i] = NEG_INF, l[i] = 0.0f, alpha[i] = 1.0f;
    __syncthreads();
    for (int j0 = k_begin; j0 < k_end; j0 += FD_KEYS) {
        const int j = j0 + t;
        float s[FD_MAX_Q];
#pragma unroll
        for (int i = 0; i < FD_MAX_Q; i++) s[i] = NEG_INF;
        if (j < k_end) {
            const T* kr = k + (i64)j * D;
            float dot[FD_MAX_Q] = {};
            for (int d = 0; d < D; d++) {
                const float kd = to_f32(kr[d]);
#pragma unroll
                for (int i = 0; i < FD_MAX_Q; i++) dot[i] += q_s[i][d] * kd;
            }
#pragma unroll
            for (int i = 0; i < FD_MAX_Q; i++)
                if (i < nq && !fa_hidden(P, i, j)) s[i] = dot[i];
        }
        // The barriers inside row_reduce order p_s: a query's probabilities are written
        // before its sum's barriers, which every P·V read below follows, and the next
        // step writes them only after its first maximum's barriers, which every read
        // here precedes (scripts/barrier-mutations.sh found explicit ones redundant).
#pragma unroll
        for (int i = 0; i < FD_MAX_Q; i++) {
            if (i >= nq) break;  // nq is the block's: every thread leaves together
            const float m_new = fmaxf(m[i], row_reduce<true>(s[i], scratch));
            alpha[i] = m_new == NEG_INF ? 1.0f : exp2f(m[i] - m_new);
            const float p = s[i] == NEG_INF ? 0.0f : exp2f(s[i] - m_new);
            p_s[i][t] = p;
            l[i] = l[i] * alpha[i] + row_reduce<false>(p, scratch);
            m[i] = m_new;
        }
        const int n = min(FD_KEYS, k_end - j0);
#pragma unroll
        for (int r = 0; r < OWN; r++) {
            const int e = t + r * FD_KEYS, i = e / D, d = e % D;
            if (i >= nq) continue;
            float sum = 0.0f;
            for (int jj = 0; jj < n; jj++) sum += p_s[i][jj] * to_f32(v[(i64)(j0 + jj) * D + d]);
            float a = 1.0f;
#pragma unroll
            for (int h = 0; h < FD_MAX_Q; h++)
                if (h == i) a = alpha[h];
            acc[r] = acc[r] * a + sum;
        }
    }
#pragma unroll
    for (int r = 0; r < OWN; r++) {
        const int e = t + r * FD_KEYS, i = e / D, d = e % D;
        if (i >= nq) continue;
        float li = 0.0f;
#pragma unroll
        for (int h = 0; h < FD_MAX_Q; h++)
            if (h == i) li = l[h];
        const float out = li > 0.0f ? acc[r] / li : 0.0f;
        const i64 row = (i64)bh * nq + i;
        if (splits == 1) reinterpret_cast<T*>(P.o)[row * D + d] = from_f32<T>(out);
        else part[(((i64)bh * splits + split) * nq + i) * (D + 1) + d] = out;
    }
#pragma unroll
    for (int i = 0; i < FD_MAX_Q; i++) {
        if (t != 0 || i >= nq) continue;
        const float lse = l[i] > 0.0f ? m[i] * FD_LN2 + logf(l[i]) : NEG_INF;
        if (splits == 1) P.lse[(i64)bh * nq + i] = lse;
        else part[(((i64)bh * splits + split) * nq + i) * (D + 1) + D] = lse;
    }
}

template <typename T, int D> __device__ void flash_decode_combine_run(const FlashParams& P, const float* part, int splits) {
    const i64 row = (i64)blockIdx.x * 4 + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31, nq = P.seq_q;
    if (row >= (i64)P.bh * nq) return;
    const i64 bh = row / nq, i = row % nq;
    auto at = [&](int s) { return part + ((bh * splits + s) * nq + i) * (D + 1); };
    float mx = NEG_INF;
    for (int s = 0; s < splits; s++) mx = fmaxf(mx, at(s)[D]);
    float lse = NEG_INF;
    if (mx != NEG_INF) {
        float sum = 0.0f;
        for (int s = 0; s < splits; s++) sum += expf(at(s)[D] - mx);
        lse = mx + logf(sum);
    }
    for (int d = lane; d < D; d += 32) {
        float out = 0.0f;
        if (lse != NEG_INF)
            for (int s = 0; s < splits; s++) {
                const float ls = at(s)[D];
                if (ls != NEG_INF) out += expf(ls - lse) * at(s)[d];
            }
        reinterpret_cast<T*>(P.o)[row * D + d] = from_f32<T>(out);
    }
    if (lane == 0) P.lse[row] = lse;
}

#define FLASH_KERNELS(T, SUF, D)                                                                             \
    extern "C" __global__ void __launch_bounds__(128) flash_fwd_##SUF##_d##D(FlashParams p) {               \
        flash_fwd_run<T, D>(p);                                                                             \
    }                                                                                                       \
    extern "C" __global__ void __launch_bounds__(FaBwdShape<T>::THREADS) flash_bwd_##SUF##_d##D(FlashParams p) { \
        flash_bwd_run<T, D>(p);                                                                             \
    }                                                                                                       \
    extern "C" __global__ void flash_bwd_delta_##SUF##_d##D(FlashParams p) { flash_bwd_delta_run<T, D>(p); } \
    extern "C" __global__ void __launch_bounds__(FD_KEYS)                                                  \
        flash_decode_##SUF##_d##D(FlashParams p, float* part, int split_keys) {                           \
        flash_decode_run<T, D>(p, part, split_keys);                                                        \
    }                                                                                                       \
    extern "C" __global__ void flash_decode_combine_##SUF##_d##D(FlashParams p, const float* part, int splits) { \
        flash_decode_combine_run<T, D>(p, part, splits);                                                    \
    }

FLASH_KERNELS(float, f32, 32)
FLASH_KERNELS(float, f32, 64)
FLASH_KERNELS(float, f32, 128)
FLASH_KERNELS(bf16, bf16, 32)
FLASH_KERNELS(bf16, bf16, 64)
FLASH_KERNELS(bf16, bf16, 128)

extern "C" __global__ void flash_bwd_dq_finish_f32(FlashParams p, int d) { flash_bwd_dq_finish_run<float>(p, d); }
extern "C" __global__ void flash_bwd_dq_finish_bf16(FlashParams p, int d) { flash_bwd_dq_finish_run<bf16>(p, d); }
