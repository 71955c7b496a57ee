#!/usr/bin/env bash
# The GPU check, on a device machine, from the repository root with gpu-bin/ (from
# scripts/gpu-build.sh) carried: the CUDA tests, then each benchmark of issue 7 beside its
# PyTorch peer. Logs go to $OUT (or ./gpu-out). Sized for a few minutes on an H100/H200.
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
for d in /usr/local/cuda/lib64 /usr/local/cuda-*/lib64; do
  [ -d "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
export MONARCH_CUDA_CACHE=/tmp/monarch-kernels PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/device.txt"
{
  for t in gpu-bin/test-*; do
    echo "== $t"
    "$t" --test-threads 1 --nocapture 2>&1
  done
} | tee "$OUT/tests.log" | grep -E "^==|test result|SKIPPED|panicked|FAILED"
M=gpu-bin/monarch
P=scripts/peers/torch_linear.py
{
  for dt in f32 bf16; do
    $M bench matmul --device cuda --m 8192 --n 8192 --k 8192 --dtype $dt --warmup 3 --runs 20 --json
    python3 $P matmul --m 8192 --n 8192 --k 8192 --dtype $dt
  done
  for shape in "768 3072" "3072 768"; do
    set -- $shape
    $M bench linear --device cuda --dtype bf16 --kind monarch --nblocks 4 --in $1 --out $2 --batch 16384 --vs-dense --warmup 3 --runs 20 --json
    python3 $P linear --in $1 --out $2 --batch 16384 --nblocks 4 --dtype bf16
  done
  $M bench linear --device cuda --kind monarch --nblocks 4 --in 4096 --out 4096 --batch 2048 --vs-dense --json
  python3 $P linear --in 4096 --out 4096 --batch 2048 --nblocks 4 --dtype f32
} 2>&1 | tee "$OUT/bench.jsonl"
