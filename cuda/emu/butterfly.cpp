// Runs cuda/kernels/butterfly.cu (forward, backward and the twiddle-gradient finish) in
// the CPU emulator, launched as cuda/src/ops/butterfly.rs launches them (forward grid
// (ceil(rows / R), ceil(out / n)); backward on backward_blocks of 256 threads, here with
// a small SM count so that blocks loop over several row groups), against f64 references
// from the definition (tensor/src/ops/butterfly.rs): each factor applied in turn, the
// gradient run back through the transposed factors, and the twiddle gradient
// sum_rows (factor input) x (factor output gradient). On the small cases the twiddle
// reference is itself checked by central differences of sum(dy * y), exact up to
// rounding because y is linear in each twiddle. Prints one line per case; exits 1 on
// any mismatch.

#include "shim.h"
#include "common.cuh"
#include "butterfly.cu"
#include "check.h"

using emu::Compare;
using emu::Data;

template <typename T> struct BfKernels {
    void (*fwd)(const T*, const T*, T*, i64, i64, i64, int, int);
    void (*bwd)(const T*, const T*, const T*, T*, float*, float*, i64, i64, i64, int, int, int);
    void (*finish)(const float*, T*, i64, i64);
};

struct Sizes {
    size_t rows, inp, out, log_n, stacks;
    size_t n() const { return (size_t)1 << log_n; }
    size_t tw_len() const { return stacks * log_n * n() * 2; }
    // ButterflyDims::rows_per_block and ::backward_blocks of cuda/src/ops/butterfly.rs.
    size_t per_block() const { return std::clamp<size_t>((size_t)8192 >> log_n, 1, 32); }
    size_t backward_blocks(size_t sm) const {
        const size_t per = 4 * (per_block() * (log_n + 1) * n() + tw_len());
        const size_t groups = (rows + per_block() - 1) / per_block();
        return std::min(std::clamp<size_t>(((size_t)64 << 20) / std::max<size_t>(per, 1), 1, sm),
                        std::max<size_t>(groups, 1));
    }
};

static size_t pair_a(size_t j, size_t f) { return (j >> f << (f + 1)) | (j & ((1u << f) - 1)); }

/// The f64 reference: y (rows, out), dx (rows, inp), dtw (stacks, log_n, n/2, 4).
struct Reference {
    std::vector<double> y, dx, dtw;
};

static Reference reference(const Sizes& z, const std::vector<double>& x, const std::vector<double>& tw,
                           const std::vector<double>& dy) {
    const size_t n = z.n(), half = n / 2;
    Reference r{std::vector<double>(z.rows * z.out, 0.0), std::vector<double>(z.rows * z.inp, 0.0),
                std::vector<double>(z.tw_len(), 0.0)};
    for (size_t row = 0; row < z.rows; row++)
        for (size_t st = 0; st < z.stacks && st * n < z.out; st++) {
            const double* t = &tw[st * z.log_n * n * 2];
            std::vector<std::vector<double>> lv(z.log_n + 1, std::vector<double>(n, 0.0));
            for (size_t c = 0; c < z.inp; c++) lv[0][c] = x[row * z.inp + c];
            for (size_t f = 0; f < z.log_n; f++)
                for (size_t j = 0; j < half; j++) {
                    const size_t a = pair_a(j, f), b = a + ((size_t)1 << f);
                    const double* w = &t[(f * half + j) * 4];
                    lv[f + 1][a] = w[0] * lv[f][a] + w[1] * lv[f][b];
                    lv[f + 1][b] = w[2] * lv[f][a] + w[3] * lv[f][b];
                }
            const size_t cnt = std::min(n, z.out - st * n);
            std::vector<double> g(n, 0.0);
            for (size_t c = 0; c < cnt; c++) {
                r.y[row * z.out + st * n + c] = lv[z.log_n][c];
                g[c] = dy[row * z.out + st * n + c];
            }
            for (size_t f = z.log_n; f-- > 0;) {
                std::vector<double> g2(n, 0.0);
                for (size_t j = 0; j < half; j++) {
                    const size_t a = pair_a(j, f), b = a + ((size_t)1 << f);
                    const double* w = &t[(f * half + j) * 4];
                    double* d = &r.dtw[(st * z.log_n + f) * n * 2 + j * 4];
                    g2[a] = w[0] * g[a] + w[2] * g[b];
                    g2[b] = w[1] * g[a] + w[3] * g[b];
                    d[0] += g[a] * lv[f][a];
                    d[1] += g[a] * lv[f][b];
                    d[2] += g[b] * lv[f][a];
                    d[3] += g[b] * lv[f][b];
                }
                g = g2;
            }
            for (size_t c = 0; c < z.inp; c++) r.dx[row * z.inp + c] += g[c];
        }
    return r;
}

