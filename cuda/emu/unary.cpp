// Runs cuda/kernels/unary.cu (unary_fwd, unary_bwd) in the CPU emulator for every op of
// `UnaryOp` in cuda/src/ops/unary.rs (codes 0..16, powf / affine / clamp parameters),
// launched as it launches them (cfg_1d(grid_for(n/4 + 1, 256), 256)), against f64
// references from the definitions (tensor/src/ops/unary.rs: f, and df of the saved value,
// the output y for exp, sqrt, rsqrt, tanh, sigmoid, relu and recip, else the input x;
// the backward takes the kernel's own forward output). Each op runs with 16-byte aligned
// pointers (vector path plus tail), misaligned ones (scalar path) and on a 1-SM device
// (grid-stride). Inputs lie in the op's domain (positive for log, sqrt, rsqrt, powf,
// recip). Prints one line per case; exits 1 on any mismatch.

#include "shim.h"
#include "common.cuh"
#include "unary.cu"
#include "check.h"

using emu::Compare;

struct Op {
    const char* name;
    int code;
    float p0, p1;
    bool from_output, positive;
};

static const Op OPS[] = {
    {"neg", 0, 0, 0, false, false},      {"exp", 1, 0, 0, true, false},        {"log", 2, 0, 0, false, true},
    {"sqrt", 3, 0, 0, true, true},       {"rsqrt", 4, 0, 0, true, true},       {"tanh", 5, 0, 0, true, false},
    {"sigmoid", 6, 0, 0, true, false},   {"relu", 7, 0, 0, true, false},       {"gelu_tanh", 8, 0, 0, false, false},
    {"gelu_erf", 9, 0, 0, false, false}, {"silu", 10, 0, 0, false, false},     {"abs", 11, 0, 0, false, false},
    {"sqr", 12, 0, 0, false, false},     {"recip", 13, 0, 0, true, true},      {"powf", 14, 1.7f, 0, false, true},
    {"affine", 15, -1.5f, 0.25f, false, false}, {"clamp", 16, -1.0f, 1.5f, false, false},
};

static double f_ref(const Op& op, double x) {
    const double k = sqrt(2.0 / M_PI), p0 = op.p0, p1 = op.p1;
    switch (op.code) {
        case 0: return -x;
        case 1: return exp(x);
        case 2: return log(x);
        case 3: return sqrt(x);
        case 4: return 1 / sqrt(x);
        case 5: return tanh(x);
        case 6: return 1 / (1 + exp(-x));
        case 7: return x > 0 ? x : 0;
        case 8: return 0.5 * x * (1 + tanh(k * (x + 0.044715 * x * x * x)));
        case 9: return 0.5 * x * (1 + erf(x / sqrt(2.0)));
        case 10: return x / (1 + exp(-x));
        case 11: return fabs(x);
        case 12: return x * x;
        case 13: return 1 / x;
        case 14: return pow(x, p0);
        case 15: return x * p0 + p1;
        default: return std::min(std::max(x, p0), p1);
    }
}

/// f' expressed in the saved value s (y or x, as `from_output`).
static double df_ref(const Op& op, double s) {
    const double k = sqrt(2.0 / M_PI), c = 0.044715, p0 = op.p0, p1 = op.p1;
    switch (op.code) {
        case 0: return -1;
        case 1: return s;                 // d e^x = y
        case 2: return 1 / s;
        case 3: return 0.5 / s;           // d sqrt x = 1 / (2 y)
        case 4: return -0.5 * s * s * s;  // d x^-1/2 = -y^3 / 2
        case 5: return 1 - s * s;
        case 6: return s * (1 - s);
        case 7: return s > 0 ? 1 : 0;
        case 8: {
            const double t = tanh(k * (s + c * s * s * s));
            return 0.5 * (1 + t) + 0.5 * s * (1 - t * t) * k * (1 + 3 * c * s * s);
        }
        case 9: return 0.5 * (1 + erf(s / sqrt(2.0))) + s * exp(-0.5 * s * s) / sqrt(2 * M_PI);
        case 10: {
            const double g = 1 / (1 + exp(-s));
            return g * (1 + s * (1 - g));
        }
        case 11: return s > 0 ? 1 : (s < 0 ? -1 : 0);
        case 12: return 2 * s;
        case 13: return -s * s;           // d 1/x = -y^2
        case 14: return p0 * pow(s, p0 - 1);
        case 15: return p0;
        default: return s >= p0 && s <= p1 ? 1 : 0;
    }
}

