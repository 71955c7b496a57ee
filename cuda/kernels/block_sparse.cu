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

/// y tile (64 x BS) of one block row (`forward`) or dx tile of one block column (`!forward`).
template <typename T, int BS, bool FORWARD>
__device__ void bs_rows_run(const T* __restrict__ in, i64 ld_in, const T* __restrict__ blocks,
                            const int* __restrict__ ptr, const int* __restrict__ other, const int* __restrict__ blk_idx,
                            T* __restrict__ out, i64 ld_out, int batch, int accumulate) {
    typedef BsCfg<BS> C;
    typedef TileMma<T, BS_BM, BS, C::BK, C::WM, C::WN> Tile;
    __shared__ __align__(16) T a_s[BS_BM * Tile::LDS];
    __shared__ __align__(16) T b_s[BS * Tile::LDS];
    const int blk = blockIdx.y, b0 = blockIdx.x * BS_BM;
    Tile tile;
    tile.zero();
    for (int e = ptr[blk]; e < ptr[blk + 1]; e++) {
        const int src_blk = other[e];                     // forward: block column; dx: block row
        const int idx = FORWARD ? e : blk_idx[e];          // position in `blocks`
        const T* w = blocks + (i64)idx * BS * BS;
        for (int k0 = 0; k0 < BS; k0 += C::BK) {
            load_tile<T, BS_BM, C::BK, Tile::THREADS>(a_s, Tile::LDS, in + (i64)b0 * ld_in + src_blk * BS + k0, ld_in,
                                                      1, [&](int r, int) { return b0 + r < batch; });
            // forward: B(n=u, k=v) = w[u*BS + v]; dx: B(n=v, k=u) = w[u*BS + v]
            if (FORWARD)
                load_tile<T, BS, C::BK, Tile::THREADS>(b_s, Tile::LDS, w + k0, BS, 1, [](int, int) { return true; });
            else
                load_tile<T, BS, C::BK, Tile::THREADS>(b_s, Tile::LDS, w + (i64)k0 * BS, 1, BS,
                                                       [](int, int) { return true; });
            __syncthreads();
            tile.step(a_s, b_s);
            __syncthreads();
        }
    }
    tile.for_each([&](int r, int c, float v) {
        if (b0 + r >= batch) return;
        T* p = out + (i64)(b0 + r) * ld_out + blk * BS + c;
        *p = from_f32<T>(accumulate ? to_f32(*p) + v : v);
    });
}

/// dblocks[idx] = dy_blockᵀ x_block over the whole batch, for one stored block.
template <typename T, int BS>
__device__ void bs_dw_run(const T* __restrict__ x, i64 ldx, const T* __restrict__ dy, i64 ldy,
                          const int* __restrict__ row_of, const int* __restrict__ col_idx, T* __restrict__ dblocks,
                          int batch, int accumulate) {
    constexpr int WM = BS == 16 ? 1 : 2, WN = 2, BK = 32;
    typedef TileMma<T, BS, BS, BK, WM, WN> Tile;
    __shared__ __align__(16) T a_s[BS * Tile::LDS];
    __shared__ __align__(16) T b_s[BS * Tile::LDS];
    const int idx = blockIdx.x, br = row_of[idx], bc = col_idx[idx];
    Tile tile;
    tile.zero();
    for (int k0 = 0; k0 < batch; k0 += BK) {
        // A(m=u, k=b) = dy[b, br*BS+u]; B(n=v, k=b) = x[b, bc*BS+v]
        load_tile<T, BS, BK, Tile::THREADS>(a_s, Tile::LDS, dy + (i64)k0 * ldy + br * BS, 1, ldy,
                                            [&](int, int c) { return k0 + c < batch; });
        load_tile<T, BS, BK, Tile::THREADS>(b_s, Tile::LDS, x + (i64)k0 * ldx + bc * BS, 1, ldx,
                                            [&](int, int c) { return k0 + c < batch; });
        __syncthreads();
        tile.step(a_s, b_s);
        __syncthreads();
    }
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
