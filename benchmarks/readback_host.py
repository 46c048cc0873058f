"""Host time of reading counts back from an idle GPU (issue 5; BENCHMARKS.md energy run 16).

A one-shot ``profile`` waits for the device once (the deferred checks' read, as the plain forward's own
synchronisation does); its further reads (the count rows, the report's 0-d counts) find the device idle. Is it
cheaper to start all those copies into pinned memory and wait once? Median host time of each way, us a call, device
synchronised (idle) before each:

    python benchmarks/readback_host.py [--calls 2000]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from neurosim import validate


def timed(fn, calls: int) -> float:
    for _ in range(50):
        fn()
    ts = []
    for _ in range(calls):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e6


def pinned(t: torch.Tensor):
    """``t`` copied into pinned host memory without waiting, then waited for (an event)."""
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    event.synchronize()
    return host


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args(argv)
    rows = torch.zeros(256, 5, dtype=torch.int64, device="cuda")[:20]  # 20 count rows
    f64 = [torch.rand((), device="cuda", dtype=torch.float64) for _ in range(4)]  # 4 deferred checks' sums
    flags = [torch.zeros((), device="cuda", dtype=torch.int32) for _ in range(2)]  # 2 kernel flags
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, us a call (median of {args.calls})")
    cases = {
        "rows .cpu() (a synchronous copy)": lambda: rows.cpu(),
        "rows to pinned memory + event, waited for": lambda: pinned(rows),
        "validate.read_back, 4 float64 values": lambda: validate.read_back(f64),
        "validate.read_back, 4 float64 + 2 int32 values": lambda: validate.read_back(f64 + flags),
        "the same 6 values: 2 pinned copies + events": lambda: [pinned(torch.cat([v.reshape(1) for v in g]))
                                                                 for g in (f64, flags)],
    }
    for name, fn in cases.items():
        print(f"  {name:50s} {timed(fn, args.calls):7.1f}")


if __name__ == "__main__":
    main()
