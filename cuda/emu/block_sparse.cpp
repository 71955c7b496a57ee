// Runs cuda/kernels/block_sparse.cu (forward, dx, dw) in the CPU emulator, launched as
// cuda/src/ops/block_sparse.rs launches them (forward grid (ceil(batch/64), out/bs), dx
// grid (ceil(batch/64), in/bs), both 128 threads; dw grid (nnz), 128 threads, 64 for
// bs = 16; the CSC index from the launcher's csr_to_csc), against the dense f64
// products with W[br*bs + u, bc*bs + v] = blocks[idx][u][v] for the stored blocks:
//   y = x Wᵀ, dx = dy W, dblocks[idx][u][v] = sum_b dy[b, br*bs+u] x[b, bc*bs+v].
// The pattern has an empty block row and an empty block column. Prints one line per
// case; exits 1 on any mismatch.

#include "shim.h"
#include "common.cuh"
#include "block_sparse.cu"
#include "check.h"

using emu::Compare;
using emu::Data;

/// The kernels of one (dtype, block).
template <typename T> struct BsKernels {
    void (*fwd)(const T*, i64, const T*, const int*, const int*, T*, i64, int, int);
    void (*dx)(const T*, i64, const T*, const int*, const int*, const int*, T*, i64, int, int);
    void (*dw)(const T*, i64, const T*, i64, const int*, const int*, T*, int, int);
};

/// The launcher's `csr_to_csc`: (col_ptr, row_idx, blk_idx, row_of).
static void csr_to_csc(const std::vector<int>& row_ptr, const std::vector<int>& col_idx, int cols,
                       std::vector<int>& col_ptr, std::vector<int>& row_idx, std::vector<int>& blk_idx,
                       std::vector<int>& row_of) {
    col_ptr.assign(cols + 1, 0);
    for (int c : col_idx) col_ptr[c + 1]++;
    for (int c = 0; c < cols; c++) col_ptr[c + 1] += col_ptr[c];
    std::vector<int> next = col_ptr;
    row_idx.assign(col_idx.size(), 0);
    blk_idx.assign(col_idx.size(), 0);
    row_of.assign(col_idx.size(), 0);
    for (size_t r = 0; r + 1 < row_ptr.size(); r++)
        for (int e = row_ptr[r]; e < row_ptr[r + 1]; e++) {
            const int c = col_idx[e], at = next[c]++;
            row_idx[at] = (int)r;
            blk_idx[at] = e;
            row_of[e] = (int)r;
        }
}

