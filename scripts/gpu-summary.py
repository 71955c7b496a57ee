#!/usr/bin/env python3
"""Issue 7's targets against what a device run of scripts/gpu-check.sh measured.

Reads the run's folder ($OUT there, files_at here): device.txt, tests.log, bench.jsonl
and train.log, and prints Markdown: the device, the test binaries' results and failures,
then one row per target with our figure, PyTorch's, their ratio, the goal and whether it
is met. Anything the run did not reach reads "not measured".

    python3 scripts/gpu-summary.py OUT_DIR > summary.md
"""

import json
import os
import re
import sys


def lines(path):
    try:
        with open(path, errors="replace") as f:
            return f.read().splitlines()
    except OSError:
        return []


def records(path):
    """The JSON lines of `path`, each with the `# next: ...` note line before it, if any."""
    out, note = [], None
    for line in lines(path):
        if line.startswith("# next:"):
            note = line[len("# next:"):].strip()
        elif line.startswith("{"):
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if note:
                rec["note"], note = note, None
            out.append(rec)
    return out


def find(recs, peer, **want):
    """The last record (ours, or the peer's) whose fields equal `want`."""
    hits = [r for r in recs if ("peer" in r) == peer and all(r.get(k) == v for k, v in want.items())]
    return hits[-1] if hits else None


def row(name, ours, peer, ratio, goal, met):
    # None: not measured; "—": has no such figure.
    cells = [name, ours or "not measured", peer or "not measured", ratio or "", goal, met]
    return "| " + " | ".join(cells) + " |"


def verdict(ok):
    return "" if ok is None else ("met" if ok else "**not met**")


