// Runs cuda/kernels/flash_attention.cu (forward, split-key decoding and its combine, and
// the backward's delta, main and dq_finish kernels) in the CPU emulator, launched as cuda/src/ops/flash_attention.rs
// launches them, against an f64 attention computed here from the definition, for
// seq_q queries over seq_k keys:
//   S = q kᵀ / sqrt(D) over the visible keys (causal: j <= i + seq_k - seq_q; block mask:
//   the 64x64 tile (i/64, j/64) set), P = softmax(S), o = P v, lse = log sum exp S (-inf, o = 0 and no
//   gradient on rows with no visible key); dv = Pᵀ dO, dS = P (dO vᵀ - rowsum(dO o)),
//   dq = dS k / sqrt(D), dk = dSᵀ q / sqrt(D). With attention dropout, Z_ij = 0 where
//   counter_uniform(seed, (bh·seq_q + i)·seq_k + j) < p, else 1/(1-p): o = (P∘Z) v,
//   dv = (P∘Z)ᵀ dO, dS = P (Z∘(dO vᵀ) - rowsum(dO o)). Keys and values are read with their
//   heads kv_stride apart (packed, or views of a longer cache whose extra rows are NaN).
// Prints one line per case; exits 1 on any mismatch.

#include "shim.h"
#include "common.cuh"
#include "flash_attention.cu"
#include "check.h"

/// The kernels' dynamic shared memory (the largest launch: bwd_smem(128, 2)).
alignas(16) thread_local unsigned char fa_smem[(4 * 64 * (128 + 8) + 2 * 128 * (128 + 8) + 128 * (64 + 8)) * 2 + 1024];

using emu::Compare;
using emu::Data;

/// Kernels of one (dtype, head_dim).
struct FlashKernels {
    void (*fwd)(FlashParams);
    void (*decode)(FlashParams, float*, int);
    void (*combine)(FlashParams, const float*, int);
    void (*bwd)(FlashParams);
    void (*delta)(FlashParams);
    void (*finish)(FlashParams, int);
};

/// One case: shapes, masks, and the grid-y limit of the launch (65535 on every GPU; a
/// smaller one sends heads to grid z as more than 65535 heads would).
struct Case {
    int bh, seq_q, seq_k;
    bool causal, block_mask;
    unsigned y_limit = 65535;
    unsigned sm_count = 132;
    double dropout = 0.0;
    unsigned long long seed = 0;
    int kv_pad = 0;  // k and v as views of a cache of seq_k + kv_pad rows per head (NaN past seq_k)
};

/// `tiles_cfg` of the launcher: grid (ceil(seq / rows), clamp(bh, 1, limit), ceil(bh / y)),
/// `threads` threads.
static void tiles_launch(const Case& c, int seq, unsigned rows, unsigned threads, size_t smem,
                         void (*k)(FlashParams), const FlashParams& p) {
    if (smem > sizeof fa_smem) emu::die("dynamic shared memory larger than the emulated array");
    const unsigned tiles = (seq + rows - 1) / rows, y = std::clamp<unsigned>(c.bh, 1, c.y_limit);
    emu::launch({tiles, y, (c.bh + y - 1) / y}, {threads, 1, 1}, [&] { k(p); });
}

