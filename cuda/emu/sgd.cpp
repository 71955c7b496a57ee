// Runs cuda/kernels/sgd.cu (sgd_f32, sgd_bf16: the gradient's dtype) in the CPU emulator,
// launched as cuda/src/ops/sgd.rs launches it (SgdStep of f32 lr, mu, wd; the buffer
// null without momentum; cfg_1d(grid_for(n, 256), 256)), for five steps against an f64
// reference of tensor/src/ops/optim.rs's `sgd_step`: with momentum b = mu b + g + wd p,
// p -= lr b; without p -= lr (g + wd p), a fresh gradient each step (the f32-rounded
// hyper-parameters in the reference). Cases with and without momentum, f32 and bf16
// gradients, a 1-SM device (grid-stride). Tolerance for f32 with FMA contraction. Prints
// one line per case; exits 1 on any mismatch.

#include "shim.h"
#include "common.cuh"
#include "sgd.cu"
#include "check.h"

using emu::Compare;

template <typename G>
static int run(size_t n, bool momentum, unsigned sm, void (*kern)(float*, float*, const G*, i64, SgdStep), double tol,
               uint64_t seed) {
    emu::Rng rng(seed);
    const SgdStep s{0.05f, momentum ? 0.9f : 0.0f, 0.01f};
    const double lr = s.lr, mu = s.mu, wd = s.wd;
    std::vector<float> p(n), b(n, 0.0f);
    std::vector<double> rp(n), rb(n, 0.0);
    for (size_t i = 0; i < n; i++) rp[i] = p[i] = rng.uniform();
    const unsigned grid = emu::Device{sm}.grid_for(n, 256);
    for (int t = 0; t < 5; t++) {
        std::vector<G> g(n);
        std::vector<double> gr(n);
        for (size_t i = 0; i < n; i++) gr[i] = emu::Elem<G>::load(g[i] = emu::Elem<G>::store(rng.uniform()));
        emu::launch({grid, 1, 1}, {256, 1, 1}, [&] { kern(p.data(), momentum ? b.data() : nullptr, g.data(), n, s); });
        for (size_t i = 0; i < n; i++) {
            if (momentum) {
                rb[i] = mu * rb[i] + gr[i] + wd * rp[i];
                rp[i] -= lr * rb[i];
            } else {
                rp[i] -= lr * (gr[i] + wd * rp[i]);
            }
        }
    }
    Compare cp("p", tol), cb("buf", tol);
    for (size_t i = 0; i < n; i++) cp.add(p[i], rp[i]), cb.add(b[i], rb[i]);
    return emu::report(emu::fmt("sgd grad=%-4s n=%zu momentum=%d grid=%u steps=5", emu::Elem<G>::name, n, momentum, grid),
                       {&cp, &cb});
}

int main() {
    int fails = 0;
    const double tol = 1e-6;
    fails += run<float>(1003, true, 132, sgd_f32, tol, 1);
    fails += run<float>(1003, false, 132, sgd_f32, tol, 2);
    fails += run<float>(5003, true, 1, sgd_f32, tol, 3);  // grid-stride
    fails += run<bf16>(1003, true, 132, sgd_bf16, tol, 4);
    fails += run<bf16>(777, false, 1, sgd_bf16, tol, 5);
    return fails ? 1 : 0;
}
