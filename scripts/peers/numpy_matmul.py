#!/usr/bin/env python3
"""Peer benchmark for `monarch bench matmul`: NumPy (OpenBLAS) f32 matmul, same protocol
(2 warm-up runs, median of 10), one JSON line like monarch's --json output."""
import argparse, json, time

import numpy as np

p = argparse.ArgumentParser()
p.add_argument("--m", type=int, default=2048)
p.add_argument("--n", type=int, default=2048)
p.add_argument("--k", type=int, default=2048)
p.add_argument("--warmup", type=int, default=2)
p.add_argument("--runs", type=int, default=10)
a = p.parse_args()
rng = np.random.default_rng(0)
x = rng.standard_normal((a.m, a.k), dtype=np.float32)
y = rng.standard_normal((a.k, a.n), dtype=np.float32)
for _ in range(a.warmup):
    x @ y
times = []
for _ in range(a.runs):
    t = time.perf_counter()
    x @ y
    times.append((time.perf_counter() - t) * 1e3)
times.sort()
ms = times[len(times) // 2]
print(json.dumps({"op": "matmul", "peer": f"numpy {np.__version__}", "m": a.m, "n": a.n, "k": a.k,
                  "median_ms": ms, "gflops": 2 * a.m * a.n * a.k / (ms * 1e-3) / 1e9}))
