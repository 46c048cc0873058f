"""Spiking feed-forward block: ``BN(W_2\\, SN(BN(W_1 s)))`` per token and timestep."""
from __future__ import annotations

import torch
from torch import nn

from .. import validate
from .neuron import as_spec
from .norm import SpikeBatchNorm


class SpikingMLP(nn.Module):
    """Two Linear layers with BatchNorm and a spiking hidden layer; ``pre(s)`` is the real output of the second
    BatchNorm, ``forward(s)`` the spikes of the output neuron. Input ``[T, B, ..., dim]``."""

    def __init__(self, dim: int, hidden: int | None = None, out_dim: int | None = None, neuron=None):
        super().__init__()
        dim = validate.positive_int("dim", dim)
        hidden = 2 * dim if hidden is None else validate.positive_int("hidden", hidden)
        out_dim = dim if out_dim is None else validate.positive_int("out_dim", out_dim)
        spec = as_spec(neuron)
        self.fc1, self.bn1, self.sn1 = nn.Linear(dim, hidden), SpikeBatchNorm(hidden), spec.make()
        self.fc2, self.bn2, self.sn_out = nn.Linear(hidden, out_dim), SpikeBatchNorm(out_dim), spec.make()

    def pre(self, s: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.fc2(self.sn1(self.bn1(self.fc1(s)))))

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.sn_out(self.pre(s))
