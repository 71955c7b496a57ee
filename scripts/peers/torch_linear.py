#!/usr/bin/env python3
"""GPU peer of `monarch bench matmul --device cuda` and `monarch bench linear --kind monarch
--vs-dense --device cuda`: PyTorch on the same GPU, timed with a synchronize after each run
(median of --runs after --warmup; the two layers alternate run by run).

  torch_linear.py matmul --m 8192 --n 8192 --k 8192 --dtype bf16
  torch_linear.py linear --in 768 --out 3072 --batch 16384 --nblocks 4 --dtype bf16
  torch_linear.py linear --in 768 --hidden 3072 --out 768 --batch 16384 --dtype bf16   # MLP block

The Monarch layer is the reference code's batched-matmul form (two torch.bmm with the
permutations as reshapes/transposes), differentiated by autograd; dense is
torch.nn.functional.linear. Prints one JSON line."""
import argparse, json

import torch

import timing

p = argparse.ArgumentParser()
p.add_argument("what", choices=["matmul", "linear"])
p.add_argument("--m", type=int, default=2048)
p.add_argument("--n", type=int, default=2048)
p.add_argument("--k", type=int, default=2048)
p.add_argument("--in", dest="inp", type=int, default=4096)
p.add_argument("--out", type=int, default=4096)
p.add_argument("--batch", type=int, default=2048)
p.add_argument("--hidden", type=int, default=None, help="time the MLP block in -> hidden -> out")
p.add_argument("--nblocks", type=int, default=4)
p.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
timing.add_flags(p)
a = p.parse_args()
dt = {"f32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
dev = a.device
torch.manual_seed(0)


name = timing.device_name(dev)
info = {"peer": f"torch {torch.__version__}", "device": name, "dtype": a.dtype}
if a.what == "matmul":
    x = torch.randn(a.m, a.k, device=dev, dtype=dt)
    y = torch.randn(a.k, a.n, device=dev, dtype=dt)
    (ms,) = timing.median_ms(a, [lambda: x @ y])
    print(json.dumps({"op": "matmul", "m": a.m, "n": a.n, "k": a.k, "median_ms": ms,
                      "gflops": 2 * a.m * a.n * a.k / ms / 1e6, **info}))
else:
    b, nb = a.batch, a.nblocks

    def monarch_layer(inp, out):
        """The reference code's batched-matmul Monarch (inp -> out) and its parameters."""
        ib, ob = -(-inp // nb), -(-out // nb)
        if ib < ob:
            s1, s2 = (nb, ib, ib), (nb, ob, ib)
        else:
            s1, s2 = (nb, ob, ib), (nb, ob, ob)
        w1 = torch.randn(*s1, device=dev, dtype=dt, requires_grad=True)
        w2 = torch.randn(*s2, device=dev, dtype=dt, requires_grad=True)
        bias = torch.zeros(out, device=dev, dtype=dt, requires_grad=True)

        def fwd(x):
            k, q, p_ = w1.shape
            l, s, r = w2.shape
            xp = torch.nn.functional.pad(x, (0, k * p_ - inp))
            out1 = torch.bmm(xp.reshape(b, k, p_).transpose(0, 1), w1.transpose(-1, -2))
            out1 = out1.transpose(0, 1).reshape(b, r, l).transpose(-1, -2).transpose(0, 1)
            out2 = torch.bmm(out1, w2.transpose(-1, -2)).permute(1, 2, 0).reshape(b, s * l)
            return out2[:, :out] + bias

        return fwd

    def dense_layer(inp, out):
        W = torch.randn(out, inp, device=dev, dtype=dt, requires_grad=True)
        bias = torch.zeros(out, device=dev, dtype=dt, requires_grad=True)
        return lambda x: torch.nn.functional.linear(x, W, bias)

    def block(make):
        """One layer, or with --hidden the MLP block inp -> hidden -> out with tanh-GELU."""
        if a.hidden is None:
            return make(a.inp, a.out)
        f1, f2 = make(a.inp, a.hidden), make(a.hidden, a.out)
        return lambda x: f2(torch.nn.functional.gelu(f1(x), approximate="tanh"))

    x = torch.randn(b, a.inp, device=dev, dtype=dt, requires_grad=True)
    dy = torch.randn(b, a.out, device=dev, dtype=dt)
    monarch_fwd, dense_fwd = block(monarch_layer), block(dense_layer)

    def monarch():
        monarch_fwd(x).backward(dy)

    def dense():
        dense_fwd(x).backward(dy)

    ms, dense_ms = timing.median_ms(a, [monarch, dense])
    print(json.dumps({"bench": "linear", "in": a.inp, "out": a.out, "hidden": a.hidden, "batch": b, "nblocks": nb,
                      "pass": "fwdbwd", "median_ms": ms, "dense_median_ms": dense_ms,
                      "speedup_vs_dense": dense_ms / ms, **info}))
