// Runs cuda/kernels/softmax.cu (softmax / log-softmax forward and backward) in the CPU
// emulator, launched as cuda/src/ops/softmax.rs launches them (cfg_rows), against f64
// references from the definitions (tensor/src/ops/softmax.rs): y = exp(x - m) / sum
// exp(x - m), log: x - lse; dx = y (dy - sum dy y), log: dx = dy - exp(y) sum dy, the
// backward from the kernel's stored y. Rows hold some -inf entries. Prints one line per
// case; exits 1 on any mismatch.

#include "shim.h"
#include "common.cuh"
#include "softmax.cu"
#include "check.h"

using emu::Compare;
using emu::Data;

template <typename T> struct SoftmaxKernels {
    void (*fwd)(const T*, T*, i64, i64, int);
    void (*bwd)(const T*, const T*, T*, i64, i64, int);
};

template <typename T> static int run(int rows, int cols, bool log, SoftmaxKernels<T> k, double tol, uint64_t seed) {
    emu::Rng rng(seed);
    const size_t n = (size_t)rows * cols;
    Data<T> x(n, rng, 4.0f), dy(n, rng);
    for (size_t i = 0; i < n; i += 7) {  // masked entries, never a whole row
        if ((i % cols) == 0) continue;
        x.dev[i] = emu::Elem<T>::store(-INFINITY);
        x.ref[i] = -INFINITY;
    }
    std::vector<T> y = emu::poisoned<T>(n), dx = emu::poisoned<T>(n);
    const emu::RowsCfg cfg = emu::cfg_rows(rows, cols);
    emu::launch(cfg.grid, cfg.block, [&] { k.fwd(x.dev.data(), y.data(), rows, cols, log); });
    emu::launch(cfg.grid, cfg.block, [&] { k.bwd(y.data(), dy.dev.data(), dx.data(), rows, cols, log); });
    std::vector<double> ry(n), rdx(n);
    for (int r = 0; r < rows; r++) {
        const double* xr = &x.ref[(size_t)r * cols];
        double m = -INFINITY, s = 0;
        for (int c = 0; c < cols; c++) m = std::max(m, xr[c]);
        for (int c = 0; c < cols; c++) s += exp(xr[c] - m);
        for (int c = 0; c < cols; c++) ry[(size_t)r * cols + c] = log ? xr[c] - (m + std::log(s)) : exp(xr[c] - m) / s;
        double sd = 0;
        for (int c = 0; c < cols; c++) {
            const double yv = emu::Elem<T>::load(y[(size_t)r * cols + c]), g = dy.ref[(size_t)r * cols + c];
            sd += log ? g : g * yv;
        }
        for (int c = 0; c < cols; c++) {
            const double yv = emu::Elem<T>::load(y[(size_t)r * cols + c]), g = dy.ref[(size_t)r * cols + c];
            rdx[(size_t)r * cols + c] = log ? g - exp(yv) * sd : yv * (g - sd);
        }
    }
    Compare cy("y", tol), cx("dx", tol);
    cy.all(y, ry);
    cx.all(dx, rdx);
    return emu::report(emu::fmt("softmax %-4s rows=%d cols=%d log=%d block=(%u,%u)", emu::Elem<T>::name, rows, cols,
                                log, cfg.block.x, cfg.block.y),
                       {&cy, &cx});
}

int main() {
    int fails = 0;
    const SoftmaxKernels<float> f32{softmax_fwd_f32, softmax_bwd_f32};
    const SoftmaxKernels<bf16> bf{softmax_fwd_bf16, softmax_bwd_bf16};
    const double tf = 1e-5, tb = 1e-2;
    fails += run<float>(37, 10, false, f32, tf, 1);
    fails += run<float>(37, 100, true, f32, tf, 2);
    fails += run<float>(5, 700, false, f32, tf, 3);
    fails += run<bf16>(37, 10, true, bf, tb, 4);
    fails += run<bf16>(37, 100, false, bf, tb, 5);
    fails += run<bf16>(5, 700, true, bf, tb, 6);
    return fails ? 1 : 0;
}
