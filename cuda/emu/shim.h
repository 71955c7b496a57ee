// CUDA on the CPU, so that the real kernel sources (cuda/kernels/common.cuh and
// <stem>.cu, compiled with -DMONARCH_EMULATE) run unchanged in a C++20 program. Used by
// the drivers in this folder (cuda/tests/emulated_kernels.rs) and by the emulated device
// (cuda/src/emulator.rs, with launcher.h); the GPU build (NVRTC) never sees this file.
//
// What is emulated, and how:
// - Threads: every CUDA thread of a block is a fiber (its own 256 KiB stack with a guard
//   page) on one OS thread, switched by a six-register swap on x86-64 (ucontext on other
//   machines, or with MONARCH_EMU_UCONTEXT; OS threads and std::barrier were 30 times
//   slower); blocks run one after another. `threadIdx`, `blockIdx`,
//   `blockDim` and `gridDim` (x, y, z) are globals set before each fiber resumes. The
//   fibers of a block run in thread order, or in reverse order on odd blocks, each until
//   it blocks, so a missing barrier shows up as a read of poisoned or stale memory.
// - `__syncthreads()`: a block barrier over all threads of the block. A barrier that
//   cannot complete (some threads exited or wait elsewhere) aborts with a message
//   instead of hanging, so divergent barriers are errors here.
// - Warp operations (`__shfl_sync`, `__shfl_xor_sync` and the tensor-core `mma`): each
//   lane deposits its registers in a double-buffered warp slot and waits at a barrier of
//   its 32 lanes (lane = linear thread index % 32); the lanes must be converged (same
//   count of warp operations, full mask) or the run aborts. Shuffles move 32- or 64-bit
//   values (CUDA's overloads for int/float and long long/double).
// - `__shared__` is `thread_local`: static storage (one copy, as all fibers share one OS
//   thread) that is alone in its module's TLS segment (the driver program's, or the
//   emulated device's kernel library's; see `shared_memory`), which `launch` fills with 0xff
//   bytes (NaN as f32 and as bf16) before each block. (A linker section would not do:
//   GCC ignores section attributes on the statics of templates.) A driver defines a
//   source's `extern __shared__` array as `alignas(16) thread_local unsigned char name[bytes]`;
//   the module must hold no other thread_local but the shim's one-byte `tls_anchor`.
// - `cp.async` (16-byte copies global -> shared with zero fill): queued per thread and
//   carried out only at the `cp.async.wait_group` that covers them, the latest a GPU may;
//   `ldmatrix` (x4, plain and .trans): the last lane of the warp to arrive reads all 32
//   rows at once, as the warp-synchronous instruction does. Both check that their shared
//   addresses lie in the `__shared__` arrays and are aligned.
// - `atomicAdd` on float and int: a plain read-modify-write (one OS thread runs everything).
// - The three inline-asm bodies of common.cuh call, under `#ifdef MONARCH_EMULATE`:
//   `cvt_rn_bf16_f32` (cvt.rn.bf16.f32), `cvt_rn_bf16x2_f32` (cvt.rn.bf16x2.f32 with the
//   PTX operand order d, a, b: a to the upper half) and `mma_m16n8k16_bf16`
//   (mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32). They follow the PTX ISA's
//   definitions (rounding and the fragment layouts of "Matrix Fragments for
//   mma.m16n8k16 with floating point type"), written independently of common.cuh's own
//   layout comments, so a wrong layout or operand order there is caught, not copied.
//   The product sums the 16 terms in k order with fmaf (f32 accumulation, as the GPU up
//   to the order of the additions).
//   `tanh_approx_f32` (tanh.approx.f32) is the exact tanh off by the PTX ISA's whole
//   error bound, 2^-10.987 relative.
// - Qualifiers `__global__`, `__device__`, `__forceinline__`, `__noinline__`,
//   `__launch_bounds__`, `__restrict__`, `__align__`, and the intrinsics the kernels use
//   (`__int_as_float`, `__uint_as_float`, `__float_as_uint`, `rsqrtf`, integer `min`).

