// Helpers shared by the emulator drivers (after shim.h, common.cuh and the kernel
// source): deterministic inputs, bf16/f32 storage conversions independent of the
// kernels' own, NaN-filled device buffers, and the per-case comparison that prints one
// line and counts failures.

#pragma once

#include <algorithm>
#include <cstdarg>
#include <string>

namespace emu {

/// Deterministic values in [-1, 1) (a 64-bit LCG).
struct Rng {
    uint64_t s;
    explicit Rng(uint64_t seed) : s(seed * 0x9e3779b97f4a7c15ull + 1) {}
    float uniform() {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        return (float)((s >> 40) / double(1 << 24)) * 2.0f - 1.0f;
    }
};

/// Storage conversions of the element types (not the kernels' own helpers).
template <typename T> struct Elem;
template <> struct Elem<float> {
    static float store(float x) { return x; }
    static double load(float x) { return x; }
    static constexpr const char* name = "f32";
};
template <> struct Elem<i64> {  // integers held exactly (|x| < 2^53 in the reference)
    static i64 store(float x) { return (i64)std::llround((double)x * 1e9); }
    static double load(i64 v) { return (double)v; }
    static constexpr const char* name = "i64";
};
template <> struct Elem<unsigned char> {
    static unsigned char store(float x) { return (unsigned char)((int)std::lround((double)x * 100.0) & 0xff); }
    static double load(unsigned char v) { return v; }
    static constexpr const char* name = "u8";
};
template <> struct Elem<bf16> {
    static bf16 store(float x) {
        bf16 b;
        b.bits = cvt_rn_bf16_f32(x);
        return b;
    }
    static double load(bf16 b) { return __uint_as_float((uint32_t)b.bits << 16); }
    static constexpr const char* name = "bf16";
};

/// `n` random values of T (scaled by `scale`), and the same values widened to f64.
template <typename T> struct Data {
    std::vector<T> dev;
    std::vector<double> ref;
    Data(size_t n, Rng& rng, float scale = 1.0f) : dev(n), ref(n) {
        for (size_t i = 0; i < n; i++) {
            dev[i] = Elem<T>::store(rng.uniform() * scale);
            ref[i] = Elem<T>::load(dev[i]);
        }
    }
};

/// A "device" buffer of `n` elements filled with NaN bytes (as fresh device memory would
/// hold garbage), so that anything a kernel fails to write shows.
template <typename T> std::vector<T> poisoned(size_t n) {
    std::vector<T> v(n);
    memset(static_cast<void*>(v.data()), 0xff, n * sizeof(T));
    return v;
}

/// The maximum error of one output against its f64 reference, relative to the largest
/// reference magnitude (at least `floor`); NaN or infinity where the reference is finite
/// always fails, as does a mismatched infinity.
struct Compare {
    std::string name;
    double tol, floor = 1e-3, max_err = 0, max_ref = 0;
    long bad = 0;
    Compare(const char* n, double t) : name(n), tol(t) {}
    void add(double got, double want) {
        if (std::isinf(want) || std::isinf(got) || std::isnan(got) || std::isnan(want)) {
            if (!(std::isinf(want) && got == want)) bad++;
            return;
        }
        max_err = std::max(max_err, fabs(got - want));
        max_ref = std::max(max_ref, fabs(want));
    }
    template <typename T> void all(const std::vector<T>& got, const std::vector<double>& want) {
        if (got.size() != want.size()) bad++;
        for (size_t i = 0; i < std::min(got.size(), want.size()); i++) add(Elem<T>::load(got[i]), want[i]);
    }
    bool ok() const { return bad == 0 && max_err <= tol * std::max(max_ref, floor); }
};

/// Prints one line for a case (its label, then each output's error) and returns 1 if any
/// output failed.
inline int report(const std::string& label, std::initializer_list<const Compare*> outs) {
    bool ok = true;
    std::string line = label + ":";
    char buf[160];
    for (const Compare* c : outs) {
        snprintf(buf, sizeof buf, " %s %.1e/%.1e%s", c->name.c_str(), c->max_err, c->max_ref,
                 c->bad ? (" (" + std::to_string(c->bad) + " bad)").c_str() : "");
        line += buf;
        ok &= c->ok();
    }
    printf("%-60s %s\n", line.c_str(), ok ? "ok" : "FAIL");
    fflush(stdout);
    return ok ? 0 : 1;
}

/// printf into a std::string.
inline std::string fmt(const char* f, ...) {
    char buf[256];
    va_list ap;
    va_start(ap, f);
    vsnprintf(buf, sizeof buf, f, ap);
    va_end(ap);
    return buf;
}

/// The launch-relevant figures of the device the Rust launchers would query.
struct Device {
    unsigned sm_count;
    /// `CudaDevice::grid_for`: enough blocks of `threads` for `n`, at most 16 per SM.
    unsigned grid_for(size_t n, unsigned threads) const {
        size_t needed = std::max<size_t>((n + threads - 1) / threads, 1);
        return (unsigned)std::max<size_t>(std::min<size_t>(needed, (size_t)sm_count * 16), 1);
    }
};

/// `cfg_rows` of cuda/src/ops/mod.rs: block (X, Y) = Y rows of X threads, X a power of
/// two in 32..=512 fitted to the row length, 256 threads a block when rows are short.
struct RowsCfg {
    dim3 grid, block;
};
inline RowsCfg cfg_rows(size_t rows, size_t cols) {
    size_t x = 1;
    while (x < cols) x *= 2;
    x = std::clamp<size_t>(x, 32, 512);
    const size_t y = std::max<size_t>(256 / x, 1);
    return {{(unsigned)std::max<size_t>((rows + y - 1) / y, 1), 1, 1}, {(unsigned)x, (unsigned)y, 1}};
}

}  // namespace emu
