// Runs cuda/kernels/copy.cu (copy_{f32,bf16,i64,i32,u8}, cast_f32_bf16, cast_bf16_f32,
// cast_u8_{f32,bf16}, assign_{f32,bf16,i64,i32,u8}, fill_{f32,bf16,i64,u8}) in the CPU emulator, launched as cuda/src/ops/copy.rs launches them
// (Strided6 from shape and element strides; cfg_1d(grid_for(n, 256), 256)), against
// references from the definition: dst[i] = src[offset(i)] in row-major order over the
// shape, converted f32 -> bf16 by round-to-nearest-even (ties, NaN and infinities
// included) or widened exactly. Views: contiguous, transposed, narrowed (offset start,
// skipped columns), a broadcast (stride 0) dimension, 6 dimensions, and a 1-SM device
// (grid-stride). Copies must be bit-exact. Prints one line per case; exits 1 on any
// mismatch.

#include "shim.h"
#include "common.cuh"
#include "copy.cu"
#include "check.h"

using emu::Compare;

struct View {
    const char* name;
    std::vector<long> shape, strides;
    long start;  // element offset of the view in its buffer
    size_t count() const {
        size_t n = 1;
        for (long s : shape) n *= s;
        return n;
    }
    size_t span() const {
        size_t s = start + 1;
        for (size_t d = 0; d < shape.size(); d++) s += (shape[d] - 1) * strides[d];
        return s;
    }
    size_t offset(size_t i) const {
        size_t off = start;
        for (int d = (int)shape.size() - 1; d >= 0; d--) off += (i % shape[d]) * strides[d], i /= shape[d];
        return off;
    }
    Strided6 geometry() const {
        Strided6 g;
        memset(&g, 0, sizeof g);
        for (int d = 0; d < 6; d++) g.shape[d] = 1;
        g.ndim = (int)shape.size();
        for (size_t d = 0; d < shape.size(); d++) g.shape[d] = shape[d], g.stride[d] = strides[d];
        return g;
    }
};

/// Round to nearest even of the f32 bits, independent of the shim's cvt.
static uint16_t bf16_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if (std::isnan(f)) return 0x7fff;
    const uint32_t lower = u & 0xffff, upper = u >> 16;
    if (lower > 0x8000 || (lower == 0x8000 && (upper & 1))) return (uint16_t)(upper + 1);
    return (uint16_t)upper;
}

/// Copies view `v` of a buffer of S to contiguous D with `kern`; `want(s)` is the bits of
/// the converted element.
template <typename S, typename D, typename Want>
static int run(const char* name, void (*kern)(const S*, Strided6, D*, i64), const View& v, unsigned sm,
               const std::vector<S>& buf, Want want) {
    const size_t n = v.count();
    std::vector<D> dst = emu::poisoned<D>(n + 1);  // one more element: must stay untouched
    const unsigned grid = emu::Device{sm}.grid_for(n, 256);
    emu::launch({grid, 1, 1}, {256, 1, 1}, [&] { kern(buf.data() + v.start, v.geometry(), dst.data(), n); });
    Compare c("mismatches", 0);
    long wrong = 0;
    for (size_t i = 0; i < n; i++) {
        const D w = want(buf[v.offset(i)]);
        wrong += memcmp(&dst[i], &w, sizeof(D)) != 0;
    }
    std::vector<D> poison = emu::poisoned<D>(1);
    wrong += memcmp(&dst[n], &poison[0], sizeof(D)) != 0;
    c.add((double)wrong, 0);
    return emu::report(emu::fmt("copy %-13s %-10s n=%zu grid=%u", name, v.name, n, grid), {&c});
}

