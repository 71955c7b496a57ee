// Runs cuda/kernels/monarch.cu (grouped_gemm and grouped_gemm_splits) in the CPU
// emulator, launched as cuda/src/ops/monarch.rs launches them (a one-dimensional grid of
// tiles·groups·splits blocks of 128 threads, tiles of 128x64 for bf16 and 64x64 for f32,
// splits from the SM count, the splits kernel over cfg_1d(grid_for(groups·M·N, 256),
// 256)), against f64 references computed here:
// - random descriptors: C(g, m, n) (+)= sum_k A(g, m, k) B(g, n, k), operands read as 0
//   where their column (offset without the batch-row term) reaches col_lim, outputs past
//   col_lim left as they were; strides chosen so that each operand load path (16-byte
//   chunks along k, along the first index, element by element) is taken;
// - the six descriptors monarch_forward / monarch_backward build (by default, and as
//   under MONARCH_GROUP_MAJOR=0 and MONARCH_STRIDED_STORES=1), against the Monarch
//   products of the kernel's header comment written out with explicit indices.
// Prints one line per case; exits 1 on any mismatch.

#include "shim.h"
#include "common.cuh"
#include "monarch.cu"
#include "check.h"

using emu::Compare;
using emu::Data;

constexpr i64 NO_LIMIT = INT64_MAX;

/// The kernels of one dtype.
struct GemmKernels {
    void (*gemm)(GroupedGemm);
    void (*splits)(GroupedGemm);
    void (*permute)(const void*, void*, const void*, const void*, int, int, int, int, int, int);
};

/// `permute` of the launcher: natural (rows, mout) -> group-major (rows, l·s) if
/// `to_group`, else back, adding `bias` if not null; `act`, `fn` and `aux` as in the kernel.
static void permute(GemmKernels k, const void* src, void* dst, const void* bias, int rows, int l, int s, int mout,
                    bool to_group, int act = 0, const void* aux = nullptr, int fn = MP_GELU_TANH) {
    const int per = MP_CHUNK / l;
    emu::launch({(unsigned)(rows * ((s + per - 1) / per)), 1, 1}, {256, 1, 1},
                [&] { k.permute(src, dst, bias, aux, l, s, mout, to_group, act, fn); });
}

/// The activations (tanh-GELU, erf-GELU, ReLU) and their derivatives in f64, from the formulas.
static double act_ref(int fn, double x) {
    if (fn == MP_GELU_TANH) return 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
    if (fn == MP_GELU_ERF) return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
    return x > 0 ? x : 0.0;
}
static double act_grad_ref(int fn, double x) {
    if (fn == MP_GELU_TANH) {
        const double u = 0.7978845608028654 * (x + 0.044715 * x * x * x), t = tanh(u);
        return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x);
    }
    if (fn == MP_GELU_ERF) return 0.5 * (1.0 + erf(x / sqrt(2.0))) + x * exp(-0.5 * x * x) / sqrt(2.0 * M_PI);
    return x > 0 ? 1.0 : 0.0;
}
static const char* act_name(int fn) { return fn == MP_GELU_TANH ? "gelu_tanh" : fn == MP_GELU_ERF ? "gelu_erf" : "relu"; }

