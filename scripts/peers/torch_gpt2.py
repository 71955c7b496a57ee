#!/usr/bin/env python3
"""Peer of `train-gpt2`: the same GPT-2 in PyTorch (eager), trained the same way, for
tokens/s side by side. The model is read from a train-gpt2 TOML's [model] (dense or
Monarch linears; Monarch as the reference code's two torch.bmm, `torch_linear.py`'s form),
attention is torch's scaled_dot_product_attention (causal), the head is tied to the token
embedding, the loss is F.cross_entropy over the whole logits; AdamW (betas 0.9, 0.95,
decay only on matrices, as train-gpt2) with gradient clipping at [train].clip. Random
token ids stand in for the corpus (the step's cost does not depend on the tokens).

  torch_gpt2.py --config train/configs/gpt2-tiny.toml --device cpu              # train-gpt2's default
  torch_gpt2.py --config train/configs/gpt2-tiny.toml --linear dense --device cpu
  torch_gpt2.py --config /tmp/gpt2-small-gpu.toml --precision bf16 --device cuda
  torch_gpt2.py --config train/configs/gpt2-tiny.toml --steps 4 --window 2 --profile   # where the step goes

Runs --steps steps and prints one JSON line with the throughput of the last --window of
them (tokens over their wall time), as train-gpt2's `tokens_per_s` of a log window."""
import argparse, json, math, time, tomllib

import torch
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--config", required=True, help="a train-gpt2 TOML ([model] and [train])")
p.add_argument("--linear", choices=["dense", "monarch"], help="every linear layer of this kind (as train-gpt2 --linear)")
p.add_argument("--nblocks", type=int, default=4, help="Monarch blocks with --linear monarch")
p.add_argument("--precision", choices=["f32", "bf16"], default="f32", help="bf16: torch.autocast, f32 master weights")
p.add_argument("--steps", type=int, default=30)
p.add_argument("--window", type=int, default=10)
p.add_argument("--device", default="cpu")
p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
p.add_argument("--profile", action="store_true", help="also print torch.profiler's table of the ops' own CPU time")
a = p.parse_args()
if a.threads:
    torch.set_num_threads(a.threads)
cfg = tomllib.load(open(a.config, "rb"))
m, t = cfg["model"], cfg.get("train", {})
V, T, L, H, D = m["vocab_size"], m["block_size"], m["n_layer"], m["n_head"], m["n_embd"]
dropout = m.get("dropout", 0.0)
B, accum, clip = t.get("batch_size", 8), t.get("grad_accum", 1), t.get("clip", 1.0)
dev = a.device
torch.manual_seed(0)


def kind_of(spec):
    """(kind, nblocks) of a [model] linear spec, or of --linear."""
    if a.linear:
        return a.linear, a.nblocks
    if spec["kind"] not in ("dense", "monarch"):
        raise SystemExit(f"torch_gpt2.py: linear kind {spec['kind']} has no peer here (dense or monarch)")
    return spec["kind"], spec.get("nblocks", 4)


