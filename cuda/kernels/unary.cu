// Elementwise unary functions and their fused backward `dx = dy * f'(saved)`, where
// `saved` is the output y for exp, sqrt, rsqrt, tanh, sigmoid, relu and recip, and the
// input x for the others (the same choice as the CPU op in tensor/src/ops/unary.rs).
// Op codes follow `UnaryOp` in cuda/src/ops/unary.rs; p0, p1 carry the op's parameters
// (powf: exponent; affine: mul, add; clamp: min, max). Contiguous data, grid-stride,
// 16-byte vector accesses when both pointers allow.


/// f(x); A (bf16 data): tanh through `tanh_of<true>`, whose error is below bf16's rounding.
template <int OP, bool A> __device__ __forceinline__ float unary_f(float x, float p0, float p1) {
    switch (OP) {
        case 0: return -x;
        case 1: return expf(x);
        case 2: return logf(x);
        case 3: return sqrtf(x);
        case 4: return 1.0f / sqrtf(x);
        case 5: return tanh_of<A>(x);
        case 6: return 1.0f / (1.0f + expf(-x));
        case 7: return fmaxf(x, 0.0f);
        case 8: return gelu_tanh_f<A>(x);
        case 9: return gelu_erf_f(x);
        case 10: return x / (1.0f + expf(-x));
        case 11: return fabsf(x);
        case 12: return x * x;
        case 13: return 1.0f / x;
        case 14: return powf(x, p0);
        case 15: return x * p0 + p1;
        default: return fminf(fmaxf(x, p0), p1);
    }
}

/// f'(saved); A as for unary_f.
template <int OP, bool A> __device__ __forceinline__ float unary_df(float s, float p0, float p1) {
    switch (OP) {
        case 0: return -1.0f;
        case 1: return s;
        case 2: return 1.0f / s;
        case 3: return 0.5f / s;
        case 4: return -0.5f * s * s * s;
        case 5: return 1.0f - s * s;
        case 6: return s * (1.0f - s);
        case 7: return s > 0.0f ? 1.0f : 0.0f;
        case 8: return gelu_tanh_df(s);
        case 9: return gelu_erf_df(s);
        case 10: {
            const float sig = 1.0f / (1.0f + expf(-s));
            return sig * (1.0f + s * (1.0f - sig));
        }
        case 11: return s > 0.0f ? 1.0f : (s < 0.0f ? -1.0f : 0.0f);
        case 12: return 2.0f * s;
        case 13: return -(s * s);
        case 14: return p0 * powf(s, p0 - 1.0f);
        case 15: return p0;
        default: return (s >= p0 && s <= p1) ? 1.0f : 0.0f;
    }
}

template <typename T, int OP>
__device__ __forceinline__ void unary_fwd_run(const T* __restrict__ x, T* __restrict__ y, i64 n, float p0, float p1) {
    constexpr int V = 16 / sizeof(T);
    const i64 tid = blockIdx.x * (i64)blockDim.x + threadIdx.x, stride = (i64)gridDim.x * blockDim.x;
    i64 done = 0;
    if (aligned(x, 16) && aligned(y, 16)) {
        const i64 nv = n / V;
        for (i64 i = tid; i < nv; i += stride) {
            Pack<T, V> p = reinterpret_cast<const Pack<T, V>*>(x)[i];
#pragma unroll
            for (int e = 0; e < V; e++) p.v[e] = from_f32<T>(unary_f<OP, sizeof(T) == 2>(to_f32(p.v[e]), p0, p1));
            reinterpret_cast<Pack<T, V>*>(y)[i] = p;
        }
        done = nv * V;
    }
    for (i64 i = done + tid; i < n; i += stride) y[i] = from_f32<T>(unary_f<OP, sizeof(T) == 2>(to_f32(x[i]), p0, p1));
}

template <typename T, int OP>
__device__ __forceinline__ void unary_bwd_run(const T* __restrict__ s, const T* __restrict__ dy, T* __restrict__ dx,
                                              i64 n, float p0, float p1) {
    constexpr int V = 16 / sizeof(T);
    const i64 tid = blockIdx.x * (i64)blockDim.x + threadIdx.x, stride = (i64)gridDim.x * blockDim.x;
    i64 done = 0;
    if (aligned(s, 16) && aligned(dy, 16) && aligned(dx, 16)) {
        const i64 nv = n / V;
        for (i64 i = tid; i < nv; i += stride) {
            const Pack<T, V> ps = reinterpret_cast<const Pack<T, V>*>(s)[i];
            Pack<T, V> pg = reinterpret_cast<const Pack<T, V>*>(dy)[i];
#pragma unroll
            for (int e = 0; e < V; e++)
                pg.v[e] = from_f32<T>(to_f32(pg.v[e]) * unary_df<OP, sizeof(T) == 2>(to_f32(ps.v[e]), p0, p1));
            reinterpret_cast<Pack<T, V>*>(dx)[i] = pg;
        }
        done = nv * V;
    }
    for (i64 i = done + tid; i < n; i += stride)
        dx[i] = from_f32<T>(to_f32(dy[i]) * unary_df<OP, sizeof(T) == 2>(to_f32(s[i]), p0, p1));
}

#define UNARY_CASES(F, ...)          \
    switch (op) {                    \
        case 0: F<0>(__VA_ARGS__); break;  \
        case 1: F<1>(__VA_ARGS__); break;  \
        case 2: F<2>(__VA_ARGS__); break;  \
        case 3: F<3>(__VA_ARGS__); break;  \
        case 4: F<4>(__VA_ARGS__); break;  \
        case 5: F<5>(__VA_ARGS__); break;  \
        case 6: F<6>(__VA_ARGS__); break;  \
        case 7: F<7>(__VA_ARGS__); break;  \
        case 8: F<8>(__VA_ARGS__); break;  \
        case 9: F<9>(__VA_ARGS__); break;  \
        case 10: F<10>(__VA_ARGS__); break; \
        case 11: F<11>(__VA_ARGS__); break; \
        case 12: F<12>(__VA_ARGS__); break; \
        case 13: F<13>(__VA_ARGS__); break; \
        case 14: F<14>(__VA_ARGS__); break; \
        case 15: F<15>(__VA_ARGS__); break; \
        default: F<16>(__VA_ARGS__); break; \
    }

template <typename T> struct UnaryFwd {
    template <int OP> static __device__ void go(const T* x, T* y, i64 n, float p0, float p1) {
        unary_fwd_run<T, OP>(x, y, n, p0, p1);
    }
};
template <typename T> struct UnaryBwd {
    template <int OP> static __device__ void go(const T* s, const T* dy, T* dx, i64 n, float p0, float p1) {
        unary_bwd_run<T, OP>(s, dy, dx, n, p0, p1);
    }
};

#define UNARY_KERNELS(T, SUF)                                                                               \
    extern "C" __global__ void unary_fwd_##SUF(const T* x, T* y, i64 n, int op, float p0, float p1) {      \
        UNARY_CASES(UnaryFwd<T>::template go, x, y, n, p0, p1)                                              \
    }                                                                                                       \
    extern "C" __global__ void unary_bwd_##SUF(const T* s, const T* dy, T* dx, i64 n, int op, float p0,    \
                                               float p1) {                                                  \
        UNARY_CASES(UnaryBwd<T>::template go, s, dy, dx, n, p0, p1)                                         \
    }

UNARY_KERNELS(float, f32)
UNARY_KERNELS(bf16, bf16)
