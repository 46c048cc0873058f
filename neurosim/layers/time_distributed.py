"""Apply a per-timestep layer (convolution, pooling, flatten...) to a ``[T, B, ...]`` sequence."""
from __future__ import annotations

import torch
from torch import nn

from .. import validate


class TimeDistributed(nn.Module):
    """Run ``module`` on every timestep of ``x`` ``[T, B, ...]`` at once by merging T and B.

    ``module`` sees ``[T*B, ...]`` (e.g. ``nn.Conv2d`` gets ``[T*B, C, H, W]``) and its output is split back
    into ``[T, B, ...]``. Use it for layers that only accept one batch dimension; ``nn.Linear`` works on
    ``[T, B, F]`` directly and needs no wrapper. Exporters (:mod:`neurosim.hardware`) look through it.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise ValueError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        validate.rank_at_least("x", x, 3, "[T, B, ...]")
        t, b = x.shape[:2]
        y = self.module(x.reshape(t * b, *x.shape[2:]))
        return y.reshape(t, b, *y.shape[1:])
