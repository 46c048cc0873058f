"""Per-layer operation counters, looked up by module type.

A counter is ``fn(module, args, output) -> Count``, called from a forward hook with the module's actual
inputs and output. Counts may be Python ints or 0-d tensors on the model's device: the profiler reads all
of them back in one transfer after the forward pass, so counting never stalls the GPU mid-forward.

Conventions (all exact, from the actual tensors):

* A layer's input is a *spike* input when every element is 0 or 1. Then each 1 costs one accumulate (AC,
  a synaptic operation) per output it reaches (its fan-out); zeros cost nothing. A real-valued input costs
  the dense multiply-accumulates (MACs) an ANN of the same shape would do. ``dense`` is always that ANN
  figure, so both are reported.
* Linear: fan-out = ``out_features``. Conv: fan-out of an input position = (number of output positions
  whose receptive field holds it, padding/stride/dilation included) x ``out_channels / groups``.
  Bias additions are not counted (as in SpikingJelly's SynOp counter and the spiking-transformer papers).
* :class:`neurosim.layers.MatMul` ``a @ b``: a product term ``a[i,k] * b[k,j]`` costs one AC when every
  binary operand in it is 1 (spike x spike: both 1; spike x real: the spike is 1); with no binary operand
  every term is a MAC. A ``scale`` other than 1 adds one multiply (MAC) per output element.
* :class:`neurosim.layers.Add` ``a + b``: an addition costs one AC where no binary operand is 0
  (adding a zero spike is free); real + real costs one AC per element.
* Pooling: one AC per (input element, window holding it), counting only nonzero inputs when the input is
  binary. Normalisation: MACs per element (BatchNorm at inference folds to 1 MAC per element; LayerNorm /
  GroupNorm compute statistics per sample: 3 per element). Neurons: one update per neuron per time step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import Add, MatMul

Number = "int | float | torch.Tensor"


@dataclass
class TensorStats:
    """Counts over one tensor; ``nnz`` / ``nonbinary`` / ``nonfinite`` are 0-d int64 tensors on its device."""

    numel: int
    nnz: torch.Tensor
    nonbinary: torch.Tensor
    nonfinite: torch.Tensor

    @property
    def binary(self) -> torch.Tensor:
        return self.nonbinary == 0


def stats(x: torch.Tensor) -> TensorStats:
    """Element counts of ``x`` computed on its device (no host synchronisation).

    ``nonbinary = count(x != 0) - count(x == 1)`` (NaN counts as nonzero and not one); ``nonfinite`` is 1
    when the float64 sum of ``x`` is NaN/inf, i.e. when ``x`` holds any NaN or inf (a sum of finite float32
    or float16 values cannot overflow float64), else 0. Three reads of ``x`` in all.
    """
    x = x.detach()
    dev = x.device
    if x.dtype == torch.bool:
        z = torch.zeros((), dtype=torch.int64, device=dev)
        return TensorStats(x.numel(), torch.count_nonzero(x), z, z)
    nnz = torch.count_nonzero(x)
    nonbinary = nnz - torch.count_nonzero(x == 1)
    if x.is_floating_point():
        nonfinite = (~torch.isfinite(x.sum(dtype=torch.float64))).to(torch.int64)
    else:
        nonfinite = torch.zeros((), dtype=torch.int64, device=dev)
    return TensorStats(x.numel(), nnz, nonbinary, nonfinite)


@dataclass
class Count:
    """Operations of one module call.

    Attributes:
        dense: operations an ANN of the same shape would do (MACs when ``dense_is_mac``, else additions).
        macs: multiply-accumulates actually needed (real-valued operands).
        synops: spike-driven accumulates of synaptic layers (Linear, Conv, MatMul).
        acs: other accumulates (residual additions, pooling).
        neuron_updates: neuron state updates (neurons x time steps).
        spike_input: stats of the input that decides spike vs real (checked by ``require_spikes``).
        synops_paper: the papers' estimate ``firing_rate * dense`` for a spike-driven layer (for comparison).
        note: anything the reader must know about this count.
    """

    dense: int = 0
    dense_is_mac: bool = True
    macs: "Number" = 0
    synops: "Number" = 0
    acs: "Number" = 0
    neuron_updates: int = 0
    spike_input: TensorStats | None = None
    synops_paper: "Number" = 0
    note: str = ""


def spike_or_dense(x_stats: TensorStats, dense: int, exact_synops) -> Count:
    """A synaptic layer: SynOps from the spikes when the input is binary, otherwise the dense MACs."""
    is_bin = x_stats.binary.to(torch.float64)
    exact = torch.as_tensor(exact_synops, device=is_bin.device).to(torch.float64)
    rate = x_stats.nnz.to(torch.float64) * (1.0 / max(x_stats.numel, 1))
    return Count(
        dense=dense,
        macs=(1.0 - is_bin) * float(dense),
        synops=is_bin * exact,
        spike_input=x_stats,
        synops_paper=is_bin * rate * float(dense),
    )


# ----------------------------------------------------------------------------------------------- registry
Counter = Callable[[nn.Module, tuple, object], Count]
_COUNTERS: dict[type, Counter] = {}
_ZERO_COST: tuple[type, ...] = (nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
                                nn.Dropout3d, nn.AlphaDropout)


def register_counter(module_type: type, fn: Counter | None = None, overwrite: bool = False):
    """Register ``fn(module, args, output) -> Count`` for ``module_type`` (and its subclasses).

    A module whose type has a counter is counted by it alone: the profiler does not look inside it. Usable
    as a decorator: ``@register_counter(MyLayer)``.
    """
    if not isinstance(module_type, type) or not issubclass(module_type, nn.Module):
        raise ValueError(f"module_type must be an nn.Module subclass, got {module_type!r}")

    def deco(f: Counter) -> Counter:
        if not callable(f):
            raise ValueError(f"counter for {module_type.__name__} must be callable, got {type(f).__name__}")
        if module_type in _COUNTERS and _COUNTERS[module_type] is not f and not overwrite:
            raise ValueError(f"a counter for {module_type.__name__} is already registered; pass overwrite=True")
        _COUNTERS[module_type] = f
        return f

    return deco(fn) if fn is not None else deco


def is_spiking_neuron(module: nn.Module) -> bool:
    """The neuron protocol: a module class with ``is_spiking_neuron = True`` (e.g. neurosim.LIF)."""
    return bool(getattr(type(module), "is_spiking_neuron", False))


def counter_for(module: nn.Module) -> Counter | None:
    """The registered counter for ``module`` (most specific class first), or None."""
    for cls in type(module).__mro__:
        if cls in _COUNTERS:
            return _COUNTERS[cls]
    if is_spiking_neuron(module):
        return count_neuron
    if isinstance(module, _ZERO_COST):
        return count_nothing
    return None


# --------------------------------------------------------------------------------------------- fan-out maps
_FANOUT_CACHE: dict[tuple, torch.Tensor] = {}


def window_fanout(spatial, kernel, stride, padding, dilation, out_spatial, padding_mode="zeros",
                  device=None) -> tuple[torch.Tensor, int]:
    """Number of sliding windows holding each input position, shape ``spatial``.

    ``padding`` is a per-dimension (left, right) pair; windows past the right edge (``ceil_mode``) are
    covered by cropping to ``out_spatial``, the shape the layer actually produced. Computed once per shape
    (as the gradient of the summed window sums with respect to an all-ones input) and cached; returns the
    map on ``device`` and its total (the number of (input position, window) pairs) as a Python int.
    """
    key = (tuple(spatial), tuple(kernel), tuple(stride), tuple(padding), tuple(dilation), tuple(out_spatial),
           padding_mode, str(device))
    hit = _FANOUT_CACHE.get(key)
    if hit is not None:
        return hit
    nd = len(spatial)
    conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
    with torch.enable_grad():
        x = torch.ones((1, 1) + tuple(spatial), dtype=torch.float64, requires_grad=True)
        # the right side gets extra zeros so that every window the layer produced (ceil_mode) exists here
        extra = [max(0, (o - 1) * s + d * (k - 1) + 1 - (n + pl + pr))
                 for o, s, d, k, n, (pl, pr) in zip(out_spatial, stride, dilation, kernel, spatial, padding)]
        pads = []
        for (pl, pr) in reversed(padding):
            pads += [pl, pr]
        xp = F.pad(x, pads, mode="constant" if padding_mode == "zeros" else padding_mode) if any(pads) else x
        if any(extra):
            xp = F.pad(xp, [v for e in reversed(extra) for v in (0, e)])
        w = torch.ones((1, 1) + tuple(kernel), dtype=torch.float64)
        y = conv(xp, w, stride=tuple(stride), dilation=tuple(dilation))
        y = y[(0, 0) + tuple(slice(0, o) for o in out_spatial)]
        (g,) = torch.autograd.grad(y.sum(), x)
    fan = g[0, 0].round()
    total = int(fan.sum().item())
    if device is not None:
        fan = fan.to(device)
    _FANOUT_CACHE[key] = (fan, total)
    return fan, total


def _tuple(v, nd):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * nd


def _pairs(padding, nd, kernel, dilation):
    if padding == "valid":
        return ((0, 0),) * nd
    if padding == "same":
        out = []
        for k, d in zip(kernel, dilation):
            total = d * (k - 1)
            out.append((total // 2, total - total // 2))
        return tuple(out)
    return tuple((p, p) for p in _tuple(padding, nd))


def _spatial_sum(x: torch.Tensor, nd: int) -> torch.Tensor:
    """Sum a ``[N, C, *S]`` or ``[C, *S]`` tensor over everything but the ``nd`` spatial dims."""
    lead = tuple(range(x.dim() - nd))
    return x.detach().sum(dim=lead, dtype=torch.float64) if lead else x.detach().to(torch.float64)


# ------------------------------------------------------------------------------------------------ counters
def count_nothing(module, args, output) -> Count:
    return Count(dense=0)


def count_linear(module: nn.Linear, args, output) -> Count:
    x = args[0]
    s = stats(x)
    dense = x.numel() * module.out_features
    return spike_or_dense(s, dense, s.nnz.to(torch.float64) * module.out_features)


def count_conv(module: nn.modules.conv._ConvNd, args, output) -> Count:
    x = args[0]
    nd = len(module.kernel_size)
    s = stats(x)
    out_spatial = tuple(output.shape[-nd:])
    k = tuple(module.kernel_size)
    per_group_out = module.out_channels // module.groups
    dense = output.numel() * (module.in_channels // module.groups) * math.prod(k)
    fan, _ = window_fanout(x.shape[-nd:], k, _tuple(module.stride, nd),
                        _pairs(module.padding, nd, k, _tuple(module.dilation, nd)), _tuple(module.dilation, nd),
                        out_spatial, module.padding_mode, device=x.device)
    exact = (_spatial_sum(x, nd) * fan).sum() * per_group_out
    return spike_or_dense(s, dense, exact)


def _count_windows(x, output, nd, fan, total) -> Count:
    s = stats(x)
    lead = x.numel() // max(math.prod(x.shape[-nd:]), 1)
    exact = (_spatial_sum(x, nd) * fan).sum()
    is_bin = s.binary.to(torch.float64)
    acs = is_bin * exact + (1.0 - is_bin) * float(total * lead)
    return Count(dense=total * lead, dense_is_mac=False, acs=acs, spike_input=s)


def count_pool(module, args, output) -> Count:
    x = args[0]
    out = output[0] if isinstance(output, tuple) else output
    nd = 1 if isinstance(module, (nn.MaxPool1d, nn.AvgPool1d)) else 2
    k = _tuple(module.kernel_size, nd)
    stride = _tuple(module.stride if module.stride else module.kernel_size, nd)
    dil = _tuple(getattr(module, "dilation", 1), nd)
    fan, total = window_fanout(x.shape[-nd:], k, stride, _pairs(module.padding, nd, k, dil), dil,
                               tuple(out.shape[-nd:]), device=x.device)
    return _count_windows(x, out, nd, fan, total)


def _adaptive_fanout(n_in: int, n_out: int) -> torch.Tensor:
    fan = torch.zeros(n_in, dtype=torch.float64)
    for i in range(n_out):
        start, end = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        fan[start:end] += 1
    return fan


def count_adaptive_pool(module, args, output) -> Count:
    x = args[0]
    out = output[0] if isinstance(output, tuple) else output
    nd = 1 if isinstance(module, (nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d)) else 2
    key = ("adaptive", tuple(x.shape[-nd:]), tuple(out.shape[-nd:]), str(x.device))
    if key not in _FANOUT_CACHE:
        fan = torch.ones((), dtype=torch.float64)
        for n_in, n_out in zip(x.shape[-nd:], out.shape[-nd:]):
            fan = fan.unsqueeze(-1) * _adaptive_fanout(n_in, n_out)
        _FANOUT_CACHE[key] = (fan.to(x.device), int(fan.sum().item()))
    fan, total = _FANOUT_CACHE[key]
    return _count_windows(x, out, nd, fan, total)


def count_batchnorm(module, args, output) -> Count:
    n = args[0].numel()
    return Count(dense=n, macs=n, note="1 MAC per element (affine folded at inference)")


def count_layernorm(module, args, output) -> Count:
    n = args[0].numel()
    return Count(dense=3 * n, macs=3 * n, note="3 MACs per element (mean, variance, normalise+affine)")


def _binary_operand_matmul(a: torch.Tensor, b: torch.Tensor, sa: TensorStats, sb: TensorStats):
    """AC count and dense MACs of ``a @ b`` (torch.matmul semantics, batch dims broadcast)."""
    a2 = a.detach().unsqueeze(0) if a.dim() == 1 else a.detach()
    b2 = b.detach().unsqueeze(-1) if b.dim() == 1 else b.detach()
    m, k, n = a2.shape[-2], a2.shape[-1], b2.shape[-1]
    batch = torch.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    dense = math.prod(batch) * m * k * n
    a_col = a2.sum(-2, dtype=torch.float64)  # [..., k]: ones in each column of a
    b_row = b2.sum(-1, dtype=torch.float64)  # [..., k]: ones in each row of b
    both = (a_col * b_row).sum()  # products with both operands 1 (broadcast over batch)
    a_only = (a_col * torch.ones_like(b_row)).sum() * n  # a binary: each 1 of a meets n values of b
    b_only = (torch.ones_like(a_col) * b_row).sum() * m
    ab, bb = sa.binary, sb.binary
    ac = torch.where(ab & bb, both, torch.where(ab, a_only, torch.where(bb, b_only, torch.zeros_like(both))))
    return ac, dense, ab | bb


def count_matmul(module: MatMul, args, output) -> Count:
    a, b = args[0], args[1]
    sa, sb = stats(a), stats(b)
    ac, dense, any_bin = _binary_operand_matmul(a, b, sa, sb)
    macs = (1.0 - any_bin.to(torch.float64)) * float(dense)
    if module.scale != 1.0:
        macs = macs + output.numel()
    # the papers' estimate: firing rate of the (first) binary operand x dense (no host<->device copies here)
    rate = torch.where(sa.binary, sa.nnz.to(torch.float64) / max(sa.numel, 1),
                       sb.nnz.to(torch.float64) / max(sb.numel, 1))
    paper = any_bin.to(torch.float64) * rate * float(dense)
    # the operand that decides "spike driven" for require_spikes: the first one
    return Count(dense=dense, macs=macs, synops=ac, spike_input=sa, synops_paper=paper,
                 note="" if module.scale == 1.0 else "scale: 1 multiply per output counted as MAC")


def count_add(module: Add, args, output) -> Count:
    a, b = args[0], args[1]
    n = output.numel()
    if not (torch.is_tensor(a) and torch.is_tensor(b)):  # tensor + Python number: one addition per element
        return Count(dense=n, dense_is_mac=False, acs=n)
    sa, sb = stats(a), stats(b)
    ab, bb = sa.binary.to(torch.float64), sb.binary.to(torch.float64)
    # a binary operand broadcast to the output repeats each of its spikes n / numel times
    only_a = sa.nnz.to(torch.float64) * (n / max(sa.numel, 1))
    only_b = sb.nnz.to(torch.float64) * (n / max(sb.numel, 1))
    both = torch.count_nonzero(a.detach() * b.detach()).to(torch.float64)  # both binary: where both are 1
    acs = ab * bb * both + ab * (1 - bb) * only_a + (1 - ab) * bb * only_b + (1 - ab) * (1 - bb) * float(n)
    return Count(dense=n, dense_is_mac=False, acs=acs, spike_input=sa)


def count_neuron(module, args, output) -> Count:
    x = args[0]
    return Count(dense=0, neuron_updates=x.numel())


for _t, _f in [(nn.Linear, count_linear), (nn.Conv1d, count_conv), (nn.Conv2d, count_conv),
               (nn.Conv3d, count_conv), (nn.MaxPool1d, count_pool), (nn.MaxPool2d, count_pool),
               (nn.AvgPool1d, count_pool), (nn.AvgPool2d, count_pool),
               (nn.AdaptiveAvgPool1d, count_adaptive_pool), (nn.AdaptiveAvgPool2d, count_adaptive_pool),
               (nn.AdaptiveMaxPool1d, count_adaptive_pool), (nn.AdaptiveMaxPool2d, count_adaptive_pool),
               (nn.BatchNorm1d, count_batchnorm), (nn.BatchNorm2d, count_batchnorm),
               (nn.BatchNorm3d, count_batchnorm), (nn.LayerNorm, count_layernorm),
               (nn.GroupNorm, count_layernorm), (MatMul, count_matmul), (Add, count_add)]:
    register_counter(_t, _f)
