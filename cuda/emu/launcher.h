// Kernel entry points of the emulated device (cuda/src/emulator.rs): a shared library
// per kernel source, built from shim.h, common.cuh, <stem>.cu and this file, exports
// `monarch_emu_<kernel>` for each kernel. The Rust launcher calls it with the arguments
// as the driver's cuLaunchKernel takes them (one pointer per parameter) plus each
// argument's kind, and the entry checks them against the kernel's real parameter list
// before running the grid: a launcher that passes too many, too few or the wrong kind of
// arguments is an error here instead of a wrong result or a fault on a GPU.

#pragma once

#include <tuple>
#include <utility>

namespace emu {

/// What the Rust side passes (cuda/src/device.rs's `Arg`).
enum ArgKind : int { ARG_U64 = 0, ARG_I64 = 1, ARG_I32 = 2, ARG_F32 = 3, ARG_STRUCT = 4 };

/// Grid and block of one launch.
struct LaunchDims {
    unsigned grid[3];
    unsigned block[3];
};

/// Whether an argument of `kind` (`bytes` long) may fill a parameter of type A: a
/// pointer or 8-byte integer for u64, 8- and 4-byte integers for i64 and i32, `float`
/// for f32, and for plain data passed by value (`Arg::of`) any trivially copyable type
/// of its size (up to the 8-byte words it is passed in).
template <typename A> bool accepts(int kind, unsigned bytes) {
    using T = std::remove_cv_t<A>;
    switch (kind) {
        case ARG_U64: return std::is_pointer_v<T> || (std::is_integral_v<T> && sizeof(T) == 8);
        case ARG_I64: return std::is_integral_v<T> && sizeof(T) == 8;
        case ARG_I32: return std::is_integral_v<T> && sizeof(T) == 4;
        case ARG_F32: return std::is_same_v<T, float>;
        case ARG_STRUCT: return std::is_trivially_copyable_v<T> && sizeof(T) <= bytes && bytes < sizeof(T) + 8;
        default: return false;
    }
}

/// Checks the arguments against `kernel`'s parameters, copies them (as the driver does)
/// and runs the grid. Returns 0; `-(arity + 1)` when the count differs; `i + 1` when
/// argument i is of the wrong kind.
template <typename... A, size_t... I>
int run(void (*kernel)(A...), const LaunchDims* d, void** params, const int* kinds, const unsigned* bytes, int n,
        std::index_sequence<I...>) {
    constexpr int arity = (int)sizeof...(A);
    if (n != arity) return -(arity + 1);
    const bool ok[] = {true, accepts<A>(kinds[I], bytes[I])...};
    for (int i = 0; i < arity; i++)
        if (!ok[i + 1]) return i + 1;
    std::tuple<std::remove_cv_t<A>...> args{*static_cast<std::remove_cv_t<A>*>(params[I])...};
    launch(dim3{d->grid[0], d->grid[1], d->grid[2]}, dim3{d->block[0], d->block[1], d->block[2]},
           [&] { kernel(std::get<I>(args)...); });
    return 0;
}

template <typename... A>
int run(void (*kernel)(A...), const LaunchDims* d, void** params, const int* kinds, const unsigned* bytes, int n) {
    return run(kernel, d, params, kinds, bytes, n, std::index_sequence_for<A...>{});
}

}  // namespace emu

/// Exports kernel `name` as `monarch_emu_<name>`.
#define MONARCH_EMU_KERNEL(name)                                                                                 \
    extern "C" __attribute__((visibility("default"))) int monarch_emu_##name(                                   \
        const emu::LaunchDims* d, void** params, const int* kinds, const unsigned* bytes, int n) {              \
        emu::current_kernel = #name;                                                                             \
        return emu::run(&name, d, params, kinds, bytes, n);                                                      \
    }