/// monarch_permute alone, both ways: rows longer than one chunk, a ragged last chunk,
/// zeros past mout (to group-major), the bias (back).
template <typename T> static int permute_case(int rows, int l, int s, int mout, GemmKernels k, uint64_t seed) {
    emu::Rng rng(seed);
    Data<T> src((size_t)rows * mout, rng), grouped_src((size_t)rows * l * s, rng), bias((size_t)mout, rng);
    std::vector<T> grouped = emu::poisoned<T>((size_t)rows * l * s), natural = emu::poisoned<T>((size_t)rows * mout);
    permute(k, src.dev.data(), grouped.data(), nullptr, rows, l, s, mout, true);
    permute(k, grouped_src.dev.data(), natural.data(), bias.dev.data(), rows, l, s, mout, false);
    std::vector<double> want_g(grouped.size()), want_n(natural.size());
    for (int b = 0; b < rows; b++)
        for (int ll = 0; ll < l; ll++)
            for (int ss = 0; ss < s; ss++) {
                const size_t j = ss * l + ll, g = ((size_t)b * l + ll) * s + ss;
                want_g[g] = j < (size_t)mout ? src.ref[(size_t)b * mout + j] : 0.0;
                if (j < (size_t)mout)  // the sum rounded to T, as the kernel stores it
                    want_n[(size_t)b * mout + j] =
                        emu::Elem<T>::load(emu::Elem<T>::store((float)(grouped_src.ref[g] + bias.ref[j])));
            }
    Compare cg("to group-major", 0.0), cn("back, + bias", 0.0);
    cg.all(grouped, want_g);
    cn.all(natural, want_n);
    int fails = emu::report(emu::fmt("permute %-4s rows=%d l=%d s=%d mout=%d", emu::Elem<T>::name, rows, l, s, mout),
                            {&cg, &cn});
    // Each fused activation: forward back to natural order (with and without the bias), and
    // its gradient to group-major from the natural output gradient `src` and the
    // pre-activation `grouped_src`. tanh.approx in bf16 and bf16 rounding: 1e-2 of the
    // largest value; f32: 1e-5.
    const double tol = std::is_same_v<T, bf16> ? 1e-2 : 1e-5;
    for (int fn : {MP_GELU_TANH, MP_GELU_ERF, MP_RELU}) {
        std::vector<T> act = emu::poisoned<T>(natural.size()), act_nb = emu::poisoned<T>(natural.size()),
                       dgrp = emu::poisoned<T>(grouped.size());
        permute(k, grouped_src.dev.data(), act.data(), bias.dev.data(), rows, l, s, mout, false, MP_ACT, nullptr, fn);
        permute(k, grouped_src.dev.data(), act_nb.data(), nullptr, rows, l, s, mout, false, MP_ACT, nullptr, fn);
        permute(k, src.dev.data(), dgrp.data(), bias.dev.data(), rows, l, s, mout, true, MP_ACT_GRAD,
                grouped_src.dev.data(), fn);
        std::vector<double> want_a(natural.size()), want_nb(natural.size()), want_d(grouped.size(), 0.0);
        for (int b = 0; b < rows; b++)
            for (int ll = 0; ll < l; ll++)
                for (int ss = 0; ss < s; ss++) {
                    const size_t j = ss * l + ll, g = ((size_t)b * l + ll) * s + ss, n = (size_t)b * mout + j;
                    if (j >= (size_t)mout) continue;
                    const double h = grouped_src.ref[g] + bias.ref[j];
                    want_a[n] = act_ref(fn, h);
                    want_nb[n] = act_ref(fn, grouped_src.ref[g]);
                    want_d[g] = src.ref[n] * act_grad_ref(fn, h);
                }
        Compare ca("act", tol), cb("act, no bias", tol), cd("act grad", tol);
        ca.all(act, want_a);
        cb.all(act_nb, want_nb);
        cd.all(dgrp, want_d);
        fails += emu::report(emu::fmt("permute %-4s rows=%d l=%d s=%d mout=%d %s fused", emu::Elem<T>::name, rows, l, s,
                                      mout, act_name(fn)),
                             {&ca, &cb, &cd});
    }
    return fails;
}

static GemmOperand op(const void* p, i64 sg, i64 sx, i64 sy, i64 col_lim, int row_dim) {
    return GemmOperand{p, sg, sx, sy, col_lim, row_dim, 0};
}
static GemmOutput out(void* p, i64 sg, i64 sx, i64 sy, i64 col_lim, int row_dim) {
    return GemmOutput{p, sg, sx, sy, col_lim, row_dim, 0, nullptr};
}

/// `grouped_gemm` of the launcher; returns the number of K splits it chose.
template <typename T>
static int grouped_gemm(const emu::Device& dev, GemmKernels k, GemmOperand a, GemmOperand b, GemmOutput c,
                        bool accumulate, int m, int n, int kk, int groups) {
    if ((long)m * n * groups == 0) return 0;
    c.accumulate = accumulate;
    const long bm = std::is_same_v<T, bf16> ? 128 : 64, bn = 64;
    const long tiles = (m + bm - 1) / bm * ((n + bn - 1) / bn) * groups, target = dev.sm_count * 2L;
    const long splits = tiles >= target ? 1 : std::max(1L, std::min((target + tiles - 1) / tiles, (kk + 255) / 256L));
    std::vector<float> partial = emu::poisoned<float>(splits > 1 ? splits * groups * m * n : 0);
    GroupedGemm g{a, b, c, m, n, kk, groups, (int)splits, 0, splits > 1 ? partial.data() : nullptr};
    emu::launch({(unsigned)(tiles * splits), 1, 1}, {128, 1, 1}, [&] { k.gemm(g); });
    if (splits > 1)
        emu::launch({dev.grid_for((size_t)groups * m * n, 256), 1, 1}, {256, 1, 1}, [&] { k.splits(g); });
    return (int)splits;
}

