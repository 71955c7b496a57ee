// The butterfly product (tensor/src/ops/butterfly.rs): log2(n) factors of 2x2 blocks
// with strides 1, 2, ..., n/2, twiddles (stacks, log_n, n/2, 2, 2). Factor f pairs
// a = (j >> f << (f + 1)) | (j & (2^f - 1)) with b = a + 2^f (pair j < n/2) and maps
// (x_a, x_b) to (t0 x_a + t1 x_b, t2 x_a + t3 x_b). Stack st maps the zero-padded row
// (n wide) to outputs st*n .. (st+1)*n, truncated to `out`. f32 arithmetic throughout.
//
// Forward, grid (ceil(rows / R), stacks used): a block holds R rows of one stack in
// shared memory (R * n <= BF_MAX_ELEMS) and applies the factors in place; its threads
// take (row, pair) items, both ends of a pair, so no two touch one element within a
// factor and a barrier separates factors.
// Backward, a persistent grid over groups of R rows: per stack, the block recomputes the
// factors' inputs into its own global scratch (levels 0 .. log_n-1), then runs the
// gradient back through the factors in shared memory. A thread owns pairs j = tid,
// tid + blockDim.x, ... for all R rows, so it alone adds their twiddle gradients into
// the block's partial (blocks, stacks, log_n, n/2, 4); a second kernel sums the partials
// over blocks in a fixed order (deterministic). dx sums over stacks in f32 scratch.

#define BF_MAX_ELEMS 8192

__device__ __forceinline__ i64 bf_pair(i64 j, int f) { return ((j >> f) << (f + 1)) | (j & ((1ll << f) - 1)); }

// Factor f of one stack's twiddles t on rn rows: row r's input at in + r * stride, its
// output at out + r * stride (in place when in == out: both ends of a pair belong to one
// (row, pair) item). The caller puts a barrier after it.
template <typename T>
__device__ void bf_factor(const T* t, int f, int log_n, int rn, const float* in, float* out, i64 stride) {
    const i64 half = 1ll << (log_n - 1), h = 1ll << f;
    for (i64 i = threadIdx.x; i < (i64)rn * half; i += blockDim.x) {
        const i64 r = i >> (log_n - 1), j = i & (half - 1);
        const T* w = t + ((i64)f * half + j) * 4;
        const float* v = in + r * stride;
        float* o = out + r * stride;
        const i64 a = bf_pair(j, f);
        const float xa = v[a], xb = v[a + h];
        o[a] = to_f32(w[0]) * xa + to_f32(w[1]) * xb;
        o[a + h] = to_f32(w[2]) * xa + to_f32(w[3]) * xb;
    }
}

template <typename T>
__device__ void bf_fwd_run(const T* __restrict__ x, const T* __restrict__ tw, T* __restrict__ y, i64 rows, i64 inp,
                           i64 out, int log_n, int per_block) {
    __shared__ float buf[BF_MAX_ELEMS];
    const i64 n = 1ll << log_n;
    const int st = blockIdx.y;
    const i64 r0 = (i64)blockIdx.x * per_block;
    const int rn = (int)min((i64)per_block, rows - r0);
    for (i64 i = threadIdx.x; i < (i64)rn * n; i += blockDim.x) {
        const i64 r = i >> log_n, c = i & (n - 1);
        buf[i] = c < inp ? to_f32(x[(r0 + r) * inp + c]) : 0.0f;
    }
    __syncthreads();
    const T* t = tw + (i64)st * log_n * n * 2;
    for (int f = 0; f < log_n; f++) {
        bf_factor(t, f, log_n, rn, buf, buf, n);
        __syncthreads();
    }
    const i64 lo = (i64)st * n, cnt = min(n, out - lo);
    for (i64 i = threadIdx.x; i < (i64)rn * cnt; i += blockDim.x) {
        const i64 r = i / cnt, c = i % cnt;
        y[(r0 + r) * out + lo + c] = from_f32<T>(buf[r * n + c]);
    }
}