template <typename T, int BS>
static int run(int batch, const std::vector<std::vector<int>>& pattern, int cols, bool accumulate, BsKernels<T> k,
               double tol, uint64_t seed, bool shifted = false) {
    emu::Rng rng(seed);
    const int rows = (int)pattern.size(), out_f = rows * BS, in_f = cols * BS;
    std::vector<int> row_ptr{0}, col_idx, col_ptr, row_idx, blk_idx, row_of;
    for (const auto& r : pattern) {
        for (int c : r) col_idx.push_back(c);
        row_ptr.push_back((int)col_idx.size());
    }
    csr_to_csc(row_ptr, col_idx, cols, col_ptr, row_idx, blk_idx, row_of);
    const int nnz = (int)col_idx.size();
    Data<T> x((size_t)batch * in_f, rng), dy((size_t)batch * out_f, rng), blocks((size_t)nnz * BS * BS, rng);
    Data<T> y((size_t)batch * out_f, rng), dx((size_t)batch * in_f, rng), dblocks(blocks.dev.size(), rng);
    if (!accumulate) {
        y.dev = emu::poisoned<T>(y.dev.size());
        dx.dev = emu::poisoned<T>(dx.dev.size());
        dblocks.dev = emu::poisoned<T>(dblocks.dev.size());
    }
    // `shifted`: the inputs start one element past a 16-byte boundary (a view with an
    // odd offset), so the kernels take their element-by-element loads.
    std::vector<T> xs(x.dev.size() + 1), dys(dy.dev.size() + 1), bls(blocks.dev.size() + 1);
    std::copy(x.dev.begin(), x.dev.end(), xs.begin() + 1);
    std::copy(dy.dev.begin(), dy.dev.end(), dys.begin() + 1);
    std::copy(blocks.dev.begin(), blocks.dev.end(), bls.begin() + 1);
    const T* xp = shifted ? xs.data() + 1 : x.dev.data();
    const T* dyp = shifted ? dys.data() + 1 : dy.dev.data();
    const T* bp = shifted ? bls.data() + 1 : blocks.dev.data();
    const unsigned bt = (batch + 63) / 64;
    emu::launch({bt, (unsigned)(out_f / BS), 1}, {128, 1, 1}, [&] {
        k.fwd(xp, in_f, bp, row_ptr.data(), col_idx.data(), y.dev.data(), out_f, batch,
              accumulate);
    });
    emu::launch({bt, (unsigned)(in_f / BS), 1}, {128, 1, 1}, [&] {
        k.dx(dyp, out_f, bp, col_ptr.data(), row_idx.data(), blk_idx.data(), dx.dev.data(),
             in_f, batch, accumulate);
    });
    if (nnz > 0)
        emu::launch({(unsigned)nnz, 1, 1}, {BS == 16 ? 64u : 128u, 1, 1}, [&] {
            k.dw(xp, in_f, dyp, out_f, row_of.data(), col_idx.data(), dblocks.dev.data(), batch,
                 accumulate);
        });

    // Dense reference.
    std::vector<double> w((size_t)out_f * in_f, 0.0);
    for (int br = 0; br < rows; br++)
        for (int e = row_ptr[br]; e < row_ptr[br + 1]; e++)
            for (int u = 0; u < BS; u++)
                for (int v = 0; v < BS; v++)
                    w[(size_t)(br * BS + u) * in_f + col_idx[e] * BS + v] = blocks.ref[((size_t)e * BS + u) * BS + v];
    std::vector<double> ry = accumulate ? y.ref : std::vector<double>(y.ref.size(), 0.0);
    std::vector<double> rdx = accumulate ? dx.ref : std::vector<double>(dx.ref.size(), 0.0);
    std::vector<double> rdw = accumulate ? dblocks.ref : std::vector<double>(dblocks.ref.size(), 0.0);
    for (int b = 0; b < batch; b++)
        for (int o = 0; o < out_f; o++)
            for (int i = 0; i < in_f; i++) {
                const double wv = w[(size_t)o * in_f + i];
                ry[(size_t)b * out_f + o] += x.ref[(size_t)b * in_f + i] * wv;
                rdx[(size_t)b * in_f + i] += dy.ref[(size_t)b * out_f + o] * wv;
            }
    for (int e = 0; e < nnz; e++)
        for (int u = 0; u < BS; u++)
            for (int v = 0; v < BS; v++) {
                double s = 0;
                for (int b = 0; b < batch; b++)
                    s += dy.ref[(size_t)b * out_f + row_of[e] * BS + u] * x.ref[(size_t)b * in_f + col_idx[e] * BS + v];
                rdw[((size_t)e * BS + u) * BS + v] += s;
            }
    Compare cy("y", tol), cx("dx", tol), cw("dw", tol);
    cy.all(y.dev, ry);
    cx.all(dx.dev, rdx);
    cw.all(dblocks.dev, rdw);
    return emu::report(emu::fmt("block_sparse %-4s bs=%-2d batch=%d blocks %dx%d nnz=%d acc=%d%s", emu::Elem<T>::name,
                                BS, batch, rows, cols, nnz, accumulate, shifted ? " unaligned" : ""),
                       {&cy, &cx, &cw});
}

#define KERNELS(SUF, BS) \
    {block_sparse_fwd_##SUF##_##BS, block_sparse_dx_##SUF##_##BS, block_sparse_dw_##SUF##_##BS}

int main() {
    int fails = 0;
    const double tf = 2e-5, tb = 2e-2;
    // Block rows of 4 x 5 blocks: row 1 empty, column 3 empty.
    const std::vector<std::vector<int>> p45{{0, 2}, {}, {1, 2, 4}, {4, 0}};
    const std::vector<std::vector<int>> p34{{0, 2}, {}, {1, 2}};
    fails += run<float, 16>(70, p45, 5, false, KERNELS(f32, 16), tf, 1);
    fails += run<float, 32>(100, p45, 5, true, KERNELS(f32, 32), tf, 2);
    fails += run<float, 64>(70, p34, 4, false, KERNELS(f32, 64), tf, 3);
    fails += run<bf16, 16>(100, p45, 5, true, KERNELS(bf16, 16), tb, 4);
    fails += run<bf16, 32>(70, p45, 5, false, KERNELS(bf16, 32), tb, 5);
    fails += run<bf16, 64>(130, p34, 4, true, KERNELS(bf16, 64), tb, 6);
    fails += run<bf16, 32>(70, p45, 5, true, KERNELS(bf16, 32), tb, 7, true);
    fails += run<float, 16>(100, p45, 5, false, KERNELS(f32, 16), tf, 8, true);
    return fails ? 1 : 0;
}
