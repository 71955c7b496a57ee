// Elementwise binary arithmetic, comparisons and selection with NumPy broadcasting: each
// input is read through its own strides over the output's (up to 6-dimensional) shape,
// stride 0 on broadcast dimensions. The output is contiguous. When every input is
// contiguous with the output's shape (`dense` != 0) the index arithmetic is skipped.
// Arithmetic ops follow `BinaryOp` (0 add, 1 sub, 2 mul, 3 div, 4 max, 5 min; max and
// min keep `a` unless `b` compares greater/smaller, as on the CPU); comparisons follow
// `CmpOp` (0 eq, 1 ne, 2 lt, 3 le, 4 gt, 5 ge) and write 0/1 bytes.

/// An output shape and the element strides of up to three inputs over it.
struct Broadcast6 {
    i64 shape[6];
    i64 stride[3][6];
    int ndim;
    int pad_;
};

/// Offsets of the `i`-th output element in each of the first `N` inputs.
template <int N> __device__ __forceinline__ void bcast_offsets(const Broadcast6& g, i64 i, i64* off) {
#pragma unroll
    for (int k = 0; k < N; k++) off[k] = 0;
#pragma unroll
    for (int d = 5; d >= 0; d--) {
        if (d < g.ndim) {
            const i64 s = g.shape[d], c = i % s;
            i /= s;
#pragma unroll
            for (int k = 0; k < N; k++) off[k] += c * g.stride[k][d];
        }
    }
}

__device__ __forceinline__ float binary_f(int op, float a, float b) {
    switch (op) {
        case 0: return a + b;
        case 1: return a - b;
        case 2: return a * b;
        case 3: return a / b;
        case 4: return b > a ? b : a;
        default: return b < a ? b : a;
    }
}

template <typename T>
__device__ __forceinline__ unsigned char cmp_f(int op, T a, T b) {
    switch (op) {
        case 0: return a == b;
        case 1: return a != b;
        case 2: return a < b;
        case 3: return a <= b;
        case 4: return a > b;
        default: return a >= b;
    }
}

template <typename T> struct CmpValue { typedef float type; };
template <> struct CmpValue<i64> { typedef i64 type; };
__device__ __forceinline__ i64 cmp_load(i64 v) { return v; }
__device__ __forceinline__ float cmp_load(float v) { return v; }
__device__ __forceinline__ float cmp_load(bf16 v) { return to_f32(v); }

template <typename T>
__device__ void binary_run(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out, Broadcast6 g, i64 n,
                           int op, int dense) {
    const i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += stride) {
        i64 off[2] = {i, i};
        if (!dense) bcast_offsets<2>(g, i, off);
        out[i] = from_f32<T>(binary_f(op, to_f32(a[off[0]]), to_f32(b[off[1]])));
    }
}

template <typename T>
__device__ void cmp_run(const T* __restrict__ a, const T* __restrict__ b, unsigned char* __restrict__ out, Broadcast6 g,
                        i64 n, int op, int dense) {
    const i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += stride) {
        i64 off[2] = {i, i};
        if (!dense) bcast_offsets<2>(g, i, off);
        out[i] = cmp_f(op, cmp_load(a[off[0]]), cmp_load(b[off[1]]));
    }
}

/// out = cond ? a : b, with inputs 0, 1, 2 of the geometry being cond, a, b.
template <typename T>
__device__ void where_run(const unsigned char* __restrict__ cond, const T* __restrict__ a, const T* __restrict__ b,
                          T* __restrict__ out, Broadcast6 g, i64 n, int dense) {
    const i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += stride) {
        i64 off[3] = {i, i, i};
        if (!dense) bcast_offsets<3>(g, i, off);
        out[i] = cond[off[0]] ? a[off[1]] : b[off[2]];
    }
}

#define BINARY_KERNELS(T, SUF)                                                                                   \
    extern "C" __global__ void binary_##SUF(const T* a, const T* b, T* out, Broadcast6 g, i64 n, int op,        \
                                            int dense) {                                                         \
        binary_run<T>(a, b, out, g, n, op, dense);                                                               \
    }                                                                                                            \
    extern "C" __global__ void cmp_##SUF(const T* a, const T* b, unsigned char* out, Broadcast6 g, i64 n, int op, \
                                         int dense) {                                                            \
        cmp_run<T>(a, b, out, g, n, op, dense);                                                                  \
    }                                                                                                            \
    extern "C" __global__ void where_##SUF(const unsigned char* cond, const T* a, const T* b, T* out, Broadcast6 g, \
                                           i64 n, int dense) {                                                   \
        where_run<T>(cond, a, b, out, g, n, dense);                                                              \
    }

BINARY_KERNELS(float, f32)
BINARY_KERNELS(bf16, bf16)

// `where` selects without arithmetic, so it also takes i64 and u8 values (targets, masks).
extern "C" __global__ void where_i64(const unsigned char* cond, const i64* a, const i64* b, i64* out, Broadcast6 g,
                                     i64 n, int dense) {
    where_run<i64>(cond, a, b, out, g, n, dense);
}
extern "C" __global__ void where_u8(const unsigned char* cond, const unsigned char* a, const unsigned char* b,
                                    unsigned char* out, Broadcast6 g, i64 n, int dense) {
    where_run<unsigned char>(cond, a, b, out, g, n, dense);
}

extern "C" __global__ void cmp_i64(const i64* a, const i64* b, unsigned char* out, Broadcast6 g, i64 n, int op,
                                   int dense) {
    cmp_run<i64>(a, b, out, g, n, op, dense);
}
