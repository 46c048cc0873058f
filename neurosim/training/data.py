"""Built-in datasets ("digits", "damped_sine") and the deterministic train/validation split.

A dataset builder returns a :class:`DataInfo`: a batch-first ``Dataset`` of ``(x [..], y)`` pairs, the task,
the number of model outputs and the input shape. The trainer splits it with :func:`split_indices` unless the
builder fixes the split itself (``train_indices``/``val_indices``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, TensorDataset

from .. import validate
from .registry import register_dataset

TASKS = ("classification", "regression")


@dataclass
class DataInfo:
    dataset: Dataset
    task: str                        # "classification" | "regression"
    num_outputs: int                 # classes (labels 0..num_outputs-1), or regression targets per sample
    input_shape: tuple               # shape of one sample, without the batch dimension
    train_indices: list | None = None
    val_indices: list | None = None
    time_ordered: bool = False       # samples are consecutive windows of one series (forecasting plot)

    def __post_init__(self):
        validate.one_of("task", self.task, TASKS)
        self.num_outputs = validate.positive_int("num_outputs", self.num_outputs)
        self.input_shape = tuple(int(s) for s in self.input_shape)


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Shuffle ``range(n)`` with a generator seeded by ``seed`` and cut off ``val_fraction`` for validation.

    The same (n, val_fraction, seed) always gives the same split, independent of the global RNG.
    """
    n = validate.positive_int("n", n, minimum=2)
    validate.in_range("val_fraction", val_fraction, 0.0, 1.0, lo_open=True, hi_open=True)
    n_val = min(n - 1, max(1, int(round(n * val_fraction))))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    return sorted(perm[n_val:]), sorted(perm[:n_val])


def _options(cfg, allowed: dict) -> dict:
    opts = dict(allowed)
    unknown = sorted(set(cfg.dataset_options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown dataset_options {', '.join(unknown)} for dataset {cfg.dataset!r}; "
                         f"allowed: {', '.join(sorted(allowed))}")
    opts.update(cfg.dataset_options)
    return opts


def digits(cfg) -> DataInfo:
    """scikit-learn's 8x8 handwritten digits (1797 samples, 10 classes); pixels scaled to [0, 1]."""
    _options(cfg, {})
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    return DataInfo(TensorDataset(x, y), "classification", 10, (x.shape[1],))


def damped_sine_series(n_points: int, dt: float, amplitude: float = 1.0, gamma: float = 0.1, omega: float = 2.0,
                       phi: float = 0.0) -> torch.Tensor:
    r""":math:`x(t) = A e^{-\gamma t}\cos(\omega t + \phi)` sampled at ``t = k dt``, ``k < n_points`` (float32)."""
    t = torch.arange(n_points, dtype=torch.float64) * dt
    return (amplitude * torch.exp(-gamma * t) * torch.cos(omega * t + phi)).float()


def damped_sine(cfg) -> DataInfo:
    """Next-step forecasting of a damped cosine: input a window of ``seq_len`` values, target the next one.

    Options (``dataset_options``): n_points (600), dt (0.05), seq_len (32), amplitude (1), gamma (0.1),
    omega (2), phi (0).
    """
    o = _options(cfg, {"n_points": 600, "dt": 0.05, "seq_len": 32, "amplitude": 1.0, "gamma": 0.1,
                       "omega": 2.0, "phi": 0.0})
    seq_len = validate.positive_int("seq_len", o["seq_len"])
    n_points = validate.positive_int("n_points", o["n_points"], minimum=seq_len + 2)
    dt = validate.positive_float("dt", o["dt"])
    amplitude, gamma, omega, phi = (validate.finite_float(k, o[k]) for k in ("amplitude", "gamma", "omega", "phi"))
    series = damped_sine_series(n_points, dt, amplitude, gamma, omega, phi)
    if not bool(torch.isfinite(series).all()):   # (finite options, but past float32's range somewhere)
        raise ValueError(f"amplitude={amplitude!r} with gamma={gamma!r} gives values beyond float32's range (the "
                         f"series is stored as float32: |amplitude| * exp(-gamma t) must stay below "
                         f"{torch.finfo(torch.float32).max:.3g} for t up to {(n_points - 1) * dt:g})")
    windows = series.unfold(0, seq_len, 1)[:-1].contiguous()     # [N, seq_len]
    targets = series[seq_len:].contiguous()                      # [N]
    return DataInfo(TensorDataset(windows, targets), "regression", 1, (seq_len,), time_ordered=True)


register_dataset("digits", digits)
register_dataset("damped_sine", damped_sine)
