#!/usr/bin/env python3
"""Peer benchmark for `monarch bench tokenize`: OpenAI's tiktoken (Rust core, Python API)
encoding the same embedded Shakespeare with GPT-2's ranks, same protocol (2 warm-up runs,
median of 10), one JSON line like monarch's --json output.

tiktoken downloads its rank files; offline, point TIKTOKEN_CACHE_DIR at a folder holding
r50k_base.tiktoken under its cache key (see --help). With --check-shard, it also compares
its ids with a shard that `monarch tokenize data/assets/shakespeare --val-fraction 0` wrote.
"""
import argparse, json, pathlib, struct, time

import tiktoken

WORKS = ["hamlet", "macbeth", "romeo_and_juliet", "lear", "othello", "julius_caesar",
         "midsummer_nights_dream", "sonnets"]
p = argparse.ArgumentParser(epilog="cache key of r50k_base: 0ea1e91bbb3a60f729a8dc8f777fd2fc07cd8df4")
p.add_argument("--assets", default=str(pathlib.Path(__file__).resolve().parents[2] / "data/assets/shakespeare"))
p.add_argument("--threads", type=int, default=1)
p.add_argument("--warmup", type=int, default=2)
p.add_argument("--runs", type=int, default=10)
p.add_argument("--check-shard", help="llm.c shard of the assets folder, tokenised by monarch")
a = p.parse_args()
works = {w: (pathlib.Path(a.assets) / f"{w}.txt").read_text() for w in WORKS}
text = "\n\n".join(works[w] for w in WORKS)
enc = tiktoken.get_encoding("r50k_base")  # GPT-2's ranks
if a.check_shard:
    raw = pathlib.Path(a.check_shard).read_bytes()
    magic, version, n = struct.unpack("<3i", raw[:12])
    got = list(struct.unpack(f"<{n}H", raw[1024:1024 + 2 * n]))
    want = [t for w in sorted(WORKS) for t in [enc.eot_token] + enc.encode_ordinary(works[w])]
    print(json.dumps({"check": "ids", "magic": magic, "tokens": n, "equal": got == want}))


def run():
    if a.threads == 1:
        return len(enc.encode_ordinary(text))
    return sum(map(len, enc.encode_ordinary_batch([works[w] for w in WORKS], num_threads=a.threads)))


for _ in range(a.warmup):
    run()
times = []
for _ in range(a.runs):
    t = time.perf_counter()
    tokens = run()
    times.append((time.perf_counter() - t) * 1e3)
times.sort()
ms = times[len(times) // 2]
print(json.dumps({"bench": "tokenize", "peer": f"tiktoken {tiktoken.__version__}", "threads": a.threads,
                  "bytes": len(text.encode()), "tokens": tokens, "median_ms": ms,
                  "mb_per_s": len(text.encode()) / 1e6 / (ms * 1e-3)}))
