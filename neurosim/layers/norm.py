"""Normalization suited to spike tensors ``[T, B, ..., C]``."""
from __future__ import annotations

import torch
from torch import nn

from .. import validate


class SpikeBatchNorm(nn.Module):
    """BatchNorm over the channel (last) dimension with statistics pooled over ``T*B*...`` (all leading dims).

    This is the "tdBN-style" normalisation of spiking transformers: time and batch are one sample axis.
    In training mode the statistics mix all timesteps (so the layer is *not* causal in time while training);
    in eval mode it is a fixed per-channel affine map and therefore causal.
    """

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.bn = nn.BatchNorm1d(validate.positive_int("channels", channels), eps=eps, momentum=momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        validate.rank_at_least("x", x, 2, "[T, B, ..., C]")
        if x.shape[-1] != self.bn.num_features:
            raise ValueError(f"x must have {self.bn.num_features} channels in its last dim, got shape {tuple(x.shape)}")
        return self.bn(x.reshape(-1, x.shape[-1])).reshape(x.shape)