/// One operand or output of a random case: a dense (groups, rows, cols) array in a
/// random order of the three axes (axis `inner` innermost if it is 0..2), row length
/// padded (to a multiple of `vec` if it is not 0, as the chunked loads need);
/// `col_lim` and `row_dim` random.
struct Layout {
    i64 sg, sx, sy, size;
    int row_dim;
    i64 col_lim;
    static Layout make(emu::Rng& rng, i64 groups, i64 dx, i64 dy, int inner = -1, int vec = 0) {
        i64 dims[3] = {groups, dx, dy}, strides[3];
        int order[3] = {0, 1, 2};
        for (int i = 2; i > 0; i--) std::swap(order[i], order[(int)((rng.uniform() + 1) * 0.5f * (i + 1)) % (i + 1)]);
        if (inner >= 0) std::swap(order[2], *std::find(order, order + 3, inner));
        i64 s = 1;
        for (int i = 2; i >= 0; i--) {  // order[2] is the innermost axis
            strides[order[i]] = s;
            i64 len = dims[order[i]] + (i == 2 ? (i64)((rng.uniform() + 1) * 3) : 0);
            if (i == 2 && vec) len = (len + vec - 1) / vec * vec;
            s *= len;
        }
        Layout l{strides[0], strides[1], strides[2], s, (int)((rng.uniform() + 1) * 1.5f) % 3, NO_LIMIT};
        if (rng.uniform() > -0.3f) {  // mostly: a limit that cuts into the columns
            const i64 max_col = column_of(groups - 1, dx - 1, dy - 1, l.sg, l.sx, l.sy, l.row_dim) + 1;
            l.col_lim = std::max<i64>(1, (i64)(max_col * (0.6 + 0.35 * rng.uniform())));
        }
        return l;
    }
    i64 at(i64 g, i64 x, i64 y) const { return g * sg + x * sx + y * sy; }
    bool live(i64 g, i64 x, i64 y) const { return column_of(g, x, y, sg, sx, sy, row_dim) < col_lim; }
};

/// A random case; `a_inner`, `b_inner`: the operands' innermost axes (0 group, 1 first
/// index, 2 k; -1 random), padded for 16-byte chunks when not -1.
template <typename T>
static int layout_case(Layout la, Layout lb, Layout lc, int m, int n, int kk, int groups, bool accumulate,
                       unsigned sm, GemmKernels k, double tol, emu::Rng& rng);

template <typename T>
static int random_case(int m, int n, int kk, int groups, bool accumulate, unsigned sm, GemmKernels k, double tol,
                       uint64_t seed, int a_inner = -1, int b_inner = -1) {
    emu::Rng rng(seed);
    constexpr int V = 16 / sizeof(T);
    const Layout la = Layout::make(rng, groups, m, kk, a_inner, a_inner >= 0 ? V : 0),
                 lb = Layout::make(rng, groups, n, kk, b_inner, b_inner >= 0 ? V : 0),
                 lc = Layout::make(rng, groups, m, n);
    return layout_case<T>(la, lb, lc, m, n, kk, groups, accumulate, sm, k, tol, rng);
}

/// Column limits that cut into one 16-byte chunk, for both row dimensions of both chunked
/// paths: a limit 3 past a chunk's first column reads 3 of its elements where the column
/// grows along the chunk, and all of them where it is constant (the chunk runs along the
/// batch row). `x_inner`: chunks along the first index instead of k.
template <typename T>
static int chunk_edge_case(bool x_inner, unsigned sm, GemmKernels k, double tol, uint64_t seed) {
    emu::Rng rng(seed);
    constexpr int V = 16 / sizeof(T);
    const int groups = 2, m = 40, n = 48, kk = 70, kp = (kk + V - 1) / V * V;
    Layout la, lb;
    if (!x_inner) {  // A: k innermost, x the row (column g·sg + k); B: k innermost and the row (column g·sg + n·sx)
        la = {(i64)m * kp, kp, 1, (i64)groups * m * kp, 1, 0};
        la.col_lim = la.sg + 4 * V + 3;
        lb = {(i64)n * kp, kp, 1, (i64)groups * n * kp, 2, 0};
        lb.col_lim = lb.sg + 5 * lb.sx + 3;
    } else {  // A: x innermost, k the row (column g·sg + x); B: x innermost and the row (column g·sg + k·sy)
        la = {(i64)kk * m, 1, m, (i64)groups * kk * m, 2, 0};
        la.col_lim = la.sg + 2 * V + 3;
        lb = {(i64)kk * n, 1, n, (i64)groups * kk * n, 1, 0};
        lb.col_lim = lb.sg + 10 * lb.sy + 3;
    }
    const Layout lc = Layout::make(rng, groups, m, n);
    return layout_case<T>(la, lb, lc, m, n, kk, groups, false, sm, k, tol, rng);
}