int main() {
    int fails = 0;
    emu::Rng rng(1);
    // Views of a (buffer of) 37 x 50 matrix, and a 6-d one.
    const std::vector<View> views = {
        {"contiguous", {37, 50}, {50, 1}, 0},
        {"transposed", {50, 37}, {1, 50}, 0},
        {"narrowed", {20, 33}, {50, 1}, 3 * 50 + 7},
        {"broadcast", {5, 37, 50}, {0, 50, 1}, 0},
        {"6-d", {2, 3, 1, 5, 2, 3}, {1, 2, 900, 6, 30, 60}, 0},  // a permuted 2x3x5x2x3 block
    };
    size_t len = 0;
    for (const View& v : views) len = std::max(len, v.span());
    std::vector<float> f(len);
    std::vector<bf16> b(len);
    std::vector<i64> l(len);
    std::vector<int> w(len);
    std::vector<unsigned char> u(len);
    for (size_t i = 0; i < len; i++) {
        f[i] = rng.uniform() * 100.0f;
        if (i % 11 == 3) f[i] = __uint_as_float(0x3f808000u + (i % 2) * 0x10000u);  // bf16 ties, both parities
        if (i % 97 == 5) f[i] = i % 2 ? INFINITY : NAN;
        b[i].bits = (uint16_t)(rng.s >> 20);  // any bits, NaNs included
        l[i] = (i64)(rng.s ^ (rng.s << 7));
        w[i] = (int)(rng.s >> 13);
        u[i] = (unsigned char)(rng.s >> 50);
        rng.uniform();
    }
    const auto same = [](auto v) { return v; };
    for (const View& v : views) {
        fails += run("copy_f32", copy_f32, v, 132, f, same);
        fails += run("copy_bf16", copy_bf16, v, 132, b, same);
        fails += run("copy_i64", copy_i64, v, 132, l, same);
        fails += run("copy_i32", copy_i32, v, 132, w, same);
        fails += run("copy_u8", copy_u8, v, 132, u, same);
        fails += run("cast_f32_bf16", cast_f32_bf16, v, 132, f, [](float x) { bf16 r; r.bits = bf16_bits(x); return r; });
        fails += run("cast_bf16_f32", cast_bf16_f32, v, 132, b, [](bf16 x) { return __uint_as_float((uint32_t)x.bits << 16); });
        // Masks to floats: every byte value is exact in f32 and in bf16 (8 significant bits).
        fails += run("cast_u8_f32", cast_u8_f32, v, 132, u, [](unsigned char x) { return (float)x; });
        fails += run("cast_u8_bf16", cast_u8_bf16, v, 132, u, [](unsigned char x) { bf16 r; r.bits = bf16_bits((float)x); return r; });
    }
    fails += run("copy_f32", copy_f32, views[3], 1, f, same);  // 1 SM: 16 blocks grid-stride over 9250
    fails += run("cast_f32_bf16", cast_f32_bf16, views[1], 1, f, [](float x) { bf16 r; r.bits = bf16_bits(x); return r; });
    // fill_{f32,bf16,i64,u8} over 5000 elements on a 1-SM device (16 blocks, grid-stride),
    // the value passed as copy.rs passes it (bf16 as its bits); the element after the
    // last stays poisoned.
    const auto fill_case = [&](const char* name, auto kernel, auto value) {
        using T = decltype(value);
        std::vector<T> out = emu::poisoned<T>(5001);
        const T guard = out[5000];
        emu::launch({emu::Device{1}.grid_for(5000, 256), 1, 1}, {256, 1, 1}, [&] { kernel(out.data(), value, 5000); });
        Compare c("value", 0);
        for (size_t i = 0; i < 5000; i++) c.add(memcmp(&out[i], &value, sizeof(T)) == 0 ? 0.0 : 1.0, 0.0);
        if (memcmp(&out[5000], &guard, sizeof(T)) != 0) c.bad++;
        fails += emu::report(name, {&c});
    };
    fill_case("fill_f32 n=5000 grid=16", fill_f32, -2.5f);
    fill_case("fill_bf16 n=5000 grid=16", fill_bf16, (unsigned short)0xc020);  // -2.5
    fill_case("fill_i64 n=5000 grid=16", fill_i64, (i64)-3000000000LL);
    fill_case("fill_u8 n=5000 grid=16", fill_u8, (unsigned char)1);
    // tril_mask_u8 (rows, cols, diagonal) as copy.rs launches it: more keys than queries
    // (diagonal cols - rows, causal attention's), fewer, and a negative diagonal; the byte
    // after the mask stays poisoned.
    const struct { i64 rows, cols, diag; } masks[] = {{70, 300, 230}, {300, 70, -230}, {33, 33, -3}};
    for (const auto& [rows, cols, diag] : masks) {
        std::vector<unsigned char> out = emu::poisoned<unsigned char>((size_t)(rows * cols + 1));
        const unsigned char guard = out[rows * cols];
        emu::launch({emu::Device{1}.grid_for((size_t)(rows * cols), 256), 1, 1}, {256, 1, 1},
                    [&] { tril_mask_u8(out.data(), rows, cols, diag); });
        Compare c("mask", 0);
        for (i64 r = 0; r < rows; r++)
            for (i64 k = 0; k < cols; k++) c.add(out[r * cols + k], k - r <= diag ? 1.0 : 0.0);
        if (out[rows * cols] != guard) c.bad++;
        fails += emu::report(emu::fmt("tril_mask_u8 rows=%ld cols=%ld diagonal=%ld", (long)rows, (long)cols, (long)diag),
                             {&c});
    }
    // assign_* into a strided destination, from each view above as the source: the
    // source's elements, flattened to (rows, its last dimension), land on rows 5.. of a
    // longer buffer whose rows lie `pitch` apart (as a key cache takes new positions);
    // every element outside those stays poisoned.
    const auto assign_case = [&](const char* name, auto kernel, const View& v, const auto& buf, unsigned sm) {
        using T = typename std::decay_t<decltype(buf)>::value_type;
        const size_t n = v.count(), cols = v.shape.back(), pitch = cols + 3;
        std::vector<long> strides(v.shape.size(), 1);
        for (int k = (int)v.shape.size() - 2; k >= 0; k--)
            strides[k] = (k == (int)v.shape.size() - 2 ? (long)pitch : strides[k + 1] * v.shape[k + 1]);
        const View dst{"dst", v.shape, strides, (long)(5 * pitch)};
        std::vector<T> out = emu::poisoned<T>(dst.span() + pitch);
        const std::vector<T> before = out;
        emu::launch({emu::Device{sm}.grid_for(n, 256), 1, 1}, {256, 1, 1},
                    [&] { kernel(buf.data() + v.start, v.geometry(), out.data() + dst.start, dst.geometry(), (i64)n); });
        Compare c("mismatches", 0);
        std::vector<bool> written(out.size(), false);
        for (size_t i = 0; i < n; i++) {
            written[dst.offset(i)] = true;
            c.add(memcmp(&out[dst.offset(i)], &buf[v.offset(i)], sizeof(T)) == 0 ? 0.0 : 1.0, 0.0);
        }
        for (size_t i = 0; i < out.size(); i++)
            if (!written[i] && memcmp(&out[i], &before[i], sizeof(T)) != 0) c.bad++;
        fails += emu::report(emu::fmt("%-12s from %-10s n=%zu rows %zu apart", name, v.name, n, pitch), {&c});
    };
    for (const View& v : views) {
        assign_case("assign_f32", assign_f32, v, f, 132);
        assign_case("assign_bf16", assign_bf16, v, b, 132);
        assign_case("assign_i64", assign_i64, v, l, 132);
        assign_case("assign_i32", assign_i32, v, w, 132);
        assign_case("assign_u8", assign_u8, v, u, 132);
    }
    assign_case("assign_f32", assign_f32, views[3], f, 1);  // 1 SM: 16 blocks grid-stride over 9250
    return fails ? 1 : 0;
}