template <typename T>
__device__ void bf_bwd_run(const T* __restrict__ x, const T* __restrict__ tw, const T* __restrict__ dy,
                           T* __restrict__ dx, float* __restrict__ scratch, float* __restrict__ part, i64 rows,
                           i64 inp, i64 out, int log_n, int stacks, int per_block) {
    __shared__ float g[BF_MAX_ELEMS];
    const i64 n = 1ll << log_n, half = n >> 1;
    // This block's scratch: levels [R][log_n][n], then the dx sums [R][n].
    float* lv = scratch + (i64)blockIdx.x * per_block * (log_n + 1) * n;
    float* acc = lv + (i64)per_block * log_n * n;
    float* dt = part + (i64)blockIdx.x * stacks * log_n * half * 4;
    for (i64 e = threadIdx.x; e < (i64)stacks * log_n * half; e += blockDim.x)
        for (int k = 0; k < 4; k++) dt[e * 4 + k] = 0.0f;
    const i64 groups = (rows + per_block - 1) / per_block;
    for (i64 grp = blockIdx.x; grp < groups; grp += gridDim.x) {
        const i64 r0 = grp * per_block;
        const int rn = (int)min((i64)per_block, rows - r0);
        for (int st = 0; st < stacks && (i64)st * n < out; st++) {
            const T* t = tw + (i64)st * log_n * n * 2;
            // The factors' inputs: level 0 is the padded row, level f + 1 factor f's output.
            if (log_n > 0)
                for (i64 i = threadIdx.x; i < (i64)rn * n; i += blockDim.x) {
                    const i64 r = i >> log_n, c = i & (n - 1);
                    lv[r * log_n * n + c] = c < inp ? to_f32(x[(r0 + r) * inp + c]) : 0.0f;
                }
            __syncthreads();
            for (int f = 0; f + 1 < log_n; f++) {
                bf_factor(t, f, log_n, rn, lv + f * n, lv + (f + 1) * n, (i64)log_n * n);
                __syncthreads();
            }
            const i64 lo = (i64)st * n, cnt = min(n, out - lo);
            for (i64 i = threadIdx.x; i < (i64)rn * n; i += blockDim.x) {
                const i64 r = i >> log_n, c = i & (n - 1);
                g[i] = c < cnt ? to_f32(dy[(r0 + r) * out + lo + c]) : 0.0f;
            }
            __syncthreads();
            for (int f = log_n - 1; f >= 0; f--) {
                const i64 h = 1ll << f;
                for (i64 j = threadIdx.x; j < half; j += blockDim.x) {
                    const T* w = t + ((i64)f * half + j) * 4;
                    const float w0 = to_f32(w[0]), w1 = to_f32(w[1]), w2 = to_f32(w[2]), w3 = to_f32(w[3]);
                    const i64 a = bf_pair(j, f);
                    float d0 = 0.0f, d1 = 0.0f, d2 = 0.0f, d3 = 0.0f;
                    for (int r = 0; r < rn; r++) {
                        float* gr = g + (i64)r * n;
                        const float* v = lv + ((i64)r * log_n + f) * n;
                        const float ga = gr[a], gb = gr[a + h], xa = v[a], xb = v[a + h];
                        gr[a] = w0 * ga + w2 * gb;
                        gr[a + h] = w1 * ga + w3 * gb;
                        d0 += ga * xa;
                        d1 += ga * xb;
                        d2 += gb * xa;
                        d3 += gb * xb;
                    }
                    float* d = dt + (((i64)st * log_n + f) * half + j) * 4;
                    d[0] += d0;
                    d[1] += d1;
                    d[2] += d2;
                    d[3] += d3;
                }
                __syncthreads();
            }
            for (i64 i = threadIdx.x; i < (i64)rn * inp; i += blockDim.x) {
                const i64 r = i / inp, c = i % inp;
                acc[r * n + c] = (st == 0 ? 0.0f : acc[r * n + c]) + g[r * n + c];
            }
            __syncthreads();
        }
        for (i64 i = threadIdx.x; i < (i64)rn * inp; i += blockDim.x) {
            const i64 r = i / inp, c = i % inp;
            dx[(r0 + r) * inp + c] = from_f32<T>(acc[r * n + c]);
        }
        __syncthreads();
    }
}

template <typename T>
__device__ void bf_bwd_finish_run(const float* __restrict__ part, T* __restrict__ dtw, i64 blocks, i64 count) {
    const i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    if (i >= count) return;
    float s = 0.0f;
    for (i64 b = 0; b < blocks; b++) s += part[b * count + i];
    dtw[i] = from_f32<T>(s);
}

#define BF_KERNELS(T, SUF)                                                                                       \
    extern "C" __global__ void butterfly_fwd_##SUF(const T* x, const T* tw, T* y, i64 rows, i64 inp, i64 out,  \
                                                   int log_n, int per_block) {                                  \
        bf_fwd_run<T>(x, tw, y, rows, inp, out, log_n, per_block);                                               \
    }                                                                                                            \
    extern "C" __global__ void butterfly_bwd_##SUF(const T* x, const T* tw, const T* dy, T* dx, float* scratch, \
                                                   float* part, i64 rows, i64 inp, i64 out, int log_n,          \
                                                   int stacks, int per_block) {                                 \
        bf_bwd_run<T>(x, tw, dy, dx, scratch, part, rows, inp, out, log_n, stacks, per_block);                   \
    }                                                                                                            \
    extern "C" __global__ void butterfly_bwd_finish_##SUF(const float* part, T* dtw, i64 blocks, i64 count) {   \
        bf_bwd_finish_run<T>(part, dtw, blocks, count);                                                          \
    }

BF_KERNELS(float, f32)
BF_KERNELS(bf16, bf16)
