// SGD step on f32 weights, the CPU update of tensor/src/ops/optim.rs (`sgd_step`; multiply-
// adds contract into FMAs, so the last bits may differ):
//   with a momentum buffer b:  b = mu*b + g + wd*p;  p -= lr*b      (PyTorch's convention)
//   without (b null):          p -= lr*(g + wd*p)
// The gradient may be f32 or bf16; p and b are f32.

struct SgdStep {
    float lr, mu, wd;
};

template <typename G>
__device__ void sgd_run(float* __restrict__ p, float* __restrict__ b, const G* __restrict__ g, i64 n, SgdStep s) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        const float gi = to_f32(g[i]);
        if (b) {
            const float v = s.mu * b[i] + gi + s.wd * p[i];
            b[i] = v;
            p[i] -= s.lr * v;
        } else {
            p[i] -= s.lr * (gi + s.wd * p[i]);
        }
    }
}

extern "C" __global__ void sgd_f32(float* p, float* b, const float* g, i64 n, SgdStep s) { sgd_run<float>(p, b, g, n, s); }
extern "C" __global__ void sgd_bf16(float* p, float* b, const bf16* g, i64 n, SgdStep s) { sgd_run<bf16>(p, b, g, n, s); }
