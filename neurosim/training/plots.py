"""Plots written next to the logs (matplotlib, Agg backend): loss curves and forecasting predictions."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _finish(fig, ax, path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    """Labels, title, legend and grid; save ``fig`` to ``path`` and close it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def loss_curves(path: Path, history: list[dict], title: str) -> Path:
    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [r["train_loss"] for r in history], marker="o", label="train")
    ax.plot(epochs, [r["val_loss"] for r in history], marker="o", label="validation")
    return _finish(fig, ax, path, "epoch", "loss", title)


def prediction_vs_target(path: Path, target, prediction, val_mask, title: str) -> Path:
    """Target and prediction over the sample (time) index; validation samples marked."""
    idx = range(len(target))
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(idx, target, color="black", lw=1.2, label="target")
    ax.plot(idx, prediction, color="tab:orange", lw=1.0, label="prediction")
    val_idx = [i for i in idx if val_mask[i]]
    ax.scatter(val_idx, [prediction[i] for i in val_idx], s=6, color="tab:blue", label="prediction (validation)",
               zorder=3)
    return _finish(fig, ax, path, "time step (window index)", "value", title)
