// The race check itself (shim.h built with -fsanitize=thread -DMONARCH_EMU_RACECHECK):
// small kernels with and without the ordering they need. `racecheck --list` prints each
// case's name and whether it is racy; `racecheck <name>` runs one. The test
// (cuda/tests/emulated_kernels.rs) expects ThreadSanitizer's report and its exit status
// from each racy case and a clean exit from the others.

#include "shim.h"

#include <cstring>

constexpr unsigned N = 64;

// Each thread writes its slot of shared memory; thread 0 sums them, after the barrier or
// without it.
template <bool BARRIER> void shared_sum(const float* x, float* out) {
    __shared__ float s[N];
    s[threadIdx.x] = x[blockIdx.x * N + threadIdx.x];
    if (BARRIER) __syncthreads();
    if (threadIdx.x == 0) {
        float t = 0;
        for (unsigned i = 0; i < N; i++) t += s[i];
        out[blockIdx.x] = t;
    }
}

// Each thread reads its neighbour's word of global memory, then writes its own.
void read_then_write(float* buf, float* out) {
    const float v = buf[(threadIdx.x + 1) % N];
    buf[threadIdx.x] = 2.0f;
    __syncthreads();
    out[threadIdx.x] = v;
}

// Two levels, as a butterfly's factors: level 1 from level 0 after a barrier, then level
// 1's neighbour read with no barrier before it. The threads resume from the first
// barrier one after another; one that has run on to the second must not order the
// others' writes before its read.
void levels_without_second_barrier(float* a, float* b, float* out) {
    a[threadIdx.x] = (float)threadIdx.x;
    __syncthreads();
    b[threadIdx.x] = a[threadIdx.x] + 1.0f;
    out[threadIdx.x] = b[(threadIdx.x + 1) % N];
    __syncthreads();
}

// The same with the barrier.
void levels_with_second_barrier(float* a, float* b, float* out) {
    a[threadIdx.x] = (float)threadIdx.x;
    __syncthreads();
    b[threadIdx.x] = a[threadIdx.x] + 1.0f;
    __syncthreads();
    out[threadIdx.x] = b[(threadIdx.x + 1) % N];
}

// Lanes write shared memory, shuffle, and read the other lanes' words: a shuffle orders
// no memory.
void shuffle_then_read(float* out) {
    __shared__ float s[32];
    s[threadIdx.x] = (float)threadIdx.x;
    const float v = __shfl_sync(0xffffffffu, 1.0f, 0);
    out[threadIdx.x] = s[31 - threadIdx.x] + v;
}

// Every thread of every block adds to one word.
void atomic_sum(float* out, int* count) {
    atomicAdd(out, 1.0f);
    atomicAdd(count, 1);
}

// Thread t copies row t of a 16-byte-row tile into shared memory with cp.async, waits
// for its own copy, and reads row t + 1 (another thread's copy): with a barrier between,
// or without.
template <bool BARRIER> void cp_async_rows(const float* src, float* out) {
    alignas(16) __shared__ float tile[N * 4];
    emu::cp_async(tile + threadIdx.x * 4, src + threadIdx.x * 4, 16, 16);
    emu::cp_async_commit();
    emu::cp_async_wait(0);
    if (BARRIER) __syncthreads();
    out[threadIdx.x] = tile[((threadIdx.x + 1) % N) * 4];
}

// Thread t starts copying row t, and row t + 1 is read while the copy is in flight:
// after a barrier that follows the commit and before one that follows the wait, as a
// pipeline that reuses a stage too early would.
void cp_async_read_in_flight(const float* src, float* out) {
    alignas(16) __shared__ float tile[N * 4];
    emu::cp_async(tile + threadIdx.x * 4, src + threadIdx.x * 4, 16, 16);
    emu::cp_async_commit();
    __syncthreads();
    out[threadIdx.x] = tile[((threadIdx.x + 1) % N) * 4];
    __syncthreads();
    emu::cp_async_wait(0);
    __syncthreads();
}

// A second launch reads what every thread of the first wrote.
void write_own(float* buf) { buf[threadIdx.x] = (float)threadIdx.x; }
void read_neighbour(const float* buf, float* out) { out[threadIdx.x] = buf[(threadIdx.x + 1) % N]; }

struct Case {
    const char* name;
    bool racy;
    void (*run)();
};

static std::vector<float> x(4 * N * 4, 1.0f), buf(N), buf2(N), out(4 * N);
static int count;

static const Case CASES[] = {
    {"shared_sum_with_barrier", false,
     [] { emu::launch(dim3{4}, dim3{N}, [] { shared_sum<true>(x.data(), out.data()); }); }},
    {"shared_sum_without_barrier", true,
     [] { emu::launch(dim3{4}, dim3{N}, [] { shared_sum<false>(x.data(), out.data()); }); }},
    {"global_read_then_write", true,
     [] { emu::launch(dim3{1}, dim3{N}, [] { read_then_write(buf.data(), out.data()); }); }},
    {"levels_with_second_barrier", false,
     [] { emu::launch(dim3{2}, dim3{N}, [] { levels_with_second_barrier(buf.data(), buf2.data(), out.data()); }); }},
    {"levels_without_second_barrier", true,
     [] { emu::launch(dim3{1}, dim3{N}, [] { levels_without_second_barrier(buf.data(), buf2.data(), out.data()); }); }},
    {"shuffle_then_read", true, [] { emu::launch(dim3{1}, dim3{32}, [] { shuffle_then_read(out.data()); }); }},
    {"atomic_sum", false, [] { emu::launch(dim3{3}, dim3{N}, [] { atomic_sum(out.data(), &count); }); }},
    {"cp_async_rows_with_barrier", false,
     [] { emu::launch(dim3{2}, dim3{N}, [] { cp_async_rows<true>(x.data(), out.data()); }); }},
    {"cp_async_rows_without_barrier", true,
     [] { emu::launch(dim3{1}, dim3{N}, [] { cp_async_rows<false>(x.data(), out.data()); }); }},
    {"cp_async_read_in_flight", true,
     [] { emu::launch(dim3{1}, dim3{N}, [] { cp_async_read_in_flight(x.data(), out.data()); }); }},
    {"launches_in_sequence", false,
     [] {
         emu::launch(dim3{1}, dim3{N}, [] { write_own(buf.data()); });
         emu::launch(dim3{1}, dim3{N}, [] { read_neighbour(buf.data(), out.data()); });
     }},
};

int main(int argc, char** argv) {
    if (argc == 2 && !strcmp(argv[1], "--list")) {
        for (const Case& c : CASES) printf("%s %s\n", c.name, c.racy ? "racy" : "clean");
        return 0;
    }
    for (const Case& c : CASES)
        if (argc == 2 && !strcmp(argv[1], c.name)) {
            c.run();
            printf("%s ran\n", c.name);
            return 0;
        }
    fprintf(stderr, "usage: racecheck --list | racecheck <case>\n");
    return 2;
}
