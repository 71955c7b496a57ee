#!/usr/bin/env python3
"""Peer benchmark for `monarch bench linear --kind monarch --vs-dense`: the reference code's
batched-matmul Monarch (forward, then its hand-written backward: dx, dw1, dw2) against the
dense layer (y = x·Wᵀ, dx = dy·W, dW = dyᵀ·x) in NumPy f32, timed alternately run by run
(median of --runs after --warmup). Prints one JSON line."""
import argparse, json, time

import numpy as np

p = argparse.ArgumentParser()
p.add_argument("--n", type=int, default=4096, help="in = out features")
p.add_argument("--batch", type=int, default=2048)
p.add_argument("--nblocks", type=int, default=4)
p.add_argument("--warmup", type=int, default=2)
p.add_argument("--runs", type=int, default=10)
a = p.parse_args()
rng = np.random.default_rng(0)
f32 = lambda *s: rng.standard_normal(s, dtype=np.float32)
b, n, bs = a.batch, a.n, a.n // a.nblocks
x, dy, W = f32(b, n), f32(b, n), f32(n, n)
w1, w2 = f32(a.nblocks, bs, bs), f32(a.nblocks, bs, bs)


def dense():
    return x @ W.T, dy @ W, dy.T @ x


def monarch():
    k, q, p_ = w1.shape
    l, s, r = w2.shape
    xk = x.reshape(b, k, p_).transpose(1, 0, 2)
    y1 = np.matmul(xk, w1.transpose(0, 2, 1)).transpose(1, 0, 2).reshape(b, r, l).transpose(2, 0, 1)
    y = np.matmul(y1, w2.transpose(0, 2, 1)).transpose(1, 2, 0).reshape(b, s * l)
    d2 = dy.reshape(b, s, l).transpose(2, 0, 1)
    dw2 = np.matmul(d2.transpose(0, 2, 1), y1)
    dy1 = np.matmul(d2, w2).transpose(1, 2, 0).reshape(b, k, q).transpose(1, 0, 2)
    dw1 = np.matmul(dy1.transpose(0, 2, 1), xk)
    dx = np.matmul(dy1, w1).transpose(1, 0, 2).reshape(b, n)
    return y, dx, dw1, dw2


times = {"dense": [], "monarch": []}
for _ in range(a.warmup):
    dense(), monarch()
for _ in range(a.runs):
    for name, f in (("dense", dense), ("monarch", monarch)):
        t = time.perf_counter()
        f()
        times[name].append((time.perf_counter() - t) * 1e3)
med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
print(json.dumps({"bench": "linear", "peer": f"numpy {np.__version__}", "in": n, "out": n, "batch": b,
                  "nblocks": a.nblocks, "pass": "fwdbwd", "median_ms": med["monarch"],
                  "dense_median_ms": med["dense"], "speedup_vs_dense": med["dense"] / med["monarch"]}))
