// Runs cuda/kernels/layer_norm.cu (forward, dx, dw/db partial and finish) in the CPU
// emulator, launched as cuda/src/ops/layer_norm.rs launches them (cfg_rows for the row
// kernels; the partial pass with block (32, 8) over grid (ceil(cols/32), column_chunks);
// the finish with cfg_1d(ceil(cols/256), 256)), against f64 references from the
// definitions (tensor/src/ops/norm.rs): y = (x - mean) rstd w + b with the biased
// variance, dx = rstd (g - mean(g) - h mean(g h)) with h = (x - mean) rstd, g = dy w,
// dw = sum_rows dy h, db = sum_rows dy. Prints one line per case; exits 1 on any
// mismatch.

#include "shim.h"
#include "common.cuh"
#include "layer_norm.cu"
#include "check.h"

using emu::Compare;
using emu::Data;

template <typename T> struct LnKernels {
    void (*fwd)(const T*, const T*, const T*, T*, float*, float*, i64, i64, float);
    void (*dx)(const T*, const T*, const float*, const float*, const T*, T*, i64, i64);
    void (*partial)(const T*, const float*, const float*, const T*, float*, i64, i64);
    void (*finish)(const float*, T*, T*, i64, i64);
};

/// `column_chunks` of cuda/src/ops/mod.rs: about 4 blocks per SM, chunks of at least 64 rows.
static size_t column_chunks(size_t rows, size_t cols, unsigned sm) {
    const size_t col_blocks = std::max<size_t>((cols + 31) / 32, 1);
    const size_t want = (sm * 4 + col_blocks - 1) / col_blocks;
    return std::clamp<size_t>(want, 1, std::max<size_t>((rows + 63) / 64, 1));
}

template <typename T>
static int run(int rows, int cols, bool affine, LnKernels<T> k, double tol, uint64_t seed) {
    emu::Rng rng(seed);
    const size_t n = (size_t)rows * cols;
    const float eps = 1e-5f;
    Data<T> x(n, rng, 3.0f), w(cols, rng), b(cols, rng), dy(n, rng);
    for (size_t i = 0; i < n; i++) {  // offset: a nonzero mean
        x.dev[i] = emu::Elem<T>::store((float)(x.ref[i] + 0.5));
        x.ref[i] = emu::Elem<T>::load(x.dev[i]);
    }
    std::vector<T> y = emu::poisoned<T>(n), dx = emu::poisoned<T>(n), dw = emu::poisoned<T>(cols),
                   db = emu::poisoned<T>(cols);
    std::vector<float> mean = emu::poisoned<float>(rows), rstd = emu::poisoned<float>(rows);
    const T* wp = affine ? w.dev.data() : nullptr;
    const T* bp = affine ? b.dev.data() : nullptr;
    const emu::RowsCfg cfg = emu::cfg_rows(rows, cols);
    emu::launch(cfg.grid, cfg.block,
                [&] { k.fwd(x.dev.data(), wp, bp, y.data(), mean.data(), rstd.data(), rows, cols, eps); });
    emu::launch(cfg.grid, cfg.block,
                [&] { k.dx(x.dev.data(), wp, mean.data(), rstd.data(), dy.dev.data(), dx.data(), rows, cols); });
    const size_t chunks = column_chunks(rows, cols, 132);  // an H100's SMs
    std::vector<float> part = emu::poisoned<float>(2 * chunks * cols);
    emu::launch({(unsigned)((cols + 31) / 32), (unsigned)chunks, 1}, {32, 8, 1},
                [&] { k.partial(x.dev.data(), mean.data(), rstd.data(), dy.dev.data(), part.data(), rows, cols); });
    emu::launch({(unsigned)((cols + 255) / 256), 1, 1}, {256, 1, 1},
                [&] { k.finish(part.data(), dw.data(), db.data(), (i64)chunks, cols); });

    std::vector<double> ry(n), rdx(n), rmean(rows), rrstd(rows), rdw(cols, 0), rdb(cols, 0);
    for (int r = 0; r < rows; r++) {
        const double* xr = &x.ref[(size_t)r * cols];
        double mu = 0, var = 0, sg = 0, sgh = 0;
        for (int c = 0; c < cols; c++) mu += xr[c];
        mu /= cols;
        for (int c = 0; c < cols; c++) var += (xr[c] - mu) * (xr[c] - mu);
        const double rs = 1.0 / sqrt(var / cols + eps);
        rmean[r] = mu;
        rrstd[r] = rs;
        for (int c = 0; c < cols; c++) {
            const double h = (xr[c] - mu) * rs, g = dy.ref[(size_t)r * cols + c] * (affine ? w.ref[c] : 1.0);
            ry[(size_t)r * cols + c] = affine ? h * w.ref[c] + b.ref[c] : h;
            sg += g;
            sgh += g * h;
            rdw[c] += dy.ref[(size_t)r * cols + c] * h;
            rdb[c] += dy.ref[(size_t)r * cols + c];
        }
        for (int c = 0; c < cols; c++) {
            const double h = (xr[c] - mu) * rs, g = dy.ref[(size_t)r * cols + c] * (affine ? w.ref[c] : 1.0);
            rdx[(size_t)r * cols + c] = rs * (g - sg / cols - h * sgh / cols);
        }
    }
    Compare cy("y", tol), cm("mean", tol), cr("rstd", tol), cx("dx", tol), cw("dw", tol), cb("db", tol);
    cy.all(y, ry);
    cm.all(mean, rmean);
    cr.all(rstd, rrstd);
    cx.all(dx, rdx);
    cw.all(dw, rdw);
    cb.all(db, rdb);
    return emu::report(emu::fmt("layer_norm %-4s rows=%d cols=%d affine=%d block=(%u,%u) chunks=%zu",
                                emu::Elem<T>::name, rows, cols, affine, cfg.block.x, cfg.block.y, chunks),
                       {&cy, &cm, &cr, &cx, &cw, &cb});
}

int main() {
    int fails = 0;
    const LnKernels<float> f32{layer_norm_fwd_f32, layer_norm_bwd_dx_f32, layer_norm_bwd_dwdb_partial_f32,
                               layer_norm_bwd_dwdb_finish_f32};
    const LnKernels<bf16> bf{layer_norm_fwd_bf16, layer_norm_bwd_dx_bf16, layer_norm_bwd_dwdb_partial_bf16,
                             layer_norm_bwd_dwdb_finish_bf16};
    const double tf = 2e-5, tb = 2e-2;
    fails += run<float>(37, 10, true, f32, tf, 1);
    fails += run<float>(150, 100, false, f32, tf, 2);
    fails += run<float>(200, 300, true, f32, tf, 3);
    fails += run<bf16>(37, 10, false, bf, tb, 4);
    fails += run<bf16>(150, 100, true, bf, tb, 5);
    fails += run<bf16>(200, 300, true, bf, tb, 6);
    return fails ? 1 : 0;
}
