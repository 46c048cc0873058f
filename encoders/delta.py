"""Delta (change) coding of a time series."""
from __future__ import annotations

import torch

from neurosim import validate


def delta(data: torch.Tensor, threshold: float = 0.1, padding: bool = False, off_spikes: bool = False) -> torch.Tensor:
    r"""Spike where the signal changes by at least ``threshold`` between consecutive steps.

    ``on_t = [x_t - x_{t-1} >= threshold]`` and, with ``off_spikes=True``, ``off_t = [x_t - x_{t-1} <= -threshold]``.
    ``x_{-1}`` is 0, or ``x_0`` with ``padding=True`` (so a constant start does not fire).

    Args:
        data: time series ``[T, B, ...]``.
        threshold: > 0.
    Returns:
        ``[T, B, ...]`` on-spikes, or ``[T, B, 2, ...]`` with on (channel 0) and off (channel 1) spikes,
        both as 0/1 floats.
    """
    validate.finite("data", data)
    validate.rank_at_least("data", data, 2, "[T, B, ...]")
    validate.positive_float("threshold", threshold)
    padding = validate.boolean("padding", padding)
    off_spikes = validate.boolean("off_spikes", off_spikes)
    x = data if data.dtype == torch.float64 else data.float()  # (float64 differences stay float64)
    prev = torch.cat([x[:1] if padding else torch.zeros_like(x[:1]), x[:-1]])
    diff = x - prev
    on = (diff >= threshold).float()
    if not off_spikes:
        return on
    return torch.stack([on, (diff <= -threshold).float()], dim=2)
