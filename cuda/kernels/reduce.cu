// Reductions sum / max / min / argmax / argmin (op codes 0..4, as `ReduceOp`) of
// contiguous data, either over the last dimension (rows) or over the leading dimension
// (columns). Accumulation is in f32; values are written in T, indices as i64. Ties and
// all -inf rows give the first index, as on the CPU.
//
// Rows: block (X, Y) reduces Y rows with X threads each (X a power of two >= 32).
// Columns: pass 1 splits the rows into gridDim.y chunks and writes f32 partials
// (value, index) per (chunk, column); pass 2 combines the chunks in order.

struct ArgVal {
    float v;
    i64 i;
};

__device__ __forceinline__ float reduce_init(int op) { return op == 0 ? 0.0f : ((op == 1 || op == 3) ? NEG_INF : POS_INF); }

/// Folds candidate (v, i) into acc: larger (max) or smaller (min) wins, ties keep the lower index.
__device__ __forceinline__ void reduce_step(int op, ArgVal& acc, float v, i64 i) {
    if (op == 0) {
        acc.v += v;
        return;
    }
    const bool is_max = op == 1 || op == 3;
    const bool better = is_max ? v > acc.v : v < acc.v;
    if (better || (v == acc.v && i < acc.i)) {
        acc.v = v;
        acc.i = i;
    }
}

__device__ __forceinline__ ArgVal shfl_xor_argval(ArgVal a, int o) {
    ArgVal b;
    b.v = __shfl_xor_sync(0xffffffffu, a.v, o);
    b.i = __shfl_xor_sync(0xffffffffu, a.i, o);
    return b;
}

template <typename T>
__device__ void reduce_rows_run(const T* __restrict__ x, void* __restrict__ out, i64 rows, i64 cols, int op) {
    __shared__ float sv[32 * 32];
    __shared__ i64 si[32 * 32];
    const i64 row = blockIdx.x * (i64)blockDim.y + threadIdx.y;
    const bool live = row < rows;
    const T* xr = x + (live ? row : 0) * cols;
    ArgVal acc = {reduce_init(op), (i64)0x7fffffffffffffffLL};
    if (live)
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) reduce_step(op, acc, to_f32(xr[c]), c);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const ArgVal b = shfl_xor_argval(acc, o);
        reduce_step(op, acc, b.v, b.i);
    }
    const int warps = blockDim.x >> 5, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (warps > 1) {
        if (lane == 0) {
            sv[threadIdx.y * 32 + warp] = acc.v;
            si[threadIdx.y * 32 + warp] = acc.i;
        }
        __syncthreads();
        acc.v = reduce_init(op);
        acc.i = 0x7fffffffffffffffLL;
        if (lane < warps) {
            acc.v = sv[threadIdx.y * 32 + lane];
            acc.i = si[threadIdx.y * 32 + lane];
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const ArgVal b = shfl_xor_argval(acc, o);
            reduce_step(op, acc, b.v, b.i);
        }
    }
    if (live && threadIdx.x == 0) {
        if (op >= 3) reinterpret_cast<i64*>(out)[row] = acc.i == 0x7fffffffffffffffLL ? 0 : acc.i;
        else reinterpret_cast<T*>(out)[row] = from_f32<T>(acc.v);
    }
}

/// Pass 1 over columns: block (32, 8) owns 32 columns of one chunk of rows.
template <typename T>
__device__ void reduce_cols_partial_run(const T* __restrict__ x, ArgVal* __restrict__ part, i64 rows, i64 cols, int op) {
    __shared__ ArgVal s[8][33];
    const i64 col = blockIdx.x * 32 + threadIdx.x;
    const i64 chunk = (rows + gridDim.y - 1) / gridDim.y;
    const i64 r0 = blockIdx.y * chunk, r1 = min(rows, r0 + chunk);
    ArgVal acc = {reduce_init(op), (i64)0x7fffffffffffffffLL};
    if (col < cols)
        for (i64 r = r0 + threadIdx.y; r < r1; r += 8) reduce_step(op, acc, to_f32(x[r * cols + col]), r);
    s[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && col < cols) {
        for (int k = 1; k < 8; k++) reduce_step(op, acc, s[k][threadIdx.x].v, s[k][threadIdx.x].i);
        part[blockIdx.y * cols + col] = acc;
    }
}

template <typename T>
__device__ void reduce_cols_finish_run(const ArgVal* __restrict__ part, void* __restrict__ out, i64 chunks, i64 cols,
                                       int op) {
    const i64 col = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    if (col >= cols) return;
    ArgVal acc = {reduce_init(op), (i64)0x7fffffffffffffffLL};
    for (i64 k = 0; k < chunks; k++) reduce_step(op, acc, part[k * cols + col].v, part[k * cols + col].i);
    if (op >= 3) reinterpret_cast<i64*>(out)[col] = acc.i == 0x7fffffffffffffffLL ? 0 : acc.i;
    else reinterpret_cast<T*>(out)[col] = from_f32<T>(acc.v);
}

#define REDUCE_KERNELS(T, SUF)                                                                                   \
    extern "C" __global__ void reduce_rows_##SUF(const T* x, void* out, i64 rows, i64 cols, int op) {           \
        reduce_rows_run<T>(x, out, rows, cols, op);                                                              \
    }                                                                                                            \
    extern "C" __global__ void reduce_cols_partial_##SUF(const T* x, ArgVal* part, i64 rows, i64 cols, int op) { \
        reduce_cols_partial_run<T>(x, part, rows, cols, op);                                                     \
    }                                                                                                            \
    extern "C" __global__ void reduce_cols_finish_##SUF(const ArgVal* part, void* out, i64 chunks, i64 cols,    \
                                                        int op) {                                                \
        reduce_cols_finish_run<T>(part, out, chunks, cols, op);                                                  \
    }

REDUCE_KERNELS(float, f32)
REDUCE_KERNELS(bf16, bf16)
