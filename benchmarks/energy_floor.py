"""The least a one-shot exact count through hooks can cost, against ``profile`` (issue 5; BENCHMARKS.md run 18).

Issue 5 asks for counting "with hooks, no second forward pass" at under 10% over a plain forward. Where the host sets
the pace of a forward (Python and kernel launches, not the GPU), that target meets a floor that does not depend on
how well the counting is written: hooks that run at all, and any read of the spikes. This script times, per model
(the shapes of ``energy_overhead.py``), one call each, interleaved, device synchronised at each clock read, checks
deferred in every variant as the meter defers them:

- ``plain``: ``model(x)``;
- ``torch hooks``: a forward hook that does nothing on every module the meter would hook, through torch's
  ``register_forward_hook`` (registered before the forward, removed after it, as a one-shot count must);
- ``wrappers``: the same modules' ``forward`` replaced by a closure that only calls it (the meter's mechanism; it
  keeps torch's fast call path), set and removed around the forward;
- ``note + 1 read``: those wrappers keeping each call's first input (each tensor once), then one multi-tensor
  launch per dtype (``torch._foreach_norm``, the L1 norm: a binary tensor's spike count) and one read-back. The
  least an exact count from the actual spikes must do, not a meter: no fan-out maps (a padded conv's SynOps), no
  binary or NaN test, no output rates, no report;
- ``profile``: ``neurosim.energy.profile(model, x, reuse=False)``, the whole one-shot count and its report.

    python benchmarks/energy_floor.py [--device cuda] [--backend torch|fused] [--repeats 30] [--quick]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import energy_overhead as E  # noqa: E402

from neurosim import validate  # noqa: E402
from neurosim.energy import EnergyMeter, profile  # noqa: E402
from neurosim.energy.meter import _Wrapped, _first_tensor  # noqa: E402


def hooked_modules(model) -> list:
    """The modules an EnergyMeter wraps in ``model`` (counted layers and the leaves it lists as not counted)."""
    with EnergyMeter(model) as m:
        return [s.module for s in m._slots]


def _wrapped(modules, make) -> list:
    """Each module's ``forward`` replaced by ``make(forward)``, as the meter wraps them (its ``_Wrapped``: remove
    each to undo)."""
    return [_Wrapped(m, make) for m in modules]


def _unwrap(handles):
    for h in reversed(handles):
        h.remove()


def variants(model, x, modules):
    def plain():
        with torch.no_grad(), validate.deferred_checks():
            model(x)

    def torch_hooks():
        handles = [m.register_forward_hook(lambda mod, args, out: None) for m in modules]
        try:
            plain()
        finally:
            for h in handles:
                h.remove()

    def passthrough(call):
        def forward(*args, **kwargs):
            return call(*args, **kwargs)
        return forward

    def wrappers():
        handles = _wrapped(modules, passthrough)
        try:
            plain()
        finally:
            _unwrap(handles)

    def noted():
        kept = {}

        def noting(call):
            def forward(*args, **kwargs):
                t = _first_tensor(args)
                if t is not None and t.is_floating_point():
                    kept[id(t)] = t
                return call(*args, **kwargs)
            return forward

        handles = _wrapped(modules, noting)
        try:
            plain()
        finally:
            _unwrap(handles)
        groups = defaultdict(list)
        for t in kept.values():
            groups[t.device, t.dtype].append(t)
        sums = [torch.stack(torch._foreach_norm(g, 1)) for g in groups.values()]
        return torch.cat([s.float() for s in sums]).cpu() if sums else None

    def prof():
        profile(model, x, reuse=False)  # (a first call: the meter made and the forward hooked)

    return {"plain": plain, "torch hooks": torch_hooks, "wrappers": wrappers, "note + 1 read": noted,
            "profile": prof}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backend", default="torch", choices=("torch", "fused", "snntorch"))
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    device, env = E.start(args.device, args.backend, repeats=args.repeats)
    rows = []
    for name, model, shape, _ in E.cases(args.quick):
        model = model.to(device).eval()
        x = (torch.rand(shape, device=device) < 0.2).float()
        modules = hooked_modules(model)
        fns = variants(model, x, modules)
        times = E.interleaved(list(fns.values()), device, args.repeats, args.warmup)
        med = {k: statistics.median(t) * 1e3 for k, t in zip(fns, times)}
        # the overhead as the median of each round's ratio to that round's plain forward (drift cancels)
        paired = {k: (statistics.median(a / b for a, b in zip(t, times[0])) - 1) * 100
                  for k, t in zip(fns, times) if k != "plain"}
        row = {"model": name, "input": list(shape), "modules": len(modules), **{f"{k} ms": v for k, v in med.items()},
               **{f"{k} %": v for k, v in paired.items()}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    cols = ("torch hooks", "wrappers", "note + 1 read", "profile")
    print(f"\nLIF backend {args.backend}; one call each, median of {args.repeats} ms (median of the rounds' ratios to "
          "the plain forward)")
    print("| model | input | hooked modules | plain | " + " | ".join(cols) + " |")
    print("|---|---|---:|---:|" + "---:|" * len(cols))
    for r in rows:
        cells = " | ".join(f"{r[k + ' ms']:.3f} ({r[k + ' %']:+.1f}%)" for k in cols)
        print(f"| {r['model']} | {r['input']} | {r['modules']} | {r['plain ms']:.3f} | {cells} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"env": env, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
