// Runs cuda/kernels/reduce.cu (reduce_rows; reduce_cols_partial + reduce_cols_finish)
// in the CPU emulator, launched as cuda/src/ops/reduce.rs launches them (cfg_rows; block
// (32, 8) over grid (ceil(cols/32), column_chunks) then 256 threads over the columns),
// for sum, max, min, argmax and argmin, against f64 references from the definitions
// (the CPU's ReduceOp): the sum, the extreme value, and the index of its first
// occurrence (0 for an all -inf line). Values are quantized to quarters so that ties are
// common; one row (rows) or one column (columns) is all -inf. Cases include rows = 1
// with many columns and column reductions of 1, 2, 5 and 11 row chunks. Prints one line
// per case; exits 1 on any mismatch.

#include "shim.h"
#include "common.cuh"
#include "reduce.cu"
#include "check.h"

using emu::Compare;

template <typename T> struct ReduceKernels {
    void (*rows)(const T*, void*, i64, i64, int);
    void (*partial)(const T*, ArgVal*, i64, i64, int);
    void (*finish)(const ArgVal*, void*, i64, i64, int);
};

static const char* const OP_NAMES[] = {"sum", "max", "min", "argmax", "argmin"};

/// `column_chunks` of cuda/src/ops/mod.rs.
static size_t column_chunks(size_t rows, size_t cols, unsigned sm_count) {
    const size_t col_blocks = std::max<size_t>((cols + 31) / 32, 1);
    const size_t want = ((size_t)sm_count * 4 + col_blocks - 1) / col_blocks;
    return std::clamp<size_t>(want, 1, std::max<size_t>((rows + 63) / 64, 1));
}

/// The reference of one line of `len` values at `at(k)`: (value, first index).
template <typename F> static std::pair<double, i64> reference(int op, long len, F at) {
    double acc = op == 0 ? 0.0 : (op == 1 || op == 3 ? -INFINITY : INFINITY);
    i64 idx = -1;
    for (long k = 0; k < len; k++) {
        const double v = at(k);
        if (op == 0) acc += v;
        else if (idx < 0 || (op == 1 || op == 3 ? v > acc : v < acc)) acc = v, idx = k;
    }
    return {acc, idx < 0 ? 0 : idx};
}

/// Reduces a `rows` x `cols` matrix along its rows (`along_rows`) or its columns.
template <typename T>
static int run(int rows, int cols, bool along_rows, int op, ReduceKernels<T> k, double tol, uint64_t seed) {
    emu::Rng rng(seed);
    const size_t n = (size_t)rows * cols;
    std::vector<T> x(n);
    std::vector<double> xr(n);
    for (size_t i = 0; i < n; i++) {
        const long r = (long)(i / cols), c = (long)(i % cols);
        const bool masked = along_rows ? (rows > 1 && r == 1) : (cols > 1 && c == cols - 1);
        const float v = masked ? -INFINITY : std::round(rng.uniform() * 8.0f) / 4.0f;
        x[i] = emu::Elem<T>::store(v);
        xr[i] = emu::Elem<T>::load(x[i]);
    }
    const size_t outs = along_rows ? rows : cols;
    const bool arg = op >= 3;
    std::vector<T> val = emu::poisoned<T>(outs);
    std::vector<i64> idx = emu::poisoned<i64>(outs);
    void* out = arg ? (void*)idx.data() : (void*)val.data();
    const emu::Device dev{132};
    std::string shape;
    if (along_rows) {
        const emu::RowsCfg cfg = emu::cfg_rows(rows, cols);
        emu::launch(cfg.grid, cfg.block, [&] { k.rows(x.data(), out, rows, cols, op); });
        shape = emu::fmt("block=(%u,%u)", cfg.block.x, cfg.block.y);
    } else {
        const size_t chunks = column_chunks(rows, cols, dev.sm_count);
        std::vector<ArgVal> part = emu::poisoned<ArgVal>(chunks * cols);
        emu::launch({(unsigned)((cols + 31) / 32), (unsigned)chunks, 1}, {32, 8, 1},
                    [&] { k.partial(x.data(), part.data(), rows, cols, op); });
        emu::launch({(unsigned)((cols + 255) / 256), 1, 1}, {256, 1, 1},
                    [&] { k.finish(part.data(), out, (i64)chunks, cols, op); });
        shape = emu::fmt("chunks=%zu", chunks);
    }
    std::vector<double> rv(outs), ri(outs);
    for (size_t o = 0; o < outs; o++) {
        const auto [v, i] = along_rows ? reference(op, cols, [&](long c) { return xr[o * cols + c]; })
                                       : reference(op, rows, [&](long r) { return xr[r * cols + o]; });
        rv[o] = v;
        ri[o] = (double)i;
    }
    Compare cv(arg ? "index" : "value", arg ? 0 : tol);
    if (arg)
        for (size_t o = 0; o < outs; o++) cv.add((double)idx[o], ri[o]);
    else
        cv.all(val, rv);
    return emu::report(emu::fmt("reduce_%s %-4s %-6s rows=%d cols=%d %s", along_rows ? "rows" : "cols",
                                emu::Elem<T>::name, OP_NAMES[op], rows, cols, shape.c_str()),
                       {&cv});
}

int main() {
    int fails = 0;
    const ReduceKernels<float> f32{reduce_rows_f32, reduce_cols_partial_f32, reduce_cols_finish_f32};
    const ReduceKernels<bf16> bf{reduce_rows_bf16, reduce_cols_partial_bf16, reduce_cols_finish_bf16};
    const double tf = 1e-6, tb = 1e-2;
    for (int op = 0; op < 5; op++) {
        fails += run<float>(37, 10, true, op, f32, tf, 1 + op);
        fails += run<float>(5, 700, true, op, f32, tf, 11 + op);
        fails += run<float>(1, 3001, true, op, f32, tf, 21 + op);   // one row, many columns
        fails += run<float>(40, 33, false, op, f32, tf, 31 + op);   // one chunk
        fails += run<float>(100, 70, false, op, f32, tf, 41 + op);  // 2 chunks
        fails += run<float>(300, 45, false, op, f32, tf, 51 + op);  // 5 chunks
        fails += run<bf16>(37, 100, true, op, bf, tb, 61 + op);
        fails += run<bf16>(1, 1500, true, op, bf, tb, 71 + op);
        fails += run<bf16>(700, 1000, false, op, bf, tb, 81 + op);  // 11 chunks
    }
    return fails ? 1 : 0;
}
