"""Where the energy meter's host time goes, on a CPU (issue 5; BENCHMARKS.md run 7).

A 4-layer Spikformer (dim 32, 4 heads, 8 tokens of 16 features, T=4, batch 2, torch LIF): tiny tensors, so the
forward is all host work, as in the host-bound GPU rows. Per forward (20 forwards per round, median of 15 rounds):
the plain forward (checks deferred), the same with empty pre- and forward hooks on every hooked module (the floor
of any hook-based meter), and under an EnergyMeter; then one instrumented metered round: time per counting call
and per hook, by module type.

    python benchmarks/energy_host_cpu.py
"""
from __future__ import annotations

import collections
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import energy_overhead as E  # noqa: E402

from neurosim import validate  # noqa: E402
from neurosim.energy import EnergyMeter  # noqa: E402
from neurosim.energy import device_counts as DC  # noqa: E402
from neurosim.energy import meter as M  # noqa: E402

FORWARDS = 20


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, _ = E.transformers(16, 32, 8, heads=4, depth=4)
    model.eval()
    x = (torch.rand(4, 2, 8, 16) < 0.2).float()
    with EnergyMeter(model) as probe:
        leaves = [slot.module for slot in probe._slots]  # the modules a meter hooks

    def plain():
        with torch.no_grad(), validate.deferred_checks():
            for _ in range(FORWARDS):
                model(x)

    def hooked():
        hs = [h for m in leaves for h in (m.register_forward_pre_hook(lambda m, a: None),
                                          m.register_forward_hook(lambda m, a, k, o: None, with_kwargs=True))]
        plain()
        for h in hs:
            h.remove()

    def metered():
        with torch.no_grad(), EnergyMeter(model) as m:
            for _ in range(FORWARDS):
                model(x)
        m.report()

    fns = {"plain forward": plain, "empty hooks": hooked, "EnergyMeter (+1 report per round)": metered}
    times = E.interleaved(list(fns.values()), torch.device("cpu"), 15, 1, per=FORWARDS)
    print(f"torch {torch.__version__}, {len(leaves)} hooked modules")
    for name, ts in zip(fns, times):
        print(f"{name:38s} {statistics.median(ts) * 1e3:7.3f} ms a forward")

    acc, n = collections.defaultdict(float), collections.Counter()

    def timed(name, f):
        def g(*a, **k):
            t0 = time.perf_counter()
            r = f(*a, **k)
            acc[name] += time.perf_counter() - t0
            n[name] += 1
            return r
        return g

    count, make_hook, make_pre = DC.CountBuffer._count, M.EnergyMeter._make_hook, M.EnergyMeter._make_pre_hook
    DC.CountBuffer._count = timed("counting call", count)
    M.EnergyMeter._make_hook = lambda self, slot: timed("forward hook: " + type(slot.module).__name__,
                                                        make_hook(self, slot))
    M.EnergyMeter._make_pre_hook = lambda self, slot: timed("pre-hook (incl. rows it forces)", make_pre(self, slot))
    try:
        with torch.no_grad(), EnergyMeter(model):
            model(x)   # warm-up forward (first calls build fan-out maps and caches): not timed
            acc.clear()
            n.clear()
            for _ in range(FORWARDS):
                model(x)
    finally:
        DC.CountBuffer._count, M.EnergyMeter._make_hook, M.EnergyMeter._make_pre_hook = count, make_hook, make_pre
    print("instrumented round (timers add their own cost):")
    for k in sorted(acc, key=lambda k: -acc[k]):
        print(f"  {k:36s} {n[k] / FORWARDS:6.1f} calls a forward, {acc[k] / n[k] * 1e6:6.1f} us a call, "
              f"{acc[k] / FORWARDS * 1e3:6.3f} ms a forward")


if __name__ == "__main__":
    main()
