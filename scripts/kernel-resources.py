#!/usr/bin/env python3
"""Registers, spills and static shared memory of every kernel, without a GPU.

Compiles cuda/kernels/<stem>.cu after common.cuh exactly as cuda/src/kernels.rs and
cuda/src/nvrtc.rs do (same prelude, same NVRTC options) plus `--ptxas-options=-v`, and
prints ptxas's figures per kernel. Needs only NVRTC (the `nvidia-cuda-nvrtc` wheel that
.ci/install-nvrtc installs). Dynamic shared memory (flash attention) is not shown: see
fwd_smem / bwd_smem in cuda/src/ops/flash_attention.rs.

    python3 scripts/kernel-resources.py                 # every kernel, sm_90
    python3 scripts/kernel-resources.py monarch sm_80   # one source, one architecture
"""

import ctypes
import glob
import os
import re
import site
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "cuda", "kernels")
# The options of cuda/src/nvrtc.rs::compile_options, then ptxas's report.
OPTIONS = ["--std=c++17", "--restrict", "--ptxas-options=-v"]


def nvrtc():
    """libnvrtc from the Python registry's wheels (CUDA 13 or 12), else the system's."""
    dirs = site.getsitepackages() + [site.getusersitepackages()]
    patterns = ["nvidia/cu13/lib/libnvrtc.so.13*", "nvidia/cuda_nvrtc/lib/libnvrtc.so.1*"]
    for d in dirs:
        for p in patterns:
            found = sorted(f for f in glob.glob(os.path.join(d, p)) if "builtins" not in f and "alt" not in f)
            if found:
                return ctypes.CDLL(found[-1])
    return ctypes.CDLL("libnvrtc.so")


def compile_log(lib, stem, arch):
    """NVRTC's log for one source (raises on a failed compilation)."""
    with open(os.path.join(ROOT, "common.cuh")) as f:
        prelude = f.read()
    with open(os.path.join(ROOT, stem + ".cu")) as f:
        text = f.read()
    source = f'{prelude}\n#line 1 "{stem}.cu"\n{text}'.encode()
    prog = ctypes.c_void_p()
    if lib.nvrtcCreateProgram(ctypes.byref(prog), source, f"{stem}.cu".encode(), 0, None, None) != 0:
        raise RuntimeError("nvrtcCreateProgram failed")
    opts = [f"--gpu-architecture={arch}"] + OPTIONS
    arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
    rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    buf = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, buf)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    log = buf.value.decode(errors="replace")
    if rc != 0:
        raise RuntimeError(f"{stem}.cu failed to compile for {arch}:\n{log}")
    return log


def resources(log):
    """(kernel, registers, spill store bytes, spill load bytes, static smem bytes) per kernel."""
    rows, cur = {}, None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            cur = m.group(1)
            rows[cur] = [0, 0, 0, 0]
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            rows[cur][1] += int(m.group(1))
            rows[cur][2] += int(m.group(2))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            rows[cur][0] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            rows[cur][3] = int(s.group(1)) if s else 0
    return [(k, *v) for k, v in sorted(rows.items())]


def main():
    stems = [sys.argv[1]] if len(sys.argv) > 1 else sorted(
        os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "*.cu")))
    arch = sys.argv[2] if len(sys.argv) > 2 else "sm_90"
    lib = nvrtc()
    print(f"{'kernel':44s} {'regs':>5s} {'spill st':>9s} {'spill ld':>9s} {'smem':>7s}   ({arch})")
    for stem in stems:
        for name, regs, st, ld, smem in resources(compile_log(lib, stem, arch)):
            print(f"{name:44s} {regs:5d} {st:9d} {ld:9d} {smem:7d}")


if __name__ == "__main__":
    main()
