"""Where the energy meter's host time goes (issue 5; BENCHMARKS.md runs 7, 12, 14 and 16).

Per forward (``--forwards`` a round, median of ``--repeats`` rounds, variants interleaved, device synchronised at
each clock read): the plain forward (checks deferred); a replayed forward (steady state under one EnergyMeter, after
two warm-up forwards: the recording and a first replay); the same with the replay's end-of-forward counting reads as
no-ops (what is left is the replay's Python); the same with the per-call checks also as no-ops (what is left is
the wrappers); a replayed forward that keeps none of its calls' tensors (as a plain forward frees them; timing
only: a replay that gave up could not be counted); a hooked forward (``replay=False``); then the device
synchronisations a metered forward makes (``torch.cuda.set_sync_debug_mode``), and where its host time goes: the
functions whose own time (cProfile) grows most over a plain forward's, for a replayed forward (``--profile`` picks
the variant; ``hooked``: a forward under ``EnergyMeter(replay=False)``, what a one-shot ``profile`` runs).
``--phases`` also times a one-shot ``profile`` phase by phase (set-up, forward, block end, report).

    python benchmarks/energy_host.py                       # CPU: a 4-layer Spikformer, dim 32 (tiny tensors)
    python benchmarks/energy_host.py --device cuda --backend fused --case "EST 4x384" --case "spiking attention block"

``--case`` names a model of ``energy_overhead.cases`` (the GPU benchmark's shapes); default: the tiny Spikformer.
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import pstats
import statistics
import sys
import time
import warnings
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import energy_overhead as E  # noqa: E402

from neurosim import validate  # noqa: E402
from neurosim.energy import EnergyMeter, profile  # noqa: E402
from neurosim.energy import replay as R  # noqa: E402


def tiny():
    model, _ = E.transformers(16, 32, 8, heads=4, depth=4)
    return "Spikformer 4x32 (tiny)", model, (4, 2, 8, 16)


def no_reads(stack: contextlib.ExitStack):
    """The replay's counting reads as no-ops (taking the tensors, kernel launches, the CPU's torch counting)."""
    stack.enter_context(mock.patch.object(R.Replayer, "_read", lambda self, block: None))


def no_checks(stack: contextlib.ExitStack):
    """Also the per-call checks of a replayed forward as no-ops (every call taken as recorded)."""
    def match(self, code, event, one):
        self.k += 1
        self.events.append(event)
        return True

    no_reads(stack)
    stack.enter_context(mock.patch.object(R.Replayer, "match", match))


class _Dropped(list):
    def append(self, item):
        pass


def calls_dropped(stack: contextlib.ExitStack):
    """The replay keeps no calls (their arguments and outputs die as in a plain forward; a replay that gave up could
    not be counted, so only for timing): what keeping a forward's tensors to its end costs."""
    init = R.Replayer.__init__

    def dropping(self, *args):
        init(self, *args)
        self.events = _Dropped()

    stack.enter_context(mock.patch.object(R.Replayer, "__init__", dropping))


PROFILED = {"replayed": None, "no-reads": no_reads, "no-checks": no_checks, "calls-not-kept": calls_dropped,
            "hooked": None}  # (hooked: forwards under EnergyMeter(replay=False), what a one-shot profile runs)


def measure(name, model, shape, device, repeats, forwards, variant="replayed", top=16):
    model = model.to(device).eval()
    x = (torch.rand(*shape, device=device) < 0.2).float()
    with EnergyMeter(model) as probe:
        wrapped = len(probe._slots)

    def plain():
        with torch.no_grad(), validate.deferred_checks():
            E.sync(device)
            t0 = time.perf_counter()
            for _ in range(forwards):
                model(x)
            E.sync(device)
            return time.perf_counter() - t0

    def metered(replay=True, patch=None):
        def run():
            with torch.no_grad(), EnergyMeter(model, replay=replay) as m, contextlib.ExitStack() as stack:
                if patch is not None:
                    patch(stack)
                model(x)
                model(x)
                E.sync(device)
                t0 = time.perf_counter()
                for _ in range(forwards):
                    model(x)
                E.sync(device)
                dt = time.perf_counter() - t0
                # (all timed forwards replayed; a fused-LIF conv net records its second forward, as its first
                # tells the LIF kernels to stop tallying spikes that the convolutions' reads count anyway)
                assert m.replayed >= forwards if replay else m.replayed == 0, m._templates
            return dt
        return run

    fns = {"plain forward": plain, "replayed forward": metered(),
           "replayed, reads as no-ops": metered(patch=no_reads),
           "replayed, reads and call checks as no-ops": metered(patch=no_checks),
           "replayed, calls not kept (timing only)": metered(patch=calls_dropped),
           "hooked forward (replay=False)": metered(False)}
    times = {k: [] for k in fns}
    for i in range(repeats + 1):
        for k, fn in fns.items():
            t = fn() / forwards
            if i:
                times[k].append(t)
    print(f"=== {name} {list(shape)} on {device}, {wrapped} wrapped modules")
    base = statistics.median(times["plain forward"])
    for label, ts in times.items():
        t = statistics.median(ts)
        print(f"  {label:44s} {t * 1e3:8.3f} ms a forward ({(t / base - 1) * 100:+6.1f}%)")

    kind = "hooked" if variant == "hooked" else "replayed"
    with torch.no_grad(), EnergyMeter(model, replay=variant != "hooked") as m, contextlib.ExitStack() as stack:
        model(x)
        model(x)
        if device.type == "cuda":
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    for _ in range(forwards):
                        model(x)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
            print(f"  device synchronisations in {forwards} {kind} forwards: {len(syncs)}"
                  + (f" (first: {syncs[0]})" if syncs else ""))
        if PROFILED[variant] is not None:
            PROFILED[variant](stack)
        replayed = profiled(lambda: model(x), forwards, device)
    with torch.no_grad(), validate.deferred_checks():
        plain_prof = profiled(lambda: model(x), forwards, device)
    print(f"  cProfile of {forwards} {kind} forwards ({variant}) against {forwards} plain ones (the profiler adds "
          "its own cost), the functions whose own time grows most, us a forward:")
    grown = sorted(((replayed.get(f, (0, 0))[1] - plain_prof.get(f, (0, 0))[1], f)
                    for f in set(replayed) | set(plain_prof)), reverse=True)
    total = sum(v[1] for v in replayed.values()) - sum(v[1] for v in plain_prof.values())
    print(f"    all functions: {total / forwards * 1e6:+9.1f}")
    for dt, f in grown[:top]:
        calls = replayed.get(f, (0, 0))[0] - plain_prof.get(f, (0, 0))[0]
        print(f"    {dt / forwards * 1e6:+9.1f}  ({calls / forwards:+6.1f} calls)  {f}")