def summary(folder):
    out = ["# GPU check", ""]
    dev = lines(os.path.join(folder, "device.txt"))
    out += ["Device: " + (dev[-1] if dev else "unknown (no device.txt)"), ""]

    tests = lines(os.path.join(folder, "tests.log"))
    out += ["## Tests", ""]
    current, results = None, []
    for line in tests:
        if line.startswith("== "):
            current = line[3:]
        elif line.startswith("test result:"):
            results.append(f"- `{current}`: {line[len('test result: '):]}")
        elif "FAILED" in line or "panicked" in line:
            results.append(f"  - {line.strip()}")
    out += (results or ["- no test results"]) + [""]

    recs = records(os.path.join(folder, "bench.jsonl"))
    out += ["## Targets", "", "| target | ours | PyTorch | ratio | goal | |", "|---|---|---|---|---|---|"]
    for dt in ["bf16", "f32"]:
        o = find(recs, False, op="matmul", m=8192, n=8192, k=8192, dtype=dt)
        p = find(recs, True, op="matmul", m=8192, n=8192, k=8192, dtype=dt)
        r = o["gflops"] / p["gflops"] if o and p else None
        out.append(row(f"matmul 8192³ {dt} (cuBLASLt vs torch.matmul)",
                       o and f"{o['gflops'] / 1e3:.0f} TFLOP/s", p and f"{p['gflops'] / 1e3:.0f} TFLOP/s",
                       r and f"{r:.3f}", "≥ 0.90", verdict(r and r >= 0.9)))
    mlp = dict(bench="linear", hidden=3072, batch=16384, dtype="bf16")
    ours = [r for r in recs if "peer" not in r and all(r.get(k) == v for k, v in mlp.items())
            and r.get("kind", {}).get("kind") == "monarch"]
    # The default run, then each variant the check ran under an environment switch.
    variants = [("", next((r for r in reversed(ours) if "note" not in r), None))]
    for note in dict.fromkeys(r["note"] for r in ours if "note" in r):
        variants.append((", " + note, next(r for r in reversed(ours) if r.get("note") == note)))
    p = find(recs, True, bench="linear", hidden=3072, batch=16384, dtype="bf16")
    for label, o in variants:
        r = p["median_ms"] / o["median_ms"] if o and p else None
        out.append(row(f"Monarch MLP block fwd+bwd vs torch bmm Monarch{label}",
                       o and f"{o['median_ms']:.3f} ms", p and f"{p['median_ms']:.3f} ms",
                       r and f"{r:.2f}×", "≥ 1.5×", verdict(r and r >= 1.5)))
        d = o and o.get("dense_median_ms")
        r = d / o["median_ms"] if d else None
        out.append(row(f"Monarch MLP block vs our dense (cuBLASLt){label}",
                       o and f"{o['median_ms']:.3f} ms", d and f"dense {d:.3f} ms (ours)",
                       r and f"{r:.2f}×", "≥ 1.6×", verdict(r and r >= 1.6)))
    if p:
        out.append(row("(peer) torch bmm Monarch vs F.linear MLP block", "—",
                       f"{p['median_ms']:.3f} vs {p['dense_median_ms']:.3f} ms", f"{p['speedup_vs_dense']:.2f}×",
                       "", ""))
    for seq in [1024, 2048, 4096, 8192]:
        o = find(recs, False, op="attention", impl="flash", seq=seq, dtype="bf16")
        p = find(recs, True, op="attention", seq=seq, dtype="bf16")
        r = o["median_ms"] / p["median_ms"] if o and p else None
        out.append(row(f"flash attention fwd+bwd seq {seq} vs SDPA",
                       o and f"{o['median_ms']:.3f} ms", p and f"{p['median_ms']:.3f} ms",
                       r and f"{r:.2f}× the time", "≤ 1.3×", verdict(r and r <= 1.3)))
    for b in [1, 8]:
        o = find(recs, False, op="attention", impl="flash", seq=1, keys=1024, batch=b, **{"pass": "fwd"})
        p = find(recs, True, op="attention", seq=1, keys=1024, batch=b, **{"pass": "fwd"})
        r = o["median_ms"] / p["median_ms"] if o and p else None
        out.append(row(f"flash decoding step (1 query over 1024 keys, batch {b}, 12 heads) vs SDPA",
                       o and f"{o['median_ms']:.3f} ms", p and f"{p['median_ms']:.3f} ms",
                       r and f"{r:.2f}× the time", "", ""))

    sep = find(recs, False, op="head", kind="separate", rows=16384)
    fused = [r for r in recs if r.get("op") == "head" and r.get("kind") == "fused" and "peer" not in r]
    for f in fused:
        r = f["median_ms"] / sep["median_ms"] if sep else None
        mem = f"; peak {f['peak_bytes'] / sep['peak_bytes']:.2f}× the memory" if sep and sep["peak_bytes"] else ""
        out.append(row(f"fused head + loss (chunks of {f['chunk']}) vs separate, bf16 16K×768·768×50257",
                       f"{f['median_ms']:.3f} ms", sep and f"{sep['median_ms']:.3f} ms (ours, separate)",
                       r and f"{r:.2f}× the time{mem}", "informational", ""))
    train = [json.loads(l) for l in lines(os.path.join(folder, "train.log")) if l.startswith("{")]
    mfu = next((t for t in reversed(train) if "mfu_vs_measured_bf16" in t), None)
    peer = next((t for t in reversed(train) if "peer" in t and "tokens_per_s" in t), None)
    r = mfu["tokens_per_s"] / peer["tokens_per_s"] if mfu and peer else None
    out.append(row("GPT-2 small training (bf16)",
                   mfu and f"{mfu['tokens_per_s']:.0f} tokens/s, MFU {mfu['mfu_vs_measured_bf16']:.1%}"
                   f" of the measured {mfu['bf16_matmul_gflops'] / 1e3:.0f} TFLOP/s",
                   peer and f"{peer['tokens_per_s']:.0f} tokens/s (eager)", r and f"{r:.2f}×",
                   "reported", verdict(True if mfu else None)))
    out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) != 2 or not os.path.isdir(sys.argv[1]):
        sys.exit("usage: gpu-summary.py OUT_DIR (the folder a gpu-check.sh run wrote)")
    print(summary(sys.argv[1]))
