"""Overhead of ``neurosim.energy.profile`` versus a plain forward pass (issue 5).

Spiking networks (MLP, conv net, spike-driven attention block, and two whole transformers from
``neurosim.models``: a 4-layer Spikformer and a 4-layer EST); for each, the median wall time of ``model(x)``
under ``torch.no_grad()`` and of ``profile(model, x)``: a first call (``reuse=False``: hook setup + the same forward +
the one read-back and report) and a call again on the same model (its meter kept, the forward replayed), runs
interleaved, device synchronised before each clock read. Two baselines: the plain forward as it
runs by default (each layer's NaN/inf input check reads its verdict at once, a host sync per LIF call) and the
plain forward inside ``neurosim.validate.deferred_checks()`` (verdicts read once at the end), which is how the
meter runs the same checks; the overhead is given against both. Also checks that the
counts on the GPU equal those on the CPU for the same model and input, and prints how the profile counted
(``kernel``: the one-read Triton statistics kernel; ``torch``: torch ops).

    python benchmarks/energy_overhead.py [--device cuda] [--repeats 30] [--quick] [--backend torch|fused|snntorch]
                                         [--counting auto|torch|kernel] [--out results.json]
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time

import torch
from torch import nn

import neurosim
from neurosim import validate
from neurosim.energy import EnergyMeter, profile
from neurosim.layers import Add, MatMul, NeuronSpec
from neurosim.models import EnhancedSpikingTransformer, ESTConfig, spikformer

BACKEND = "torch"  # LIF backend of the benchmark models (--backend)


class MLP(nn.Module):
    def __init__(self, d_in, hidden, d_out):
        super().__init__()
        self.fc1, self.lif1 = nn.Linear(d_in, hidden), neurosim.LIF(beta=0.9, threshold=0.5, backend=BACKEND)
        self.fc2, self.lif2 = nn.Linear(hidden, hidden), neurosim.LIF(beta=0.9, threshold=0.5, backend=BACKEND)
        self.fc3 = nn.Linear(hidden, d_out)

    def forward(self, x):
        return self.fc3(self.lif2(self.fc2(self.lif1(self.fc1(x)))))


class ConvNet(nn.Module):
    def __init__(self, c, hw, classes=10):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, 64, 3, padding=1), nn.BatchNorm2d(64)
        self.lif1 = neurosim.LIF(beta=0.9, threshold=0.5, backend=BACKEND)
        self.conv2, self.bn2 = nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.BatchNorm2d(128)
        self.lif2 = neurosim.LIF(beta=0.9, threshold=0.5, backend=BACKEND)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(128 * (hw // 4) ** 2, classes)

    def forward(self, x):
        t, b = x.shape[:2]
        y = self.bn1(self.conv1(x.flatten(0, 1)))
        y = self.lif1(y.reshape(t, b, *y.shape[1:])).flatten(0, 1)
        y = self.bn2(self.conv2(y))
        y = self.lif2(y.reshape(t, b, *y.shape[1:])).flatten(0, 1)
        return self.fc(self.pool(y).flatten(1))


class AttentionBlock(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.lif_qkv = neurosim.LIF(beta=0.5, threshold=0.5, backend=BACKEND)
        self.qk, self.av = MatMul(scale=0.125), MatMul()
        self.lif_attn = neurosim.LIF(beta=0.5, threshold=0.5, backend=BACKEND)
        self.proj = nn.Linear(d, d)
        self.add = Add()
        self.norm = nn.LayerNorm(d)

    def forward(self, x):  # [T, B, N, D] spikes
        t, b, n, d = x.shape
        s = self.lif_qkv(self.qkv(x))
        q, k, v = s.reshape(t, b, n, 3, self.heads, d // self.heads).permute(3, 0, 1, 4, 2, 5)
        y = self.av(self.qk(q, k.transpose(-1, -2)), v)  # [T, B, H, N, dh]
        y = self.lif_attn(y.transpose(2, 3).reshape(t, b, n, d))
        return self.norm(self.add(x, self.proj(y)))


def transformers(features, dim, tokens, heads=8, depth=4):
    """A Spikformer (linear SSA, SEW-ADD residuals) and a full EST (conv SSA, CPG-PE, TPU, membrane residuals),
    ``depth`` layers, T=4, taking ``[B, tokens, features]`` spike inputs."""
    neuron = NeuronSpec(backend=BACKEND, threshold=0.5)
    kw = dict(dim=dim, depth=depth, heads=heads, num_steps=4, max_len=tokens, readout="pool", neuron=neuron)
    return (spikformer(features, 10, **kw), EnhancedSpikingTransformer(ESTConfig(features, 10, **kw)))


def cases(quick: bool):
    """(name, model, input shape, compare counts with the CPU's)."""
    if quick:
        sf, est = transformers(16, 32, 8, heads=4, depth=2)
        return [("spiking MLP", MLP(64, 128, 10), (4, 8, 64), True),
                ("spiking conv net", ConvNet(2, 16), (2, 4, 2, 16, 16), True),
                ("spiking attention block", AttentionBlock(32, 4), (2, 4, 16, 32), True),
                ("Spikformer 2x32", sf, (4, 8, 16), True), ("Spikformer 2x32", sf, (16, 8, 16), False),
                ("EST 2x32", est, (4, 8, 16), True)]
    sf, est = transformers(128, 384, 64)
    # the Spikformer at two batch sizes: 64, where the GPU waits for the host (Python, launches), and 256, where
    # the host waits for the GPU; the EST at batch 16 (runs 5-6 timed a cuDNN strict-fp32 pitfall in its
    # convolutions there, fixed in neurosim.layers.conv: BENCHMARKS.md run 7)
    return [("spiking MLP", MLP(784, 2048, 10), (16, 512, 784), True),
            ("spiking conv net", ConvNet(2, 64), (8, 64, 2, 64, 64), True),
            ("spiking attention block", AttentionBlock(256, 8), (4, 32, 128, 256), True),
            ("Spikformer 4x384", sf, (64, 64, 128), True), ("Spikformer 4x384", sf, (256, 64, 128), False),
            ("EST 4x384", est, (16, 64, 128), True)]


def named_cases(names: list) -> list:
    """The full-size :func:`cases` called ``names`` (the first of a name: the Spikformer at batch 64); exits naming
    the choices when a name is unknown (the ``--case`` of energy_host.py and replay_overhead.py)."""
    known: dict = {}
    for c in cases(quick=False):
        known.setdefault(c[0], c)
    missing = [n for n in names if n not in known]
    if missing:
        raise SystemExit(f"--case must be one of {sorted(known)}, got {missing}")
    return [known[n] for n in names]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns, device, repeats, warmup, per=1, collect=False):
    """Wall times (seconds, divided by ``per``) of each of ``fns``, run in turn so that drift affects all alike,
    the device synchronised before each clock read, after ``warmup`` rounds. ``collect``: a full garbage collection
    before each function, outside its time (``profile`` pauses the collector for its call, so the collections its
    allocations call for can otherwise fall into the next function's time)."""
    times = tuple([] for _ in fns)
    for i in range(warmup + repeats):
        sync(device)
        t0 = time.perf_counter()
        spans = []
        for fn in fns:
            if collect:
                gc.collect()
                t0 = time.perf_counter()
            fn()
            sync(device)
            t1 = time.perf_counter()
            spans.append(t1 - t0)
            t0 = t1
        if i >= warmup:
            for k, dt in enumerate(spans):
                times[k].append(dt / per)
    return times


