// Dropout with the counter-based generator of tensor/src/ops/dropout.rs: element i of
// the (contiguous) tensor is zeroed when counter_uniform(seed, index_offset + i) < p and
// otherwise scaled by `scale` = 1/(1-p). The same bits as the CPU, so both devices draw
// the same mask; the backward is the same call on the output gradient.

// (`counter_uniform` is in common.cuh: attention dropout draws from it too.)

template <typename T>
__device__ void dropout_run(const T* __restrict__ x, T* __restrict__ y, i64 n, float p, float scale, u64 seed,
                            u64 index_offset) {
    const i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += stride)
        y[i] = counter_uniform(seed, index_offset + (u64)i) < p ? from_f32<T>(0.0f) : from_f32<T>(to_f32(x[i]) * scale);
}

#define DROPOUT_KERNEL(T, SUF)                                                                                     \
    extern "C" __global__ void dropout_##SUF(const T* x, T* y, i64 n, float p, float scale, u64 seed, u64 offset) { \
        dropout_run<T>(x, y, n, p, scale, seed, offset);                                                           \
    }

DROPOUT_KERNEL(float, f32)
DROPOUT_KERNEL(bf16, bf16)