class Monarch(torch.nn.Module):
    """The reference code's Monarch layer (inp -> out): two block-diagonal factors, bmm."""

    def __init__(self, inp, out, nb):
        super().__init__()
        ib, ob = -(-inp // nb), -(-out // nb)
        s1, s2 = ((nb, ib, ib), (nb, ob, ib)) if ib < ob else ((nb, ob, ib), (nb, ob, ob))
        self.w1 = torch.nn.Parameter(torch.empty(*s1).uniform_(-1 / math.sqrt(s1[2]), 1 / math.sqrt(s1[2])))
        self.w2 = torch.nn.Parameter(torch.empty(*s2).uniform_(-1 / math.sqrt(s2[2]), 1 / math.sqrt(s2[2])))
        self.bias = torch.nn.Parameter(torch.zeros(out))
        self.inp, self.out = inp, out

    def forward(self, x):
        shape = x.shape[:-1]
        x = x.reshape(-1, self.inp)
        b = x.shape[0]
        k, q, p_ = self.w1.shape
        l, s, r = self.w2.shape
        xp = F.pad(x, (0, k * p_ - self.inp))
        y = torch.bmm(xp.reshape(b, k, p_).transpose(0, 1), self.w1.transpose(-1, -2))
        y = y.transpose(0, 1).reshape(b, r, l).transpose(-1, -2).transpose(0, 1)
        y = torch.bmm(y, self.w2.transpose(-1, -2)).permute(1, 2, 0).reshape(b, s * l)
        return (y[:, : self.out] + self.bias).reshape(*shape, self.out)


def linear(spec, inp, out):
    kind, nb = kind_of(spec)
    return torch.nn.Linear(inp, out) if kind == "dense" else Monarch(inp, out, nb)


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1, self.ln_2 = torch.nn.LayerNorm(D), torch.nn.LayerNorm(D)
        self.c_attn, self.attn_proj = linear(m["attn_linear"], D, 3 * D), linear(m["attn_linear"], D, D)
        self.c_fc, self.mlp_proj = linear(m["mlp_linear"], D, 4 * D), linear(m["mlp_linear"], 4 * D, D)

    def forward(self, x):
        b, n, _ = x.shape
        qkv = self.c_attn(self.ln_1(x)).reshape(b, n, 3, H, D // H).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True,
                                           dropout_p=dropout if self.training else 0.0)
        x = x + F.dropout(self.attn_proj(y.transpose(1, 2).reshape(b, n, D)), dropout, self.training)
        h = F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh")
        return x + F.dropout(self.mlp_proj(h), dropout, self.training)


class Gpt2(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.wte, self.wpe = torch.nn.Embedding(V, D), torch.nn.Embedding(T, D)
        self.h = torch.nn.ModuleList(Block() for _ in range(L))
        self.ln_f = torch.nn.LayerNorm(D)

    def forward(self, ids, targets):
        x = F.dropout(self.wte(ids) + self.wpe.weight[: ids.shape[1]], dropout, self.training)
        for blk in self.h:
            x = blk(x)
        logits = self.ln_f(x) @ self.wte.weight.T
        return F.cross_entropy(logits.reshape(-1, V).float(), targets.reshape(-1))


model = Gpt2()
for mod in model.modules():  # GPT-2's initialisation of the dense layers and embeddings
    if isinstance(mod, (torch.nn.Linear, torch.nn.Embedding)):
        torch.nn.init.normal_(mod.weight, std=0.02)
model = model.to(dev)
decay = [p_ for p_ in model.parameters() if p_.dim() >= 2 and p_ is not model.wte.weight and p_ is not model.wpe.weight]
rest = [p_ for p_ in model.parameters() if all(p_ is not d for d in decay)]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": t.get("weight_decay", 0.1)},
                         {"params": rest, "weight_decay": 0.0}], lr=t.get("lr", 6e-4), betas=(0.9, 0.95))
sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
amp = torch.autocast(dev.split(":")[0], dtype=torch.bfloat16, enabled=a.precision == "bf16")
gen = torch.Generator().manual_seed(0)
times = []
profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) if a.profile else None
if profiler:
    profiler.start()
for step in range(a.steps):
    batches = [torch.randint(0, V, (B, T + 1), generator=gen).to(dev) for _ in range(accum)]
    sync()
    start = time.perf_counter()
    for ids in batches:
        with amp:
            loss = model(ids[:, :-1], ids[:, 1:]) / accum
        loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    loss_value = loss.item() * accum
    sync()
    times.append(time.perf_counter() - start)
if profiler:
    profiler.stop()
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))
window = times[-a.window :]
print(json.dumps({"peer": f"torch {torch.__version__}", "device": torch.cuda.get_device_name() if dev.startswith("cuda") else dev,
                  "threads": torch.get_num_threads(), "config": a.config, "linear": a.linear, "precision": a.precision,
                  "params": sum(p_.numel() for p_ in model.parameters()), "steps": a.steps,
                  "tokens_per_s": len(window) * B * T * accum / sum(window),
                  "median_step_ms": sorted(window)[len(window) // 2] * 1e3, "last_loss": loss_value}))