template <typename T>
static int layout_case(Layout la, Layout lb, Layout lc, int m, int n, int kk, int groups, bool accumulate,
                       unsigned sm, GemmKernels k, double tol, emu::Rng& rng) {
    constexpr int V = 16 / sizeof(T);
    Data<T> a(la.size, rng), b(lb.size, rng), c(lc.size, rng);
    std::vector<double> want = c.ref;
    for (int g = 0; g < groups; g++)
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) {
                if (!lc.live(g, i, j)) continue;
                double s = 0;
                for (int t = 0; t < kk; t++)
                    if (la.live(g, i, t) && lb.live(g, j, t)) s += a.ref[la.at(g, i, t)] * b.ref[lb.at(g, j, t)];
                want[lc.at(g, i, j)] = (accumulate ? want[lc.at(g, i, j)] : 0.0) + s;
            }
    const int splits = grouped_gemm<T>(
        {sm}, k, op(a.dev.data(), la.sg, la.sx, la.sy, la.col_lim, la.row_dim),
        op(b.dev.data(), lb.sg, lb.sx, lb.sy, lb.col_lim, lb.row_dim),
        out(c.dev.data(), lc.sg, lc.sx, lc.sy, lc.col_lim, lc.row_dim), accumulate, m, n, kk, groups);
    Compare cc("c", tol);
    cc.all(c.dev, want);
    const char* modes = "kxe";  // the load path each operand takes (load_mode)
    const auto mode = [&](const Layout& l) {
        if (l.sg % V) return modes[2];
        return l.sy == 1 && l.sx % V == 0 ? modes[0] : l.sx == 1 && l.sy % V == 0 ? modes[1] : modes[2];
    };
    return emu::report(emu::fmt("gemm %-4s M=%d N=%d K=%d groups=%d acc=%d row_dims=%d%d%d loads=%c%c splits=%d",
                                emu::Elem<T>::name, m, n, kk, groups, accumulate, la.row_dim, lb.row_dim, lc.row_dim,
                                mode(la), mode(lb), splits),
                       {&cc});
}

/// The Monarch sizes (MonarchDims).
struct Dims {
    int batch, n_in, m_out, k, q, p, l, s, r;
};

/// How the launcher lays out the permuted rows: its default, MONARCH_GROUP_MAJOR=0 (no
/// group-major copies) or MONARCH_STRIDED_STORES=1 (copies for the rows read only); or
/// the default with an activation (`fn`) fused into the output's permutations
/// (monarch_forward_act / monarch_backward_act: `dout` is then the activation output's
/// gradient).
enum class Rows { Default, InPlace, StridedStores, FusedAct };