/// Whether the reference's twiddle gradient matches central differences of sum(dy * y).
static bool twiddle_gradient_by_differences(const Sizes& z, const std::vector<double>& x, std::vector<double> tw,
                                            const std::vector<double>& dy, const std::vector<double>& dtw) {
    auto loss = [&](const std::vector<double>& t) {
        const Reference r = reference(z, x, t, dy);
        double s = 0;
        for (size_t i = 0; i < r.y.size(); i++) s += r.y[i] * dy[i];
        return s;
    };
    for (size_t i = 0; i < tw.size(); i++) {
        const double keep = tw[i];
        tw[i] = keep + 1.0;
        const double up = loss(tw);
        tw[i] = keep - 1.0;
        const double down = loss(tw);
        tw[i] = keep;
        if (fabs((up - down) / 2.0 - dtw[i]) > 1e-9 * (1.0 + fabs(dtw[i]))) return false;
    }
    return true;
}

template <typename T>
static int run(Sizes z, BfKernels<T> k, double tol, uint64_t seed, unsigned sm, bool differences) {
    emu::Rng rng(seed);
    const size_t n = z.n(), per = z.per_block();
    Data<T> x(z.rows * z.inp, rng), tw(z.tw_len(), rng), dy(z.rows * z.out, rng);
    std::vector<T> y = emu::poisoned<T>(z.rows * z.out), dx = emu::poisoned<T>(z.rows * z.inp),
                   dtw = emu::poisoned<T>(z.tw_len());
    emu::launch({(unsigned)((z.rows + per - 1) / per), (unsigned)((z.out + n - 1) / n), 1}, {256, 1, 1}, [&] {
        k.fwd(x.dev.data(), tw.dev.data(), y.data(), z.rows, z.inp, z.out, (int)z.log_n, (int)per);
    });
    const size_t blocks = z.backward_blocks(sm);
    std::vector<float> scratch = emu::poisoned<float>(blocks * per * (z.log_n + 1) * n);
    std::vector<float> part = emu::poisoned<float>(std::max<size_t>(blocks * z.tw_len(), 1));
    emu::launch({(unsigned)blocks, 1, 1}, {256, 1, 1}, [&] {
        k.bwd(x.dev.data(), tw.dev.data(), dy.dev.data(), dx.data(), scratch.data(), part.data(), z.rows, z.inp,
              z.out, (int)z.log_n, (int)z.stacks, (int)per);
    });
    if (z.tw_len() > 0)
        emu::launch({(unsigned)((z.tw_len() + 255) / 256), 1, 1}, {256, 1, 1},
                    [&] { k.finish(part.data(), dtw.data(), (i64)blocks, (i64)z.tw_len()); });
    const Reference r = reference(z, x.ref, tw.ref, dy.ref);
    Compare cy("y", tol), cx("dx", tol), ct("dtw", tol);
    cy.all(y, r.y);
    cx.all(dx, r.dx);
    ct.all(dtw, r.dtw);
    if (differences && !twiddle_gradient_by_differences(z, x.ref, tw.ref, dy.ref, r.dtw)) ct.bad++;
    return emu::report(emu::fmt("butterfly %-4s rows=%zu in=%zu out=%zu n=%zu stacks=%zu R=%zu blocks=%zu",
                                emu::Elem<T>::name, z.rows, z.inp, z.out, n, z.stacks, per, blocks),
                       {&cy, &cx, &ct});
}

int main() {
    int fails = 0;
    const BfKernels<float> f32{butterfly_fwd_f32, butterfly_bwd_f32, butterfly_bwd_finish_f32};
    const BfKernels<bf16> bf{butterfly_fwd_bf16, butterfly_bwd_bf16, butterfly_bwd_finish_bf16};
    const double tf = 1e-5, tb = 2e-2;
    // Padding (5 of 8), two stacks truncated to 11 outputs, one block.
    fails += run<float>({37, 5, 11, 3, 2}, f32, tf, 1, 132, true);
    // A second stack left unused (its gradient zero); n = 1 (no factors at all).
    fails += run<float>({9, 6, 7, 3, 2}, f32, tf, 2, 132, true);
    fails += run<float>({5, 1, 1, 0, 1}, f32, tf, 3, 132, false);
    // 32-row groups, ragged, looped over by 2 persistent blocks.
    fails += run<float>({70, 64, 64, 6, 1}, f32, tf, 4, 2, false);
    fails += run<float>({40, 700, 2048, 10, 2}, f32, tf, 5, 3, false);
    // One row a block at the largest size.
    fails += run<float>({3, 8192, 8192, 13, 1}, f32, tf, 6, 2, false);
    fails += run<bf16>({20, 16, 40, 4, 3}, bf, tb, 7, 2, true);
    fails += run<bf16>({33, 1000, 1024, 10, 1}, bf, tb, 8, 4, false);
    return fails ? 1 : 0;
}
