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

Every job records the firing rate of each spiking layer on (up to 64) validation samples at its best epoch (the
weights whose scores are reported; ``firing_rates`` in results.json). A layer that fired no spike there makes
everything after it constant, so its model's scores say nothing about its neurons: the script warns, naming the
model, seed and layer, and results.md says so under the table. ``--quick`` (a smoke test on the CPU) trains each
frame predictor for 80 steps (400 sequences of 4 frames, 2 epochs of batch 8): about 50 steps pass before the
second layer's first spike, so with 3 steps (24 sequences, 1 epoch, as it was) it never fired in either model.
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


FIRING_SAMPLES = 64


class FiringRates:
    """Trainer callback: at the end of each epoch that is the best so far, the firing rate (spikes per neuron per
    step) of every spiking neuron module of ``trainer.model`` on the first :data:`FIRING_SAMPLES` validation samples.
    ``rates`` holds the best epoch's (``samples``: on how many samples), None for a model without spiking neurons.
    The pass runs in eval mode without touching the random number generators, so the training run is the one
    without the callback."""

    def __init__(self):
        self.rates, self.samples = None, 0

    def __call__(self, event, trainer):
        if event != "epoch_end" or trainer.best_epoch != trainer.epoch - 1:
            return
        import torch

        from neurosim.neurons import firing_rates, record_spikes, spiking_neurons

        model = trainer.model
        if not spiking_neurons(model):
            return
        data = trainer.info.dataset
        x = torch.stack([data[i][0] for i in trainer.val_idx[:FIRING_SAMPLES]]).to(trainer.device)
        self.samples = len(x)
        training = model.training
        model.eval()
        try:
            with torch.random.fork_rng(devices=[trainer.device] if trainer.device.type == "cuda" else []):
                self.rates = dict(firing_rates(record_spikes(model, x)))
        finally:
            model.train(training)


def silent_layers(result: dict) -> list[str]:
    """The spiking layers of a job's model that fired no spike on the validation samples at its best epoch."""
    return [name for name, rate in (result.get("firing_rates") or {}).items() if rate == 0]


def silence_warning(result: dict) -> str | None:
    silent = silent_layers(result)
    if not silent:
        return None
    return (f"WARNING: {result['model']} seed {result['seed']}: spiking layer{'s' if len(silent) > 1 else ''} "
            f"{', '.join(silent)} fired no spike on {result['firing_samples']} validation samples at the best epoch, "
            f"so what follows {'them' if len(silent) > 1 else 'it'} is constant and this model's scores do not "
            f"measure its neurons (train longer: --quick is a smoke test; or check the layer's input and threshold)")


def _deadline(stop_at: float):
    def cb(event, trainer):
        if event == "epoch_end" and time.time() > stop_at:
            trainer.stopped_early = True
            trainer.budget_stopped = True
    return cb


def sine_job(model: str, seed: int, out: str, stop_at: float, quick: bool, use_gpu: bool,
             overwrite: bool = False) -> dict:
    import torch

    from neurosim.models import btsp_experiment as X

    torch.set_num_threads(1)
    kw = dict(seq_len=16, num_samples=120, batch_size=32, epochs=1, model_dim=8, heads=2, layers=1) if quick else {}
    cfg = X.seed_config(model, use_gpu=use_gpu, seed=seed, out_dir=out, progress=False, **kw)
    cfg.tensorboard = False
    rates = FiringRates()
    metrics = X.run(cfg, callbacks=[_deadline(stop_at), rates], overwrite=overwrite)
    metrics["task"] = "damped_sine"
    if rates.rates is not None:
        metrics["firing_rates"], metrics["firing_samples"] = rates.rates, rates.samples
    return metrics


