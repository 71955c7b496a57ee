// Runs cuda/kernels/binary.cu (binary arithmetic, cmp for f32/bf16/i64, where incl. i64/u8) in the
// CPU emulator, launched as cuda/src/ops/binary.rs launches them (Broadcast6 and `dense`
// built as its `geometry`; cfg_1d(grid_for(n, 256), 256)), against f64 references from
// the definitions (the CPU's BinaryOp / CmpOp): add, sub, mul, div, max (a unless b > a),
// min (a unless b < a) rounded to the dtype; eq, ne, lt, le, gt, ge as 0/1 bytes;
// where = cond ? a : b. Each op runs on the dense fast path and on non-dense geometry (a
// transposed operand, broadcast rows/columns, a scalar), one case on a 1-SM device so the
// grid strides. Comparison inputs are quantized so that ties are common. Prints one line
// per case; exits 1 on any mismatch.

#include "shim.h"
#include "common.cuh"
#include "binary.cu"
#include "check.h"

using emu::Compare;

static const char* const BIN_NAMES[] = {"add", "sub", "mul", "div", "max", "min"};
static const char* const CMP_NAMES[] = {"eq", "ne", "lt", "le", "gt", "ge"};

/// An operand: element strides over the output shape, and the length it spans.
struct Operand {
    std::vector<long> strides;
    size_t span(const std::vector<long>& shape) const {
        size_t s = 1;
        for (size_t d = 0; d < shape.size(); d++) s += (shape[d] - 1) * strides[d];
        return s;
    }
};

/// `geometry` of cuda/src/ops/binary.rs: the Broadcast6, n and whether all are dense.
static Broadcast6 geometry(const std::vector<long>& shape, const std::vector<Operand>& ins, size_t& n, bool& dense) {
    Broadcast6 g;
    memset(&g, 0, sizeof g);
    for (int d = 0; d < 6; d++) g.shape[d] = 1;
    g.ndim = (int)shape.size();
    std::vector<long> row_major(shape.size());
    long acc = 1;
    for (int d = (int)shape.size() - 1; d >= 0; d--) row_major[d] = acc, acc *= shape[d];
    n = (size_t)acc;
    dense = true;
    for (size_t k = 0; k < ins.size(); k++)
        for (size_t d = 0; d < shape.size(); d++) {
            dense &= shape[d] == 1 || ins[k].strides[d] == row_major[d];
            g.stride[k][d] = ins[k].strides[d];
        }
    for (size_t d = 0; d < shape.size(); d++) g.shape[d] = shape[d];
    return g;
}

/// The offset of output element `i` in an operand (the reference's own index arithmetic).
static size_t offset(const std::vector<long>& shape, const Operand& o, size_t i) {
    size_t off = 0;
    for (int d = (int)shape.size() - 1; d >= 0; d--) off += (i % shape[d]) * o.strides[d], i /= shape[d];
    return off;
}

static std::string geo_label(const std::vector<long>& shape, bool dense, unsigned grid) {
    std::string s = "shape=";
    for (size_t d = 0; d < shape.size(); d++) s += (d ? "x" : "") + std::to_string(shape[d]);
    return s + emu::fmt(" dense=%d grid=%u", dense, grid);
}

/// Values for operand data: quantized to quarters in [-2, 2] (ties), or away from 0.
template <typename T> static std::vector<T> values(size_t n, emu::Rng& rng, bool quantized, std::vector<double>& ref) {
    std::vector<T> v(n);
    ref.resize(n);
    for (size_t i = 0; i < n; i++) {
        const float u = rng.uniform();
        const float x = quantized ? std::round(u * 8.0f) / 4.0f : u + (u < 0 ? -0.5f : 0.5f);
        v[i] = emu::Elem<T>::store(x);
        ref[i] = emu::Elem<T>::load(v[i]);
    }
    return v;
}

template <typename T> struct BinaryKernels {
    void (*binary)(const T*, const T*, T*, Broadcast6, i64, int, int);
    void (*cmp)(const T*, const T*, unsigned char*, Broadcast6, i64, int, int);
    void (*where)(const unsigned char*, const T*, const T*, T*, Broadcast6, i64, int);
};

template <typename T>
static int run_binary(const std::vector<long>& shape, Operand a, Operand b, int op, BinaryKernels<T> k, double tol,
                      unsigned sm, uint64_t seed) {
    emu::Rng rng(seed);
    size_t n;
    bool dense;
    const Broadcast6 g = geometry(shape, {a, b}, n, dense);
    std::vector<double> ar, br;
    const std::vector<T> av = values<T>(a.span(shape), rng, false, ar), bv = values<T>(b.span(shape), rng, false, br);
    std::vector<T> out = emu::poisoned<T>(n);
    const unsigned grid = emu::Device{sm}.grid_for(n, 256);
    emu::launch({grid, 1, 1}, {256, 1, 1}, [&] { k.binary(av.data(), bv.data(), out.data(), g, n, op, dense); });
    std::vector<double> ref(n);
    for (size_t i = 0; i < n; i++) {
        const double x = ar[offset(shape, a, i)], y = br[offset(shape, b, i)];
        const double r[] = {x + y, x - y, x * y, x / y, y > x ? y : x, y < x ? y : x};
        ref[i] = r[op];
    }
    Compare c("out", tol);
    c.all(out, ref);
    return emu::report(emu::fmt("binary %-4s %-3s %s", emu::Elem<T>::name, BIN_NAMES[op],
                                geo_label(shape, dense, grid).c_str()),
                       {&c});
}