/// monarch_forward then monarch_backward with the launcher's six descriptors.
template <typename T>
static int monarch_case(Dims d, bool accumulate, unsigned sm, GemmKernels kern, double tol, uint64_t seed,
                        Rows rows = Rows::Default, int fn = MP_GELU_TANH) {
    if (d.l * d.r != d.k * d.q || d.n_in > d.k * d.p || d.m_out > d.l * d.s) emu::die("inconsistent Monarch sizes");
    emu::Rng rng(seed);
    const int kq = d.k * d.q, nin = d.n_in, mout = d.m_out, B = d.batch;
    const emu::Device dev{sm};
    Data<T> x((size_t)B * nin, rng), w1((size_t)d.k * d.q * d.p, rng), w2((size_t)d.l * d.s * d.r, rng),
        dout((size_t)B * mout, rng), dx((size_t)B * nin, rng), dw1(w1.dev.size(), rng), dw2(w2.dev.size(), rng);
    std::vector<T> out1 = emu::poisoned<T>((size_t)B * kq), y = emu::poisoned<T>((size_t)B * mout),
                   dout1 = emu::poisoned<T>((size_t)B * kq);
    if (!accumulate) {  // the outputs start as garbage
        dx.dev = emu::poisoned<T>(dx.dev.size());
        dw1.dev = emu::poisoned<T>(dw1.dev.size());
        dw2.dev = emu::poisoned<T>(dw2.dev.size());
    }
    // For 2 <= l <= 64 (group_major) the permuted rows pass through group-major copies,
    // as the launcher: out1 saved as [b, ll·r+rr] (the first product writes natural
    // order into out1n, permuted after), the output written as [b, ll·s+ss] and permuted
    // back adding the bias, dout and dout1 likewise; else all in place, stride l. With
    // strided stores the output and dout1 are written in place (the bias in the epilogue).
    const bool grouped = d.l >= 2 && d.l <= 64 && rows != Rows::InPlace;
    const i64 mid_sg = grouped ? d.r : 1, mid_srr = grouped ? 1 : d.l;
    auto mid_at = [&](int b, int rr, int ll) { return (size_t)b * kq + (grouped ? ll * d.r + rr : rr * d.l + ll); };
    std::vector<T> out1n = emu::poisoned<T>(grouped ? (size_t)B * kq : 0);
    // monarch_forward
    grouped_gemm<T>(dev, kern, op(x.dev.data(), d.p, nin, 1, nin, 1), op(w1.dev.data(), d.q * d.p, d.p, 1, NO_LIMIT, 0),
                    out(grouped ? out1n.data() : out1.data(), d.q, kq, 1, NO_LIMIT, 1), false, B, d.q, d.p, d.k);
    if (grouped) permute(kern, out1n.data(), out1.data(), nullptr, B, d.l, d.r, kq, true);
    const bool io_g = grouped && rows != Rows::StridedStores;
    Data<T> bias((size_t)mout, rng);
    std::vector<T> yg = emu::poisoned<T>(io_g ? (size_t)B * d.l * d.s : 0);
    GemmOutput y_c = out(y.data(), 1, mout, d.l, mout, 1);
    y_c.bias = bias.dev.data();
    if (io_g) y_c = out(yg.data(), d.s, (i64)d.l * d.s, 1, NO_LIMIT, 1);
    grouped_gemm<T>(dev, kern, op(out1.data(), mid_sg, kq, mid_srr, NO_LIMIT, 1),
                    op(w2.dev.data(), d.s * d.r, d.r, 1, NO_LIMIT, 0), y_c, false, B, d.s, d.r, d.l);
    const bool gelu = rows == Rows::FusedAct;
    if (gelu && !io_g) emu::die("the fused activation needs the group-major layout");
    if (io_g) permute(kern, yg.data(), y.data(), bias.dev.data(), B, d.l, d.s, mout, false, gelu ? MP_ACT : 0, nullptr, fn);
    // monarch_backward: dout group-major ([b, ll·s+ss], zero past m_out) likewise; with
    // the activation, times its derivative at the kept pre-activation yg plus the bias.
    const bool dg = grouped;
    std::vector<T> doutg = emu::poisoned<T>(dg ? (size_t)B * d.l * d.s : 0);
    if (dg)
        permute(kern, dout.dev.data(), doutg.data(), gelu ? bias.dev.data() : nullptr, B, d.l, d.s, mout, true,
                gelu ? MP_ACT_GRAD : 0, gelu ? yg.data() : nullptr, fn);
    const T* dptr = dg ? doutg.data() : dout.dev.data();
    const i64 d_sg = dg ? d.s : 1, d_sb = dg ? d.l * d.s : mout, d_sss = dg ? 1 : d.l, d_lim = dg ? NO_LIMIT : mout;
    // The first product writes dout1 group-major ([b, ll·r+rr]) when grouped, permuted
    // into natural order for the next two.
    std::vector<T> dout1g = emu::poisoned<T>(io_g ? (size_t)B * kq : 0);
    grouped_gemm<T>(dev, kern, op(dptr, d_sg, d_sb, d_sss, d_lim, 1),
                    op(w2.dev.data(), d.s * d.r, 1, d.r, NO_LIMIT, 0),
                    io_g ? out(dout1g.data(), d.r, kq, 1, NO_LIMIT, 1) : out(dout1.data(), 1, kq, d.l, NO_LIMIT, 1),
                    false, B, d.r, d.s, d.l);
    if (io_g) permute(kern, dout1g.data(), dout1.data(), nullptr, B, d.l, d.r, kq, false);
    grouped_gemm<T>(dev, kern, op(dout1.data(), d.q, kq, 1, NO_LIMIT, 1),
                 op(w1.dev.data(), d.q * d.p, 1, d.p, NO_LIMIT, 0), out(dx.dev.data(), d.p, nin, 1, nin, 1), accumulate,
                 B, d.p, d.q, d.k);
    const int s1 = grouped_gemm<T>(dev, kern, op(dout1.data(), d.q, 1, kq, NO_LIMIT, 2),
                                op(x.dev.data(), d.p, 1, nin, nin, 2),
                                out(dw1.dev.data(), d.q * d.p, d.p, 1, NO_LIMIT, 0), accumulate, d.q, d.p, B, d.k);
    const int s2 = grouped_gemm<T>(dev, kern, op(dptr, d_sg, d_sss, d_sb, d_lim, 2),
                                op(out1.data(), mid_sg, mid_srr, kq, NO_LIMIT, 2),
                                out(dw2.dev.data(), d.s * d.r, d.r, 1, NO_LIMIT, 0), accumulate, d.s, d.r, B, d.l);

    // References from the definitions (x zero-padded to k·p, dout to l·s).
    auto X = [&](int b, int c) { return c < nin ? x.ref[(size_t)b * nin + c] : 0.0; };
    // The pre-activation as the backward reads it (the kept yg, rounded, plus the bias)
    // and the gradient reaching the products: dout, times GELU' there when fused.
    auto Z = [&](int b, int c) {
        return emu::Elem<T>::load(yg[(size_t)b * d.l * d.s + (size_t)(c % d.l) * d.s + c / d.l]) + bias.ref[c];
    };
    auto DO = [&](int b, int c) {
        return c < mout ? dout.ref[(size_t)b * mout + c] * (gelu ? act_grad_ref(fn, Z(b, c)) : 1.0) : 0.0;
    };
    auto W1 = [&](int kk, int qq, int pp) { return w1.ref[((size_t)kk * d.q + qq) * d.p + pp]; };
    auto W2 = [&](int ll, int ss, int rr) { return w2.ref[((size_t)ll * d.s + ss) * d.r + rr]; };
    std::vector<double> r_out1((size_t)B * kq), r_y((size_t)B * mout), r_dout1((size_t)B * kq);
    std::vector<double> r_dx = accumulate ? dx.ref : std::vector<double>(dx.ref.size(), 0.0);
    std::vector<double> r_dw1 = accumulate ? dw1.ref : std::vector<double>(dw1.ref.size(), 0.0);
    std::vector<double> r_dw2 = accumulate ? dw2.ref : std::vector<double>(dw2.ref.size(), 0.0);
    // The backward's out1 input is the forward's stored (rounded) out1; c = rr·l+ll.
    auto O1 = [&](int b, int c) { return emu::Elem<T>::load(out1[mid_at(b, c / d.l, c % d.l)]); };
    for (int b = 0; b < B; b++) {
        for (int kk = 0; kk < d.k; kk++)
            for (int qq = 0; qq < d.q; qq++) {
                double s = 0;
                for (int pp = 0; pp < d.p; pp++) s += W1(kk, qq, pp) * X(b, kk * d.p + pp);
                r_out1[(size_t)b * kq + kk * d.q + qq] = s;
            }
        for (int ll = 0; ll < d.l; ll++)
            for (int ss = 0; ss < d.s; ss++) {
                if (ss * d.l + ll >= mout) continue;
                double s = 0;
                for (int rr = 0; rr < d.r; rr++) s += W2(ll, ss, rr) * O1(b, rr * d.l + ll);
                const double z = s + bias.ref[ss * d.l + ll];
                r_y[(size_t)b * mout + ss * d.l + ll] = gelu ? act_ref(fn, z) : z;
            }
        for (int ll = 0; ll < d.l; ll++)
            for (int rr = 0; rr < d.r; rr++) {
                double s = 0;
                for (int ss = 0; ss < d.s; ss++) s += DO(b, ss * d.l + ll) * W2(ll, ss, rr);
                r_dout1[(size_t)b * kq + rr * d.l + ll] = s;
            }
        for (int kk = 0; kk < d.k; kk++)
            for (int pp = 0; pp < d.p; pp++) {
                if (kk * d.p + pp >= nin) continue;
                double s = 0;
                for (int qq = 0; qq < d.q; qq++) s += r_dout1[(size_t)b * kq + kk * d.q + qq] * W1(kk, qq, pp);
                r_dx[(size_t)b * nin + kk * d.p + pp] += s;
            }
        for (int kk = 0; kk < d.k; kk++)
            for (int qq = 0; qq < d.q; qq++)
                for (int pp = 0; pp < d.p; pp++)
                    r_dw1[((size_t)kk * d.q + qq) * d.p + pp] +=
                        r_dout1[(size_t)b * kq + kk * d.q + qq] * X(b, kk * d.p + pp);
        for (int ll = 0; ll < d.l; ll++)
            for (int ss = 0; ss < d.s; ss++)
                for (int rr = 0; rr < d.r; rr++)
                    r_dw2[((size_t)ll * d.s + ss) * d.r + rr] += DO(b, ss * d.l + ll) * O1(b, rr * d.l + ll);
    }
    Compare c1("out1", tol), cy("out", tol), cd1("dout1", tol), cx("dx", tol), cw1("dw1", tol), cw2("dw2", tol);
    std::vector<double> r_saved(r_out1.size());  // r_out1 (natural order) in the saved layout
    for (int b = 0; b < B; b++)
        for (int c = 0; c < kq; c++) r_saved[mid_at(b, c / d.l, c % d.l)] = r_out1[(size_t)b * kq + c];
    c1.all(out1, r_saved);
    cy.all(y, r_y);
    cd1.all(dout1, r_dout1);
    cx.all(dx.dev, r_dx);
    cw1.all(dw1.dev, r_dw1);
    cw2.all(dw2.dev, r_dw2);
    return emu::report(emu::fmt("monarch %-4s batch=%d n_in=%d m_out=%d k,q,p=%d,%d,%d l,s,r=%d,%d,%d acc=%d "
                                "dw-splits=%d,%d out1 %s",
                                emu::Elem<T>::name, B, nin, mout, d.k, d.q, d.p, d.l, d.s, d.r, accumulate, s1, s2,
                                grouped ? (io_g ? (gelu ? act_name(fn) : "group-major") : "group-major, stores in place") : "natural"),
                       {&c1, &cy, &cd1, &cx, &cw1, &cw2});
}

