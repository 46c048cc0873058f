"""The small spiking MLP the demo trains (registered as model "spiking_mlp").

Batch-first in, batch-first out: ``x [B, ...]`` is encoded to spikes ``[T, B, F]`` (or, for ``"direct"``,
the analog input is fed as a constant current for T steps), passes Linear -> LIF layers, and a linear
readout is averaged over time to give ``[B, num_outputs]`` (logits, or regression predictions).
"""
from __future__ import annotations

import torch
from torch import nn

from .. import validate
from ..neurons import LIF
from .config import ENCODERS
from .registry import register_model


def encode(x: torch.Tensor, encoder: str, num_steps: int) -> torch.Tensor:
    """``[B, F]`` -> ``[T, B, F]`` with :mod:`neurosim.encoders` (global RNG, so checkpoints can restore it)."""
    if encoder == "direct":
        return x.unsqueeze(0).expand(num_steps, *x.shape)
    from .. import encoders

    if encoder == "rate":
        return encoders.rate(x, num_steps)
    if encoder == "latency":
        return encoders.latency(x, num_steps, normalize=True)
    raise ValueError(f"encoder must be one of {', '.join(repr(e) for e in ENCODERS)}; got {encoder!r}")


class SpikingMLP(nn.Module):
    def __init__(self, in_features: int, num_outputs: int, hidden=(128,), num_steps: int = 16,
                 encoder: str = "rate", beta: float = 0.9, threshold: float = 1.0, backend: str = "snntorch"):
        super().__init__()
        validate.one_of("encoder", encoder, ENCODERS)
        self.encoder = encoder
        self.num_steps = validate.positive_int("num_steps", num_steps)
        hidden = [hidden] if isinstance(hidden, int) else list(hidden)
        sizes = [validate.positive_int("in_features", in_features)] + [validate.positive_int("hidden", h) for h in hidden]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.neurons = nn.ModuleList(LIF(beta=beta, threshold=threshold, backend=backend) for _ in hidden)
        self.readout = nn.Linear(sizes[-1], validate.positive_int("num_outputs", num_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        validate.rank_at_least("x", x, 2, "[B, ...]")
        s = encode(x.flatten(1), self.encoder, self.num_steps)          # [T, B, F]
        for linear, neuron in zip(self.linears, self.neurons):
            s = neuron(linear(s))
        return self.readout(s).mean(0)                                 # [B, num_outputs]


def build(info, cfg) -> SpikingMLP:
    """Registry builder: options ``hidden`` (list or int, default [128]), ``beta`` (0.9), ``threshold`` (1.0)."""
    allowed = {"hidden": [128], "beta": 0.9, "threshold": 1.0}
    unknown = sorted(set(cfg.model_options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown model_options {', '.join(unknown)} for model 'spiking_mlp'; "
                         f"allowed: {', '.join(sorted(allowed))}")
    opts = {**allowed, **cfg.model_options}
    encoder = cfg.encoder or ("rate" if info.task == "classification" else "direct")
    in_features = 1
    for s in info.input_shape:
        in_features *= s
    return SpikingMLP(in_features, info.num_outputs, opts["hidden"], cfg.num_steps, encoder, opts["beta"],
                      opts["threshold"], cfg.backend)


register_model("spiking_mlp", build)