#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>
#include <link.h>
#include <sys/mman.h>
#include <unistd.h>

#if !(defined(__x86_64__) && defined(__ELF__)) || defined(MONARCH_EMU_UCONTEXT)
#define MONARCH_EMU_USE_UCONTEXT 1
#include <ucontext.h>
#endif

// ---------------------------------------------------------------- qualifiers

#define __global__
#define __device__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ thread_local

/// CUDA's dim3 / uint3.
struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

inline dim3 threadIdx, blockIdx, blockDim, gridDim;

// ---------------------------------------------------------------- intrinsics

inline float __int_as_float(int v) {
    float f;
    memcpy(&f, &v, 4);
    return f;
}
inline float __uint_as_float(unsigned v) {
    float f;
    memcpy(&f, &v, 4);
    return f;
}
inline unsigned __float_as_uint(float f) {
    unsigned v;
    memcpy(&v, &f, 4);
    return v;
}
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
template <typename A, typename B, typename = std::enable_if_t<std::is_integral_v<A> && std::is_integral_v<B>>>
inline std::common_type_t<A, B> min(A a, B b) {
    return b < a ? b : a;
}
inline float atomicAdd(float* p, float v) {
    const float old = *p;
    *p = old + v;
    return old;
}
inline int atomicAdd(int* p, int v) {
    const int old = *p;
    *p = old + v;
    return old;
}

