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
// - Race check (`-DMONARCH_EMU_RACECHECK` with `-fsanitize=thread`): each CUDA thread of
//   a block is also a ThreadSanitizer fiber, switched without synchronisation, and the
//   only happens-before edges are `__syncthreads()` (every thread releases before it
//   waits and acquires after), the end of a block before the next one starts (through
//   the launching thread: a fiber's end to it, it to the next block's fibers), and a
//   `cp.async` group's commit and wait around its copies (see `cp_async_wait`). Warp
//   operations (shuffles, `mma`, `ldmatrix`) order no memory: CUDA promises that among a
//   warp's lanes only for `__syncwarp`, which the kernels do not use. So two threads of a
//   block that touch the same shared or global word with no barrier between them, one of
//   them writing, are reported whatever order the fibers ran in, as compute-sanitizer's
//   racecheck would on a GPU. `atomicAdd` is then a real (relaxed) atomic. The shim's own
//   bookkeeping (`MONARCH_EMU_UNCHECKED` functions) is left out of the check. Not
//   checked: races between blocks (they run one after another here, and as they share
//   the `__shared__` arrays' addresses they would all look like races).
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

#ifdef MONARCH_EMU_RACECHECK
#include <sanitizer/tsan_interface.h>
// The shim's own bookkeeping (scheduler state, warp slots, the launching thread's
// writes of threadIdx): not instrumented, so not part of the race check. (Library calls
// such as memcpy are still checked, by ThreadSanitizer's interceptors.)
#define MONARCH_EMU_UNCHECKED __attribute__((no_sanitize("thread"), noinline))
#else
#define MONARCH_EMU_UNCHECKED
#endif

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
template <typename A, typename B, typename = std::enable_if_t<std::is_integral_v<A> && std::is_integral_v<B>>>
inline std::common_type_t<A, B> max(A a, B b) {
    return a < b ? b : a;
}
#ifdef MONARCH_EMU_RACECHECK
inline float atomicAdd(float* p, float v) {
    float old, sum;
    __atomic_load(p, &old, __ATOMIC_RELAXED);
    do sum = old + v;
    while (!__atomic_compare_exchange(p, &old, &sum, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return old;
}
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
#else
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
#endif

namespace emu {

/// The kernel running, for messages (set by the emulated device's entries, launcher.h).
inline const char* current_kernel = "";

[[noreturn]] inline void die(const char* what) {
    fprintf(stderr, "emulator: %s%s%s (block %u,%u,%u thread %u,%u,%u)\n", current_kernel, *current_kernel ? ": " : "",
            what, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
    fflush(stdout);
    exit(3);
}

// ---------------------------------------------------------------- race check

#ifdef MONARCH_EMU_RACECHECK
/// A happens-before edge from every `release(sync)` so far to this `acquire(sync)`.
inline void release(void* sync) { __tsan_release(sync); }
inline void acquire(void* sync) { __tsan_acquire(sync); }
#else
inline void release(void*) {}
inline void acquire(void*) {}
#endif

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
#ifdef MONARCH_EMU_RACECHECK
    void* tsan = nullptr;  // this thread index's ThreadSanitizer fiber (renamed for each block)
    void* tsan_copies = nullptr;  // the one that does its cp.async copies
    char group_sync[16] = {};     // the thread's clock at each commit (a ring of groups in flight)
    char copies_done = 0;         // the copy fiber's clock after each wait's copies
    unsigned committed = 0, waited = 0;  // groups committed, groups waited for
#endif
    dim3 tid;
    State state = DONE;
    unsigned warp_ops = 0;  // warp operations done (selects the slot's half)
    unsigned barriers = 0;  // block barriers passed (selects the race check's sync object)
    std::vector<AsyncCopy> open;                // cp.async issued since the last commit
    std::vector<std::vector<AsyncCopy>> groups;  // committed, not yet waited for
};

/// Copies `n` words into a warp slot, word by word (volatile, so the compiler makes no
/// memcpy call of it, which the race check would see as the lane's write).
MONARCH_EMU_UNCHECKED inline void slot_store(uint32_t* slot, const uint32_t* words, int n) {
    volatile uint32_t* d = slot;
    for (int i = 0; i < n; i++) d[i] = words[i];
}

/// One warp's exchange slot: 6 words per lane (an mma's A and B registers), two halves.
struct WarpSlot {
    uint32_t w[2][32][6];
    unsigned ops[32];
    int arrived = 0;
};

constexpr size_t STACK_BYTES = 256 << 10, GUARD_BYTES = 4096;
constexpr unsigned MAX_THREADS = 1024;

struct Scheduler {
    Fiber* fibers = new Fiber[MAX_THREADS];  // a plain array: no container calls in the race check
    WarpSlot warps[MAX_THREADS / 32];
    unsigned n = 0, cur = 0, block_arrived = 0;
    void* main_sp = nullptr;
#ifdef MONARCH_EMU_USE_UCONTEXT
    ucontext_t main_ctx;
#endif
    void (*body)(void*) = nullptr;
    void* body_arg = nullptr;
    // Race check: the sync objects of the block barrier (two: a thread that has passed
    // barrier k and reaches k + 1 releases into the other one, so that a thread still to
    // resume from k does not acquire it), of the launching thread to the block's fibers
    // when they start, and of the fibers to it when they finish.
    char block_sync[2] = {}, start_sync = 0, end_sync = 0;
#ifdef MONARCH_EMU_RACECHECK
    void* tsan_main = nullptr;
#endif
};

/// The scheduler (a plain global: a function's static would add a guard check to every
/// call, a cost under the race check).
inline Scheduler scheduler;
inline Scheduler& sched() { return scheduler; }

MONARCH_EMU_UNCHECKED inline void switch_to_main() {
    Scheduler& s = sched();
#ifdef MONARCH_EMU_RACECHECK
    __tsan_switch_to_fiber(s.tsan_main, __tsan_switch_to_fiber_no_sync);
#endif
#ifdef MONARCH_EMU_USE_UCONTEXT
    swapcontext(&s.fibers[s.cur].ctx, &s.main_ctx);
#else
    monarch_emu_switch(&s.fibers[s.cur].sp, s.main_sp);
#endif
}

MONARCH_EMU_UNCHECKED inline void fiber_main() {
    Scheduler& s = sched();
    acquire(&s.start_sync);
    s.body(s.body_arg);
    release(&s.end_sync);
    s.fibers[s.cur].state = DONE;
    switch_to_main();
    die("a finished fiber was resumed");
}

MONARCH_EMU_UNCHECKED inline void prepare(Fiber& f) {
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
#ifdef MONARCH_EMU_RACECHECK
    // One ThreadSanitizer fiber per thread index, made once (making one per block is
    // slow). When it starts it acquires what the launching thread released, which has
    // acquired the ends of the blocks before (fiber_main, run_block).
    if (!f.tsan) f.tsan = __tsan_create_fiber(0);
    if (!f.tsan_copies) f.tsan_copies = __tsan_create_fiber(0);
    char name[80];
    snprintf(name, sizeof name, "block (%u,%u,%u) thread (%u,%u,%u)", blockIdx.x, blockIdx.y, blockIdx.z, f.tid.x,
             f.tid.y, f.tid.z);
    __tsan_set_fiber_name(f.tsan, name);
    strncat(name, " cp.async", sizeof name - strlen(name) - 1);
    __tsan_set_fiber_name(f.tsan_copies, name);
    f.committed = f.waited = 0;
#endif
    f.state = READY;
    f.warp_ops = 0;
    f.barriers = 0;
    f.open.clear();
    f.groups.clear();
}

MONARCH_EMU_UNCHECKED inline void resume(unsigned i) {
    Scheduler& s = sched();
    s.cur = i;
    threadIdx = s.fibers[i].tid;
#ifdef MONARCH_EMU_RACECHECK
    __tsan_switch_to_fiber(s.fibers[i].tsan, __tsan_switch_to_fiber_no_sync);
#endif
#ifdef MONARCH_EMU_USE_UCONTEXT
    swapcontext(&s.main_ctx, &s.fibers[i].ctx);
#else
    monarch_emu_switch(&s.main_sp, s.fibers[i].sp);
#endif
}

/// Runs one block: every thread as a fiber until all finished.
MONARCH_EMU_UNCHECKED inline void run_block(bool reverse) {
    Scheduler& s = sched();
    for (unsigned i = 0; i < s.n; i++) prepare(s.fibers[i]);
    release(&s.start_sync);  // what the launching thread wrote and saw end, for every fiber
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
        if (all_done) {
            acquire(&s.end_sync);
            return;
        }
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
MONARCH_EMU_UNCHECKED inline void block_barrier() {
    Scheduler& s = sched();
    char* sync = &s.block_sync[s.fibers[s.cur].barriers++ & 1];
    release(sync);
    s.fibers[s.cur].state = AT_BLOCK_BARRIER;
    if (++s.block_arrived == s.n) {
        s.block_arrived = 0;
        for (unsigned i = 0; i < s.n; i++) s.fibers[i].state = READY;
    }
    switch_to_main();
    acquire(sync);
}

/// Deposits `words` of this lane in its warp's slot, waits for the 32 lanes and returns
/// the slot half holding every lane's deposit. The last lane to arrive calls
/// `complete(half)` first (if given), so a warp-wide instruction can act at one instant.
MONARCH_EMU_UNCHECKED inline uint32_t (*warp_exchange(const uint32_t* words, int count,
                                                      void (*complete)(uint32_t (*)[6]) = nullptr))[6] {
    Scheduler& s = sched();
    Fiber& f = s.fibers[s.cur];
    const unsigned linear = f.tid.x + blockDim.x * (f.tid.y + blockDim.y * f.tid.z);
    const unsigned warp = linear / 32, lane = linear % 32, half = f.warp_ops & 1;
    WarpSlot& slot = s.warps[warp];
    slot_store(slot.w[half][lane], words, count);
    slot.ops[lane] = f.warp_ops++;
    f.state = AT_WARP_BARRIER;
    if (++slot.arrived == 32) {
        slot.arrived = 0;
        for (unsigned l = 0; l < 32; l++) {
            if (slot.ops[l] != slot.ops[0]) die("warp operation with lanes not converged");
            s.fibers[warp * 32 + l].state = READY;
        }
        // The warp-wide instruction's memory accesses are checked, as this lane's.
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

/// `shared_memory()` as of the running launch.
inline SharedMemory launched_shared;

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
MONARCH_EMU_UNCHECKED inline void launch_raw(dim3 grid, dim3 block, void (*body)(void*), void* arg) {
    Scheduler& s = sched();
    const unsigned n = block.x * block.y * block.z;
    if (n == 0 || n > MAX_THREADS || n % 32 != 0) die("block size must be a positive multiple of 32, at most 1024");
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535) die("bad grid");
#ifdef MONARCH_EMU_RACECHECK
    s.tsan_main = __tsan_get_current_fiber();
#endif
    s.n = n;
    s.body = body;
    s.body_arg = arg;
    gridDim = grid;
    blockDim = block;
    for (unsigned i = 0; i < n; i++) s.fibers[i].tid = {i % block.x, i / block.x % block.y, i / (block.x * block.y)};
    const SharedMemory shared = shared_memory();
    launched_shared = shared;
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
    const SharedMemory m = launched_shared;
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
#ifdef MONARCH_EMU_RACECHECK
    if (f.groups.size() > sizeof f.group_sync) die("more cp.async groups in flight than the race check follows");
    release(&f.group_sync[f.committed++ % sizeof f.group_sync]);
#endif
}

/// cp.async.wait_group n: completes all but the `n` most recent committed groups.
/// Under the race check a group's copies are done by the thread's copy fiber, which
/// acquires the thread's clock at the commit and releases to it at the wait: on a GPU the
/// copies land at some time between the two, so any other thread's access to those bytes
/// that no barrier orders before the commit or after the wait is a race, whenever it ran.
MONARCH_EMU_UNCHECKED inline void cp_async_wait(int n) {
    Fiber& f = sched().fibers[sched().cur];
    while ((int)f.groups.size() > n) {
        // Taken out by the thread; the copy fiber reads only the plain array.
        const std::vector<AsyncCopy> group = std::move(f.groups.front());
        f.groups.erase(f.groups.begin());
        const AsyncCopy* c = group.data();
        const size_t count = group.size();
#ifdef MONARCH_EMU_RACECHECK
        __tsan_switch_to_fiber(f.tsan_copies, __tsan_switch_to_fiber_no_sync);
        acquire(&f.group_sync[f.waited++ % sizeof f.group_sync]);
#endif
        for (size_t i = 0; i < count; i++) {
            memcpy(c[i].dst, c[i].src, c[i].src_bytes);
            memset(static_cast<char*>(c[i].dst) + c[i].src_bytes, 0, c[i].bytes - c[i].src_bytes);
        }
#ifdef MONARCH_EMU_RACECHECK
        release(&f.copies_done);
        __tsan_switch_to_fiber(f.tsan, __tsan_switch_to_fiber_no_sync);
        acquire(&f.copies_done);
#endif
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
        for (int t = 0; t < 32; t++) slot_store(half[t], out[t], 4);
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
