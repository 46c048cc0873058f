"""Where the energy meter's host time goes (issue 5; BENCHMARKS.md runs 7 and 12).

Per forward (20 forwards per round, median of 15 rounds, device synchronised at each clock read): the plain
forward (checks deferred), the same with empty pre- and forward hooks on every hooked module (the floor of any
hook-based meter), under an EnergyMeter, and under an EnergyMeter whose counting launches are replaced by no-ops
(what is left over the plain forward is the meter's Python); the time of one ``report()`` over 20 metered forwards;
then one instrumented metered round: host time per counting call, per pre-hook and per forward hook, by module
type.

    python benchmarks/energy_host.py                       # CPU: a 4-layer Spikformer, dim 32 (tiny tensors)
    python benchmarks/energy_host.py --device cuda --backend fused --case "EST 4x384" --case "spiking attention block"

``--case`` names a model of ``energy_overhead.cases`` (the GPU benchmark's shapes); default: the tiny Spikformer.
"""
from __future__ import annotations

import argparse
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
from neurosim.kernels import stats as K  # noqa: E402

FORWARDS = 20


def tiny():
    model, _ = E.transformers(16, 32, 8, heads=4, depth=4)
    return "Spikformer 4x32 (tiny)", model, (4, 2, 8, 16)


def measure(name, model, shape, device, repeats):
    model = model.to(device).eval()
    x = (torch.rand(*shape, device=device) < 0.2).float()
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

    def no_launches():
        one, many = K.launch, K.launch_many
        K.launch = K.launch_many = lambda *a, **k: None
        try:
            metered()
        finally:
            K.launch, K.launch_many = one, many

    fns = {"plain forward": plain, "empty hooks": hooked, "EnergyMeter (+1 report per round)": metered,
           "EnergyMeter, counting launches as no-ops": no_launches}
    times = E.interleaved(list(fns.values()), device, repeats, 1, per=FORWARDS)
    print(f"=== {name} {list(shape)} on {device}, {len(leaves)} hooked modules")
    base = statistics.median(times[0])
    for label, ts in zip(fns, times):
        t = statistics.median(ts)
        print(f"  {label:42s} {t * 1e3:8.3f} ms a forward ({(t / base - 1) * 100:+6.1f}%)")

    with torch.no_grad(), EnergyMeter(model) as m:
        for _ in range(FORWARDS):
            model(x)
    reports = []
    for _ in range(5):
        t0 = time.perf_counter()
        m.report()
        reports.append(time.perf_counter() - t0)
    print(f"  report() of {FORWARDS} metered forwards        {statistics.median(reports) * 1e3:8.3f} ms")

    acc, n = collections.defaultdict(float), collections.Counter()

    def timed(label, f):
        def g(*a, **k):
            t0 = time.perf_counter()
            r = f(*a, **k)
            acc[label] += time.perf_counter() - t0
            n[label] += 1
            return r
        return g

    count, make_hook, make_pre = DC.CountBuffer._count, M.EnergyMeter._make_hook, M.EnergyMeter._make_pre_hook
    one, many, get, put = K.launch, K.launch_many, M.StatsCache.get, M.StatsCache.put
    DC.CountBuffer._count = timed("counting call", count)
    K.launch, K.launch_many = timed("  of which Triton launch", one), timed("  of which batched launch", many)
    M.StatsCache.get, M.StatsCache.put = timed("cache get", get), timed("cache put", put)
    M.EnergyMeter._make_hook = lambda self, slot: timed("forward hook: " + type(slot.module).__name__,
                                                        make_hook(self, slot))
    M.EnergyMeter._make_pre_hook = lambda self, slot: timed("pre-hook (incl. the rows it forces)", make_pre(self, slot))
    try:
        with torch.no_grad(), EnergyMeter(model):
            model(x)   # warm-up forward (first calls build fan-out maps and caches): not timed
            acc.clear()
            n.clear()
            for _ in range(FORWARDS):
                model(x)
    finally:
        DC.CountBuffer._count, M.EnergyMeter._make_hook, M.EnergyMeter._make_pre_hook = count, make_hook, make_pre
        K.launch, K.launch_many, M.StatsCache.get, M.StatsCache.put = one, many, get, put
    print("  instrumented round (timers add their own cost):")
    for k in sorted(acc, key=lambda k: -acc[k]):
        print(f"    {k:36s} {n[k] / FORWARDS:6.1f} calls a forward, {acc[k] / n[k] * 1e6:6.1f} us a call, "
              f"{acc[k] / FORWARDS * 1e3:6.3f} ms a forward")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", default="torch", choices=("torch", "fused", "snntorch"), help="LIF backend")
    ap.add_argument("--case", action="append", default=[], help="a model of energy_overhead.cases (repeatable)")
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args(argv)
    E.BACKEND = args.backend
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, LIF backend {args.backend}")
    runs = [tiny()]
    if args.case:
        known: dict = {}
        for c in E.cases(quick=False):
            known.setdefault(c[0], c)  # the first of a name (the Spikformer: batch 64)
        missing = [c for c in args.case if c not in known]
        if missing:
            raise SystemExit(f"--case must be one of {sorted(known)}, got {missing}")
        runs = [known[c][:3] for c in args.case]
    for name, model, shape in runs:
        measure(name, model, shape, device, args.repeats)


if __name__ == "__main__":
    main()