template <typename T, int D> static int run(const Case& c, FlashKernels k, double tol) {
    const int nq = c.seq_q, nk = c.seq_k;
    emu::Rng rng(c.bh * 1000 + nq * 10 + nk * 31 + D + c.causal * 7 + c.block_mask * 3);
    const size_t n = (size_t)c.bh * nq * D, nkv = (size_t)c.bh * nk * D, rows = (size_t)c.bh * nq;
    const int qt = (nq + 63) / 64, kt = (nk + 63) / 64;
    Data<T> q(n, rng, 1.5f), kk(nkv, rng, 1.5f), v(nkv, rng), dout(n, rng);
    // Block mask: a fixed pattern with the diagonal kept, and on masked cases one query
    // tile with nothing visible (its rows get o = 0, lse = -inf), and a key tile that the
    // second query tile of a 128-row forward block visits and the first does not.
    std::vector<unsigned char> mask(qt * kt);
    for (int a = 0; a < qt; a++)
        for (int b = 0; b < kt; b++) mask[a * kt + b] = (a * 7 + b * 5) % 3 != 0 || a == b;
    if (qt > 1)
        for (int b = 0; b < kt; b++) mask[1 * kt + b] = 0;
    if (qt > 3) {
        mask[2 * kt + 0] = 0;
        mask[3 * kt + 0] = 1;
    }
    auto visible = [&](int i, int j) {
        return (!c.causal || j <= i + nk - nq) && (!c.block_mask || mask[(i / 64) * kt + j / 64]);
    };

    std::vector<T> o = emu::poisoned<T>(n), dq = emu::poisoned<T>(n), dk = emu::poisoned<T>(nkv),
                   dv = emu::poisoned<T>(nkv);
    std::vector<float> lse = emu::poisoned<float>(rows), delta = emu::poisoned<float>(rows), dq_accum(n, 0.0f);
    // The heads of k and v kv_stride elements apart, the rows between poisoned (NaN).
    const size_t kv_stride = (size_t)(nk + c.kv_pad) * D;
    std::vector<T> k_heads = emu::poisoned<T>(c.bh * kv_stride), v_heads = emu::poisoned<T>(c.bh * kv_stride);
    for (int h = 0; h < c.bh; h++)
        for (size_t x = 0; x < (size_t)nk * D; x++) {
            k_heads[h * kv_stride + x] = kk.dev[h * (size_t)nk * D + x];
            v_heads[h * kv_stride + x] = v.dev[h * (size_t)nk * D + x];
        }
    FlashParams p{};
    p.q = q.dev.data();
    p.k = k_heads.data();
    p.v = v_heads.data();
    p.kv_stride = (i64)kv_stride;
    p.o = o.data();
    p.lse = lse.data();
    p.dout = dout.dev.data();
    p.dq = dq.data();
    p.dk = dk.data();
    p.dv = dv.data();
    p.dq_accum = dq_accum.data();
    p.delta = delta.data();
    p.mask = c.block_mask ? mask.data() : nullptr;
    p.bh = c.bh;
    p.seq_q = nq;
    p.seq_k = nk;
    p.scale = 1.0f / sqrtf((float)D);
    p.causal = c.causal;
    p.n_k_tiles = kt;
    p.p_drop = (float)c.dropout;
    p.drop_scale = (float)(1.0 / (1.0 - c.dropout));
    p.seed = c.seed;
    const size_t e = sizeof(T);
    const emu::Device dev{c.sm_count};
    const unsigned fwd_rows = e == 2 && D <= 64 ? 128 : 64;  // fwd_rows, fwd_smem
    // Decoding shapes split the keys (decode_split of the launcher), the rest take the
    // forward's query tiles.
    std::vector<float> part;
    int splits = 0;
    if (!c.block_mask && c.dropout == 0 && nq <= 4) {
        const int steps = std::max((nk + 127) / 128, 1);
        splits = std::clamp<int>((2 * c.sm_count + c.bh - 1) / c.bh, 1, steps);
        const int split_keys = (steps + splits - 1) / splits * 128;
        splits = std::max((nk + split_keys - 1) / split_keys, 1);
        part = emu::poisoned<float>(rows * splits * (D + 1));
        float* pp = splits == 1 ? nullptr : part.data();
        const unsigned y = std::clamp<unsigned>(c.bh, 1, c.y_limit);
        emu::launch({(unsigned)splits, y, (c.bh + y - 1) / y}, {128, 1, 1}, [&] { k.decode(p, pp, split_keys); });
        if (splits > 1)
            emu::launch({(unsigned)((rows + 3) / 4), 1, 1}, {128, 1, 1}, [&] { k.combine(p, part.data(), splits); });
    } else {
        tiles_launch(c, nq, fwd_rows, 128, (4 * 64 + (e == 2 ? fwd_rows : 0)) * (D + 8) * e, k.fwd, p);
    }
    emu::launch({(unsigned)((rows + 3) / 4), 1, 1}, {128, 1, 1}, [&] { k.delta(p); });
    const size_t stages = e == 2 ? 2 : 1, keys = e == 2 ? 128 : 64;  // bwd_keys_threads, bwd_smem
    const size_t bwd_smem = (2 * stages * 64 * (D + 8) + 2 * keys * (D + 8) + keys * (64 + 8)) * e + 2 * stages * 64 * 4;
    tiles_launch(c, nk, (unsigned)keys, e == 2 ? 256 : 128, bwd_smem, k.bwd, p);
    emu::launch({dev.grid_for(n, 256), 1, 1}, {256, 1, 1}, [&] { k.finish(p, D); });

    // The f64 reference.
    const double sc = 1.0 / sqrt((double)D);
    auto keep = [&](int h, int i, int j) {
        if (c.dropout <= 0) return 1.0;
        const unsigned long long index = ((unsigned long long)h * nq + i) * nk + j;
        return counter_uniform(c.seed, index) < (float)c.dropout ? 0.0 : 1.0 / (1.0 - c.dropout);
    };
    std::vector<double> ro(n, 0), rl(rows), rdq(n, 0), rdk(nkv, 0), rdv(nkv, 0);
    std::vector<double> pm((size_t)nq * nk);
    for (int h = 0; h < c.bh; h++) {
        const size_t b = (size_t)h * nq * D, bk = (size_t)h * nk * D;
        for (int i = 0; i < nq; i++) {
            double m = -INFINITY;
            std::vector<double> s(nk);
            for (int j = 0; j < nk; j++) {
                double a = 0;
                for (int d = 0; d < D; d++) a += q.ref[b + i * D + d] * kk.ref[bk + j * D + d];
                s[j] = a * sc;
                if (visible(i, j)) m = std::max(m, s[j]);
            }
            double l = 0;
            for (int j = 0; j < nk; j++)
                if (visible(i, j)) l += exp(s[j] - m);
            rl[h * nq + i] = l > 0 ? m + log(l) : -INFINITY;
            for (int j = 0; j < nk; j++)
                pm[(size_t)i * nk + j] = l > 0 && visible(i, j) ? exp(s[j] - rl[h * nq + i]) : 0.0;
            for (int j = 0; j < nk; j++)
                for (int d = 0; d < D; d++)
                    ro[b + i * D + d] += pm[(size_t)i * nk + j] * keep(h, i, j) * v.ref[bk + j * D + d];
        }
        for (int i = 0; i < nq; i++) {
            double di = 0;
            for (int d = 0; d < D; d++) di += dout.ref[b + i * D + d] * ro[b + i * D + d];
            for (int j = 0; j < nk; j++) {
                const double pij = pm[(size_t)i * nk + j];
                if (pij == 0) continue;
                double dp = 0;
                for (int d = 0; d < D; d++) dp += dout.ref[b + i * D + d] * v.ref[bk + j * D + d];
                const double z = keep(h, i, j);
                const double ds = pij * (dp * z - di);
                for (int d = 0; d < D; d++) {
                    rdq[b + i * D + d] += sc * ds * kk.ref[bk + j * D + d];
                    rdk[bk + j * D + d] += sc * ds * q.ref[b + i * D + d];
                    rdv[bk + j * D + d] += pij * z * dout.ref[b + i * D + d];
                }
            }
        }
    }
    Compare co("o", tol), cl("lse", tol), cq("dq", tol), ck("dk", tol), cv("dv", tol);
    co.all(o, ro);
    cl.all(lse, rl);
    cq.all(dq, rdq);
    ck.all(dk, rdk);
    cv.all(dv, rdv);
    std::string label = emu::fmt("flash %-4s D=%-3d bh=%d seq=%-3d", emu::Elem<T>::name, D, c.bh, nq);
    if (nk != nq) label += emu::fmt(" keys=%d", nk);
    label += emu::fmt(" causal=%d mask=%d", c.causal, c.block_mask);
    if (c.y_limit != 65535) label += emu::fmt(" grid-y-limit=%u", c.y_limit);
    if (c.dropout > 0) label += emu::fmt(" dropout=%.2f", c.dropout);
    if (c.kv_pad > 0) label += emu::fmt(" kv-heads-apart=%zu", kv_stride);
    if (splits > 0) label += emu::fmt(" decode-splits=%d", splits);
    return emu::report(label, {&co, &cl, &cq, &ck, &cv});
}

