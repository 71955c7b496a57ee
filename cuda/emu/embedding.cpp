// Runs cuda/kernels/embedding.cu (index_select, index_add, gather, scatter_add) in the
// CPU emulator, launched as cuda/src/ops/embedding.rs launches them (cfg_rows over
// outer·n rows of inner for the row forms; cfg_1d(grid_for(total, 256), 256) for the
// per-element forms), against f64 references from the definitions (tensor/src/ops/
// index.rs): out[o,i,:] = src[o,ids[i],:]; dst[o,ids[i],:] += src[o,i,:];
// out[p] = src[o,idx[p],i]; dst[o,idx[p],i] += src[p], all along a middle dimension
// (outer > 1), with repeated ids and some out-of-range ids (-1 and size), whose rows are
// zero or dropped and which must be counted into `bad` exactly. Prints one line per
// case; exits 1 on any mismatch.

#include "shim.h"
#include "common.cuh"
#include "embedding.cu"
#include "check.h"

using emu::Compare;
using emu::Data;

template <typename T> struct EmbeddingKernels {
    void (*select)(const T*, const i64*, T*, int*, i64, i64, i64, i64);
    void (*add)(float*, const i64*, const T*, int*, i64, i64, i64, i64);
    void (*gather)(const T*, const i64*, T*, int*, i64, i64, i64, i64);
    void (*scatter)(float*, const i64*, const T*, int*, i64, i64, i64, i64);
};

/// `count` ids in [0, size), repeats likely, every 9th one out of range (-1 or size).
static std::vector<i64> make_ids(size_t count, long size, emu::Rng& rng, long& bad) {
    std::vector<i64> ids(count);
    for (size_t i = 0; i < count; i++) {
        ids[i] = (i64)((rng.uniform() + 1) * 0.5f * size) % size;
        if (i % 9 == 4) ids[i] = (i % 2) ? -1 : size, bad++;
    }
    return ids;
}

template <typename T>
static int run(int outer, int size, int n, int inner, EmbeddingKernels<T> k, double tol, uint64_t seed,
               unsigned sm_count = 132) {
    emu::Rng rng(seed);
    const emu::Device dev{sm_count};
    const size_t table = (size_t)outer * size * inner, total = (size_t)outer * n * inner;
    Data<T> src(table, rng), g(total, rng);
    long bad_rows = 0, bad_elems = 0;
    const std::vector<i64> ids = make_ids(n, size, rng, bad_rows), idx = make_ids(total, size, rng, bad_elems);
    const double init = 0.5;  // dst starts at a nonzero value, so that overwriting shows
    std::vector<T> sel = emu::poisoned<T>(total), gat = emu::poisoned<T>(total);
    std::vector<float> add(table, (float)init), sca(table, (float)init);
    int bad[4] = {0, 0, 0, 0};
    const emu::RowsCfg cfg = emu::cfg_rows((size_t)outer * n, inner);
    const dim3 grid1{dev.grid_for(total, 256), 1, 1}, block1{256, 1, 1};
    emu::launch(cfg.grid, cfg.block, [&] { k.select(src.dev.data(), ids.data(), sel.data(), &bad[0], outer, size, n, inner); });
    emu::launch(cfg.grid, cfg.block, [&] { k.add(add.data(), ids.data(), g.dev.data(), &bad[1], outer, size, n, inner); });
    emu::launch(grid1, block1, [&] { k.gather(src.dev.data(), idx.data(), gat.data(), &bad[2], size, n, inner, total); });
    emu::launch(grid1, block1, [&] { k.scatter(sca.data(), idx.data(), g.dev.data(), &bad[3], size, n, inner, total); });

    std::vector<double> rsel(total), radd(table, init), rgat(total), rsca(table, init);
    for (int o = 0; o < outer; o++)
        for (int i = 0; i < n; i++)
            for (int c = 0; c < inner; c++) {
                const size_t p = ((size_t)o * n + i) * inner + c;
                const i64 id = ids[i], e = idx[p];
                const bool ok = id >= 0 && id < size, eok = e >= 0 && e < size;
                rsel[p] = ok ? src.ref[((size_t)o * size + id) * inner + c] : 0.0;
                if (ok) radd[((size_t)o * size + id) * inner + c] += g.ref[p];
                rgat[p] = eok ? src.ref[((size_t)o * size + e) * inner + c] : 0.0;
                if (eok) rsca[((size_t)o * size + e) * inner + c] += g.ref[p];
            }
    Compare cs("select", 0), ca("add", tol), cg("gather", 0), cc("scatter", tol), cb("bad", 0);
    cs.all(sel, rsel);
    ca.all(add, radd);
    cg.all(gat, rgat);
    cc.all(sca, rsca);
    cb.add(bad[0], (double)bad_rows * outer);
    cb.add(bad[1], (double)bad_rows * outer);
    cb.add(bad[2], (double)bad_elems);
    cb.add(bad[3], (double)bad_elems);
    return emu::report(emu::fmt("embedding %-4s outer=%d size=%d n=%d inner=%d block=(%u,%u) grid1=%u", emu::Elem<T>::name,
                                outer, size, n, inner, cfg.block.x, cfg.block.y, grid1.x),
                       {&cs, &ca, &cg, &cc, &cb});
}

