"""Python's cyclic garbage collector during ``profile`` calls (issue 5; BENCHMARKS.md energy run 18).

A plain forward frees what it makes by reference counting; a metered one keeps records (thousands of small objects
in a transformer) until its report. Those set off the collector, whose passes walk the objects of older generations,
a full pass every tracked object of the process. This script runs ``--calls`` plain forwards and then as many
``profile`` calls (and, with ``--batches N``, as many metered loops: ``N`` forwards under one ``EnergyMeter`` and its
report), one after the other, and prints per variant the collector's passes by generation (``gc.callbacks``),
the time spent in them, and the median and mean wall time of a call (device synchronised after each call), and
the objects left that only the collector can free after one more call.

    python benchmarks/energy_gc.py [--device cuda] [--calls 300] [--batches 10] [--case "EST 4x384"] [--quick]
"""
from __future__ import annotations

import argparse
import collections
import gc
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import energy_overhead as E  # noqa: E402

from neurosim import validate  # noqa: E402
from neurosim.energy import EnergyMeter, profile  # noqa: E402


class Passes:
    """The collector's passes while it is installed: generation -> [count, seconds]."""

    def __init__(self):
        self.by_gen = collections.defaultdict(lambda: [0, 0.0])
        self._t0 = 0.0

    def __call__(self, phase, info):
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            p = self.by_gen[info["generation"]]
            p[0] += 1
            p[1] += time.perf_counter() - self._t0


def left_for_the_collector(fn) -> int:
    """Objects that only the cyclic collector can free, left by ``fn()``."""
    while gc.collect():
        pass
    gc.disable()
    try:
        fn()
        return gc.collect()
    finally:
        gc.enable()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backend", default="torch", choices=("torch", "fused", "snntorch"))
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--batches", type=int, default=0,
                    help="also time metered loops: this many forwards under one EnergyMeter and its report a call")
    ap.add_argument("--case", action="append", default=None, help="a model of energy_overhead.cases (repeatable)")
    ap.add_argument("--quick", action="store_true", help="the tiny shapes of energy_overhead.py --quick")
    args = ap.parse_args(argv)
    E.BACKEND = args.backend
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.quick:
        chosen = [c for c in E.cases(True) if args.case is None or c[0] in args.case]
    else:
        chosen = E.named_cases(args.case or ["EST 4x384"])
    print(f"torch {torch.__version__}, {args.device}, LIF backend {args.backend}, {args.calls} calls a variant")
    for name, model, shape, _ in chosen:
        model = model.to(device).eval()
        x = (torch.rand(shape, device=device) < 0.2).float()

        def plain():
            with torch.no_grad(), validate.deferred_checks():
                model(x)

        def prof():
            profile(model, x)

        def metered():  # (a metered loop: --batches forwards under one EnergyMeter, the first recorded, then its report)
            with torch.no_grad(), EnergyMeter(model) as m:
                for _ in range(args.batches):
                    model(x)
            m.report()

        print(f"=== {name} {list(shape)}")
        variants = (("plain forward", plain), ("profile", prof), (f"{args.batches} metered", metered))
        for label, fn in variants[:3 if args.batches else 2]:
            for _ in range(5):
                fn()
            while gc.collect():
                pass
            passes = Passes()
            gc.callbacks.append(passes)
            times = []
            try:
                for _ in range(args.calls):
                    E.sync(device)
                    t = time.perf_counter()
                    fn()
                    E.sync(device)
                    times.append(time.perf_counter() - t)
            finally:
                gc.callbacks.remove(passes)
            gen = ", ".join(f"gen {g}: {n} passes {s * 1e3:.1f} ms" for g, (n, s) in sorted(passes.by_gen.items()))
            spent = sum(s for _, s in passes.by_gen.values())
            print(f"  {label:14s} median {statistics.median(times) * 1e3:8.3f} ms, mean {statistics.mean(times) * 1e3:8.3f}"
                  f" ms; collector {spent / args.calls * 1e3:.3f} ms a call ({gen or 'no pass'})")
        print(f"  objects left for the collector by one profile call: {left_for_the_collector(prof)}"
              + (f", by one metered loop: {left_for_the_collector(metered)}" if args.batches else ""))


if __name__ == "__main__":
    main()
