"""Data-parallel scaling of `neurosim train`: samples/s on 1 vs N GPUs (torchrun, DDP over NCCL).

Each setting runs the same command under ``torchrun --standalone --nproc_per_node=P`` for P in ``--procs``; the
global batch is the same for every P (each rank takes batch/P samples). Throughput = training samples of one epoch
/ the median epoch time, epochs after the first (CUDA context, cuDNN/Triton warm-up) only; the epoch times are the
trainer's own (its ``train_time_s`` history, which excludes validation, checkpoints and logs). Also recorded: the
best validation accuracy of each run (same seed and global batches; DDP averages the gradients of the halves, so
runs agree up to summation order and the per-rank spike draws of the rate code).

    NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 \\
      python benchmarks/ddp_scaling.py --procs 1,2 --out ddp.json          (on a 2-GPU machine)
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

# name -> arguments of `neurosim train` (the demo model first: the setting issue 3 names)
SETTINGS = {
    "demo b64": ["--model", "spiking_mlp", "--dataset", "digits", "--encoder", "rate", "--num-steps", "16",
                 "--opt", "hidden=[128]", "--batch-size", "64"],
    "demo b1024": ["--model", "spiking_mlp", "--dataset", "digits", "--encoder", "rate", "--num-steps", "16",
                   "--opt", "hidden=[128]", "--batch-size", "1024", "--lr", "1e-2"],
    "demo wide b1024": ["--model", "spiking_mlp", "--dataset", "digits", "--encoder", "rate", "--num-steps", "16",
                        "--opt", "hidden=[4096,4096]", "--batch-size", "1024", "--lr", "1e-3"],
    "spikformer fused b256": ["--model", "spikformer", "--dataset", "digits", "--encoder", "rate",
                              "--backend", "fused", "--batch-size", "256"],
}
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def run(args: list[str], procs: int, epochs: int, out_dir: Path, timeout: int) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
           "-m", "neurosim.cli", "train", *args, "--epochs", str(epochs), "--patience", "0", "--device", "cuda",
           "--seed", "0", "--no-progress", "--no-tensorboard", "--no-plots", "--out-dir", str(out_dir)]
    env = {**os.environ, **NO_MULTICAST, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    s = json.loads((out_dir / "summary.json").read_text())
    with open(out_dir / "log.csv") as f:   # one row per epoch; train_time_s is cumulative
        cumulative = [float(r["train_time_s"]) for r in csv.DictReader(f)]
    epoch_s = [b - a for a, b in zip([0.0] + cumulative[:-1], cumulative)]
    per_epoch = s["train_samples"] / s["epochs_run"]
    timed = epoch_s[1:]
    med = statistics.median(timed)
    return {"procs": procs, "world_size": s["world_size"], "epoch_s": epoch_s, "epoch_s_median": med,
            "samples_per_epoch": per_epoch, "samples_per_s": per_epoch / med, "best_accuracy": s["best"].get("accuracy"),
            "best_loss": s["best"].get("loss"), "num_train": s["num_train"]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--procs", default="1,2")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--settings", default=",".join(SETTINGS), help="comma list of: " + ", ".join(SETTINGS))
    p.add_argument("--timeout", type=int, default=240)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    procs = [int(x) for x in a.procs.split(",")]
    if torch.cuda.device_count() < max(procs):
        raise SystemExit(f"--procs asks for {max(procs)} GPUs, {torch.cuda.device_count()} present")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.settings.split(","):
            base = None
            for n in procs:
                r = {"setting": name, **run(SETTINGS[name], n, a.epochs, Path(tmp) / f"{len(rows)}", a.timeout)}
                base = base or r["samples_per_s"]
                r["speedup"] = r["samples_per_s"] / base
                rows.append(r)
                print(f"{name:<22} {n} GPU(s): {r['samples_per_s']:9.0f} samples/s (median epoch "
                      f"{r['epoch_s_median'] * 1e3:7.1f} ms)  x{r['speedup']:.2f}  best acc {r['best_accuracy']}",
                      flush=True)
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
           "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
           "nccl": ".".join(map(str, torch.cuda.nccl.version())), "epochs": a.epochs}
    print(json.dumps(env))
    if a.out:
        Path(a.out).write_text(json.dumps({"env": env, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
