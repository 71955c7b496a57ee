// Block-sparse matmul for BlockSparseLinear / Pixelfly. The weight W (out, in) keeps
// only its nonzero bs x bs blocks (bs in {16, 32, 64}): `blocks` (nnz, bs, bs), block idx
// covering W[br*bs + u, bc*bs + v] = blocks[idx][u][v], indexed by CSR over block rows
// (`row_ptr` (out/bs + 1), `col_idx` (nnz), i32) and by its transpose, CSC over block
// columns (`col_ptr` (in/bs + 1), `row_idx` (nnz), `blk_idx` (nnz): the CSR position of
// each CSC entry). x is (batch, in) with row stride ldx, dy and y are (batch, out) with
// row stride ldy. Nothing is ever densified:
//   forward  y[b, br*bs+u]  (+)= sum_{idx in row br} sum_v x[b, bc*bs+v] blocks[idx][u][v]
//   dx       dx[b, bc*bs+v] (+)= sum_{(br, idx) in col bc} sum_u dy[b, br*bs+u] blocks[idx][u][v]
//   dW       dblocks[idx][u][v] (+)= sum_b dy[b, br*bs+u] x[b, bc*bs+v]  (stored blocks only)
// `accumulate` != 0 adds to the output instead of overwriting it.
// Launches: forward grid (ceil(batch/64), out/bs), dx grid (ceil(batch/64), in/bs), both
// 128 threads (batch tiles on x, whose limit is 2^31 - 1); dW grid (nnz), 128 threads (64 for bs = 16). bf16 on tensor cores.

template <int BS> struct BsCfg;  // output tile (BM x BS), K step, warp grid
template <> struct BsCfg<16> { static constexpr int BK = 16, WM = 4, WN = 1; };
template <> struct BsCfg<32> { static constexpr int BK = 32, WM = 2, WN = 2; };
template <> struct BsCfg<64> { static constexpr int BK = 32, WM = 2, WN = 2; };

#define BS_BM 64

/// Shared-memory stages of the K loop: the next step loads (cp.async) while one computes.
template <typename T> struct BsStages { static constexpr int N = sizeof(T) == 2 ? 3 : 2; };

/// Whether rows of `ld` elements from `p` can move as 16-byte chunks.
template <typename T> __device__ __forceinline__ bool bs_chunks(const T* p, i64 ld) {
    return aligned(p, 16) && (ld * (i64)sizeof(T)) % 16 == 0;
}

/// y tile (64 x BS) of one block row (`forward`) or dx tile of one block column (`!forward`).
/// K steps run over (stored block, BK columns of it): A = in[b0.., src_blk*BS + k0..]
/// ([m][k]), B = the block ([n][k] forward; its transpose, stored [k][n], for dx).
template <typename T, int BS, bool FORWARD>
__device__ void bs_rows_run(const T* __restrict__ in, i64 ld_in, const T* __restrict__ blocks,
                            const int* __restrict__ ptr, const int* __restrict__ other, const int* __restrict__ blk_idx,
                            T* __restrict__ out, i64 ld_out, int batch, int accumulate) {
    typedef BsCfg<BS> C;
    constexpr int BK = C::BK, S = BsStages<T>::N, A_SIZE = BS_BM * (BK + 8);
    constexpr int B_SIZE = BS * (BK + 8) > BK * (BS + 8) ? BS * (BK + 8) : BK * (BS + 8);
    typedef TileMma<T, BS_BM, BS, BK, C::WM, C::WN> Tile;
    __shared__ __align__(16) T smem[S * (A_SIZE + B_SIZE)];
    const int blk = blockIdx.y, b0 = blockIdx.x * BS_BM, first = ptr[blk];
    const bool vec = bs_chunks(in, ld_in) && aligned(blocks, 16);
    Tile tile;
    tile.zero();
    pipeline<S>(
        (ptr[blk + 1] - first) * (BS / BK),
        [&](int t, int stage) {
            const int e = first + t / (BS / BK), k0 = t % (BS / BK) * BK;
            const int src_blk = other[e];                // forward: block column; dx: block row
            const int idx = FORWARD ? e : blk_idx[e];     // position in `blocks`
            const T* w = blocks + (i64)idx * BS * BS;
            T* st = smem + stage * (A_SIZE + B_SIZE);
            load_rows<T, BS_BM, BK, Tile::THREADS>(st, BK + 8, in + (i64)b0 * ld_in + src_blk * BS + k0, ld_in,
                                                   batch - b0, vec);
            // forward: B(n=u, k=v) = w[u*BS + v]; dx: B(n=v, k=u) = w[u*BS + v], rows k
            if (FORWARD) load_rows<T, BS, BK, Tile::THREADS>(st + A_SIZE, BK + 8, w + k0, BS, BS, vec);
            else load_rows<T, BK, BS, Tile::THREADS>(st + A_SIZE, BS + 8, w + (i64)k0 * BS, BS, BK, vec);
        },
        [&](int stage) {
            const T* st = smem + stage * (A_SIZE + B_SIZE);
            tile.step(st, BK + 8, false, st + A_SIZE, FORWARD ? BK + 8 : BS + 8, !FORWARD);
        });
    tile.for_each([&](int r, int c, float v) {
        if (b0 + r >= batch) return;
        T* p = out + (i64)(b0 + r) * ld_out + blk * BS + c;
        *p = from_f32<T>(accumulate ? to_f32(*p) + v : v);
    });
}

