// Layer normalisation over the last dimension (tensor/src/ops/norm.rs):
//   y = (x - mean) * rstd * w + b,  rstd = 1 / sqrt(var + eps)  (biased variance)
// saving mean and rstd (f32, one per row). w and b may be null (1 and 0).
// Backward with h = (x - mean) * rstd and g = dy * w:
//   dx = rstd * (g - mean(g) - h * mean(g * h))            (layer_norm_bwd_dx, per row)
//   dw = sum_rows dy * h,  db = sum_rows dy                  (two column passes)
// Row kernels use block (X, Y) = Y rows of X threads; column passes use block (32, 8)
// over 32 columns and gridDim.y chunks of rows, f32 partials (chunk, 2, C).

template <typename T>
__device__ void ln_fwd_run(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                           T* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out, i64 rows,
                           i64 cols, float eps) {
    __shared__ float scratch[32 * 32];
    const i64 row = blockIdx.x * (i64)blockDim.y + threadIdx.y;
    const bool live = row < rows;
    const i64 base = (live ? row : 0) * cols;
    float s = 0.0f;
    if (live)
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) s += to_f32(x[base + c]);
    const float mean = row_reduce<false>(s, scratch) / (float)cols;
    float v = 0.0f;
    if (live)
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
            const float d = to_f32(x[base + c]) - mean;
            v += d * d;
        }
    const float rstd = rsqrtf(row_reduce<false>(v, scratch) / (float)cols + eps);
    if (!live) return;
    for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
        const float h = (to_f32(x[base + c]) - mean) * rstd;
        y[base + c] = from_f32<T>(h * (w ? to_f32(w[c]) : 1.0f) + (b ? to_f32(b[c]) : 0.0f));
    }
    if (threadIdx.x == 0) {
        mean_out[row] = mean;
        rstd_out[row] = rstd;
    }
}

template <typename T>
__device__ void ln_bwd_dx_run(const T* __restrict__ x, const T* __restrict__ w, const float* __restrict__ mean,
                              const float* __restrict__ rstd, const T* __restrict__ dy, T* __restrict__ dx, i64 rows,
                              i64 cols) {
    __shared__ float scratch[32 * 32];
    const i64 row = blockIdx.x * (i64)blockDim.y + threadIdx.y;
    const bool live = row < rows;
    const i64 base = (live ? row : 0) * cols;
    const float m = live ? mean[row] : 0.0f, r = live ? rstd[row] : 0.0f;
    float sg = 0.0f, sgh = 0.0f;
    if (live)
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
            const float h = (to_f32(x[base + c]) - m) * r;
            const float g = to_f32(dy[base + c]) * (w ? to_f32(w[c]) : 1.0f);
            sg += g;
            sgh += g * h;
        }
    const float mg = row_reduce<false>(sg, scratch) / (float)cols;
    const float mgh = row_reduce<false>(sgh, scratch) / (float)cols;
    if (!live) return;
    for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
        const float h = (to_f32(x[base + c]) - m) * r;
        const float g = to_f32(dy[base + c]) * (w ? to_f32(w[c]) : 1.0f);
        dx[base + c] = from_f32<T>(r * (g - mg - h * mgh));
    }
}

template <typename T>
__device__ void ln_bwd_dwdb_partial_run(const T* __restrict__ x, const float* __restrict__ mean,
                                        const float* __restrict__ rstd, const T* __restrict__ dy,
                                        float* __restrict__ part, i64 rows, i64 cols) {
    __shared__ float s[2][8][33];
    const i64 col = blockIdx.x * 32 + threadIdx.x;
    const i64 chunk = (rows + gridDim.y - 1) / gridDim.y;
    const i64 r0 = blockIdx.y * chunk, r1 = min(rows, r0 + chunk);
    float dw = 0.0f, db = 0.0f;
    if (col < cols)
        for (i64 r = r0 + threadIdx.y; r < r1; r += 8) {
            const float g = to_f32(dy[r * cols + col]);
            dw += g * (to_f32(x[r * cols + col]) - mean[r]) * rstd[r];
            db += g;
        }
    s[0][threadIdx.y][threadIdx.x] = dw;
    s[1][threadIdx.y][threadIdx.x] = db;
    __syncthreads();
    if (threadIdx.y == 0 && col < cols) {
        for (int k = 1; k < 8; k++) {
            dw += s[0][k][threadIdx.x];
            db += s[1][k][threadIdx.x];
        }
        part[(blockIdx.y * 2) * cols + col] = dw;
        part[(blockIdx.y * 2 + 1) * cols + col] = db;
    }
}

template <typename T>
__device__ void ln_bwd_dwdb_finish_run(const float* __restrict__ part, T* __restrict__ dw, T* __restrict__ db,
                                       i64 chunks, i64 cols) {
    const i64 col = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    if (col >= cols) return;
    float a = 0.0f, b = 0.0f;
    for (i64 k = 0; k < chunks; k++) {
        a += part[(k * 2) * cols + col];
        b += part[(k * 2 + 1) * cols + col];
    }
    dw[col] = from_f32<T>(a);
    db[col] = from_f32<T>(b);
}

#define LN_KERNELS(T, SUF)                                                                                       \
    extern "C" __global__ void layer_norm_fwd_##SUF(const T* x, const T* w, const T* b, T* y, float* mean,      \
                                                    float* rstd, i64 rows, i64 cols, float eps) {               \
        ln_fwd_run<T>(x, w, b, y, mean, rstd, rows, cols, eps);                                                  \
    }                                                                                                            \
    extern "C" __global__ void layer_norm_bwd_dx_##SUF(const T* x, const T* w, const float* mean,               \
                                                       const float* rstd, const T* dy, T* dx, i64 rows,         \
                                                       i64 cols) {                                              \
        ln_bwd_dx_run<T>(x, w, mean, rstd, dy, dx, rows, cols);                                                  \
    }                                                                                                            \
    extern "C" __global__ void layer_norm_bwd_dwdb_partial_##SUF(const T* x, const float* mean,                 \
                                                                 const float* rstd, const T* dy, float* part,   \
                                                                 i64 rows, i64 cols) {                          \
        ln_bwd_dwdb_partial_run<T>(x, mean, rstd, dy, part, rows, cols);                                         \
    }                                                                                                            \
    extern "C" __global__ void layer_norm_bwd_dwdb_finish_##SUF(const float* part, T* dw, T* db, i64 chunks,    \
                                                                i64 cols) {                                     \
        ln_bwd_dwdb_finish_run<T>(part, dw, db, chunks, cols);                                                   \
    }

LN_KERNELS(float, f32)
LN_KERNELS(bf16, bf16)
