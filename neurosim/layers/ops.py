"""Tensor operations wrapped as modules, so that hooks (energy counting, export checks) can see them.

Spiking layers must route every product and residual sum through these instead of calling ``torch.matmul``
or ``+`` inline: :mod:`neurosim.energy` counts their operations from the actual operands (an operand that is
binary makes the product accumulate-only), and exporters can name them when they refuse a network.
"""
from __future__ import annotations

import torch
from torch import nn


class MatMul(nn.Module):
    """``a @ b`` (batched) as a module; ``scale`` multiplies the result (e.g. attention's 1/sqrt(d))."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = float(scale)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = torch.matmul(a, b)
        return out * self.scale if self.scale != 1.0 else out

    def extra_repr(self):
        return f"scale={self.scale:g}"


class Add(nn.Module):
    """Element-wise ``a + b`` (residual connections)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class Mean(nn.Module):
    """``x.mean(dim)`` as a module (e.g. a readout averaging over time steps or tokens)."""

    def __init__(self, dim: int, keepdim: bool = False):
        super().__init__()
        self.dim, self.keepdim = int(dim), bool(keepdim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(self.dim, keepdim=self.keepdim)

    def extra_repr(self):
        return f"dim={self.dim}" + (", keepdim=True" if self.keepdim else "")
