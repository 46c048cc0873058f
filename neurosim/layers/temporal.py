r"""Temporal processing unit (TPU): cross-timestep interaction for spiking blocks (in the spirit of TIM,
Shen et al., IJCAI 2024).

Plain spiking layers mix information across time only through each neuron's membrane. The TPU reads an
explicit spike history: for every token and channel a depthwise *causal* convolution along the SNN time axis
integrates the last ``kernel_size`` timesteps with learned weights (``h_t = \sum_{k<K} w_k s_{t-k}``), a
pointwise Linear mixes the integrated channels, BatchNorm normalises, and a spiking neuron gates the result
into spikes. Output ``t`` depends on input timesteps ``<= t`` only (BatchNorm in eval mode).
"""
from __future__ import annotations

import torch
from torch import nn

from .. import validate
from .conv import CausalConv1d
from .neuron import as_spec
from .norm import SpikeBatchNorm


class TemporalProcessingUnit(nn.Module):
    """Input/output spikes ``[T, B, ..., dim]``; ``pre(s)`` returns the real value before the spiking gate."""

    def __init__(self, dim: int, kernel_size: int = 3, axis: str = "time", neuron=None):
        super().__init__()
        dim = validate.positive_int("dim", dim)
        self.history = CausalConv1d(dim, kernel_size=kernel_size, axis=axis, groups=dim, bias=False)
        self.integrate = nn.Linear(dim, dim)
        self.bn = SpikeBatchNorm(dim)
        self.gate = as_spec(neuron).make()

    def pre(self, s: torch.Tensor) -> torch.Tensor:
        return self.bn(self.integrate(self.history(s)))

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.gate(self.pre(s))
