"""A one-shot ``profile`` against a plain forward as the batch grows (issue 5): where its fixed cost stops showing.

The meter's cost on the host is per counted call (its counters, tensor cache and reads: BENCHMARKS.md energy runs
16-18), so it does not grow with the batch, while a forward's GPU time does. For each model of
``energy_overhead.py`` whose one-shot overhead misses 10% at the benchmark's shape, this times the plain forward
(checks deferred, as the meter runs them) and ``profile(model, x)`` (a first call, ``reuse=False``, and a call again on
the same model, its meter kept and the forward replayed) at several batch sizes, interleaved, device
synchronised at each clock read, and prints the extra time a call and the overhead. The batch at which the overhead
falls under 10% is where the forward's GPU work hides the meter's host work.

``--phases`` also times each kind of call phase by phase (``energy_host.phases``: set-up, metered forward, block end,
report, the device synchronised between them).

    python benchmarks/energy_sweep.py --device cuda [--backend torch|fused] [--repeats 20] [--phases] [--out sweep.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import energy_host as H  # noqa: E402
import energy_overhead as E  # noqa: E402

from neurosim.energy import profile  # noqa: E402


def models(quick: bool):
    """(name, model, input shape for batch b, batch sizes)."""
    if quick:
        sf, est = E.transformers(16, 32, 8, heads=4, depth=2)
        return [("spiking attention block", E.AttentionBlock(32, 4), lambda b: (2, b, 16, 32), (2, 4)),
                ("Spikformer 2x32", sf, lambda b: (b, 8, 16), (2, 4)),
                ("EST 2x32", est, lambda b: (b, 8, 16), (2, 4))]
    sf, est = E.transformers(128, 384, 64)
    return [("spiking attention block", E.AttentionBlock(256, 8), lambda b: (4, b, 128, 256), (32, 128, 512)),
            ("Spikformer 4x384", sf, lambda b: (b, 64, 128), (64, 128, 256, 512)),
            ("EST 4x384", est, lambda b: (b, 64, 128), (16, 64, 256))]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backend", default="torch", choices=("torch", "fused", "snntorch"), help="LIF backend")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="tiny shapes (a CPU smoke run)")
    ap.add_argument("--phases", action="store_true", help="also time each one-shot profile phase by phase")
    ap.add_argument("--collect", action="store_true",
                    help="a full garbage collection before each timed call, outside its time "
                         "(see energy_overhead.interleaved)")
    ap.add_argument("--model", action="append", default=[], help="only these models (a name's first word; repeatable)")
    ap.add_argument("--out", default=None, help="write the results as JSON")
    args = ap.parse_args(argv)
    device, env = E.start(args.device, args.backend, repeats=args.repeats, warmup=args.warmup, collect=args.collect)
    results = []
    for name, model, shape, batches in models(args.quick):
        if args.model and name.split()[0] not in args.model:
            continue
        model = model.to(device).eval()
        for b in batches:
            x = (torch.rand(shape(b), device=device) < 0.2).float()
            plain, prof, again = E.interleaved([E.forwards(model, x, 1, deferred=True),
                                                lambda x=x: profile(model, x, reuse=False),
                                                lambda x=x: profile(model, x)], device, args.repeats, args.warmup,
                                               collect=args.collect)
            mp, mq, mg = statistics.median(plain), statistics.median(prof), statistics.median(again)
            row = {"model": name, "batch": b, "input": list(x.shape), "plain_deferred_ms": mp * 1e3,
                   "profile_ms": mq * 1e3, "extra_ms": (mq - mp) * 1e3, "overhead_vs_deferred_pct": (mq / mp - 1) * 100,
                   "profile_again_ms": mg * 1e3, "again_extra_ms": (mg - mp) * 1e3,
                   "again_overhead_vs_deferred_pct": (mg / mp - 1) * 100}
            results.append(row)
            print(json.dumps(row), flush=True)
            if args.phases:
                H.phases(model, x, device, max(args.repeats // 2, 3))
                H.phases(model, x, device, max(args.repeats // 2, 3), again=True)
            del x
            if device.type == "cuda":
                torch.cuda.empty_cache()
        model.cpu()
    print(f"\nLIF backend {args.backend}")
    print("| model | input | plain forward (deferred checks), ms | `profile`, a first call, ms | extra, ms | overhead "
          "| `profile` called again, ms | extra, ms | overhead |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['model']} | {r['input']} | {r['plain_deferred_ms']:.3f} | {r['profile_ms']:.3f} | "
              f"{r['extra_ms']:.3f} | {r['overhead_vs_deferred_pct']:+.1f}% | {r['profile_again_ms']:.3f} | "
              f"{r['again_extra_ms']:.3f} | {r['again_overhead_vs_deferred_pct']:+.1f}% |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"env": env, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
