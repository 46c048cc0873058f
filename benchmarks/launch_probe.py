"""Host time of one counting read, by launch path (issue 5, BENCHMARKS.md energy run 19): ``stats.launch`` as the
meter calls it, the compiled kernel called directly (what ``launch`` does after a layout's first read), Triton's
launcher C function called with the compiled kernel's fixed arguments, and one torch reduction for scale. A small
tensor, so that the GPU waits for the host: per-call host time, N calls between two synchronisations.

    python benchmarks/launch_probe.py [--calls 3000]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import triton

from neurosim.kernels import stats


def timed(fn, calls, rounds=7):
    out = []
    for _ in range(rounds):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        out.append((time.perf_counter() - t) / calls * 1e6)
    return statistics.median(out)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=3000)
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    x = (torch.rand(16, 256, device=dev) < 0.2).float()
    out = torch.zeros(4, stats.COLS, dtype=torch.int64, device=dev)
    stats.launch(x, out, row=1)
    key = next(k for k in stats._SINGLES if k[0] == x.shape and k[2] == x.dtype)
    hit = stats._SINGLES[key]
    c = hit.compiled
    kargs = (x, out, out, 1, *hit.ints, 1.0, *hit.dims, *hit.consts)
    run = c.run
    c._init_handles()
    print(f"triton {triton.__version__}, torch {torch.__version__}, {torch.cuda.get_device_name(dev)}")
    print("launcher:", type(run).__name__, "scratch", getattr(run, "global_scratch_size", "?"),
          getattr(run, "profile_scratch_size", "?"))
    idx = dev.index if dev.index is not None else torch.cuda.current_device()
    raw_stream = torch._C._cuda_getCurrentRawStream

    def low():
        run.launch(hit.grid, 1, 1, raw_stream(idx), c.function, run.launch_cooperative_grid, run.launch_pdl,
                   None, None, c.packed_metadata, None, None, None, *kargs)

    # the low-level call counts what launch counts
    out.zero_()
    low()
    a = out[1].cpu().clone()
    out.zero_()
    stats.launch(x, out, row=1)
    b = out[1].cpu().clone()
    print("launcher C function counts what stats.launch counts:", torch.equal(a, b), a.tolist())
    rows = {"stats.launch (meter's path)": lambda: stats.launch(x, out, row=1),
            "compiled[(grid,1,1)](*args)": lambda: c[(hit.grid, 1, 1)](*kargs),
            "launcher C function": low,
            "torch.count_nonzero": lambda: torch.count_nonzero(x),
            "x.sum()": lambda: x.sum()}
    for _ in range(2):
        res = {k: timed(f, args.calls) for k, f in rows.items()}
    for k, v in res.items():
        print(f"  {k:32s} {v:7.2f} us a call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