int main() {
    int fails = 0;
    const GemmKernels f32{grouped_gemm_f32, grouped_gemm_splits_f32,
                          [](const void* a, void* b, const void* c, const void* x, int l, int s, int m, int g, int act,
                             int fn) {
                              monarch_permute_f32(static_cast<const float*>(a), static_cast<float*>(b),
                                                  static_cast<const float*>(c), static_cast<const float*>(x), l, s, m,
                                                  g, act, fn);
                          }},
        bf{grouped_gemm_bf16, grouped_gemm_splits_bf16,
           [](const void* a, void* b, const void* c, const void* x, int l, int s, int m, int g, int act, int fn) {
               monarch_permute_bf16(static_cast<const bf16*>(a), static_cast<bf16*>(b), static_cast<const bf16*>(c),
                                    static_cast<const bf16*>(x), l, s, m, g, act, fn);
           }};
    fails += permute_case<bf16>(3, 3, 1500, 3 * 1500 - 7, bf, 30);  // element by element
    fails += permute_case<float>(2, 4, 600, 2400, f32, 31);        // 16-byte chunks both sides
    // Chunks: the MLP's 3072 = 4 x 768 (two chunks a row), a truncated output (zeros and
    // skipped stores by whole chunks), a natural side in chunks beside an element-wise
    // group side (s not a multiple of 8), and the reverse (mout not a multiple).
    fails += permute_case<bf16>(3, 4, 768, 3072, bf, 32);
    fails += permute_case<bf16>(2, 4, 768, 3072 - 24, bf, 33);
    fails += permute_case<bf16>(2, 2, 1500, 2992, bf, 34);
    fails += permute_case<bf16>(2, 4, 520, 2077, bf, 35);
    fails += permute_case<bf16>(2, 3, 330, 984, bf, 36);  // natural side in chunks with a tail
    const double tf = 2e-5, tb = 2e-2;
    // Random descriptors: ragged sizes, one to several tiles, split and unsplit K.
    fails += random_case<float>(70, 45, 40, 3, false, 132, f32, tf, 1);
    fails += random_case<float>(100, 130, 33, 1, true, 132, f32, tf, 2);
    fails += random_case<float>(20, 30, 600, 2, true, 132, f32, tf, 3);
    fails += random_case<bf16>(70, 45, 40, 3, true, 132, bf, tb, 4);
    fails += random_case<bf16>(65, 64, 97, 2, false, 132, bf, tb, 5);
    fails += random_case<bf16>(33, 17, 520, 1, false, 2, bf, tb, 6);
    // Each chunked load path for A and B (innermost k = 2 or first index = 1), ragged
    // edges, column limits cutting chunks, K long enough to cycle the pipeline stages.
    fails += random_case<bf16>(150, 70, 200, 2, false, 132, bf, tb, 11, 2, 2);
    fails += random_case<bf16>(150, 70, 200, 2, true, 132, bf, tb, 12, 1, 1);
    fails += random_case<bf16>(131, 77, 161, 3, false, 132, bf, tb, 13, 2, 1);
    fails += random_case<bf16>(129, 65, 300, 1, true, 4, bf, tb, 14, 1, 2);
    fails += random_case<float>(90, 70, 120, 2, false, 132, f32, tf, 15, 2, 2);
    fails += random_case<float>(90, 70, 120, 2, true, 132, f32, tf, 16, 1, 1);
    fails += random_case<float>(65, 129, 75, 3, false, 4, f32, tf, 17, 2, 1);
    fails += random_case<float>(70, 66, 90, 2, true, 132, f32, tf, 18, 1, 2);
    fails += chunk_edge_case<bf16>(false, 132, bf, tb, 19);
    fails += chunk_edge_case<bf16>(true, 132, bf, tb, 20);
    fails += chunk_edge_case<float>(false, 132, f32, tf, 21);
    fails += chunk_edge_case<float>(true, 132, f32, tf, 22);
    // Monarch forward + backward: padded input (n_in < k·p), truncated output (m_out < l·s).
    fails += monarch_case<float>({70, 50, 55, 4, 12, 16, 6, 10, 8}, false, 132, f32, tf, 7);
    fails += monarch_case<bf16>({70, 50, 55, 4, 9, 16, 6, 10, 6}, true, 132, bf, tb, 24);  // q % l != 0
    // l = 1: no permutation; the output natural, the bias in the epilogue. l = 65: the
    // permuted rows read and written in place, stride l.
    fails += monarch_case<bf16>({70, 30, 20, 4, 8, 8, 1, 24, 32}, false, 132, bf, tb, 25);
    fails += monarch_case<float>({20, 9, 100, 5, 13, 2, 65, 2, 1}, true, 132, f32, tf, 26);
    fails += monarch_case<bf16>({70, 50, 55, 4, 12, 16, 6, 10, 8}, true, 132, bf, tb, 8);
    fails += monarch_case<float>({300, 64, 64, 4, 8, 16, 4, 16, 8}, true, 132, f32, tf, 9);
    fails += monarch_case<bf16>({300, 60, 62, 4, 8, 16, 4, 16, 8}, false, 132, bf, tb, 10);
    // Sizes of 16-byte multiples (the chunked loads wherever a stride is 1), l = k = 4 as
    // the MLP block's layers, the expanding layer's shapes scaled down.
    fails += monarch_case<bf16>({260, 96, 192, 4, 24, 24, 4, 48, 24}, false, 132, bf, tb, 23);
    // The same shapes (and a ragged one) in place, stride l = 4 or 6, as the launcher
    // runs them under MONARCH_GROUP_MAJOR=0.
    fails += monarch_case<bf16>({260, 96, 192, 4, 24, 24, 4, 48, 24}, false, 132, bf, tb, 27, Rows::InPlace);
    fails += monarch_case<bf16>({70, 50, 55, 4, 12, 16, 6, 10, 8}, true, 132, bf, tb, 28, Rows::InPlace);
    fails += monarch_case<float>({300, 64, 64, 4, 8, 16, 4, 16, 8}, false, 132, f32, tf, 29, Rows::InPlace);
    // Group-major copies of the rows read only, as under MONARCH_STRIDED_STORES=1.
    fails += monarch_case<bf16>({260, 96, 192, 4, 24, 24, 4, 48, 24}, true, 132, bf, tb, 30, Rows::StridedStores);
    fails += monarch_case<bf16>({70, 50, 55, 4, 9, 16, 6, 10, 6}, false, 132, bf, tb, 31, Rows::StridedStores);
    fails += monarch_case<float>({300, 64, 64, 4, 8, 16, 4, 16, 8}, true, 132, f32, tf, 32, Rows::StridedStores);
    // The fused activations: the MLP block's l = k = 4 in bf16 (tanh-GELU), a truncated
    // output in f32 (erf-GELU), ragged q % l != 0 (ReLU).
    fails += monarch_case<bf16>({260, 96, 192, 4, 24, 24, 4, 48, 24}, false, 132, bf, tb, 33, Rows::FusedAct);
    fails += monarch_case<float>({300, 60, 62, 4, 8, 16, 4, 16, 8}, true, 132, f32, tf, 34, Rows::FusedAct, MP_GELU_ERF);
    fails += monarch_case<bf16>({70, 50, 55, 4, 9, 16, 6, 10, 6}, false, 132, bf, tb, 35, Rows::FusedAct, MP_RELU);
    fails += monarch_case<bf16>({260, 96, 192, 4, 24, 24, 4, 48, 24}, true, 132, bf, tb, 36, Rows::FusedAct, MP_GELU_ERF);
    return fails ? 1 : 0;
}
