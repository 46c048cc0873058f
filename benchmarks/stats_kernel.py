"""Device time of one counting read (``neurosim.kernels.stats.launch``) on the tensors the energy meter reads in
the benchmark models (issue 5; BENCHMARKS.md, energy runs 9-10), and of the same reads batched
``MAX_BATCH`` tensors a launch (``launch_many``, what a metered CUDA graph does) against one launch each.

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
    sf_qkv = spikes(4, 64, 64, 3, 8, 48)
    fan = torch.randint(1, 10, (64, 64), generator=g, device=dev).to(torch.int32).reshape(-1)
    return {  # name -> (tensor, fan map or None, inv_scale or None)
        "EST activation [4, 16, 64, 384]": (spikes(4, 16, 64, 384), None, None),
        "Spikformer activation [4, 64, 64, 384]": (spikes(4, 64, 64, 384), None, None),
        "Spikformer MLP hidden [4, 256, 64, 1536]": (spikes(4, 256, 64, 1536), None, None),
        "attention q, a strided view [4, 32, 8, 128, 32]": (qkv[:, :, :, 0].permute(0, 1, 3, 2, 4), None, None),
        "attention k transposed [4, 32, 8, 32, 128]": (qkv[:, :, :, 1].permute(0, 1, 3, 4, 2), None, None),
        "attention q with a fan map (logical order) [4, 32, 8, 128, 32]": (
            qkv[:, :, :, 0].permute(0, 1, 3, 2, 4), torch.ones(32, dtype=torch.int32, device=dev), None),
        "Spikformer q, a strided view [4, 64, 8, 64, 48]": (sf_qkv[:, :, :, 0].permute(0, 1, 3, 2, 4), None, None),
        "attention scores with their sum [4, 32, 8, 128, 128]": (spikes(4, 32, 8, 128, 128) * 3.0, None, 1 / 3.0),
        "conv input with a fan map [512, 64, 64, 64]": (spikes(512, 64, 64, 64), fan, None),
    }


def sweep(dev) -> list:
    """Device time a read against the kernels' BLOCK and programs a multiprocessor (patched module globals)."""
    g = torch.Generator(device=dev).manual_seed(2)
    est = [(torch.rand(4, 16, 64, 384, generator=g, device=dev) < 0.2).float() for _ in range(K.MAX_BATCH)]
    small = [x[..., :96].contiguous() for x in est]
    big = (torch.rand(4, 64, 64, 384, generator=g, device=dev) < 0.2).float()
    out = torch.zeros(K.MAX_BATCH, K.COLS, dtype=torch.int64, device=dev)
    idx, nones = list(range(K.MAX_BATCH)), [None] * K.MAX_BATCH
    block0, programs0, rows = K.BLOCK, K._programs, []
    print("| BLOCK | programs/SM | EST read | Spikformer read | 8 EST reads batched (a read) | 8 small batched (a read) |")
    print("|---:|---:|---:|---:|---:|---:|")
    try:
        for block in (1024, 2048, 4096, 8192):
            for per_sm in (2, 4, 8, 16):
                K.BLOCK = block
                K._programs = lambda d, b, k=per_sm: max(1, min(b, k * K._sms(d)))
                r = [device_us(lambda: K.launch(est[0], out)), device_us(lambda: K.launch(big, out)),
                     device_us(lambda: K.launch_many(est, out, idx, nones)) / K.MAX_BATCH,
                     device_us(lambda: K.launch_many(small, out, idx, nones)) / K.MAX_BATCH]
                rows.append({"block": block, "programs_per_sm": per_sm, "us": r})
                print(f"| {block} | {per_sm} | " + " | ".join(f"{v:.2f}" for v in r) + " |")
    finally:
        K.BLOCK, K._programs = block0, programs0
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None)
    ap.add_argument("--sweep", action="store_true", help="only the BLOCK x programs-a-multiprocessor sweep")
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    if args.sweep:
        rows = sweep(dev)
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"env": {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                   "triton": triton.__version__}, "sweep": rows}, f, indent=1)
        return
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
    print("\n| batch | tensors | MB | floor us | one launch each: us a read | launch_many: us a read | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    g = torch.Generator(device=dev).manual_seed(1)
    batched = []
    for name, shape in (("EST activations", (4, 16, 64, 384)), ("Spikformer activations", (4, 64, 64, 384)),
                        ("small activations", (4, 16, 64, 96))):
        xs = [(torch.rand(shape, generator=g, device=dev) < 0.2).float() for _ in range(K.MAX_BATCH)]
        idx = list(range(K.MAX_BATCH))
        nones = [None] * K.MAX_BATCH
        big = torch.zeros(K.MAX_BATCH, K.COLS, dtype=torch.int64, device=dev)

        def each():
            for i, x in enumerate(xs):
                K.launch(x, big, row=i)

        one = device_us(each) / K.MAX_BATCH
        many = device_us(lambda: K.launch_many(xs, big, idx, nones)) / K.MAX_BATCH
        mb = sum(x.numel() * x.element_size() for x in xs) / 1e6
        batched.append({"batch": name, "shape": list(shape), "tensors": K.MAX_BATCH, "mb": mb,
                        "floor_us_a_read": mb / 4.8 / K.MAX_BATCH, "each_us_a_read": one, "many_us_a_read": many})
        print(f"| {name} {list(shape)} | {K.MAX_BATCH} | {mb:.1f} | {mb / 4.8 / K.MAX_BATCH:.2f} | {one:.2f} | "
              f"{many:.2f} | {one / many:.2f}x |")
    env = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "python": platform.python_version()}
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"env": env, "results": rows, "batched": batched}, f, indent=1)


if __name__ == "__main__":
    main()
