"""Causal 1-D convolutions along the time axis or the token (sequence) axis of ``[T, B, N, C]`` tensors."""
from __future__ import annotations

import torch
import torch.nn.functional as Fn
from torch import nn

from .. import validate

AXES = ("time", "tokens")


def conv1d_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                dilation: int = 1) -> torch.Tensor:
    """``F.conv1d(x, weight, bias, dilation=dilation)`` (stride 1, no padding, one group) as one matrix product
    over the unfolded windows: ``y[b, o, l] = sum_{c, j} weight[o, c, j] * x[b, c, l + j * dilation]``."""
    k = weight.shape[-1]
    win = x.unfold(-1, dilation * (k - 1) + 1, 1)[..., ::dilation]  # [B, C, L_out, k]
    y = torch.einsum("bclk,ock->bol", win, weight)
    return y if bias is None else y + bias[:, None]


class Conv1d(nn.Conv1d):
    """``nn.Conv1d`` (every counter, exporter, report and state dict treats it as one) avoiding a cuDNN pitfall:
    in strict float32 (``torch.backends.cudnn.allow_tf32 = False``) cuDNN picks an FFT algorithm for the
    token-axis convolutions of the EST (384 -> 384 channels, kernel 3, 64 tokens) that took 50 ms a call on an
    H200 instead of 0.06 ms with TF32 (BENCHMARKS.md). There, a dense (one-group) convolution runs as the
    matrix product of :func:`conv1d_gemm` (when matrix products are strict float32 too); everywhere else (CPU,
    TF32 allowed, autocast, groups) as before."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.groups == 1 and x.is_cuda and x.dtype == torch.float32 and not torch.backends.cudnn.allow_tf32
                and not torch.backends.cuda.matmul.allow_tf32  # the product must be as strict as the convolution
                and not torch.is_autocast_enabled("cuda") and self.padding == (0,) and self.stride == (1,)):
            return conv1d_gemm(x, self.weight, self.bias, self.dilation[0])
        return super().forward(x)


class CausalConv1d(nn.Module):
    """1-D convolution whose output at position ``i`` sees only positions ``<= i`` of the chosen axis.

    Input ``[T, B, N, C]`` for ``axis="tokens"`` (any other rank is refused); ``[T, B, ..., C]`` (rank >= 3)
    for ``axis="time"``. ``axis="time"`` convolves along ``T`` (the spike history of each token and channel);
    ``axis="tokens"`` convolves along ``N`` separately at every timestep (the convolution is applied per
    timestep). Left padding of ``(kernel_size - 1) * dilation`` zeros makes it causal; ``groups=channels``
    gives a depthwise convolution. An empty convolved axis (no time steps, no tokens) is refused.
    """

    def __init__(self, channels: int, out_channels: int | None = None, kernel_size: int = 3, axis: str = "tokens",
                 groups: int = 1, dilation: int = 1, bias: bool = True):
        super().__init__()
        validate.one_of("axis", axis, AXES)
        channels = validate.positive_int("channels", channels)
        out_channels = channels if out_channels is None else validate.positive_int("out_channels", out_channels)
        self.kernel_size = validate.positive_int("kernel_size", kernel_size)
        self.dilation = validate.positive_int("dilation", dilation)
        self.axis = axis
        self.conv = Conv1d(channels, out_channels, self.kernel_size, groups=validate.positive_int("groups", groups),
                           dilation=self.dilation, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        validate.rank_at_least("x", x, 3, "[T, B, (N,) C]")
        c = x.shape[-1]
        if self.axis == "time":
            # [T, B, ..., C] -> [B*..., C, T]
            t = validate.holds_one("x", x, 0, "time step").shape[0]
            lead = x.shape[1:-1]
            y = x.reshape(t, -1, c).permute(1, 2, 0)
        else:
            validate.rank_exactly("x", x, (4,), "[T, B, N, C] for axis='tokens'")
            validate.holds_one("x", x, 2, "token")
            t, b, n = x.shape[:3]
            y = x.reshape(t * b, n, c).transpose(1, 2)
        y = self.conv(Fn.pad(y, ((self.kernel_size - 1) * self.dilation, 0)))
        o = y.shape[1]
        if self.axis == "time":
            return y.permute(2, 0, 1).reshape(t, *lead, o)
        return y.transpose(1, 2).reshape(t, b, n, o)

    def extra_repr(self):
        return f"axis={self.axis!r}"
