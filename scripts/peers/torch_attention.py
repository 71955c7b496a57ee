#!/usr/bin/env python3
"""GPU peer of `monarch bench attention --impl flash --device cuda`:
torch.nn.functional.scaled_dot_product_attention on (batch, heads, seq, head_dim) N(0, 1)
queries over --keys keys (default --seq), forward + backward from a fixed output gradient
or forward only (--pass fwd, under no_grad), timed with a synchronize after each run
(median of --runs after --warmup). Causal masks align the last query with the last key,
as monarch's do (SDPA's is_causal aligns the first ones, so unequal shapes get an explicit
mask; one query sees every key). Prints one JSON line."""
import argparse, json

import torch

import timing

p = argparse.ArgumentParser()
p.add_argument("--seq", type=int, default=4096)
p.add_argument("--keys", type=int, default=None)
p.add_argument("--pass", dest="pass_", choices=["fwd", "fwdbwd"], default="fwdbwd")
p.add_argument("--heads", type=int, default=16)
p.add_argument("--head-dim", type=int, default=64)
p.add_argument("--batch", type=int, default=1)
p.add_argument("--causal", action="store_true")
p.add_argument("--dtype", choices=["f32", "bf16"], default="bf16")
timing.add_flags(p)
a = p.parse_args()
dt = {"f32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
torch.manual_seed(0)
nk = a.keys or a.seq
grad = a.pass_ == "fwdbwd"
q = torch.randn((a.batch, a.heads, a.seq, a.head_dim), device=a.device, dtype=dt, requires_grad=grad)
k, v = (torch.randn((a.batch, a.heads, nk, a.head_dim), device=a.device, dtype=dt, requires_grad=grad)
        for _ in range(2))
dout = torch.randn(q.shape, device=a.device, dtype=dt)
is_causal, mask = a.causal and nk == a.seq, None
if a.causal and nk != a.seq and a.seq > 1:
    mask = torch.ones(a.seq, nk, dtype=torch.bool, device=a.device).tril(diagonal=nk - a.seq)


def run():
    if grad:
        torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal).backward(dout)
    else:
        with torch.no_grad():
            torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)


(ms,) = timing.median_ms(a, [run])
print(json.dumps({"op": "attention", "peer": f"torch {torch.__version__}", "impl": "sdpa", "pass": a.pass_,
                  "batch": a.batch, "heads": a.heads, "seq": a.seq, "keys": nk, "head_dim": a.head_dim, "causal": a.causal,
                  "dtype": a.dtype, "median_ms": ms, "device": timing.device_name(a.device)}))
