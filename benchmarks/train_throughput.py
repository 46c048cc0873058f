"""Training throughput (samples/s) of the demo model (spiking MLP on digits) through neurosim's trainer.

Two numbers per setting:
  * trainer: whole epochs of Trainer._train_epoch (DataLoader, host->device copies, encode, forward, backward,
    clipping, AdamW, metric sums), median epoch time after one warm-up epoch;
  * step: the same training step on batches already on the device (no data loading), median over repeats,
    timed with device synchronisation: the ceiling the data path leaves room for.

    python benchmarks/train_throughput.py --device cpu --out cpu.json
    python benchmarks/train_throughput.py --device cuda --out gpu.json      (on the GPU machine)
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from neurosim.training import TrainConfig, Trainer
from neurosim.training.demo import DEMO_DEFAULTS


DEFAULT_THREADS = torch.get_num_threads()


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(device: str, batch_size: int, precision: str, threads: int, epochs: int, steps: int) -> dict:
    cfg = TrainConfig.from_dict({**DEMO_DEFAULTS, "device": device, "batch_size": batch_size, "precision": precision,
                                 "cpu_threads": threads or DEFAULT_THREADS, "progress": False, "tensorboard": False, "plots": False,
                                 "out_dir": "/tmp/neurosim-bench"})
    tr = Trainer(cfg)
    tr._setup()
    dev = tr.device
    n_train = len(tr.train_idx)
    times = []
    for e in range(epochs + 1):
        tr.epoch, tr.step_in_epoch = e, 0
        _sync(dev)
        t0 = time.perf_counter()
        tr._train_epoch()
        _sync(dev)
        if e:  # first epoch is warm-up
            times.append(time.perf_counter() - t0)
    trainer_sps = n_train / statistics.median(times)

    # Step-only: fixed batches resident on the device.
    x = torch.stack([tr.info.dataset[i][0] for i in tr.train_idx[:batch_size]]).to(dev)
    y = torch.stack([tr.info.dataset[i][1] for i in tr.train_idx[:batch_size]]).to(dev)
    model, opt = tr.model, tr.optimizer

    def step():
        with tr._autocast():
            out = model(x)
        loss = tr._loss(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()

    for _ in range(5):
        step()
    step_times = []
    for _ in range(steps):
        _sync(dev)
        t0 = time.perf_counter()
        step()
        _sync(dev)
        step_times.append(time.perf_counter() - t0)
    step_med = statistics.median(step_times)
    return {"device": str(dev), "batch_size": batch_size, "precision": precision,
            "threads": torch.get_num_threads() if dev.type == "cpu" else None,
            "trainer_samples_per_s": trainer_sps, "epoch_s_median": statistics.median(times),
            "step_ms_median": step_med * 1e3, "step_samples_per_s": batch_size / step_med,
            "epochs_timed": len(times), "steps_timed": steps}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-sizes", default="64,1024")
    p.add_argument("--precisions", default="fp32")
    p.add_argument("--threads", default="0", help="comma list of CPU thread counts (0: torch default)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    rows = []
    for bs in (int(b) for b in a.batch_sizes.split(",")):
        for prec in a.precisions.split(","):
            for th in (int(t) for t in a.threads.split(",")):
                rows.append(measure(a.device, bs, prec, th, a.epochs, a.steps))
                r = rows[-1]
                print(f"{r['device']:>7} bs={bs:<5} {prec:<5} threads={r['threads']}  trainer "
                      f"{r['trainer_samples_per_s']:9.0f} samples/s   step {r['step_ms_median']:7.2f} ms "
                      f"= {r['step_samples_per_s']:9.0f} samples/s", flush=True)
    env = {"torch": torch.__version__, "python": platform.python_version(), "cpu": platform.processor(),
           "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
           "model": "spiking_mlp 64-128-10, T=16, rate code, snntorch LIF backend, AdamW"}
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"env": env, "rows": rows}, f, indent=2)
    print(json.dumps(env))


if __name__ == "__main__":
    main()
