// Runs cuda/kernels/dropout.cu (dropout_f32, dropout_bf16) in the CPU emulator, launched
// as cuda/src/ops/dropout.rs launches it (p as f32, scale = (f32)(1/(1-p)) in f64;
// cfg_1d(grid_for(n, 256), 256)), against the CPU's definition (tensor/src/ops/
// dropout.rs), its SplitMix64 `counter_uniform` reimplemented here: y[i] = 0 where
// u(seed, offset + i) < p, else x[i]·scale rounded to the dtype, bit-exact. Cases vary p
// (including 0), the seed, a nonzero index offset (a tensor processed in parts) and a
// 1-SM device (grid-stride); the kept fraction must be near 1 - p. Prints one line per
// case; exits 1 on any mismatch.

#include "shim.h"
#include "common.cuh"
#include "dropout.cu"
#include "check.h"

using emu::Compare;

/// `counter_uniform` of tensor/src/ops/dropout.rs.
static float cpu_counter_uniform(uint64_t seed, uint64_t index) {
    uint64_t z = seed ^ (index * 0x9E3779B97F4A7C15ull + 0xD1B54A32D192ED03ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)(z >> 40) * (float)(1.0 / (double)(1ull << 24));
}

template <typename T>
static int run(size_t n, double p, uint64_t seed, uint64_t offset, unsigned sm,
               void (*kern)(const T*, T*, i64, float, float, u64, u64)) {
    emu::Rng rng(seed);
    std::vector<T> x(n), y = emu::poisoned<T>(n);
    for (auto& v : x) v = emu::Elem<T>::store(rng.uniform() * 3.0f);
    const float pf = (float)p, scale = (float)(1.0 / (1.0 - p));
    const unsigned grid = emu::Device{sm}.grid_for(n, 256);
    emu::launch({grid, 1, 1}, {256, 1, 1}, [&] { kern(x.data(), y.data(), n, pf, scale, seed, offset); });
    long wrong = 0, kept = 0;
    for (size_t i = 0; i < n; i++) {
        const bool drop = cpu_counter_uniform(seed, offset + i) < pf;
        kept += !drop;
        const T want = emu::Elem<T>::store(drop ? 0.0f : (float)emu::Elem<T>::load(x[i]) * scale);
        wrong += memcmp(&want, &y[i], sizeof(T)) != 0;
    }
    Compare cm("mismatches", 0), ck("kept", 0.05);
    cm.add((double)wrong, 0);
    ck.add((double)kept / n, 1 - p);  // the generator's quality, and not a constant mask
    return emu::report(emu::fmt("dropout %-4s n=%zu p=%.2f seed=%llu offset=%llu grid=%u", emu::Elem<T>::name, n, p,
                                (unsigned long long)seed, (unsigned long long)offset, grid),
                       {&cm, &ck});
}

int main() {
    int fails = 0;
    fails += run<float>(10007, 0.1, 1, 0, 132, dropout_f32);
    fails += run<float>(10007, 0.5, 0xdeadbeefcafef00dull, 123456789, 132, dropout_f32);
    fails += run<float>(999, 0.0, 7, 0, 132, dropout_f32);
    fails += run<float>(9001, 0.3, 42, 1ull << 40, 1, dropout_f32);  // grid-stride
    fails += run<bf16>(10007, 0.1, 3, 0, 132, dropout_bf16);
    fails += run<bf16>(5003, 0.9, 11, 77, 1, dropout_bf16);
    return fails ? 1 : 0;
}
