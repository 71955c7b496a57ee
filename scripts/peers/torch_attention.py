#!/usr/bin/env python3
"""GPU peer of `monarch bench attention --impl flash --device cuda`:
torch.nn.functional.scaled_dot_product_attention on (batch, heads, seq, head_dim) N(0, 1)
inputs, forward + backward from a fixed output gradient, timed with a synchronize after
each run (median of --runs after --warmup). Prints one JSON line."""
import argparse, json

import torch

import timing

p = argparse.ArgumentParser()
p.add_argument("--seq", type=int, default=4096)
p.add_argument("--heads", type=int, default=16)
p.add_argument("--head-dim", type=int, default=64)
p.add_argument("--batch", type=int, default=1)
p.add_argument("--causal", action="store_true")
p.add_argument("--dtype", choices=["f32", "bf16"], default="bf16")
timing.add_flags(p)
a = p.parse_args()
dt = {"f32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
torch.manual_seed(0)
shape = (a.batch, a.heads, a.seq, a.head_dim)
q, k, v = (torch.randn(shape, device=a.device, dtype=dt, requires_grad=True) for _ in range(3))
dout = torch.randn(shape, device=a.device, dtype=dt)


def run():
    torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=a.causal).backward(dout)


(ms,) = timing.median_ms(a, [run])
print(json.dumps({"op": "attention", "peer": f"torch {torch.__version__}", "impl": "sdpa", "pass": "fwdbwd",
                  "batch": a.batch, "heads": a.heads, "seq": a.seq, "head_dim": a.head_dim, "causal": a.causal,
                  "dtype": a.dtype, "median_ms": ms, "device": timing.device_name(a.device)}))