template <typename T> struct UnaryKernels {
    void (*fwd)(const T*, T*, i64, int, float, float);
    void (*bwd)(const T*, const T*, T*, i64, int, float, float);
};

/// One op over `n` elements; `shift` elements of offset into each buffer (1 breaks the
/// 16-byte alignment); inputs in (-spread, spread) or (1.1, 2.1) for the positive ops.
template <typename T>
static int run(const Op& op, size_t n, size_t shift, unsigned sm, UnaryKernels<T> k, double tol, uint64_t seed,
               float spread = 3.0f) {
    emu::Rng rng(seed);
    std::vector<T> x(n + shift), dy(n + shift), y = emu::poisoned<T>(n + shift), dx = emu::poisoned<T>(n + shift);
    std::vector<double> xr(n), dyr(n);
    for (size_t i = 0; i < n; i++) {
        const float u = rng.uniform();
        x[shift + i] = emu::Elem<T>::store(op.positive ? 1.1f + u : spread * u);
        xr[i] = emu::Elem<T>::load(x[shift + i]);
        dy[shift + i] = emu::Elem<T>::store(rng.uniform());
        dyr[i] = emu::Elem<T>::load(dy[shift + i]);
    }
    T *px = x.data() + shift, *py = y.data() + shift, *pdy = dy.data() + shift, *pdx = dx.data() + shift;
    const unsigned grid = emu::Device{sm}.grid_for(n / 4 + 1, 256);
    emu::launch({grid, 1, 1}, {256, 1, 1}, [&] { k.fwd(px, py, n, op.code, op.p0, op.p1); });
    const T* saved = op.from_output ? py : px;
    emu::launch({grid, 1, 1}, {256, 1, 1}, [&] { k.bwd(saved, pdy, pdx, n, op.code, op.p0, op.p1); });
    Compare cy("y", tol), cx("dx", tol);
    for (size_t i = 0; i < n; i++) {
        cy.add(emu::Elem<T>::load(py[i]), f_ref(op, xr[i]));
        const double s = op.from_output ? emu::Elem<T>::load(py[i]) : xr[i];
        cx.add(emu::Elem<T>::load(pdx[i]), dyr[i] * df_ref(op, s));
    }
    if (!std::all_of(y.begin(), y.begin() + shift, [](T v) { return std::isnan(emu::Elem<T>::load(v)); })) cy.bad++;
    return emu::report(emu::fmt("unary %-4s %-9s n=%zu %s grid=%u |x|<%g", emu::Elem<T>::name, op.name, n,
                                shift ? "misaligned" : "aligned", grid, spread),
                       {&cy, &cx});
}

int main() {
    int fails = 0;
    const UnaryKernels<float> f32{unary_fwd_f32, unary_bwd_f32};
    const UnaryKernels<bf16> bf{unary_fwd_bf16, unary_bwd_bf16};
    const double tf = 2e-6, tb = 1e-2;
    for (const Op& op : OPS) {
        fails += run<float>(op, 1001, 0, 132, f32, tf, 1 + op.code);
        fails += run<float>(op, 77, 1, 132, f32, tf, 21 + op.code);
        fails += run<bf16>(op, 1003, 0, 132, bf, tb, 41 + op.code);
        fails += run<bf16>(op, 30001, 1, 1, bf, tb, 61 + op.code);   // scalar path, grid-stride
        fails += run<float>(op, 20003, 0, 1, f32, tf, 81 + op.code);  // vector path, grid-stride
    }
    // GELU's derivative far from 0, where 1 - tanh² cancels (pre-activations of 10-20
    // occur in trained MLPs).
    for (const Op& op : OPS)
        if (op.code == 8) {
            fails += run<bf16>(op, 4001, 0, 132, bf, tb, 101, 20.0f);
            fails += run<float>(op, 4001, 0, 132, f32, tf, 102, 20.0f);
        }
    return fails ? 1 : 0;
}