def forwards(model, x, batches, deferred=False):
    """``batches`` plain forwards (``deferred``: inside validate.deferred_checks, as the meter runs them)."""
    def run():
        with torch.no_grad():
            if deferred:
                with validate.deferred_checks():
                    for _ in range(batches):
                        model(x)
            else:
                for _ in range(batches):
                    model(x)
    return run


def bench(model, x, device, repeats, warmup, counting="auto"):
    """One plain forward (both baselines) against one ``profile`` call: a first call (``reuse=False``: the meter
    made, the forward hooked, the read-back, the report), with ``rates="needed"`` (the default) and ``rates="all"``;
    and a call again on the same model (the meter kept from the call before, the forward replayed)."""
    return interleaved([forwards(model, x, 1), forwards(model, x, 1, deferred=True),
                        lambda: profile(model, x, counting=counting, reuse=False),
                        lambda: profile(model, x, counting=counting, rates="all", reuse=False),
                        lambda: profile(model, x, counting=counting)], device, repeats, warmup)


def bench_metered(model, x, device, repeats, batches, counting="auto"):
    """``batches`` plain forwards (both baselines) against the same forwards inside one EnergyMeter plus its one
    report (what metering a validation set costs per batch), with the meter's replay on (the first forward
    recorded, the others replayed: neurosim.energy.replay) and off (every forward hooked); and the replayed
    forwards alone (``batches`` of them after two metered ones, without the report). Times per batch, one warm-up
    round."""
    def run_metered(replay):
        def run():
            with torch.no_grad(), EnergyMeter(model, counting=counting, replay=replay) as m:
                for _ in range(batches):
                    model(x)
            m.report()
        return run

    steady = []

    def run_replayed():
        with torch.no_grad(), EnergyMeter(model, counting=counting) as m:
            model(x)  # recorded (or, when it tells fused LIF kernels to stop tallying spikes a read counts anyway,
            model(x)  # this one is; the first is then replayed)
            r0 = m.replayed
            sync(device)
            t = time.perf_counter()
            for _ in range(batches):
                model(x)
            sync(device)
            steady.append((time.perf_counter() - t) / batches)
            assert m.replayed - r0 == batches, "a forward was not replayed"

    times = interleaved([forwards(model, x, batches), forwards(model, x, batches, deferred=True), run_metered(True),
                         run_metered(False), run_replayed], device, repeats, 1, per=batches)
    return times[:4] + (steady[1:],)


