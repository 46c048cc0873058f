"""Issue 8 comparisons, all through the shared trainer, several seeds each:

* damped sine (the BTSPFormer task, seed settings): btspformer vs spiking_btspformer vs vanilla_transformer,
  and astro_transformer vs vanilla_transformer (astrocyte vs softmax attention, same blocks and positions);
  validation MSE/MAE with the best weights, the persistence baseline, and for the BTSP models how much the
  plastic step changes attention (mean total-variation distance per attention row) and the validation MSE
  with the rule switched off;
* moving digits (next-frame prediction): frame_predictor with neurosim.LIF vs STC-LIF.

    python examples/research_compare.py --out runs/compare [--seeds 0 1 2] [--workers 12] [--budget_s 240]

Jobs run in parallel processes (one GPU is shared). ``--budget_s`` stops every job at the first epoch end after
that many seconds (the epochs actually run are reported), so the whole comparison fits a fixed time.
Writes ``results.json`` (every job) and ``results.md`` (mean +- std over seeds) into --out.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

SINE_MODELS = ("btspformer", "spiking_btspformer", "vanilla_transformer", "astro_transformer")
NEURONS = ("lif", "stc_lif")


def _deadline(stop_at: float):
    def cb(event, trainer):
        if event == "epoch_end" and time.time() > stop_at:
            trainer.stopped_early = True
            trainer.budget_stopped = True
    return cb


def sine_job(model: str, seed: int, out: str, stop_at: float, quick: bool, use_gpu: bool) -> dict:
    import torch

    from neurosim.models import btsp_experiment as X

    torch.set_num_threads(1)
    kw = dict(seq_len=16, num_samples=120, batch_size=32, epochs=1, model_dim=8, heads=2, layers=1) if quick else {}
    cfg = X.seed_config(model, use_gpu=use_gpu, seed=seed, out_dir=out, progress=False, **kw)
    cfg.tensorboard = False
    metrics = X.run(cfg, callbacks=[_deadline(stop_at)])
    metrics["task"] = "damped_sine"
    return metrics


def digits_job(neuron: str, seed: int, out: str, stop_at: float, quick: bool, use_gpu: bool) -> dict:
    import torch

    from neurosim.training import TrainConfig, Trainer

    torch.set_num_threads(1)
    data = dict(num_sequences=24, num_frames=4) if quick else dict(num_sequences=2000, num_frames=10)
    cfg = TrainConfig(model="frame_predictor", dataset="moving_digits", epochs=1 if quick else 60, lr=2e-3,
                      batch_size=8 if quick else 64, patience=8, lr_patience=3, seed=seed,
                      device="cuda" if use_gpu else "cpu", out_dir=out, progress=False, tensorboard=False,
                      plots=not quick,
                      model_options={"neuron": neuron, "channels": 4 if quick else 16,
                                     **({"groups": 2 if quick else 4} if neuron == "stc_lif" else {})},
                      dataset_options={**data, "canvas": 16, "seed": 0}).validate()
    trainer = Trainer(cfg, callbacks=[_deadline(stop_at)])
    summary = trainer.fit()
    return {"task": "moving_digits", "model": f"frame_predictor[{neuron}]", "seed": seed, "device": summary["device"],
            "epochs_run": summary["epochs_run"], "best_epoch": summary["best_epoch"],
            "stopped_by_budget": getattr(trainer, "budget_stopped", False),
            "parameters": sum(p.numel() for p in trainer.model.parameters()),
            "val": {"mse": summary["best"]["mse"], "mae": summary["best"]["mae"]},
            "train_time_s": summary["train_time_s"]}


def _mean_std(values):
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, s


def table(results: list[dict]) -> str:
    """Markdown: one row per (task, model), mean +- sample std over seeds."""
    groups: dict = {}
    for r in results:
        groups.setdefault((r["task"], r["model"]), []).append(r)
    lines = ["| task | model | params | seeds | epochs run | val MSE (mean +- std) | val MAE (mean +- std) | "
             "attention change (row TV) | val MSE, plasticity off |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (task, model), rs in sorted(groups.items()):
        mse, mae = _mean_std([r["val"]["mse"] for r in rs]), _mean_std([r["val"]["mae"] for r in rs])
        plast = [r["plasticity"] for r in rs if r.get("plasticity")]
        tv = off = "-"
        if plast:
            tv = "{:.3f} +- {:.3f}".format(*_mean_std([p["mean_row_tv"] for p in plast]))
            off = "{:.2e} +- {:.1e}".format(*_mean_std([p["val_without_plasticity"]["mse"] for p in plast]))
        epochs = "/".join(str(r["epochs_run"]) for r in rs)
        lines.append(f"| {task} | {model} | {rs[0]['parameters']} | {len(rs)} | {epochs} | {mse[0]:.2e} +- {mse[1]:.1e} "
                     f"| {mae[0]:.2e} +- {mae[1]:.1e} | {tv} | {off} |")
    base = [r["persistence_baseline"] for r in results if "persistence_baseline" in r]
    if base:
        lines.append("")
        lines.append(f"Persistence baseline (predict the window's last value), damped sine validation split: "
                     f"MSE {base[0]['mse']:.2e}, MAE {base[0]['mae']:.2e}.")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/compare")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=1, help="parallel processes (1: run in this process)")
    ap.add_argument("--budget_s", type=float, default=float("inf"), help="stop jobs at the first epoch end after this")
    ap.add_argument("--use_gpu", action="store_true")
    ap.add_argument("--quick", action="store_true", help="tiny settings (a smoke test on the CPU)")
    ap.add_argument("--only", choices=("sine", "digits"), default=None)
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stop_at = time.time() + a.budget_s
    jobs = []
    if a.only in (None, "sine"):
        jobs += [(sine_job, m, s, str(out / f"{m}_s{s}")) for m in SINE_MODELS for s in a.seeds]
    if a.only in (None, "digits"):
        jobs += [(digits_job, n, s, str(out / f"digits_{n}_s{s}")) for n in NEURONS for s in a.seeds]
    # longest first, so the slow spiking runs are not left for last
    jobs.sort(key=lambda j: (j[1] != "spiking_btspformer", j[1] != "stc_lif"))
    results = []
    t0 = time.time()
    if a.workers <= 1:
        for fn, name, seed, path in jobs:
            results.append(fn(name, seed, path, stop_at, a.quick, a.use_gpu))
    else:
        with ProcessPoolExecutor(a.workers, mp_context=get_context("spawn")) as pool:
            futs = {pool.submit(fn, name, seed, path, stop_at, a.quick, a.use_gpu): (name, seed)
                    for fn, name, seed, path in jobs}
            for fut in as_completed(futs):
                name, seed = futs[fut]
                try:
                    results.append(fut.result())
                    r = results[-1]
                    print(f"[{time.time() - t0:6.1f}s] {r['model']} seed {seed}: val MSE {r['val']['mse']:.3e} "
                          f"MAE {r['val']['mae']:.3e} ({r['epochs_run']} epochs)", flush=True)
                except Exception as err:  # report and keep the other jobs
                    print(f"[{time.time() - t0:6.1f}s] {name} seed {seed} FAILED: {err!r}", flush=True)
                (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    md = table(results)
    (out / "results.md").write_text(md)
    print(md)
    print(f"total {time.time() - t0:.1f}s, workers {a.workers}, cpus {os.cpu_count()}")
    return results


if __name__ == "__main__":
    main()
