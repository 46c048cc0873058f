"""Where a metered CUDA-graph replay spends its extra device time (issue 5; BENCHMARKS.md, energy run 9).

For the ``energy_overhead.py`` models (``--backend`` picks the LIF): ``torch.profiler`` (CUPTI) device time per
kernel name over 5 replays of the plain graph and of the metered graph (``EnergyMeter.graphed``); prints the
kernels whose count or time differs (metered minus plain, per replay), then which tensors one eager metered
forward reads with the counting kernel (shape, fan map, scaled sum, and the meter call that asked).

    python benchmarks/energy_replay_kernels.py [--backend fused] > results.txt
"""
from __future__ import annotations

import argparse
import collections
import sys
import traceback
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile as trace

sys.path.insert(0, str(Path(__file__).resolve().parent))
import energy_graphs as G  # noqa: E402
import energy_overhead as E  # noqa: E402

from neurosim.energy import EnergyMeter  # noqa: E402
from neurosim.energy import device_counts as DC  # noqa: E402


def kernel_times(fn, n=5) -> dict:
    """kernel name -> (calls, device us) per call of ``fn``."""
    fn()
    torch.cuda.synchronize()
    with trace(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
    agg = collections.defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            entry = agg[e.name[:90]]
            entry[0] += 1
            entry[1] += e.device_time_total
    return {k: (c / n, t / n) for k, (c, t) in agg.items()}


def counting_reads(model, x) -> collections.Counter:
    log = collections.Counter()
    orig = DC.CountBuffer._count

    def spy(self, st, t, fan):
        asked = "/".join(f.name for f in traceback.extract_stack(limit=6)[:-1][-3:])
        log[(tuple(t.shape), fan is not None, st.inv_scale is not None, asked)] += 1
        return orig(self, st, t, fan)

    DC.CountBuffer._count = spy
    try:
        with torch.no_grad(), EnergyMeter(model):
            model(x)
    finally:
        DC.CountBuffer._count = orig
    return log


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="fused", choices=("torch", "fused"))
    args = ap.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    E.BACKEND = args.backend
    torch.manual_seed(0)
    dev = torch.device("cuda")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, LIF backend {args.backend}")
    for name, model, shape, _ in E.cases(False):
        model = model.eval().to(dev)
        x = (torch.rand(shape, device=dev) < 0.2).float()
        _, graph = G.plain_graph(model, x)
        plain = kernel_times(graph.replay)
        with torch.no_grad(), EnergyMeter(model) as meter:
            graphed = meter.graphed(x)
            metered = kernel_times(lambda: graphed(x))
        tp, tm = (sum(t for _, t in d.values()) for d in (plain, metered))
        print(f"\n=== {name} {list(shape)}: plain graph {tp:.1f} us, metered {tm:.1f} us (+{(tm / tp - 1) * 100:.1f}%)")
        extra = {k: (c - plain.get(k, (0, 0.0))[0], t - plain.get(k, (0, 0.0))[1]) for k, (c, t) in metered.items()}
        for k, (c, t) in sorted(extra.items(), key=lambda kv: -kv[1][1])[:8]:
            if c or abs(t) > 2:
                print(f"   {t:+9.1f} us {c:+6.1f} calls  {k}")
        print("   counting reads of one eager metered forward (shape, fan map, scaled sum, asked by):")
        for k, v in counting_reads(model, x).most_common(10):
            print(f"      {v:3d} x {k}")


if __name__ == "__main__":
    main()