def start(device: str, backend: str, **settings) -> tuple:
    """What every energy benchmark does first: the models' LIF backend set to ``backend``, seed 0, full fp32 on the
    GPU (TF32 off, so that its spikes can be compared with the CPU's); prints and returns ``(device, env)``, the
    environment and ``settings`` as a dict (the JSON output's ``env``)."""
    global BACKEND
    BACKEND = backend
    device = torch.device(device)
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    env = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__, "python": platform.python_version(), "neurosim": neurosim.__version__,
           "cuda": torch.version.cuda, "lif_backend": backend, **settings}
    print(json.dumps(env), flush=True)
    return device, env


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--batches", type=int, default=10, help="forwards under one EnergyMeter (the metered column)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--metered-repeats", type=int, default=10, help="rounds of the metered columns")
    ap.add_argument("--quick", action="store_true", help="tiny shapes (a CPU smoke run)")
    ap.add_argument("--backend", default="torch", choices=("torch", "fused", "snntorch"), help="LIF backend")
    ap.add_argument("--counting", default="auto", choices=("auto", "torch", "kernel"),
                    help="how profile counts tensors (auto: the Triton kernel on CUDA, torch ops on CPU)")
    ap.add_argument("--out", default=None, help="write the results as JSON")
    args = ap.parse_args(argv)
    device, env = start(args.device, args.backend, repeats=args.repeats, metered_repeats=args.metered_repeats,
                        warmup=args.warmup, counting=args.counting)
    results = []
    for name, model, shape, check in cases(args.quick):
        model = model.eval()
        x_cpu = (torch.rand(shape) < 0.2).float()
        ref = profile(model.cpu(), x_cpu) if check else None  # CPU counts for the same model and input
        model = model.to(device)
        x = x_cpu.to(device)
        plain, pdef, prof, prof_all, again = bench(model, x, device, args.repeats, args.warmup, args.counting)
        mplain, mdef, mmeter, mhooked, msteady = bench_metered(model, x, device, args.metered_repeats,
                                                               args.batches, args.counting)
        rep = profile(model, x, counting=args.counting)
        key = lambda r: (r.name, r.synops, r.macs, r.acs, r.neuron_updates, r.dense)  # noqa: E731
        # the first layer sees the identical input spikes: its counts must match exactly; deeper layers can
        # differ only where float rounding (GPU vs CPU sums) flips a neuron sitting on its threshold
        same_first = key(rep.layers[0]) == key(ref.layers[0]) if check else None
        same = [key(a) for a in rep.layers] == [key(b) for b in ref.layers] if check else None
        mp, md, mq = statistics.median(plain), statistics.median(pdef), statistics.median(prof)
        ma, mg = statistics.median(prof_all), statistics.median(again)
        bp, bd, bq, bh, bs = (statistics.median(t) for t in (mplain, mdef, mmeter, mhooked, msteady))
        row = {"model": name, "input": list(shape), "counted_with": rep.counting, "plain_ms": mp * 1e3,
               "plain_deferred_ms": md * 1e3, "profile_ms": mq * 1e3,
               "overhead_pct": (mq / mp - 1) * 100, "overhead_vs_deferred_pct": (mq / md - 1) * 100,
               "profile_again_ms": mg * 1e3, "again_overhead_vs_deferred_pct": (mg / md - 1) * 100,
               "profile_all_rates_ms": ma * 1e3, "overhead_all_rates_vs_deferred_pct": (ma / md - 1) * 100,
               "plain_ms_min": min(plain) * 1e3, "profile_ms_min": min(prof) * 1e3, "counts_equal_cpu": same,
               "first_layer_equal_cpu": same_first, "synops_cpu": ref.totals()["synops"] if check else None,
               "synops": rep.totals()["synops"], "energy_uJ_cmos45nm": rep.totals()["energy_pj"] / 1e6,
               "batches": args.batches, "metered_plain_ms": bp * 1e3, "metered_plain_deferred_ms": bd * 1e3,
               "metered_ms": bq * 1e3, "metered_overhead_pct": (bq / bp - 1) * 100,
               "metered_overhead_vs_deferred_pct": (bq / bd - 1) * 100,
               "metered_hooked_ms": bh * 1e3, "metered_hooked_overhead_vs_deferred_pct": (bh / bd - 1) * 100,
               "replayed_ms": bs * 1e3, "replayed_overhead_vs_deferred_pct": (bs / bd - 1) * 100}
        results.append(row)
        print(json.dumps(row), flush=True)
    print(f"\nLIF backend {args.backend}; counting {args.counting}")
    print("| model | input | counted with | plain forward ms (deferred checks) | profile ms, a first call | overhead "
          "(vs deferred) | profile ms, called again (vs deferred) | profile ms, rates='all' (vs deferred) | "
          f"{args.batches} batches metered, 1 report: ms a batch (plain; deferred) | overhead (vs deferred) | "
          "the same, replay off (vs deferred) | a replayed forward ms (vs deferred) | GPU counts = CPU counts |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['input']} | {r['counted_with']} | {r['plain_ms']:.3f} ({r['plain_deferred_ms']:.3f}) "
              f"| {r['profile_ms']:.3f} | {r['overhead_pct']:+.1f}% ({r['overhead_vs_deferred_pct']:+.1f}%) | "
              f"{r['profile_again_ms']:.3f} ({r['again_overhead_vs_deferred_pct']:+.1f}%) | "
              f"{r['profile_all_rates_ms']:.3f} ({r['overhead_all_rates_vs_deferred_pct']:+.1f}%) | "
              f"{r['metered_ms']:.3f} ({r['metered_plain_ms']:.3f}; {r['metered_plain_deferred_ms']:.3f}) | "
              f"{r['metered_overhead_pct']:+.1f}% ({r['metered_overhead_vs_deferred_pct']:+.1f}%) | "
              f"{r['metered_hooked_ms']:.3f} ({r['metered_hooked_overhead_vs_deferred_pct']:+.1f}%) | "
              f"{r['replayed_ms']:.3f} ({r['replayed_overhead_vs_deferred_pct']:+.1f}%) | {r['counts_equal_cpu']} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"env": env, "results": results}, f, indent=2)
    return 0 if all(r["first_layer_equal_cpu"] is not False for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