/// dblocks[idx] = dy_blockᵀ x_block over the whole batch, for one stored block: K steps
/// of BK batch rows, A(m=u, k=b) = dy[b, br*BS+u] and B(n=v, k=b) = x[b, bc*BS+v], both
/// rows of the batch, stored [k][m] / [k][n].
template <typename T, int BS>
__device__ void bs_dw_run(const T* __restrict__ x, i64 ldx, const T* __restrict__ dy, i64 ldy,
                          const int* __restrict__ row_of, const int* __restrict__ col_idx, T* __restrict__ dblocks,
                          int batch, int accumulate) {
    constexpr int WM = BS == 16 ? 1 : 2, WN = 2, BK = 32, S = BsStages<T>::N, SIZE = BK * (BS + 8);
    typedef TileMma<T, BS, BS, BK, WM, WN> Tile;
    __shared__ __align__(16) T smem[S * 2 * SIZE];
    const int idx = blockIdx.x, br = row_of[idx], bc = col_idx[idx];
    const bool vec = bs_chunks(x, ldx) && bs_chunks(dy, ldy);
    Tile tile;
    tile.zero();
    pipeline<S>(
        (batch + BK - 1) / BK,
        [&](int t, int stage) {
            const int k0 = t * BK;
            T* st = smem + stage * 2 * SIZE;
            load_rows<T, BK, BS, Tile::THREADS>(st, BS + 8, dy + (i64)k0 * ldy + br * BS, ldy, batch - k0, vec);
            load_rows<T, BK, BS, Tile::THREADS>(st + SIZE, BS + 8, x + (i64)k0 * ldx + bc * BS, ldx, batch - k0, vec);
        },
        [&](int stage) {
            const T* st = smem + stage * 2 * SIZE;
            tile.step(st, BS + 8, true, st + SIZE, BS + 8, true);
        });
    T* d = dblocks + (i64)idx * BS * BS;
    tile.for_each([&](int r, int c, float v) {
        T* p = d + r * BS + c;
        *p = from_f32<T>(accumulate ? to_f32(*p) + v : v);
    });
}

#define BS_KERNELS(T, SUF, BS)                                                                                    \
    extern "C" __global__ void __launch_bounds__(128) block_sparse_fwd_##SUF##_##BS(                             \
        const T* x, i64 ldx, const T* blocks, const int* row_ptr, const int* col_idx, T* y, i64 ldy, int batch, \
        int accumulate) {                                                                                         \
        bs_rows_run<T, BS, true>(x, ldx, blocks, row_ptr, col_idx, nullptr, y, ldy, batch, accumulate);          \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(128) block_sparse_dx_##SUF##_##BS(                              \
        const T* dy, i64 ldy, const T* blocks, const int* col_ptr, const int* row_idx, const int* blk_idx, T* dx, \
        i64 ldx, int batch, int accumulate) {                                                                     \
        bs_rows_run<T, BS, false>(dy, ldy, blocks, col_ptr, row_idx, blk_idx, dx, ldx, batch, accumulate);       \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(128) block_sparse_dw_##SUF##_##BS(                              \
        const T* x, i64 ldx, const T* dy, i64 ldy, const int* row_of, const int* col_idx, T* dblocks, int batch,  \
        int accumulate) {                                                                                         \
        bs_dw_run<T, BS>(x, ldx, dy, ldy, row_of, col_idx, dblocks, batch, accumulate);                           \
    }

BS_KERNELS(float, f32, 16)
BS_KERNELS(float, f32, 32)
BS_KERNELS(float, f32, 64)
BS_KERNELS(bf16, bf16, 16)
BS_KERNELS(bf16, bf16, 32)
BS_KERNELS(bf16, bf16, 64)
