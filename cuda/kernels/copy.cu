// Strided copies (making a view contiguous) and dtype conversion. The source is read
// through up to 6 (shape, stride) pairs in elements; the destination is contiguous, or for
// `assign_*` a strided view too (writing into part of a tensor, as a key cache takes a
// new position).

struct Strided6 {
    i64 shape[6];
    i64 stride[6];
    int ndim;
    int pad_;
};

/// The element offset of the `i`-th element (row-major over `g.shape`) in a strided view.
__device__ __forceinline__ i64 strided_offset(const Strided6& g, i64 i) {
    i64 off = 0;
#pragma unroll
    for (int d = 5; d >= 0; d--) {
        if (d < g.ndim) {
            const i64 s = g.shape[d];
            off += (i % s) * g.stride[d];
            i /= s;
        }
    }
    return off;
}

template <typename S, typename D> __device__ __forceinline__ D convert(S v) { return from_f32<D>(to_f32(v)); }
template <> __device__ __forceinline__ bf16 convert<bf16, bf16>(bf16 v) { return v; }  // bits, NaNs included
template <> __device__ __forceinline__ i64 convert<i64, i64>(i64 v) { return v; }
template <> __device__ __forceinline__ int convert<int, int>(int v) { return v; }
template <> __device__ __forceinline__ unsigned char convert<unsigned char, unsigned char>(unsigned char v) { return v; }
// Masks (0/1 bytes from comparisons) to floats, exactly.
template <> __device__ __forceinline__ float convert<unsigned char, float>(unsigned char v) { return (float)v; }
template <> __device__ __forceinline__ bf16 convert<unsigned char, bf16>(unsigned char v) { return from_f32<bf16>((float)v); }

template <typename S, typename D>
__device__ __forceinline__ void copy_run(const S* __restrict__ src, Strided6 g, D* __restrict__ dst, i64 n) {
    const i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += stride)
        dst[i] = convert<S, D>(src[strided_offset(g, i)]);
}

#define COPY_KERNEL(S, D, NAME) \
    extern "C" __global__ void NAME(const S* src, Strided6 g, D* dst, i64 n) { copy_run<S, D>(src, g, dst, n); }

COPY_KERNEL(float, float, copy_f32)
COPY_KERNEL(bf16, bf16, copy_bf16)
COPY_KERNEL(i64, i64, copy_i64)
COPY_KERNEL(int, int, copy_i32)
COPY_KERNEL(unsigned char, unsigned char, copy_u8)
COPY_KERNEL(float, bf16, cast_f32_bf16)
COPY_KERNEL(bf16, float, cast_bf16_f32)
COPY_KERNEL(unsigned char, float, cast_u8_f32)
COPY_KERNEL(unsigned char, bf16, cast_u8_bf16)

/// `dst[offset_d(i)] = src[offset_s(i)]` over one shape, both views strided (the
/// destination's elements distinct), one dtype.
#define ASSIGN_KERNEL(T, NAME)                                                                     \
    extern "C" __global__ void NAME(const T* __restrict__ src, Strided6 gs, T* __restrict__ dst, Strided6 gd, i64 n) { \
        const i64 stride = (i64)gridDim.x * blockDim.x;                                            \
        for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += stride)               \
            dst[strided_offset(gd, i)] = src[strided_offset(gs, i)];                               \
    }

ASSIGN_KERNEL(float, assign_f32)
ASSIGN_KERNEL(bf16, assign_bf16)
ASSIGN_KERNEL(i64, assign_i64)
ASSIGN_KERNEL(int, assign_i32)
ASSIGN_KERNEL(unsigned char, assign_u8)

/// Fills `n` elements with the bit pattern of one value.
#define FILL_KERNEL(T, NAME)                                                                 \
    extern "C" __global__ void NAME(T* dst, T value, i64 n) {                                \
        const i64 stride = (i64)gridDim.x * blockDim.x;                                      \
        for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += stride) dst[i] = value; \
    }

FILL_KERNEL(float, fill_f32)
FILL_KERNEL(unsigned short, fill_bf16)
FILL_KERNEL(i64, fill_i64)
FILL_KERNEL(unsigned char, fill_u8)

/// The (rows, cols) u8 mask of a lower triangle: 1 where col - row <= diagonal, else 0
/// (causal attention's visible keys, `tril`), generated on the device.
extern "C" __global__ void tril_mask_u8(unsigned char* dst, i64 rows, i64 cols, i64 diagonal) {
    const i64 n = rows * cols, stride = (i64)gridDim.x * blockDim.x;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += stride)
        dst[i] = (i % cols) - (i / cols) <= diagonal ? 1 : 0;
}
