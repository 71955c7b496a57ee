// Softmax and log-softmax over the last dimension of contiguous rows, and their
// backward from the saved output y:
//   softmax:     dx = y * (dy - sum(dy * y))
//   log_softmax: dx = dy - exp(y) * sum(dy)
// Block (X, Y) handles Y rows with X threads each (X a power of two >= 32); rows are
// read three times (max, sum, write), the later reads from cache. A row that is all
// -inf has its max taken as 0 (so no -inf - -inf in the exponents); its sum is 0, so it
// still gives NaN (softmax 0 * (1/0), log-softmax -inf - log 0), as on the CPU.

template <typename T>
__device__ void softmax_fwd_run(const T* __restrict__ x, T* __restrict__ y, i64 rows, i64 cols, int log) {
    __shared__ float scratch[32 * 32];
    const i64 row = blockIdx.x * (i64)blockDim.y + threadIdx.y;
    const bool live = row < rows;
    const T* xr = x + (live ? row : 0) * cols;
    T* yr = y + (live ? row : 0) * cols;
    float m = NEG_INF;
    if (live)
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, to_f32(xr[c]));
    m = row_reduce<true>(m, scratch);
    if (m == NEG_INF) m = 0.0f;
    float s = 0.0f;
    if (live)
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) s += expf(to_f32(xr[c]) - m);
    s = row_reduce<false>(s, scratch);
    if (!live) return;
    if (log) {
        const float lse = logf(s) + m;
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = from_f32<T>(to_f32(xr[c]) - lse);
    } else {
        const float inv = 1.0f / s;
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = from_f32<T>(expf(to_f32(xr[c]) - m) * inv);
    }
}

template <typename T>
__device__ void softmax_bwd_run(const T* __restrict__ y, const T* __restrict__ dy, T* __restrict__ dx, i64 rows,
                                i64 cols, int log) {
    __shared__ float scratch[32 * 32];
    const i64 row = blockIdx.x * (i64)blockDim.y + threadIdx.y;
    const bool live = row < rows;
    const i64 base = (live ? row : 0) * cols;
    float s = 0.0f;
    if (live)
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x)
            s += log ? to_f32(dy[base + c]) : to_f32(dy[base + c]) * to_f32(y[base + c]);
    s = row_reduce<false>(s, scratch);
    if (!live) return;
    for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
        const float yv = to_f32(y[base + c]), g = to_f32(dy[base + c]);
        dx[base + c] = from_f32<T>(log ? g - expf(yv) * s : yv * (g - s));
    }
}

#define SOFTMAX_KERNELS(T, SUF)                                                                              \
    extern "C" __global__ void softmax_fwd_##SUF(const T* x, T* y, i64 rows, i64 cols, int log) {           \
        softmax_fwd_run<T>(x, y, rows, cols, log);                                                           \
    }                                                                                                        \
    extern "C" __global__ void softmax_bwd_##SUF(const T* y, const T* dy, T* dx, i64 rows, i64 cols, int log) { \
        softmax_bwd_run<T>(y, dy, dx, rows, cols, log);                                                      \
    }

SOFTMAX_KERNELS(float, f32)
SOFTMAX_KERNELS(bf16, bf16)
