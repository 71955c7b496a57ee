"""What the PyTorch peers share: the timing flags and interleaved median timing, with a
device synchronize after each run so that GPU work is inside the timed span."""
import time

import torch


def add_flags(p):
    """--warmup, --runs and --device (cuda, or cpu for a smoke test of a peer script)."""
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke test of this script")


def device_name(device):
    return torch.cuda.get_device_name() if device.startswith("cuda") else device


def median_ms(a, fns):
    """Each of `fns` run a.warmup times, then a.runs times in turn (so that machine noise
    hits all alike); the median of each in ms."""
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    for _ in range(a.warmup):
        for f in fns:
            f()
    sync()
    times = [[] for _ in fns]
    for _ in range(a.runs):
        for f, ts in zip(fns, times):
            t = time.perf_counter()
            f()
            sync()
            ts.append((time.perf_counter() - t) * 1e3)
    return [sorted(ts)[len(ts) // 2] for ts in times]
