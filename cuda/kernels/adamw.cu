// Fused AdamW step on f32 master weights, the CPU update of
// tensor/src/ops/optim.rs (the host computes the step's constants the same way; NVRTC
// contracts multiply-adds into FMAs, so results may differ from the CPU in the last bits):
//   m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g*g
//   p = p*decay - step_size * m / (sqrt(v)/bc2_sqrt + eps)
// with step_size = lr/(1-b1^t), bc2_sqrt = sqrt(1-b2^t), decay = 1 - lr*wd.
// The gradient may be f32 or bf16; p, m, v are f32. 16-byte accesses when aligned.

struct AdamWStep {
    float b1, b2, step_size, bc2_sqrt, decay, eps;
};

__device__ __forceinline__ void adamw_one(float& p, float& m, float& v, float g, const AdamWStep& s) {
    m = s.b1 * m + (1.0f - s.b1) * g;
    v = s.b2 * v + (1.0f - s.b2) * g * g;
    p = p * s.decay - s.step_size * m / (sqrtf(v) / s.bc2_sqrt + s.eps);
}

template <typename G>
__device__ void adamw_run(float* __restrict__ p, float* __restrict__ m, float* __restrict__ v,
                          const G* __restrict__ g, i64 n, AdamWStep s) {
    const i64 tid = blockIdx.x * (i64)blockDim.x + threadIdx.x, stride = (i64)gridDim.x * blockDim.x;
    i64 done = 0;
    if (aligned(p, 16) && aligned(m, 16) && aligned(v, 16) && aligned(g, 4 * sizeof(G))) {
        const i64 nv = n / 4;
        for (i64 i = tid; i < nv; i += stride) {
            Pack<float, 4> pp = reinterpret_cast<Pack<float, 4>*>(p)[i];
            Pack<float, 4> pm = reinterpret_cast<Pack<float, 4>*>(m)[i];
            Pack<float, 4> pv = reinterpret_cast<Pack<float, 4>*>(v)[i];
            const Pack<G, 4> pg = reinterpret_cast<const Pack<G, 4>*>(g)[i];
#pragma unroll
            for (int e = 0; e < 4; e++) adamw_one(pp.v[e], pm.v[e], pv.v[e], to_f32(pg.v[e]), s);
            reinterpret_cast<Pack<float, 4>*>(p)[i] = pp;
            reinterpret_cast<Pack<float, 4>*>(m)[i] = pm;
            reinterpret_cast<Pack<float, 4>*>(v)[i] = pv;
        }
        done = nv * 4;
    }
    for (i64 i = done + tid; i < n; i += stride) adamw_one(p[i], m[i], v[i], to_f32(g[i]), s);
}

extern "C" __global__ void adamw_f32(float* p, float* m, float* v, const float* g, i64 n, AdamWStep s) {
    adamw_run<float>(p, m, v, g, n, s);
}
extern "C" __global__ void adamw_bf16(float* p, float* m, float* v, const bf16* g, i64 n, AdamWStep s) {
    adamw_run<bf16>(p, m, v, g, n, s);
}
