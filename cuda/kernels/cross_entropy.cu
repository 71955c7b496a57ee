// Fused cross-entropy of (N, C) logits against i64 targets, as in tensor/src/ops/loss.rs:
//   lse_r = log sum_j exp(x_rj);  nll_r = lse_r - x_r,t
//   loss_r = (1 - eps) * nll_r + eps * (lse_r - mean_j x_rj)      (eps = label smoothing)
// rows whose target equals `ignore_index` (when `has_ignore`) add 0 and do not count.
// Forward: `cross_entropy_rows` writes loss_r and lse_r (f32) per row (block (X, Y) as in
// softmax.cu); `cross_entropy_mean` (one block of 1024) writes the mean over counted rows
// and the count (f32, both): out[0] = sum loss_r / max(count, 1), out[1] = count.
// Backward: dx_rj = (exp(x_rj - lse_r) - target_rj) * dloss / max(count, 1) with
// target_rj = eps/C + (1 - eps)[j == t_r]; 0 on ignored rows. `dloss` and `count` are
// read from device memory (no host round trip). The kernels do not bounds-check targets
// (the callers do, see tensor/src/ops/loss.rs); should one slip through, an out-of-range,
// non-ignored target makes its row's loss NaN, so the mean shows it.

template <typename T>
__device__ void ce_rows_run(const T* __restrict__ x, const i64* __restrict__ t, float* __restrict__ loss,
                            float* __restrict__ lse_out, i64 rows, i64 cols, i64 ignore_index, int has_ignore,
                            float eps) {
    __shared__ float scratch[32 * 32];
    const i64 row = blockIdx.x * (i64)blockDim.y + threadIdx.y;
    const bool live = row < rows;
    const T* xr = x + (live ? row : 0) * cols;
    float m = NEG_INF;
    if (live)
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, to_f32(xr[c]));
    m = row_reduce<true>(m, scratch);
    float s = 0.0f, sx = 0.0f;
    if (live)
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
            const float v = to_f32(xr[c]);
            s += expf(v - m);
            sx += v;
        }
    s = row_reduce<false>(s, scratch);
    if (eps > 0.0f) sx = row_reduce<false>(sx, scratch);
    if (!live || threadIdx.x != 0) return;
    const float lse = logf(s) + m;
    lse_out[row] = lse;
    const i64 target = t[row];
    if (has_ignore && target == ignore_index) {
        loss[row] = 0.0f;
        return;
    }
    if (target < 0 || target >= cols) {
        loss[row] = __int_as_float(0x7fc00000);  // an out-of-range target poisons the loss
        return;
    }
    const float nll = lse - to_f32(xr[target]);
    const float smooth = eps > 0.0f ? lse - sx / (float)cols : 0.0f;
    loss[row] = (1.0f - eps) * nll + eps * smooth;
}

extern "C" __global__ void cross_entropy_mean(const float* __restrict__ loss, const i64* __restrict__ t,
                                              float* __restrict__ out, i64 rows, i64 ignore_index, int has_ignore) {
    __shared__ float scratch[32];
    float s = 0.0f, n = 0.0f;
    for (i64 r = threadIdx.x; r < rows; r += blockDim.x) {
        s += loss[r];
        n += (has_ignore && t[r] == ignore_index) ? 0.0f : 1.0f;
    }
    s = row_reduce<false>(s, scratch);
    n = row_reduce<false>(n, scratch);
    if (threadIdx.x == 0) {
        out[0] = s / fmaxf(n, 1.0f);
        out[1] = n;
    }
}

template <typename T>
__device__ void ce_bwd_run(const T* __restrict__ x, const i64* __restrict__ t, const float* __restrict__ lse,
                           const float* __restrict__ count, const float* __restrict__ dloss, T* __restrict__ dx, i64 rows, i64 cols, i64 ignore_index, int has_ignore, float eps) {
    const float scale = dloss[0] / fmaxf(count[0], 1.0f);
    const float off = eps / (float)cols;
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const i64 target = t[row];
        const bool ignored = has_ignore && target == ignore_index;
        const float l = lse[row];
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
            float g = 0.0f;
            if (!ignored) {
                const float p = expf(to_f32(x[row * cols + c]) - l);
                g = (p - off - (c == target ? 1.0f - eps : 0.0f)) * scale;
            }
            dx[row * cols + c] = from_f32<T>(g);
        }
    }
}

#define CE_KERNELS(T, SUF)                                                                                       \
    extern "C" __global__ void cross_entropy_rows_##SUF(const T* x, const i64* t, float* loss, float* lse,      \
                                                        i64 rows, i64 cols, i64 ignore_index, int has_ignore,   \
                                                        float eps) {                                            \
        ce_rows_run<T>(x, t, loss, lse, rows, cols, ignore_index, has_ignore, eps);                              \
    }                                                                                                            \
    extern "C" __global__ void cross_entropy_bwd_##SUF(const T* x, const i64* t, const float* lse,              \
                                                       const float* count, const float* dloss, T* dx, i64 rows, \
                                                       i64 cols, i64 ignore_index, int has_ignore, float eps) { \
        ce_bwd_run<T>(x, t, lse, count, dloss, dx, rows, cols, ignore_index, has_ignore, eps);                   \
    }

CE_KERNELS(float, f32)
CE_KERNELS(bf16, bf16)