namespace emu {

/// The kernel running, for messages (set by the emulated device's entries, launcher.h).
inline const char* current_kernel = "";

[[noreturn]] inline void die(const char* what) {
    fprintf(stderr, "emulator: %s%s%s (block %u,%u,%u thread %u,%u,%u)\n", current_kernel, *current_kernel ? ": " : "",
            what, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
    fflush(stdout);
    exit(3);
}

// ---------------------------------------------------------------- fibers

#ifndef MONARCH_EMU_USE_UCONTEXT
// Saves the callee-saved registers on the current stack, stores its pointer in *from and
// continues on the stack `to` (System V x86-64).
extern "C" void monarch_emu_switch(void** from, void* to);
asm(R"(
    .text
    .globl monarch_emu_switch
    .type monarch_emu_switch, @function
monarch_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size monarch_emu_switch, .-monarch_emu_switch
    .section .note.GNU-stack,"",@progbits
    .text
)");
#endif

enum State { READY, AT_BLOCK_BARRIER, AT_WARP_BARRIER, DONE };

/// One `cp.async`: `bytes` to shared `dst`, the first `src_bytes` from global `src`, the
/// rest zeros.
struct AsyncCopy {
    void* dst;
    const void* src;
    int bytes, src_bytes;
};

struct Fiber {
    void* sp = nullptr;  // saved stack pointer while switched out
#ifdef MONARCH_EMU_USE_UCONTEXT
    ucontext_t ctx;
#endif
    char* stack = nullptr;
    dim3 tid;
    State state = DONE;
    unsigned warp_ops = 0;  // warp operations done (selects the slot's half)
    std::vector<AsyncCopy> open;                // cp.async issued since the last commit
    std::vector<std::vector<AsyncCopy>> groups;  // committed, not yet waited for
};

/// One warp's exchange slot: 6 words per lane (an mma's A and B registers), two halves.
struct WarpSlot {
    uint32_t w[2][32][6];
    unsigned ops[32];
    int arrived = 0;
};

constexpr size_t STACK_BYTES = 256 << 10, GUARD_BYTES = 4096;
constexpr unsigned MAX_THREADS = 1024;

struct Scheduler {
    std::vector<Fiber> fibers;
    WarpSlot warps[MAX_THREADS / 32];
    unsigned n = 0, cur = 0, block_arrived = 0;
    void* main_sp = nullptr;
#ifdef MONARCH_EMU_USE_UCONTEXT
    ucontext_t main_ctx;
#endif
    void (*body)(void*) = nullptr;
    void* body_arg = nullptr;
};

inline Scheduler& sched() {
    static Scheduler s;
    return s;
}

inline void switch_to_main() {
    Scheduler& s = sched();
#ifdef MONARCH_EMU_USE_UCONTEXT
    swapcontext(&s.fibers[s.cur].ctx, &s.main_ctx);
#else
    monarch_emu_switch(&s.fibers[s.cur].sp, s.main_sp);
#endif
}

inline void fiber_main() {
    Scheduler& s = sched();
    s.body(s.body_arg);
    s.fibers[s.cur].state = DONE;
    switch_to_main();
    die("a finished fiber was resumed");
}

inline void prepare(Fiber& f) {
    if (!f.stack) {
        void* m = mmap(nullptr, STACK_BYTES + GUARD_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) die("cannot map a fiber stack");
        f.stack = static_cast<char*>(m);
        mprotect(f.stack, GUARD_BYTES, PROT_NONE);  // an overflow faults instead of corrupting
    }
#ifdef MONARCH_EMU_USE_UCONTEXT
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack + GUARD_BYTES;
    f.ctx.uc_stack.ss_size = STACK_BYTES;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_main, 0);
#else
    // Top of stack: a fake return address (fiber_main never returns), fiber_main as the
    // address `ret` jumps to, then six zeroed callee-saved registers.
    uintptr_t top = (reinterpret_cast<uintptr_t>(f.stack) + GUARD_BYTES + STACK_BYTES) & ~uintptr_t(15);
    void** sp = reinterpret_cast<void**>(top);
    *--sp = nullptr;
    *--sp = reinterpret_cast<void*>(&fiber_main);
    for (int i = 0; i < 6; i++) *--sp = nullptr;
    f.sp = sp;
#endif
    f.state = READY;
    f.warp_ops = 0;
    f.open.clear();
    f.groups.clear();
}

inline void resume(unsigned i) {
    Scheduler& s = sched();
    s.cur = i;
    threadIdx = s.fibers[i].tid;
#ifdef MONARCH_EMU_USE_UCONTEXT
    swapcontext(&s.main_ctx, &s.fibers[i].ctx);
#else
    monarch_emu_switch(&s.main_sp, s.fibers[i].sp);
#endif
}

/// Runs one block: every thread as a fiber until all finished.
inline void run_block(bool reverse) {
    Scheduler& s = sched();
    for (unsigned i = 0; i < s.n; i++) prepare(s.fibers[i]);
    s.block_arrived = 0;
    for (unsigned w = 0; w < s.n / 32; w++) s.warps[w].arrived = 0;
    for (;;) {
        bool ran = false, all_done = true;
        for (unsigned k = 0; k < s.n; k++) {
            const unsigned i = reverse ? s.n - 1 - k : k;
            if (s.fibers[i].state == READY) {
                resume(i);
                ran = true;
            }
            all_done &= s.fibers[i].state == DONE;
        }
        if (all_done) return;
        if (!ran) {
            unsigned done = 0, at_block = 0, at_warp = 0;
            for (unsigned i = 0; i < s.n; i++) {
                done += s.fibers[i].state == DONE;
                at_block += s.fibers[i].state == AT_BLOCK_BARRIER;
                at_warp += s.fibers[i].state == AT_WARP_BARRIER;
            }
            char msg[160];
            snprintf(msg, sizeof msg, "deadlock: %u threads at __syncthreads, %u at a warp operation, %u exited",
                     at_block, at_warp, done);
            die(msg);
        }
    }
}

/// `__syncthreads()`.
inline void block_barrier() {
    Scheduler& s = sched();
    s.fibers[s.cur].state = AT_BLOCK_BARRIER;
    if (++s.block_arrived == s.n) {
        s.block_arrived = 0;
        for (unsigned i = 0; i < s.n; i++) s.fibers[i].state = READY;
    }
    switch_to_main();
}

/// Deposits `words` of this lane in its warp's slot, waits for the 32 lanes and returns
/// the slot half holding every lane's deposit. The last lane to arrive calls
/// `complete(half)` first (if given), so a warp-wide instruction can act at one instant.
inline uint32_t (*warp_exchange(const uint32_t* words, int count, void (*complete)(uint32_t (*)[6]) = nullptr))[6] {
    Scheduler& s = sched();
    Fiber& f = s.fibers[s.cur];
    const unsigned linear = f.tid.x + blockDim.x * (f.tid.y + blockDim.y * f.tid.z);
    const unsigned warp = linear / 32, lane = linear % 32, half = f.warp_ops & 1;
    WarpSlot& slot = s.warps[warp];
    for (int i = 0; i < count; i++) slot.w[half][lane][i] = words[i];
    slot.ops[lane] = f.warp_ops++;
    f.state = AT_WARP_BARRIER;
    if (++slot.arrived == 32) {
        slot.arrived = 0;
        for (unsigned l = 0; l < 32; l++) {
            if (slot.ops[l] != slot.ops[0]) die("warp operation with lanes not converged");
            s.fibers[warp * 32 + l].state = READY;
        }
        if (complete) complete(slot.w[half]);
    }
    switch_to_main();
    return slot.w[half];
}

/// A function of this module, whose address tells which loaded module that is.
inline void launch_raw_marker() {}

/// The TLS segment of the module holding this code (this thread's copy): every
/// `__shared__` array. The module is the program for the drivers, the kernel source's
/// shared library for the emulated device (cuda/emu/launcher.h), which runs every launch
/// on one thread; the first launch finds the segment, later ones reuse it.
struct SharedMemory {
    unsigned char* p = nullptr;
    size_t bytes = 0;
};

/// A byte of this module's TLS, read first so that a shared library's segment is
/// allocated in this thread before it is looked up.
inline thread_local unsigned char tls_anchor;

inline SharedMemory shared_memory() {
    static const SharedMemory m = [] {
        (void)*static_cast<volatile unsigned char*>(&tls_anchor);
        struct Find {
            uintptr_t code;
            SharedMemory r;
            bool found;
        } find{reinterpret_cast<uintptr_t>(&launch_raw_marker), {}, false};
        dl_iterate_phdr(
            [](dl_phdr_info* info, size_t, void* out) {
                Find& f = *static_cast<Find*>(out);
                bool mine = false;
                for (int i = 0; i < info->dlpi_phnum; i++) {
                    const auto& ph = info->dlpi_phdr[i];
                    const uintptr_t start = info->dlpi_addr + ph.p_vaddr;
                    mine |= ph.p_type == PT_LOAD && f.code >= start && f.code < start + ph.p_memsz;
                }
                if (!mine) return 0;
                for (int i = 0; i < info->dlpi_phnum; i++)
                    if (info->dlpi_phdr[i].p_type == PT_TLS)
                        f.r = {static_cast<unsigned char*>(info->dlpi_tls_data), (size_t)info->dlpi_phdr[i].p_memsz};
                f.found = true;
                return 1;
            },
            &find);
        if (!find.found) die("the module running the kernels was not found");
        if (find.r.bytes && !find.r.p) die("the TLS segment holding __shared__ arrays was not found");
        return find.r;
    }();
    return m;
}

/// Starts `grid` blocks of `block` threads running `body(arg)` (see `launch`).
inline void launch_raw(dim3 grid, dim3 block, void (*body)(void*), void* arg) {
    Scheduler& s = sched();
    const unsigned n = block.x * block.y * block.z;
    if (n == 0 || n > MAX_THREADS || n % 32 != 0) die("block size must be a positive multiple of 32, at most 1024");
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535) die("bad grid");
    if (s.fibers.size() < n) s.fibers.resize(n);
    s.n = n;
    s.body = body;
    s.body_arg = arg;
    gridDim = grid;
    blockDim = block;
    for (unsigned i = 0; i < n; i++) s.fibers[i].tid = {i % block.x, i / block.x % block.y, i / (block.x * block.y)};
    const SharedMemory shared = shared_memory();
    unsigned long count = 0;
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                memset(shared.p, 0xff, shared.bytes);
                blockIdx = {x, y, z};
                run_block(count++ % 2 == 1);
            }
    threadIdx = {0, 0, 0};
}

