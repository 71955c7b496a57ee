// Runs cuda/kernels/cross_entropy.cu (rows, mean, backward) in the CPU emulator,
// launched as cuda/src/ops/cross_entropy.rs launches them (cfg_rows; one block of 1024;
// cfg_1d(grid_for(N·256, 256), 256) with the count read at out + 1 and dloss by pointer), against f64
// references from the definitions (tensor/src/ops/loss.rs): lse_r = log sum_j exp x_rj,
// loss_r = (1 - eps)(lse_r - x_r,t) + eps (lse_r - mean_j x_rj), 0 and uncounted on
// ignored rows; mean = sum loss / max(count, 1); dx_rj = (softmax_rj - eps/C - (1 - eps)
// [j == t_r]) dloss / max(count, 1), 0 on ignored rows. Prints one line per case; exits
// 1 on any mismatch.

#include "shim.h"
#include "common.cuh"
#include "cross_entropy.cu"
#include "check.h"

using emu::Compare;
using emu::Data;

template <typename T> struct CeKernels {
    void (*rows)(const T*, const i64*, float*, float*, i64, i64, i64, int, float);
    void (*bwd)(const T*, const i64*, const float*, const float*, const float*, T*, i64, i64, i64, int, float);
};

/// One case.
template <typename T>
static int run(int n, int classes, bool ignore, float eps, CeKernels<T> k, double tol, uint64_t seed) {
    emu::Rng rng(seed);
    const i64 ignore_index = -100;
    Data<T> x((size_t)n * classes, rng, 3.0f);
    std::vector<i64> t(n);
    for (int r = 0; r < n; r++)
        t[r] = ignore && r % 5 == 2 ? ignore_index : (i64)((rng.uniform() + 1) * 0.5f * classes) % classes;
    std::vector<float> loss = emu::poisoned<float>(n), lse = emu::poisoned<float>(n), out = emu::poisoned<float>(2);
    std::vector<T> dx = emu::poisoned<T>((size_t)n * classes);
    const float dloss = 0.75f;
    const emu::RowsCfg cfg = emu::cfg_rows(n, classes);
    const emu::Device dev{132};
    emu::launch(cfg.grid, cfg.block, [&] {
        k.rows(x.dev.data(), t.data(), loss.data(), lse.data(), n, classes, ignore_index, ignore, eps);
    });
    emu::launch({1, 1, 1}, {1024, 1, 1},
                [&] { cross_entropy_mean(loss.data(), t.data(), out.data(), n, ignore_index, ignore); });
    emu::launch({dev.grid_for((size_t)n * 256, 256), 1, 1}, {256, 1, 1}, [&] {
        k.bwd(x.dev.data(), t.data(), lse.data(), out.data() + 1, &dloss, dx.data(), n, classes, ignore_index, ignore,
              eps);
    });

    std::vector<double> rloss(n), rlse(n), rout(2, 0.0), rdx((size_t)n * classes, 0.0);
    for (int r = 0; r < n; r++) {
        const double* xr = &x.ref[(size_t)r * classes];
        double m = -INFINITY, s = 0, sx = 0;
        for (int c = 0; c < classes; c++) m = std::max(m, xr[c]);
        for (int c = 0; c < classes; c++) s += exp(xr[c] - m), sx += xr[c];
        rlse[r] = m + log(s);
        const bool ign = ignore && t[r] == ignore_index;
        rloss[r] = ign ? 0.0 : (1 - eps) * (rlse[r] - xr[t[r]]) + eps * (rlse[r] - sx / classes);
        rout[0] += rloss[r];
        rout[1] += ign ? 0 : 1;
    }
    rout[0] /= std::max(rout[1], 1.0);
    const double scale = dloss / std::max(rout[1], 1.0);
    for (int r = 0; r < n; r++) {
        if (ignore && t[r] == ignore_index) continue;
        for (int c = 0; c < classes; c++)
            rdx[(size_t)r * classes + c] =
                (exp(x.ref[(size_t)r * classes + c] - rlse[r]) - eps / classes - (c == t[r] ? 1 - eps : 0.0)) * scale;
    }
    Compare cl("loss", tol), cs("lse", tol), cm("mean", tol), cc("count", 0), cx("dx", tol);
    cl.all(loss, rloss);
    cs.all(lse, rlse);
    cm.add(out[0], rout[0]);
    cc.add(out[1], rout[1]);
    cx.all(dx, rdx);
    return emu::report(emu::fmt("cross_entropy %-4s N=%d C=%d ignore=%d eps=%.2f block=(%u,%u)", emu::Elem<T>::name, n,
                                classes, ignore, eps, cfg.block.x, cfg.block.y),
                       {&cl, &cs, &cm, &cc, &cx});
}

int main() {
    int fails = 0;
    const CeKernels<float> f32{cross_entropy_rows_f32, cross_entropy_bwd_f32};
    const CeKernels<bf16> bf{cross_entropy_rows_bf16, cross_entropy_bwd_bf16};
    const double tf = 2e-5, tb = 2e-2;
    fails += run<float>(37, 10, true, 0.0f, f32, tf, 1);
    fails += run<float>(70, 300, false, 0.1f, f32, tf, 2);
    fails += run<float>(2500, 20, true, 0.1f, f32, tf, 3);  // grid-stride backward
    fails += run<bf16>(37, 10, false, 0.1f, bf, tb, 4);
    fails += run<bf16>(70, 300, true, 0.0f, bf, tb, 5);
    return fails ? 1 : 0;
}
