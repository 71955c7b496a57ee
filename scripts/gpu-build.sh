#!/usr/bin/env bash
# Builds everything a GPU check needs into gpu-bin/ (ignored by git), stripped and gzipped so that it
# travels to a device machine with no Rust toolchain: the `monarch` binary and the test
# executables of monarch-cuda (kernels vs CPU, the per-kernel timer, NVRTC compile) and of the tensor-on-GPU
# tests, and `train-gpt2`. Then run `bash scripts/gpu-check.sh` there with gpu-bin carried.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf gpu-bin && mkdir -p gpu-bin
cargo build --release -p monarch-train --bin monarch --bin train-gpt2
cp target/release/monarch target/release/train-gpt2 gpu-bin/
cargo test --release --no-run -p monarch-cuda -p monarch-tests --message-format=json 2>/dev/null |
  python3 -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    exe = m.get("executable")
    if m.get("reason") == "compiler-artifact" and exe and m["target"]["name"] in ("monarch_cuda", "gpu_kernels", "kernel_times", "nvrtc_compile", "cuda_tensors", "kernel_snapshots"):
        shutil.copy(exe, "gpu-bin/test-" + m["target"]["name"])
'
strip gpu-bin/*
# Compressed to about a third (the device call carries 64 MiB with the working tree);
# gpu-check.sh unpacks them.
gzip -6 gpu-bin/*
ls -la gpu-bin
