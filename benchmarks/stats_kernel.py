"""Device time of one counting read (``neurosim.kernels.stats.launch``) on the tensors the energy meter reads in
the benchmark models (issue 5; BENCHMARKS.md, energy run 9).

Each case is launched 50 times inside one CUDA graph, replayed 7 times; the median replay divided by 50 is the
device time of one call (no host launch cost). Bandwidth floor: the tensor's bytes at 4.8 TB/s (H200).

    python benchmarks/stats_kernel.py [--out results.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics

import torch
import triton

from neurosim.kernels import stats as K

REPS = 50


def device_us(fn) -> float:
    fn()
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(REPS):
            fn()
    times = []
    for _ in range(7):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / REPS)
    return statistics.median(times)


def cases(dev):
    g = torch.Generator(device=dev).manual_seed(0)

    def spikes(*shape):
        return (torch.rand(shape, generator=g, device=dev) < 0.2).float()

    qkv = spikes(4, 32, 128, 3, 8, 32)
    fan = torch.randint(1, 10, (64, 64), generator=g, device=dev).to(torch.int32).reshape(-1)
    return {  # name -> (tensor, fan map or None, inv_scale or None)
        "EST activation [4, 16, 64, 384]": (spikes(4, 16, 64, 384), None, None),
        "Spikformer activation [4, 64, 64, 384]": (spikes(4, 64, 64, 384), None, None),
        "Spikformer MLP hidden [4, 256, 64, 1536]": (spikes(4, 256, 64, 1536), None, None),
        "attention q, a strided view [4, 32, 8, 128, 32]": (qkv[:, :, :, 0].permute(0, 1, 3, 2, 4), None, None),
        "attention scores with their sum [4, 32, 8, 128, 128]": (spikes(4, 32, 8, 128, 128) * 3.0, None, 1 / 3.0),
        "conv input with a fan map [512, 64, 64, 64]": (spikes(512, 64, 64, 64), fan, None),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    out = torch.zeros(8, K.COLS, dtype=torch.int64, device=dev)
    rows = []
    print("| tensor | elements | MB | floor us (4.8 TB/s) | device us a read | x floor |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (x, fan, inv) in cases(dev).items():
        us = device_us(lambda: K.launch(x, out, fan, inv))
        mb = x.numel() * x.element_size() / 1e6
        floor = mb / 4.8
        rows.append({"tensor": name, "numel": x.numel(), "mb": mb, "floor_us": floor, "device_us": us})
        print(f"| {name} | {x.numel():,} | {mb:.1f} | {floor:.1f} | {us:.2f} | {us / floor:.1f} |")
    env = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "python": platform.python_version()}
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"env": env, "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