/// Runs `body` (a kernel call) as a grid of `grid` blocks of `block` threads.
template <typename F> void launch(dim3 grid, dim3 block, F body) {
    launch_raw(grid, block, [](void* f) { (*static_cast<F*>(f))(); }, &body);
}

// ---------------------------------------------------------------- PTX instructions

/// cvt.rn.bf16.f32: round to nearest, ties to even; NaN gives the canonical NaN.
inline unsigned short cvt_rn_bf16_f32(float a) {
    const uint32_t u = __float_as_uint(a);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fff;
    return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/// cvt.rn.bf16x2.f32 d, a, b: a converted into the upper half of d, b into the lower.
inline unsigned cvt_rn_bf16x2_f32(float a, float b) {
    return ((unsigned)cvt_rn_bf16_f32(a) << 16) | cvt_rn_bf16_f32(b);
}

inline float bf16_half(uint32_t reg, int upper) { return __uint_as_float(upper ? reg & 0xffff0000u : reg << 16); }

/// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {d}, {a}, {b}, {c} with d = c in
/// place. PTX ISA fragments (g = lane / 4, t = lane % 4; element i of a register pair
/// in the low half for even i):
///   A a0..a7 in 4 regs: row g + 8 for i in {2,3,6,7} else g; col 2t + (i % 2) + 8 for i >= 4
///   B b0..b3 in 2 regs: row (k) 2t + (i % 2) + 8 for i >= 2; col g
///   C c0..c3:           row g + 8 for i >= 2 else g; col 2t + (i % 2)
inline void mma_m16n8k16_bf16(float* d, const unsigned* a, const unsigned* b) {
    const uint32_t words[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
    uint32_t(*lanes)[6] = warp_exchange(words, 6);
    const unsigned lane = (threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) % 32;
    const int g = lane / 4, t = lane % 4;
    for (int i = 0; i < 4; i++) {
        const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + i % 2;
        float acc = d[i];
        for (int k = 0; k < 16; k++) {
            // A element (row, k): lane (row % 8) * 4 + (k % 8) / 2, index i = k % 2 + 2 (row >= 8) + 4 (k >= 8)
            const int ai = k % 2 + (row >= 8 ? 2 : 0) + (k >= 8 ? 4 : 0);
            const float av = bf16_half(lanes[(row % 8) * 4 + (k % 8) / 2][ai / 2], ai % 2);
            // B element (k, col): lane col * 4 + (k % 8) / 2, index i = k % 2 + 2 (k >= 8)
            const int bi = k % 2 + (k >= 8 ? 2 : 0);
            const float bv = bf16_half(lanes[col * 4 + (k % 8) / 2][4 + bi / 2], bi % 2);
            acc = fmaf(av, bv, acc);
        }
        d[i] = acc;
    }
}

/// tanh.approx.f32: PTX guarantees a relative error of at most 2^-10.987 and no more;
/// emulated as the exact value off by that whole bound (away from zero), so that what a
/// kernel's tolerance accepts here it accepts on any GPU.
inline float tanh_approx_f32(float x) { return (float)(std::tanh((double)x) * (1.0 + std::exp2(-10.987))); }

/// Whether `[p, p + bytes)` lies in the `__shared__` arrays.
inline bool in_shared(const void* p, size_t bytes) {
    const SharedMemory m = shared_memory();
    const unsigned char* c = static_cast<const unsigned char*>(p);
    return c >= m.p && c + bytes <= m.p + m.bytes;
}

/// cp.async.cg.shared.global [dst], [src], bytes, src_bytes: queued on the thread and
/// carried out only when a `cp.async.wait_group` covers its group (the latest a GPU may
/// complete it), so a read before the wait sees the poisoned or stale shared memory.
inline void cp_async(void* dst, const void* src, int bytes, int src_bytes) {
    if (!in_shared(dst, bytes)) die("cp.async destination outside shared memory");
    if ((uintptr_t)dst % bytes || (uintptr_t)src % bytes) die("cp.async address not aligned to its size");
    if (src_bytes < 0 || src_bytes > bytes) die("cp.async source size out of range");
    sched().fibers[sched().cur].open.push_back({dst, src, bytes, src_bytes});
}

/// cp.async.commit_group: the copies issued since the last commit become one group.
inline void cp_async_commit() {
    Fiber& f = sched().fibers[sched().cur];
    f.groups.push_back(std::move(f.open));
    f.open.clear();
}

/// cp.async.wait_group n: completes all but the `n` most recent committed groups.
inline void cp_async_wait(int n) {
    Fiber& f = sched().fibers[sched().cur];
    while ((int)f.groups.size() > n) {
        for (const AsyncCopy& c : f.groups.front()) {
            memcpy(c.dst, c.src, c.src_bytes);
            memset(static_cast<char*>(c.dst) + c.src_bytes, 0, c.bytes - c.src_bytes);
        }
        f.groups.erase(f.groups.begin());
    }
}

/// ldmatrix.sync.aligned.m8n8.x4{.trans}.shared.b16: lane i gives the address of row
/// i % 8 of matrix i / 8 (eight 16-bit elements, 16-byte aligned). Without .trans, lane t
/// receives in register j the elements (row t / 4, cols 2(t % 4), 2(t % 4) + 1) of matrix
/// j; with .trans, (rows 2(t % 4), 2(t % 4) + 1, col t / 4); the lower column or row in
/// the low half (PTX ISA, "Warp-level matrix load instruction: ldmatrix").
template <bool TRANS> inline void ldmatrix_x4(unsigned* r, const void* row) {
    uint32_t w[2];
    memcpy(w, &row, sizeof row);
    uint32_t(*lanes)[6] = warp_exchange(w, 2, [](uint32_t(*half)[6]) {
        const unsigned char* rows[32];
        for (int i = 0; i < 32; i++) {
            memcpy(&rows[i], half[i], sizeof rows[i]);
            if (!in_shared(rows[i], 16) || (uintptr_t)rows[i] % 16) die("ldmatrix row not 16-byte aligned in shared memory");
        }
        uint32_t out[32][4];
        auto elem = [&](int matrix, int row, int col) {
            uint16_t v;
            memcpy(&v, rows[matrix * 8 + row] + 2 * col, 2);
            return (uint32_t)v;
        };
        for (int t = 0; t < 32; t++)
            for (int j = 0; j < 4; j++)
                out[t][j] = TRANS ? elem(j, 2 * (t % 4), t / 4) | elem(j, 2 * (t % 4) + 1, t / 4) << 16
                                  : elem(j, t / 4, 2 * (t % 4)) | elem(j, t / 4, 2 * (t % 4) + 1) << 16;
        for (int t = 0; t < 32; t++) memcpy(half[t], out[t], sizeof out[t]);
    });
    const unsigned lane = (threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) % 32;
    for (int j = 0; j < 4; j++) r[j] = lanes[lane][j];
}

}  // namespace emu

// ---------------------------------------------------------------- warp shuffles

template <typename T> inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    static_assert(sizeof(T) == 4 || sizeof(T) == 8, "32- and 64-bit shuffles only");
    if (mask != 0xffffffffu || width != 32) emu::die("only full-warp shuffles are emulated");
    uint32_t w[2];
    memcpy(w, &v, sizeof(T));
    uint32_t(*lanes)[6] = emu::warp_exchange(w, sizeof(T) / 4);
    T r;
    memcpy(&r, &lanes[src & 31][0], sizeof(T));
    return r;
}

template <typename T> inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    const unsigned lane = (threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) % 32;
    return __shfl_sync(mask, v, (int)(lane ^ (unsigned)lane_mask), width);
}

inline void __syncthreads() { emu::block_barrier(); }
