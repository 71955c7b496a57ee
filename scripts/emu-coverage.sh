#!/usr/bin/env bash
# Which kernel entry points the emulated-device tests launch. Runs the test binaries that
# drive kernels through the Rust launchers on the emulated device (cuda/tests/gpu_kernels.rs,
# tests/tests/cuda_tensors.rs, tests/tests/kernel_snapshots.rs) with a fresh kernel cache and
# MONARCH_EMU_LAUNCH_LOG, then compares the launched names with every monarch_emu_* entry of
# the libraries the emulator built. Prints launches per kernel and the kernels never
# launched; exits 1 when there are any. Extra arguments go to each `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export MONARCH_CUDA_EMULATOR=1 MONARCH_CUDA_CACHE="$work/cache" MONARCH_EMU_LAUNCH_LOG="$work/launches"
cargo test --release -q -p monarch-cuda --test gpu_kernels "$@" >"$work/log" 2>&1 || { cat "$work/log"; exit 2; }
cargo test --release -q -p monarch-tests --test cuda_tensors --test kernel_snapshots "$@" >"$work/log" 2>&1 || { cat "$work/log"; exit 2; }
# Every library the emulator built (one per kernel source) has one entry per kernel,
# beside the shim's own monarch_emu_* symbols (left out).
grep -o 'monarch_emu_[a-z_]*' cuda/emu/shim.h | sed 's/^monarch_emu_//' | sort -u >"$work/shim"
find "$work/cache" -name '*.so' -print0 | xargs -0 nm -D --defined-only \
  | sed -n 's/.* monarch_emu_\(.*\)$/\1/p' | sort -u | comm -23 - "$work/shim" >"$work/all"
# A source no test loads has no library, so none of its kernels would be listed.
for cu in cuda/kernels/*.cu; do
  stem=$(basename "$cu" .cu)
  ls "$work/cache/emulator/$stem"-*.so >/dev/null 2>&1 || echo "$stem (no kernel of $cu launched)" >>"$work/all"
done
sort -o "$work/all" "$work/all"
sort "$work/launches" | uniq -c | sort -rn >"$work/counts"
sort -u "$work/launches" >"$work/launched"
missing=$(comm -23 "$work/all" "$work/launched")
echo "$(wc -l <"$work/launched") of $(wc -l <"$work/all") kernels launched ($(wc -l <"$work/launches") launches):"
cat "$work/counts"
if [ -n "$missing" ]; then
  echo "never launched:"
  echo "$missing"
  exit 1
fi
