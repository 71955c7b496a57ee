// Row gather and scatter-add along one dimension of a contiguous (outer, size, inner)
// tensor, with i64 indices (tensor/src/ops/index.rs):
//   index_select: out[o, i, :] = src[o, ids[i], :]          out is (outer, n, inner)
//   index_add:    dst[o, ids[i], :] += src[o, i, :]         dst is f32 (outer, size, inner)
// and their per-element forms, with one index per position p = (o, j, i) of an
// (outer, n, inner) index tensor:
//   gather:       out[p] = src[o, idx[p], i]
//   scatter_add:  dst[o, idx[p], i] += src[p]               dst is f32 (outer, size, inner)
// index_select and gather also move i64 and u8 values (token ids, masks).
// An embedding lookup is index_select with outer = 1; its backward is index_add into
// an f32 gradient table. index_add uses f32 atomics, so repeated ids accumulate in an
// unspecified order (results may differ in the last bits between runs).
// Out-of-range ids are not read: their output rows are zero, their adds are dropped,
// and each one increments `*bad` when `bad` is not null.
// Rows: block (X, Y), Y output rows per block, X threads along `inner`, grid-stride over
// rows. Elements: 256 threads, grid-stride over the index's positions.

/// Zero of a lookup's value type.
template <typename T> __device__ __forceinline__ T zero_of() { return from_f32<T>(0.0f); }
template <> __device__ __forceinline__ i64 zero_of<i64>() { return 0; }
template <> __device__ __forceinline__ unsigned char zero_of<unsigned char>() { return 0; }

template <typename T>
__device__ void index_select_run(const T* __restrict__ src, const i64* __restrict__ ids, T* __restrict__ out,
                                 int* __restrict__ bad, i64 outer, i64 size, i64 n, i64 inner) {
    const i64 rows = outer * n;
    for (i64 r = blockIdx.x * (i64)blockDim.y + threadIdx.y; r < rows; r += (i64)gridDim.x * blockDim.y) {
        const i64 o = r / n, id = ids[r % n];
        const bool ok = id >= 0 && id < size;
        if (!ok && bad && threadIdx.x == 0) atomicAdd(bad, 1);
        const T* s = src + (o * size + (ok ? id : 0)) * inner;
        T* d = out + r * inner;
        for (i64 c = threadIdx.x; c < inner; c += blockDim.x) d[c] = ok ? s[c] : zero_of<T>();
    }
}

template <typename T>
__device__ void index_add_run(float* __restrict__ dst, const i64* __restrict__ ids, const T* __restrict__ src,
                              int* __restrict__ bad, i64 outer, i64 size, i64 n, i64 inner) {
    const i64 rows = outer * n;
    for (i64 r = blockIdx.x * (i64)blockDim.y + threadIdx.y; r < rows; r += (i64)gridDim.x * blockDim.y) {
        const i64 o = r / n, id = ids[r % n];
        if (id < 0 || id >= size) {
            if (bad && threadIdx.x == 0) atomicAdd(bad, 1);
            continue;
        }
        float* d = dst + (o * size + id) * inner;
        const T* s = src + r * inner;
        for (i64 c = threadIdx.x; c < inner; c += blockDim.x) atomicAdd(d + c, to_f32(s[c]));
    }
}

template <typename T>
__device__ void gather_run(const T* __restrict__ src, const i64* __restrict__ idx, T* __restrict__ out,
                           int* __restrict__ bad, i64 size, i64 n, i64 inner, i64 total) {
    for (i64 p = blockIdx.x * (i64)blockDim.x + threadIdx.x; p < total; p += (i64)gridDim.x * blockDim.x) {
        const i64 id = idx[p], o = p / (n * inner), i = p % inner;
        const bool ok = id >= 0 && id < size;
        if (!ok && bad) atomicAdd(bad, 1);
        out[p] = ok ? src[(o * size + id) * inner + i] : zero_of<T>();
    }
}

template <typename T>
__device__ void scatter_add_run(float* __restrict__ dst, const i64* __restrict__ idx, const T* __restrict__ src,
                                int* __restrict__ bad, i64 size, i64 n, i64 inner, i64 total) {
    for (i64 p = blockIdx.x * (i64)blockDim.x + threadIdx.x; p < total; p += (i64)gridDim.x * blockDim.x) {
        const i64 id = idx[p], o = p / (n * inner), i = p % inner;
        if (id < 0 || id >= size) {
            if (bad) atomicAdd(bad, 1);
            continue;
        }
        atomicAdd(dst + (o * size + id) * inner + i, to_f32(src[p]));
    }
}

#define LOOKUP_KERNELS(T, SUF)                                                                                  \
    extern "C" __global__ void index_select_##SUF(const T* src, const i64* ids, T* out, int* bad, i64 outer,   \
                                                  i64 size, i64 n, i64 inner) {                                 \
        index_select_run<T>(src, ids, out, bad, outer, size, n, inner);                                         \
    }                                                                                                           \
    extern "C" __global__ void gather_##SUF(const T* src, const i64* idx, T* out, int* bad, i64 size, i64 n,   \
                                            i64 inner, i64 total) {                                             \
        gather_run<T>(src, idx, out, bad, size, n, inner, total);                                               \
    }

#define EMBEDDING_KERNELS(T, SUF)                                                                               \
    LOOKUP_KERNELS(T, SUF)                                                                                      \
    extern "C" __global__ void index_add_##SUF(float* dst, const i64* ids, const T* src, int* bad, i64 outer,  \
                                               i64 size, i64 n, i64 inner) {                                    \
        index_add_run<T>(dst, ids, src, bad, outer, size, n, inner);                                            \
    }                                                                                                           \
    extern "C" __global__ void scatter_add_##SUF(float* dst, const i64* idx, const T* src, int* bad, i64 size, \
                                                 i64 n, i64 inner, i64 total) {                                 \
        scatter_add_run<T>(dst, idx, src, bad, size, n, inner, total);                                          \
    }

EMBEDDING_KERNELS(float, f32)
EMBEDDING_KERNELS(bf16, bf16)
LOOKUP_KERNELS(i64, i64)
LOOKUP_KERNELS(unsigned char, u8)