def phases(model, x, device, repeats, again: bool = False):
    """Where a ``profile(model, x)`` call's wall time goes, phase by phase, the device synchronised at each clock read:
    the meter's set-up, the metered forward until the device is done, the block's end (``__exit__``: unwrapping, the
    deferred checks' read), and the report (the counts' read-back, pricing); against a plain forward with deferred
    checks and a whole ``profile`` call. A first call (``again=False``: the meter constructed and entered, walking
    the model and wrapping the counted modules; the forward hooked; ``profile(..., reuse=False)``), or a call again
    on the same model (``again=True``: a meter kept from earlier rounds, reset and entered, the model's settings
    compared with its recording's; the forward replayed; ``profile(model, x)``). Median of ``repeats`` rounds after
    3."""
    def plain():
        with torch.no_grad(), validate.deferred_checks():
            model(x)

    names = ("plain forward", "set-up", "metered forward", "block end", "report", "profile() in all")
    times = {k: [] for k in names}
    kept = EnergyMeter(model) if again else None
    for i in range(repeats + 3):
        E.sync(device)
        t = [time.perf_counter()]
        plain()
        E.sync(device)
        t.append(time.perf_counter())
        with torch.no_grad():
            if again:
                m = kept
                m.reset()
            else:
                m = EnergyMeter(model, replay=False)
            m.__enter__()
            t.append(time.perf_counter())
            try:
                model(x)
                E.sync(device)
                t.append(time.perf_counter())
            finally:
                m.__exit__(None, None, None)
        t.append(time.perf_counter())
        m.report(batch_size=x.shape[1])
        t.append(time.perf_counter())
        profile(model, x, reuse=again)
        E.sync(device)
        t.append(time.perf_counter())
        if i >= 3:
            for k, t0, t1 in zip(names, t, t[1:]):
                times[k].append(t1 - t0)
    base = statistics.median(times["plain forward"])
    print(f"  {'a profile called again' if again else 'a first profile call'}, phase by phase (device synchronised "
          "between them), ms:")
    if again and kept.replayed != 1:  # (a recording may not be replayable: its reason)
        print(f"    (not replayed: {[t for t in kept._templates.values() if isinstance(t, str)] or 'no recording'})")
    for k, ts in times.items():
        t = statistics.median(ts)
        print(f"    {k:20s} {t * 1e3:8.3f} ({t / base * 100:5.1f}% of the plain forward)")


def profiled(fn, forwards, device) -> dict:
    """cProfile of ``forwards`` calls of ``fn``: {function: (calls, own seconds)}."""
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(forwards):
        fn()
    E.sync(device)
    prof.disable()
    st = pstats.Stats(prof).stats
    return {f"{Path(file).name}:{line}({name})": (v[1], v[2]) for (file, line, name), v in st.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", default="torch", choices=("torch", "fused", "snntorch"), help="LIF backend")
    ap.add_argument("--case", action="append", default=[], help="a model of energy_overhead.cases (repeatable)")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--forwards", type=int, default=20)
    ap.add_argument("--profile", default="replayed", choices=sorted(PROFILED),
                    help="the metered variant the cProfile diff takes")
    ap.add_argument("--phases", action="store_true", help="also time a one-shot profile() phase by phase")
    ap.add_argument("--top", type=int, default=16, help="functions the cProfile diff lists")
    args = ap.parse_args(argv)
    E.BACKEND = args.backend
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, LIF backend {args.backend}")
    runs = [tiny()]
    if args.case:
        runs = [c[:3] for c in E.named_cases(args.case)]
    for name, model, shape in runs:
        measure(name, model, shape, device, args.repeats, args.forwards, args.profile, args.top)
        if args.phases:
            phases(model, (torch.rand(*shape, device=device) < 0.2).float(), device, args.repeats)


if __name__ == "__main__":
    main()
