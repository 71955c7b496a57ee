#!/usr/bin/env bash
# Removes each __syncthreads() of cuda/kernels/ in turn and runs the emulator drivers that
# launch it, plain and under the race check (cuda/emu/shim.h, MONARCH_EMU_RACECHECK), with
# the flags of cuda/tests/emulated_kernels.rs. Prints one line per (barrier, driver):
# plain=1 means the driver's values failed, race=66 that ThreadSanitizer reported a race.
# An argument limits it to barriers whose "file:line" matches it (grep -E).
# The table in docs/PERFORMANCE.md ("Barrier mutations") comes from this script.
set -uo pipefail
cd "$(dirname "$0")/../cuda"
CXX=${CXX:-c++}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
drivers_for() {
  case $1 in
    common.cuh:*)
      # row_reduce (softmax, layer norm, cross-entropy) or the GEMM pipeline.
      if sed -n "$(( ${1#*:} - 12 )),${1#*:}p" kernels/common.cuh | grep -q row_reduce; then
        echo "softmax layer_norm cross_entropy"
      else
        echo "block_sparse monarch"
      fi ;;
    *) echo "${1%%.cu:*}" ;;
  esac
}
grep -n "__syncthreads();" kernels/*.cu kernels/common.cuh | while IFS=: read -r path line _; do
  site="$(basename "$path"):$line"
  [ $# -gt 0 ] && ! grep -qE "$1" <<<"$site" && continue
  rm -rf "$work/k" && cp -r kernels "$work/k"
  sed -i "${line}s/__syncthreads();/(void)0;/" "$work/k/$(basename "$path")"
  for d in $(drivers_for "$site"); do
    $CXX -std=c++20 -O2 -DMONARCH_EMULATE -I"$work/k" -Iemu "emu/$d.cpp" -o "$work/plain"
    timeout 600 "$work/plain" > /dev/null 2>&1; plain=$?
    $CXX -std=c++20 -O2 -g -fsanitize=thread -DMONARCH_EMULATE -DMONARCH_EMU_RACECHECK -I"$work/k" -Iemu \
      "emu/$d.cpp" -o "$work/race"
    TSAN_OPTIONS="halt_on_error=1 exitcode=66" timeout 900 "$work/race" > "$work/race.log" 2>&1; race=$?
    echo "$site $d plain=$plain race=$race $(grep -m1 SUMMARY "$work/race.log" | sed 's/.*data race //')"
  done
done