/// cmp over T (f32, bf16) or i64 (`cmp_i64`); I is the storage type.
template <typename I>
static int run_cmp(const char* name, void (*kern)(const I*, const I*, unsigned char*, Broadcast6, i64, int, int),
                   const std::vector<long>& shape, Operand a, Operand b, int op, uint64_t seed) {
    emu::Rng rng(seed);
    size_t n;
    bool dense;
    const Broadcast6 g = geometry(shape, {a, b}, n, dense);
    std::vector<double> ar, br;
    std::vector<I> av, bv;
    if constexpr (std::is_same_v<I, i64>) {
        for (size_t i = 0; i < a.span(shape); i++) av.push_back((i64)std::round(rng.uniform() * 3) * 1000000007LL);
        for (size_t i = 0; i < b.span(shape); i++) bv.push_back((i64)std::round(rng.uniform() * 3) * 1000000007LL);
        for (i64 v : av) ar.push_back((double)v);
        for (i64 v : bv) br.push_back((double)v);
    } else {
        av = values<I>(a.span(shape), rng, true, ar);
        bv = values<I>(b.span(shape), rng, true, br);
    }
    std::vector<unsigned char> out(n, 0xff);
    const unsigned grid = emu::Device{132}.grid_for(n, 256);
    emu::launch({grid, 1, 1}, {256, 1, 1}, [&] { kern(av.data(), bv.data(), out.data(), g, n, op, dense); });
    Compare c("out", 0);
    for (size_t i = 0; i < n; i++) {
        const double x = ar[offset(shape, a, i)], y = br[offset(shape, b, i)];
        const bool r[] = {x == y, x != y, x < y, x <= y, x > y, x >= y};
        c.add(out[i], r[op]);
    }
    return emu::report(emu::fmt("cmp %-4s %-2s %s", name, CMP_NAMES[op], geo_label(shape, dense, grid).c_str()), {&c});
}

template <typename T>
static int run_where(const std::vector<long>& shape, Operand cond, Operand a, Operand b, BinaryKernels<T> k,
                     uint64_t seed) {
    emu::Rng rng(seed);
    size_t n;
    bool dense;
    const Broadcast6 g = geometry(shape, {cond, a, b}, n, dense);
    std::vector<unsigned char> cv(cond.span(shape));
    for (auto& c : cv) c = rng.uniform() < 0 ? 0 : (rng.uniform() < 0 ? 1 : 7);  // any nonzero is true
    std::vector<double> ar, br;
    const std::vector<T> av = values<T>(a.span(shape), rng, false, ar), bv = values<T>(b.span(shape), rng, false, br);
    std::vector<T> out = emu::poisoned<T>(n);
    const unsigned grid = emu::Device{132}.grid_for(n, 256);
    emu::launch({grid, 1, 1}, {256, 1, 1}, [&] { k.where(cv.data(), av.data(), bv.data(), out.data(), g, n, dense); });
    std::vector<double> ref(n);
    for (size_t i = 0; i < n; i++) ref[i] = cv[offset(shape, cond, i)] ? ar[offset(shape, a, i)] : br[offset(shape, b, i)];
    Compare c("out", 0);
    c.all(out, ref);
    return emu::report(emu::fmt("where %-4s %s", emu::Elem<T>::name, geo_label(shape, dense, grid).c_str()), {&c});
}

int main() {
    int fails = 0;
    const BinaryKernels<float> f32{binary_f32, cmp_f32, where_f32};
    const BinaryKernels<bf16> bf{binary_bf16, cmp_bf16, where_bf16};
    // (4, 5, 7): dense; a transposed (stored 7x5x4) with b a broadcast (1, 5, 1) column.
    const std::vector<long> s3 = {4, 5, 7}, big = {3, 50, 41};
    const Operand d3{{35, 7, 1}}, tr3{{1, 4, 20}}, col3{{0, 1, 0}}, row3{{7, 0, 1}}, scalar3{{0, 0, 0}};
    const Operand dbig{{2050, 41, 1}}, bbig{{0, 41, 1}};  // b broadcast over the leading dim
    for (int op = 0; op < 6; op++) {
        fails += run_binary<float>(s3, d3, d3, op, f32, 1e-7, 132, 1 + op);
        fails += run_binary<float>(s3, tr3, col3, op, f32, 1e-7, 132, 11 + op);
        fails += run_binary<bf16>(s3, d3, d3, op, bf, 4e-3, 132, 21 + op);
        fails += run_binary<bf16>(big, dbig, bbig, op, bf, 4e-3, 1, 31 + op);  // 16 blocks, grid-stride
        fails += run_cmp<float>("f32", cmp_f32, s3, d3, d3, op, 41 + op);
        fails += run_cmp<float>("f32", cmp_f32, s3, tr3, row3, op, 51 + op);
        fails += run_cmp<bf16>("bf16", cmp_bf16, s3, col3, tr3, op, 61 + op);
        fails += run_cmp<i64>("i64", cmp_i64, s3, d3, d3, op, 71 + op);
        fails += run_cmp<i64>("i64", cmp_i64, s3, scalar3, tr3, op, 81 + op);
    }
    fails += run_where<float>(s3, d3, d3, d3, f32, 91);
    fails += run_where<float>(s3, row3, tr3, scalar3, f32, 92);
    fails += run_where<bf16>(s3, d3, d3, d3, bf, 93);
    fails += run_where<bf16>(big, bbig, dbig, Operand{{0, 0, 1}}, bf, 94);
    // where on integer values (targets, masks): selection only, bit-exact.
    const BinaryKernels<i64> i64k{nullptr, cmp_i64, where_i64};
    const BinaryKernels<unsigned char> u8k{nullptr, nullptr, where_u8};
    fails += run_where<i64>(s3, row3, tr3, scalar3, i64k, 95);
    fails += run_where<unsigned char>(s3, d3, d3, d3, u8k, 96);
    return fails ? 1 : 0;
}