/// index_select and gather of integer values (i64 token ids past 2^53, u8 masks):
/// moved bit for bit, zeros and counts for out-of-range ids.
template <typename T>
static int int_case(const char* name, int outer, int size, int n, int inner,
                    void (*select)(const T*, const i64*, T*, int*, i64, i64, i64, i64),
                    void (*gather)(const T*, const i64*, T*, int*, i64, i64, i64, i64), uint64_t seed) {
    emu::Rng rng(seed);
    const size_t table = (size_t)outer * size * inner, total = (size_t)outer * n * inner;
    std::vector<T> src(table);
    for (size_t i = 0; i < table; i++)
        src[i] = (T)(sizeof(T) == 8 ? (i64)(9007199254740993LL + 1000003LL * (i64)i) : (i64)(i * 37 % 251 + 1));
    long bad_rows = 0, bad_elems = 0;
    const std::vector<i64> ids = make_ids(n, size, rng, bad_rows), idx = make_ids(total, size, rng, bad_elems);
    std::vector<T> sel(total, (T)7), gat(total, (T)7);
    int bad[2] = {0, 0};
    const emu::RowsCfg cfg = emu::cfg_rows((size_t)outer * n, inner);
    emu::launch(cfg.grid, cfg.block, [&] { select(src.data(), ids.data(), sel.data(), &bad[0], outer, size, n, inner); });
    emu::launch({emu::Device{132}.grid_for(total, 256), 1, 1}, {256, 1, 1},
                [&] { gather(src.data(), idx.data(), gat.data(), &bad[1], size, n, inner, total); });
    long wrong = 0;
    for (int o = 0; o < outer; o++)
        for (int i = 0; i < n; i++)
            for (int c = 0; c < inner; c++) {
                const size_t p = ((size_t)o * n + i) * inner + c;
                const i64 id = ids[i], e = idx[p];
                wrong += sel[p] != (id >= 0 && id < size ? src[((size_t)o * size + id) * inner + c] : (T)0);
                wrong += gat[p] != (e >= 0 && e < size ? src[((size_t)o * size + e) * inner + c] : (T)0);
            }
    Compare cv("values", 0), cb("bad", 0);
    cv.add((double)wrong, 0.0);
    cb.add(bad[0], (double)bad_rows * outer);
    cb.add(bad[1], (double)bad_elems);
    return emu::report(emu::fmt("embedding %-4s outer=%d size=%d n=%d inner=%d (select, gather)", name, outer, size, n,
                                inner),
                       {&cv, &cb});
}

int main() {
    int fails = 0;
    fails += int_case<i64>("i64", 3, 7, 29, 5, index_select_i64, gather_i64, 7);
    fails += int_case<unsigned char>("u8", 2, 40, 13, 700, index_select_u8, gather_u8, 8);
    const EmbeddingKernels<float> f32{index_select_f32, index_add_f32, gather_f32, scatter_add_f32};
    const EmbeddingKernels<bf16> bf{index_select_bf16, index_add_bf16, gather_bf16, scatter_add_bf16};
    const double tf = 1e-6;  // sums of a few f32 terms into f32 (bf16 inputs are exact in f32)
    fails += run<float>(1, 50, 37, 20, f32, tf, 1);    // an embedding lookup (outer = 1)
    fails += run<float>(3, 7, 29, 5, f32, tf, 2);      // middle dimension, many repeats
    fails += run<float>(2, 40, 13, 700, f32, tf, 3);   // rows longer than a block
    fails += run<bf16>(1, 50, 37, 20, bf, tf, 4);
    fails += run<bf16>(3, 7, 29, 5, bf, tf, 5);
    fails += run<bf16>(2, 11, 300, 8, bf, tf, 6, 1);   // 1 SM: 16 blocks grid-stride over 4800 positions
    return fails ? 1 : 0;
}