#define KERNELS(SUF, D)                                                                 \
    FlashKernels{flash_fwd_##SUF##_d##D, flash_decode_##SUF##_d##D, flash_decode_combine_##SUF##_d##D, \
                 flash_bwd_##SUF##_d##D, flash_bwd_delta_##SUF##_d##D, flash_bwd_dq_finish_##SUF}

int main() {
    int fails = 0;
    const double f32 = 2e-5, bf = 2e-2;
    fails += run<float, 32>({2, 100, 100, true, false}, KERNELS(f32, 32), f32);
    fails += run<float, 32>({1, 130, 130, false, true}, KERNELS(f32, 32), f32);
    fails += run<float, 64>({1, 130, 130, true, true}, KERNELS(f32, 64), f32);
    fails += run<float, 128>({1, 70, 70, false, false, 65535, 1}, KERNELS(f32, 128), f32);
    fails += run<bf16, 32>({5, 100, 100, true, true, 2}, KERNELS(bf16, 32), bf);
    fails += run<bf16, 64>({1, 130, 130, false, true}, KERNELS(bf16, 64), bf);
    fails += run<bf16, 64>({2, 100, 100, true, false}, KERNELS(bf16, 64), bf);
    fails += run<float, 128>({1, 130, 130, true, true}, KERNELS(f32, 128), f32);
    fails += run<bf16, 32>({3, 64, 64, false, false}, KERNELS(bf16, 32), bf);
    fails += run<bf16, 128>({1, 130, 130, true, true}, KERNELS(bf16, 128), bf);
    // Attention dropout: the CPU's counter mask, kept probabilities scaled.
    fails += run<float, 64>({2, 100, 100, true, false, 65535, 132, 0.3, 7}, KERNELS(f32, 64), f32);
    fails += run<bf16, 32>({3, 130, 130, false, true, 2, 132, 0.1, 11}, KERNELS(bf16, 32), bf);
    // Five tiles: the two-stage pipelines run several rounds, past skipped tiles.
    fails += run<bf16, 64>({1, 300, 300, true, true}, KERNELS(bf16, 64), bf);
    fails += run<float, 32>({1, 300, 300, false, true}, KERNELS(f32, 32), f32);
    // Unequal queries and keys (the causal mask aligned at the last of each): one query
    // over a key cache, a ragged prefill over more keys, and more queries than keys
    // (rows that see nothing); masked, in both forward work splits, and with dropout.
    fails += run<float, 32>({2, 1, 150, true, false}, KERNELS(f32, 32), f32);
    fails += run<bf16, 64>({1, 70, 200, true, true}, KERNELS(bf16, 64), bf);
    fails += run<float, 64>({2, 200, 70, true, true}, KERNELS(f32, 64), f32);
    fails += run<bf16, 32>({1, 300, 130, true, false}, KERNELS(bf16, 32), bf);
    fails += run<float, 32>({1, 130, 300, false, true, 65535, 132, 0.2, 5}, KERNELS(f32, 32), f32);
    // Keys and values read in place from a longer cache (heads further apart than their
    // rows; the rows between are NaN): decoding steps and a prefill, forward and backward.
    fails += run<float, 64>({3, 1, 130, true, false, 65535, 132, 0.0, 0, 70}, KERNELS(f32, 64), f32);
    fails += run<bf16, 64>({2, 1, 70, true, false, 65535, 132, 0.0, 0, 1}, KERNELS(bf16, 64), bf);
    fails += run<bf16, 128>({2, 100, 200, true, true, 65535, 132, 0.1, 3, 56}, KERNELS(bf16, 128), bf);
    // Decoding with the keys split across blocks (few multiprocessors, so several
    // splits per head; a ragged last split), up to four queries, causal rows that see
    // no key, a split no query of the first three sees, and one split per head.
    fails += run<float, 64>({1, 4, 300, true, false, 65535, 2}, KERNELS(f32, 64), f32);
    fails += run<bf16, 128>({2, 2, 1000, false, false, 65535, 4, 0.0, 0, 24}, KERNELS(bf16, 128), bf);
    fails += run<bf16, 32>({3, 3, 2, true, false, 65535, 2}, KERNELS(bf16, 32), bf);
    fails += run<float, 32>({1, 4, 129, true, false, 65535, 2}, KERNELS(f32, 32), f32);
    fails += run<float, 128>({3, 1, 260, true, false, 2, 1}, KERNELS(f32, 128), f32);
    fails += run<bf16, 64>({5, 1, 129, true, false, 65535, 1}, KERNELS(bf16, 64), bf);
    return fails ? 1 : 0;
}
