// Runs cuda/kernels/adamw.cu (adamw_f32, adamw_bf16: the gradient's dtype) in the CPU
// emulator, launched as cuda/src/ops/adamw.rs launches it (AdamWStep from
// `AdamW::constants`; cfg_1d(grid_for(n/4 + 1, 256), 256)), for five steps against an f64
// reference of tensor/src/ops/optim.rs's update: m = b1 m + (1-b1) g, v = b2 v + (1-b2) g²,
// p = p (1 - lr wd) - lr/(1-b1^t) m / (sqrt(v)/sqrt(1-b2^t) + eps) with the step's f32
// constants (as the CPU rounds them), a fresh gradient each step. Aligned buffers
// (vector path plus tail), misaligned ones (scalar path) and a 1-SM device
// (grid-stride). Tolerance for f32 with FMA contraction. Prints one line per case; exits
// 1 on any mismatch.

#include "shim.h"
#include "common.cuh"
#include "adamw.cu"
#include "check.h"

using emu::Compare;

template <typename G>
static int run(size_t n, size_t shift, unsigned sm, void (*kern)(float*, float*, float*, const G*, i64, AdamWStep),
               double tol, uint64_t seed) {
    emu::Rng rng(seed);
    const double lr = 1e-2, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.1;
    std::vector<float> p(n + shift), m(n + shift, 0.0f), v(n + shift, 0.0f);
    std::vector<double> rp(n), rm(n, 0.0), rv(n, 0.0);
    for (size_t i = 0; i < n; i++) rp[i] = p[shift + i] = rng.uniform();
    const unsigned grid = emu::Device{sm}.grid_for(n / 4 + 1, 256);
    for (int t = 1; t <= 5; t++) {
        std::vector<G> g(n + shift);
        std::vector<double> gr(n);
        for (size_t i = 0; i < n; i++) {
            g[shift + i] = emu::Elem<G>::store(rng.uniform() * (i % 3 == 0 ? 1e-3f : 1.0f));
            gr[i] = emu::Elem<G>::load(g[shift + i]);
        }
        // `AdamW::constants`: f64, then rounded to f32.
        const AdamWStep s{(float)b1, (float)b2, (float)(lr / (1 - pow(b1, t))), (float)sqrt(1 - pow(b2, t)),
                          (float)(1 - lr * wd), (float)eps};
        emu::launch({grid, 1, 1}, {256, 1, 1},
                    [&] { kern(p.data() + shift, m.data() + shift, v.data() + shift, g.data() + shift, n, s); });
        for (size_t i = 0; i < n; i++) {
            // In f64 from the f32 constants, as the CPU takes them (b1 as f32 etc.).
            const double fb1 = s.b1, fb2 = s.b2;
            rm[i] = fb1 * rm[i] + (1 - fb1) * gr[i];
            rv[i] = fb2 * rv[i] + (1 - fb2) * gr[i] * gr[i];
            rp[i] = rp[i] * s.decay - (double)s.step_size * rm[i] / (sqrt(rv[i]) / s.bc2_sqrt + s.eps);
        }
    }
    Compare cp("p", tol), cm("m", tol), cv("v", tol);
    for (size_t i = 0; i < n; i++) {
        cp.add(p[shift + i], rp[i]);
        cm.add(m[shift + i], rm[i]);
        cv.add(v[shift + i], rv[i]);
    }
    return emu::report(emu::fmt("adamw grad=%-4s n=%zu %s grid=%u steps=5", emu::Elem<G>::name, n,
                                shift ? "misaligned" : "aligned", grid),
                       {&cp, &cm, &cv});
}

int main() {
    int fails = 0;
    const double tol = 2e-6;  // f32 state over 5 steps, relative to the largest value
    fails += run<float>(1003, 0, 132, adamw_f32, tol, 1);
    fails += run<float>(77, 1, 132, adamw_f32, tol, 2);
    fails += run<float>(20005, 0, 1, adamw_f32, tol, 3);  // grid-stride
    fails += run<bf16>(1003, 0, 132, adamw_bf16, tol, 4);
    fails += run<bf16>(77, 1, 132, adamw_bf16, tol, 5);
    return fails ? 1 : 0;
}
