"""Host cost of one LIF layer call per backend: the wall time of many small forward + backward calls, where the
host sets the pace (a regression check of the layer's per-call Python, not a kernel benchmark).

    python benchmarks/lif_call_overhead.py --device cuda --out lif_calls.json

Each backend: ``LIF(beta=0.8, threshold=0.5, reset="zero")`` on ``x [T, B, N]`` (fast-sigmoid, so Norse joins);
``--calls`` forward + backward calls timed together (device synchronised before and after), median over
``--repeats``, in microseconds a call. Run it with two neurosim trees on PYTHONPATH, in alternating order, to
compare their per-call cost.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import neurosim


def per_call_us(backend: str, args, dev) -> float:
    layer = neurosim.LIF(beta=0.8, threshold=0.5, reset="zero", backend=backend).to(dev)
    x = torch.rand(args.T, args.B, args.N, device=dev, requires_grad=True)

    def calls(n):
        for _ in range(n):
            layer(x).sum().backward()

    calls(10)
    times = []
    for _ in range(args.repeats):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        calls(args.calls)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) / args.calls * 1e6)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--T", type=int, default=4)
    ap.add_argument("--B", type=int, default=32)
    ap.add_argument("--N", type=int, default=4096)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    backends = ["snntorch", "torch", "norse"] + (["fused"] if dev.type == "cuda" else [])
    rows = {b: per_call_us(b, args, dev) for b in backends}
    print(json.dumps({"neurosim": neurosim.__file__, "shape": [args.T, args.B, args.N], "us_per_call": rows}))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"args": vars(args), "torch": torch.__version__, "us_per_call": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