def digits_job(neuron: str, seed: int, out: str, stop_at: float, quick: bool, use_gpu: bool,
               overwrite: bool = False) -> dict:
    import torch

    from neurosim.training import TrainConfig, Trainer

    torch.set_num_threads(1)
    # quick: 320 training sequences, 2 epochs, batch 8 = 80 steps; the second layer starts firing after about 50
    data = dict(num_sequences=400, num_frames=4) if quick else dict(num_sequences=2000, num_frames=10)
    cfg = TrainConfig(model="frame_predictor", dataset="moving_digits", epochs=2 if quick else 60, lr=2e-3,
                      batch_size=8 if quick else 64, patience=8, lr_patience=3, seed=seed,
                      device="cuda" if use_gpu else "cpu", out_dir=out, progress=False, tensorboard=False,
                      plots=not quick,
                      model_options={"neuron": neuron, "channels": 4 if quick else 16,
                                     **({"groups": 2 if quick else 4} if neuron == "stc_lif" else {})},
                      dataset_options={**data, "canvas": 16, "seed": 0}).validate()
    rates = FiringRates()
    trainer = Trainer(cfg, callbacks=[_deadline(stop_at), rates])
    summary = trainer.fit(overwrite=overwrite)
    return {"task": "moving_digits", "model": f"frame_predictor[{neuron}]", "seed": seed, "device": summary["device"],
            "epochs_run": summary["epochs_run"], "best_epoch": summary["best_epoch"],
            "stopped_by_budget": getattr(trainer, "budget_stopped", False),
            "parameters": sum(p.numel() for p in trainer.model.parameters()),
            "val": {"mse": summary["best"]["mse"], "mae": summary["best"]["mae"]},
            "train_time_s": summary["train_time_s"], "firing_rates": rates.rates,
            "firing_samples": rates.samples}


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
    silent = [f"{r['model']} seed {r['seed']}: {', '.join(silent_layers(r))}"
              for r in sorted(results, key=lambda r: (r["model"], r["seed"])) if silent_layers(r)]
    if silent:
        lines.append("")
        lines.append(f"Silent spiking layers (no spike on up to {FIRING_SAMPLES} validation samples at the best epoch; "
                     f"the rows of these models do not measure their neurons): {'; '.join(silent)}.")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/compare")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=1, help="parallel processes (1: run in this process)")
    ap.add_argument("--budget_s", type=float, default=float("inf"), help="stop jobs at the first epoch end after this")
    ap.add_argument("--use_gpu", action="store_true")
    ap.add_argument("--quick", action="store_true", help="tiny settings (a smoke test on the CPU: its scores mean "
                    "little, but every spiking layer fires)")
    ap.add_argument("--only", choices=("sine", "digits"), default=None)
    ap.add_argument("--overwrite", action="store_true", help="replace the runs an earlier comparison left in --out")
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
    earlier = [p for _, _, _, p in jobs if (Path(p) / "checkpoints" / "last.pt").is_file()]
    if earlier and not a.overwrite:  # (refused before any job trains, not by each job's trainer)
        ap.error(f"--out {out} already holds runs of an earlier comparison ({', '.join(earlier[:3])}"
                 f"{' and more' if len(earlier) > 3 else ''}); pass --overwrite to replace them, or another --out")
    results = []
    t0 = time.time()
    if a.workers <= 1:
        for fn, name, seed, path in jobs:
            results.append(fn(name, seed, path, stop_at, a.quick, a.use_gpu, a.overwrite))
            if silence_warning(results[-1]):
                print(silence_warning(results[-1]), flush=True)
    else:
        with ProcessPoolExecutor(a.workers, mp_context=get_context("spawn")) as pool:
            futs = {pool.submit(fn, name, seed, path, stop_at, a.quick, a.use_gpu, a.overwrite): (name, seed)
                    for fn, name, seed, path in jobs}
            for fut in as_completed(futs):
                name, seed = futs[fut]
                try:
                    results.append(fut.result())
                    r = results[-1]
                    print(f"[{time.time() - t0:6.1f}s] {r['model']} seed {seed}: val MSE {r['val']['mse']:.3e} "
                          f"MAE {r['val']['mae']:.3e} ({r['epochs_run']} epochs)", flush=True)
                    if silence_warning(r):
                        print(silence_warning(r), flush=True)
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
