"""The BTSPFormer damped-sine experiment on the shared trainer: the seed's flags, its output files, and the
measurements RESULTS.md reports (final MSE/MAE, persistence baseline, effect of the BTSP plasticity).

Output layout in ``out_dir`` (``prefix`` = the model name, ``btspformer`` by default)::

    {prefix}_model.pth           best weights + model settings (torch.load(weights_only=True))
    {prefix}_loss_curve.png      train/validation loss per epoch
    {prefix}_inference.png       prediction vs target: time-aligned and sorted by target
    {prefix}_metrics.json        final validation metrics and the plasticity measurements
    logs/                        log.csv, TensorBoard (tb/), config.json, summary.json
    checkpoints/                 best.pt and last.pt (the trainer's resumable checkpoints)
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from neurosim import validate
from neurosim.training import TrainConfig, Trainer
from neurosim.training import checkpoint as ckpt_io
from neurosim.training import plots

DEFAULT_DT = 0.01
SPIKING = "spiking_btspformer"


def seed_config(model: str = "btspformer", seq_len: int = 50, num_samples: int = 10000, batch_size: int = 128,
                epochs: int = 100, lr: float = 1e-3, use_gpu: bool = False, model_dim: int = 64, heads: int = 4,
                layers: int = 2, dt: float = DEFAULT_DT, dropout: float = 0.1, optimizer: str = "adamw",
                patience: int = 10, lr_patience: int = 4, seed: int = 0, num_steps: int | None = None, out_dir: str = ".",
                progress: bool = True, backend: str = "snntorch") -> TrainConfig:
    """The trainer configuration for the seed's command line.

    ``num_samples`` windows of ``seq_len`` values (each with its next value as target) are cut from one damped
    cosine ``A e^{-gamma t} cos(omega t + phi)`` (A=1, gamma=0.1, omega=2, phi=0) sampled every ``dt``;
    80/20 random split (fixed by ``seed``). ``num_steps`` (SNN time steps) applies to ``spiking_btspformer``
    only (default 4); the analog models take none, so it must be left unset for them and the run records the
    trainer's default.
    """
    for name, value, minimum in (("seq_len", seq_len, 1), ("num_samples", num_samples, 2), ("model_dim", model_dim, 2),
                                 ("heads", heads, 1), ("layers", layers, 1)):
        validate.positive_int(name, value, minimum)
    validate.positive_float("dt", dt)
    if model_dim % heads:
        raise ValueError(f"model_dim={model_dim} must be divisible by heads={heads}")
    if model == SPIKING:
        num_steps = 4 if num_steps is None else validate.positive_int("num_steps", num_steps)
    elif num_steps is not None:
        raise ValueError(f"num_steps applies to model {SPIKING!r} only; model {model!r} has no SNN time steps, "
                         f"leave num_steps unset (got {num_steps!r})")
    else:
        num_steps = TrainConfig().num_steps
    device = "cpu"
    if use_gpu:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu":
            print("--use_gpu: no CUDA device available, training on the CPU")
    return TrainConfig(
        model=model, dataset="damped_sine", backend=backend, num_steps=num_steps, epochs=epochs, lr=lr,
        batch_size=batch_size, optimizer=optimizer, patience=patience, lr_patience=lr_patience, seed=seed,
        val_fraction=0.2, device=device, out_dir=str(out_dir), progress=progress, plots=False,
        model_options={"model_dim": model_dim, "heads": heads, "layers": layers, "dropout": dropout},
        dataset_options={"n_points": num_samples + seq_len, "seq_len": seq_len, "dt": dt, "amplitude": 1.0,
                         "gamma": 0.1, "omega": 2.0, "phi": 0.0},
    ).validate()


def make_trainer(cfg: TrainConfig, callbacks=()) -> Trainer:
    """A trainer whose logs go to ``out_dir/logs`` and checkpoints to ``out_dir/checkpoints``."""
    trainer = Trainer(cfg, callbacks)
    logs = Path(cfg.out_dir) / "logs"
    trainer.paths.update(summary=logs / "summary.json", config=logs / "config.json", csv_log=logs / "log.csv",
                         tensorboard=logs / "tb")
    return trainer


def persistence_baseline(trainer: Trainer) -> dict:
    """Validation MSE/MAE of predicting the last value of the window (the trivial forecaster)."""
    x = torch.stack([trainer.info.dataset[i][0] for i in trainer.val_idx])
    y = torch.stack([trainer.info.dataset[i][1] for i in trainer.val_idx])
    err = x[:, -1].double() - y.double()
    return {"mse": float((err ** 2).mean()), "mae": float(err.abs().mean())}


@torch.no_grad()
def attention_change(model: torch.nn.Module, x: torch.Tensor) -> list[dict] | None:
    """What the BTSP step does to attention on inputs ``x``: one :class:`~neurosim.models.btsp.PlasticityStats`
    dict per plastic layer (mean row total-variation distance, mean |delta a|, fractions potentiated/depressed),
    measured in eval mode on this call (the model's train/eval mode is restored). A layer whose rule is switched
    off (``set_plasticity(False)``) changes nothing: all its numbers are 0. ``None`` for models without BTSP
    plasticity."""
    mods = model.plasticity_modules() if hasattr(model, "plasticity_modules") else []
    if not mods:
        return None
    was_training = model.training
    model.eval()
    for m in mods:
        m.record = True
        m.last_stats = None
    try:
        model(x)
    finally:
        for m in mods:
            m.record = False
        model.train(was_training)
    stats = [m.last_stats for m in mods]
    if any(s is None for s in stats):
        missing = [i for i, s in enumerate(stats) if s is None]
        raise RuntimeError(f"plastic layer(s) {missing} of {type(model).__name__} did not run in its forward pass; "
                           "no attention change to report for them")
    return [s._asdict() for s in stats]


def validation_inputs(trainer: Trainer, max_samples: int = 512) -> torch.Tensor:
    """The first ``max_samples`` validation inputs, stacked on the trainer's device."""
    idx = trainer.val_idx[:max_samples]
    return torch.stack([trainer.info.dataset[i][0] for i in idx]).to(trainer.device)


@torch.no_grad()
def plasticity_effect(trainer: Trainer, max_samples: int = 512) -> dict | None:
    """How much the BTSP rule changes attention on validation windows, and what switching it off costs.

    Returns the mean total-variation distance per attention row between the weights before and after the
    plastic step (per layer), the fractions of weights potentiated/depressed, and the validation MSE/MAE with the
    rule switched off (same trained weights). Measured on the model as found: where the rule is already switched
    off (the no-plasticity ablation) its layers report no change, and ``plasticity_enabled`` says so. Each
    layer's on/off setting and the train/eval mode are restored. ``None`` for models without BTSP plasticity.
    """
    model = trainer.model
    stats = attention_change(model, validation_inputs(trainer, max_samples))
    if stats is None:
        return None
    mods = model.plasticity_modules()
    enabled = [m.enabled for m in mods]
    was_training = model.training
    model.set_plasticity(False)
    try:
        off = trainer.evaluate()
    finally:
        for m, on in zip(mods, enabled):
            m.enabled = on
        model.train(was_training)
    return {"per_layer": stats,
            "mean_row_tv": sum(s["mean_row_tv"] for s in stats) / len(stats),
            "plasticity_enabled": enabled,
            "val_without_plasticity": {"mse": off["mse"], "mae": off["mae"]}}


class PlasticityHistory:
    """Trainer callback recording :func:`plasticity_effect` over training, for plots of attention plasticity.

    ``every_steps``: also record the (cheaper) :func:`attention_change` every that many optimizer steps (0: only
    at epoch ends). Rows (``self.rows``): ``epoch`` (completed epochs, fractional inside one), ``step``,
    ``mean_row_tv``, ``per_layer``, and at epoch ends ``val_mse``, ``val_mse_without_plasticity``.
    """

    def __init__(self, every_steps: int = 0, max_samples: int = 256):
        self.every_steps = validate.positive_int("every_steps", every_steps, minimum=0)
        self.max_samples = validate.positive_int("max_samples", max_samples)
        self.rows: list[dict] = []

    def __call__(self, event: str, trainer: Trainer) -> None:
        if event == "step_end" and self.every_steps and trainer.global_step % self.every_steps == 0:
            stats = attention_change(trainer.model, validation_inputs(trainer, self.max_samples))
            if stats is not None:
                self.rows.append({"epoch": trainer.epoch + trainer.step_in_epoch / trainer.steps_per_epoch,
                                  "step": trainer.global_step, "per_layer": stats,
                                  "mean_row_tv": sum(s["mean_row_tv"] for s in stats) / len(stats)})
        elif event == "epoch_end":
            effect = plasticity_effect(trainer, self.max_samples)
            if effect is not None:
                self.rows.append({"epoch": float(trainer.epoch), "step": trainer.global_step,
                                  "per_layer": effect["per_layer"], "mean_row_tv": effect["mean_row_tv"],
                                  "val_mse": trainer.history[-1]["val_mse"],
                                  "val_mse_without_plasticity": effect["val_without_plasticity"]["mse"]})


def draw_inference(ax1, ax2, target, pred, val_mask, title: str, time=None) -> None:
    """Prediction vs target on two axes: over time (validation points marked; x = ``time`` when given, else the
    window index), and the validation samples sorted by target value."""
    n = len(target)
    xs = list(range(n)) if time is None else list(time)
    ax1.plot(xs, target, color="black", lw=1.2, label="target")
    ax1.plot(xs, pred, color="tab:orange", lw=0.9, label="prediction")
    vi = [i for i in range(n) if val_mask[i]]
    ax1.scatter([xs[i] for i in vi], [pred[i] for i in vi], s=4, color="tab:blue", label="prediction (validation)",
                zorder=3)
    ax1.set_xlabel("time step (window index)" if time is None else "time t of the predicted value")
    ax1.set_ylabel("x(t)")
    ax1.set_title(f"{title}: time-aligned")
    ax1.legend(loc="upper right")
    ax1.grid(alpha=0.3)
    tv = [target[i] for i in vi]
    pv = [pred[i] for i in vi]
    order = sorted(range(len(vi)), key=lambda k: tv[k])
    ax2.plot(range(len(order)), [tv[k] for k in order], color="black", lw=1.2, label="target")
    ax2.scatter(range(len(order)), [pv[k] for k in order], s=4, color="tab:orange", label="prediction")
    ax2.set_xlabel("validation sample (sorted by target)")
    ax2.set_ylabel("x(t)")
    ax2.set_title(f"{title}: validation samples sorted by target")
    ax2.legend(loc="upper left")
    ax2.grid(alpha=0.3)


def inference_plot(path: Path, target, pred, val_mask, title: str) -> Path:
    """Two panels (:func:`draw_inference`): prediction and target over time, and sorted by target value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 7))
    draw_inference(ax1, ax2, target, pred, val_mask, title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def save_model(path: Path, model: torch.nn.Module, cfg: TrainConfig) -> Path:
    """Atomically write the weights and the settings needed to rebuild the model."""
    payload = {"model": model.state_dict(), "model_name": cfg.model, "model_options": dict(cfg.model_options),
               "dataset_options": dict(cfg.dataset_options), "num_steps": cfg.num_steps}

    def write(f):
        buf = io.BytesIO()
        torch.save(payload, buf)
        f.write(buf.getvalue())

    return ckpt_io.atomic_write(path, write)


def run(cfg: TrainConfig, prefix: str | None = None, callbacks=(), overwrite: bool = False) -> dict:
    """Train, restore the best weights, write every output file; return the metrics dict.

    ``callbacks`` are the trainer's (``cb(event, trainer)``); one that sets ``trainer.budget_stopped`` is reported.
    ``overwrite``: replace an earlier run's trainer outputs in ``out_dir`` (``Trainer.fit(overwrite=True)``; without
    it they are an error, :class:`neurosim.training.RunExists`).
    """
    prefix = prefix or cfg.model
    out = Path(cfg.out_dir)
    trainer = make_trainer(cfg, callbacks)
    summary = trainer.fit(overwrite=overwrite)
    best = trainer.paths["best_checkpoint"]
    trainer.model.load_state_dict(ckpt_io.load(best, map_location=trainer.device)["model"])
    val = trainer.evaluate()
    plots.loss_curves(out / f"{prefix}_loss_curve.png", trainer.history,
                      f"{cfg.model} on the damped sine: loss per epoch")
    order = list(range(len(trainer.info.dataset)))
    pred, y = trainer.predict(order)
    val_set = set(trainer.val_idx)
    inference_plot(out / f"{prefix}_inference.png", y.reshape(-1).tolist(), pred.reshape(-1).tolist(),
                   [i in val_set for i in order], f"{cfg.model}: prediction vs target (best epoch)")
    save_model(out / f"{prefix}_model.pth", trainer.model, cfg)
    metrics = {
        "model": cfg.model, "seed": cfg.seed, "device": summary["device"], "epochs_run": summary["epochs_run"],
        "best_epoch": summary["best_epoch"], "stopped_early": summary["stopped_early"],
        "stopped_by_budget": getattr(trainer, "budget_stopped", False),
        "train_time_s": summary["train_time_s"],
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "val": {"mse": val["mse"], "mae": val["mae"]},
        "persistence_baseline": persistence_baseline(trainer),
        "plasticity": plasticity_effect(trainer),
    }
    ckpt_io.atomic_write_text(out / f"{prefix}_metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics
