"""Metrics kept as sums, so they can be accumulated over batches, saved mid-epoch and summed across ranks.

Classification: loss, accuracy. Regression: loss (MSE), MSE, MAE, R2 (pooled over all target elements).
"""
from __future__ import annotations

import torch

# Order of the sums in the accumulator vector.
FIELDS = ("n", "loss_sum", "correct", "sq_err", "abs_err", "y_sum", "y_sq_sum")


class MetricSums:
    """float64 vector of the sums in :data:`FIELDS`, kept on the training device (no host sync per batch)."""

    def __init__(self, device: torch.device | str = "cpu", state: torch.Tensor | None = None):
        self.state = torch.zeros(len(FIELDS), dtype=torch.float64, device=device)
        if state is not None:
            self.state.copy_(state)

    def update(self, task: str, loss: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> None:
        """Add one batch: ``loss`` is the batch-mean loss, ``out`` the model output, ``y`` the targets."""
        with torch.no_grad():
            n = y.shape[0]
            zero = torch.zeros((), dtype=torch.float64, device=self.state.device)
            parts = [zero + n, loss.detach().double() * n]
            if task == "classification":
                parts += [(out.argmax(-1) == y).sum().double(), zero, zero, zero, zero]
            else:
                pred = out.detach().double().reshape(y.shape)
                yd = y.double()
                err = pred - yd
                parts += [zero, (err ** 2).sum(), err.abs().sum(), yd.sum(), (yd ** 2).sum()]
            self.state += torch.stack(parts)

    def compute(self, task: str, elements_per_sample: int = 1) -> dict[str, float]:
        n, loss_sum, correct, sq, ab, ys, yss = self.state.cpu().tolist()
        if n == 0:
            return {}
        out = {"loss": loss_sum / n}
        if task == "classification":
            out["accuracy"] = correct / n
        else:
            m = n * elements_per_sample
            out["mse"] = sq / m
            out["mae"] = ab / m
            ss_tot = yss - ys * ys / m
            out["r2"] = 1.0 - sq / ss_tot if ss_tot > 0 else float("nan")
        return out


def metric_names(task: str) -> tuple[str, ...]:
    return ("loss", "accuracy") if task == "classification" else ("loss", "mse", "mae", "r2")
