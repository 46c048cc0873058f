"""Throughput of one EST training step (forward + backward + Adam) per neuron backend, in one process and run.

    python benchmarks/est_step.py --device cuda --out runs/est_step.json

All backends run the same model and the same neuron semantics (reset="zero", fast_sigmoid, so Norse can join);
"fused" is included when ``neurosim.kernels.lif`` exists. Timing: CUDA events around each step after warm-up,
median over ``--iters`` steps. The CPU fallback times with perf_counter.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time

import torch

from neurosim.layers import NeuronSpec
from neurosim.models import ESTConfig, EnhancedSpikingTransformer


def time_backend(backend, args, dev):
    torch.manual_seed(0)
    cfg = ESTConfig(args.features, args.features, dim=args.dim, depth=args.depth, heads=args.heads,
                    num_steps=args.steps_T, max_len=args.length, rsm_ratio=0.5, rsm_mode="always",
                    neuron=NeuronSpec(backend=backend, reset="zero"))
    model = EnhancedSpikingTransformer(cfg).to(dev)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.randn(args.batch, args.length, args.features, device=dev)
    y = torch.randn(args.batch, args.length, args.features, device=dev)

    def step():
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.iters):
        if dev.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            step()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t = time.perf_counter()
            step()
            times.append((time.perf_counter() - t) * 1e3)
    return dict(backend=backend, median_ms=statistics.median(times), min_ms=min(times), max_ms=max(times),
                iters=args.iters)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--features", type=int, default=16)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--steps-T", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dev = torch.device(args.device)
    backends = ["snntorch", "torch", "norse"]
    if importlib.util.find_spec("neurosim.kernels.lif") is not None:
        backends.insert(0, "fused")
    rows = []
    for be in backends:
        try:
            rows.append(time_backend(be, args, dev))
        except Exception as exc:  # report, keep timing the others
            rows.append(dict(backend=be, error=f"{type(exc).__name__}: {exc}"))
        print(json.dumps(rows[-1]), flush=True)
    ref = next((r["median_ms"] for r in rows if r["backend"] == "snntorch" and "median_ms" in r), None)
    meta = dict(device=torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", torch=torch.__version__,
                shape=f"B={args.batch} N={args.length} F={args.features} dim={args.dim} depth={args.depth} "
                      f"heads={args.heads} T={args.steps_T}")
    print(f"\n{meta}\n| backend | median ms / step | min | max | speed-up vs snntorch |\n|---|---|---|---|---|")
    for r in rows:
        if "median_ms" in r:
            print(f"| {r['backend']} | {r['median_ms']:.2f} | {r['min_ms']:.2f} | {r['max_ms']:.2f} | "
                  f"{ref / r['median_ms']:.2f}x |" if ref else "")
        else:
            print(f"| {r['backend']} | failed: {r['error']} | | | |")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(dict(meta=meta, rows=rows), fh, indent=1)


if __name__ == "__main__":
    main()
