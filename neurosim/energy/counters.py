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
  whose receptive field holds it, padding/stride/dilation included) x ``out_channels / groups``. Transposed conv:
  (number of its kernel taps that land inside the output) x ``out_channels / groups``.
  Bias additions are not counted (as in SpikingJelly's SynOp counter and the spiking-transformer papers).
* :class:`neurosim.layers.MatMul` ``a @ b``: a product term ``a[i,k] * b[k,j]`` costs one AC when every
  binary operand in it is 1 (spike x spike: both 1; spike x real: the spike is 1); with no binary operand
  every term is a MAC. A ``scale`` other than 1 adds one multiply (MAC) per output element (in ``dense`` too: the
  ANN of the same shape scales as well).
* :class:`neurosim.layers.Add` ``a + b``: an addition costs one AC where no binary operand is 0
  (adding a zero spike is free); real + real costs one AC per element.
* Pooling (average and max) and :class:`neurosim.layers.Mean` (a readout over time or tokens: one window per
  output, holding the elements it averages): one AC per (input element, window holding it), counting only nonzero
  inputs when the input is binary (:func:`window_sums`; silent or masked inputs cost nothing). An average's division
  by the window size is a constant scale, folded into the next layer's weights at inference as BatchNorm's affine
  is: not counted (in the same-shape ANN's figures neither). Normalisation: MACs per element (BatchNorm and SyncBatchNorm at inference fold to 1 MAC per element, as
  does an InstanceNorm that uses running statistics; LayerNorm, GroupNorm and an InstanceNorm that computes its
  statistics per sample: 3 per element (mean, variance, normalise+affine); RMSNorm: 2 (mean square,
  normalise+scale)). Neurons: one update per neuron per time step.
* Padding, pixel and channel shuffles, max-unpooling, ``nn.Unfold`` (patches copied out) and dropout move or drop
  values: no arithmetic (counted as zero, not listed as "not counted").
* Activation functions, softmax and the astrocyte terms of attention: :mod:`neurosim.energy.elementwise`.
* neurosim's random spike masking and SEW connect functions: :mod:`neurosim.energy.spike_layers`.
* The rest of ``torch.nn`` (bilinear, similarity and distance, local response normalisation, LP and fractional
  pooling, bags of embeddings, ``nn.Fold``): :mod:`neurosim.energy.other_layers`.
"""
from __future__ import annotations

import math
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import Add, MatMul, Mean
# the neurons of snnTorch, SpikingJelly and Norse count like neurosim's: one update per neuron and time step
from ..neurons.protocol import checks_own_input, is_spiking_neuron, is_spiking_neuron_class
from .device_counts import rounded_scaled_sum

Number = "int | float | torch.Tensor"


@dataclass
class TensorStats:
    """Raw counts over one tensor, as 0-d tensors on its device (read back once, after the forward pass).

    ``nnz``: nonzero elements (NaN included); ``ones``: elements equal to 1; ``total``: float64 sum, which is
    NaN/inf exactly when the tensor holds a NaN or inf (a sum of finite float32/16 values cannot overflow
    float64). The tensor is binary (spikes) when ``nnz == ones``.
    """

    numel: int
    nnz: torch.Tensor
    ones: torch.Tensor
    total: torch.Tensor | None = None


# the EnergyMeter whose hook is running a counter in this thread: stats and the three below are its own then (a
# context variable, as the deferred checks and the spike tally are: meters in other threads have their own)
IN_METER: ContextVar = ContextVar("neurosim_energy_meter", default=None)


def stats(x: torch.Tensor) -> TensorStats:
    """Counts of ``x`` computed on its device without host synchronisation (three reads of ``x``).

    Inside an :class:`~neurosim.energy.EnergyMeter` the counters get the meter's stats instead: the same
    ``numel`` / ``nnz`` / ``ones``, with ``nnz`` and ``ones`` as
    :class:`~neurosim.energy.device_counts.DeviceCount` values (exact integers read back after the forward
    pass; they can be scaled and added, and ``int()`` reads them at once), computed by one read of ``x``."""
    meter = IN_METER.get()
    if meter is not None:
        return meter._stats(x)
    x = x.detach()
    if x.dtype == torch.bool:
        nnz = torch.count_nonzero(x)
        return TensorStats(x.numel(), nnz, nnz, None)
    return TensorStats(x.numel(), torch.count_nonzero(x), torch.count_nonzero(x == 1),
                       x.sum(dtype=torch.float64) if x.is_floating_point() else None)


def output_stats(x: torch.Tensor, rates_only: bool = False) -> TensorStats:
    """:func:`stats` of a counter's module *output*, as the module returned it. Inside a meter its counts are taken
    when the module returns (a read queued on the device then, so that a change the caller makes to the output in
    place afterwards, ``y.masked_fill_(...)``, cannot alter them); the next layer reading the same tensor reuses
    them. ``rates_only=True``: no operation count depends on them (a rate, a report line): they are read later,
    together with the next layer's read of the tensor, and a change made in place before then is noted in the
    report instead."""
    meter = IN_METER.get()
    if meter is not None:
        return meter._output_stats(x, rates_only)
    return stats(x)


def scaled_sum(x: torch.Tensor, inv_scale: float):
    """``sum(round(x * inv_scale))`` over the finite elements of a module output ``x`` (float32 products), as a
    0-d int64 tensor; inside a meter, from the read that counts ``x`` when its module returns (see
    :func:`output_stats`), which the next layer reading ``x`` reuses."""
    meter = IN_METER.get()
    if meter is not None:
        return meter._scaled_sum(x, inv_scale)
    return rounded_scaled_sum(x, inv_scale)


def fan_stats(x: torch.Tensor, fan: torch.Tensor):
    """``(stats(x), fan-weighted count)``: the count is ``sum(x * fan)`` with ``fan`` (integer weights, shape
    ``x.shape[-fan.dim():]``) broadcast over the leading dims, which for binary ``x`` is the number of
    (spike, weight) pairs. Inside a meter both come from one read of ``x`` (the count weighs nonzeros)."""
    meter = IN_METER.get()
    if meter is not None:
        return meter._fan_stats(x, fan)
    return stats(x), (_spatial_sum(x, fan.dim()) * fan).sum()


@dataclass
class Count:
    """Operations of one module call. Values may be numbers or 0-d tensors (read back after the forward).

    Fixed counts go in ``macs`` / ``synops`` / ``acs`` / ``neuron_updates``. A count that depends on whether
    an input is spikes uses the spike rule instead: ``spike_input`` (and ``spike_input2`` for two-operand
    ops) with ``spike_count`` and ``spike_kind`` (``"synops"`` or ``"acs"``): when the operand(s) are binary,
    ``spike_count`` is added to ``spike_kind``; when none is, ``dense`` is added to MACs (``dense_is_mac``)
    or ACs. For two operands ``spike_count`` is a dict with keys ``"both"``, ``"first"``, ``"second"`` (the
    count when both / only the first / only the second is binary). The decision is taken on the host after
    the single read-back, per call.

    Attributes:
        dense: operations an ANN of the same shape would do (MACs when ``dense_is_mac``, else additions), where
            the spike rule decides (the layer's ``dense``; with ``dense_also``).
        dense_also: MACs already in ``macs`` that the ANN of the same shape does too (a layer whose spike-driven
            part is one step of several, a product's scale): added to the layer's ``dense`` (when ``dense_is_mac``;
            otherwise to its ``dense_other``), not counted again.
        dense_also_acs: additions already in ``acs`` that the ANN of the same shape does too (a mask added to
            attention scores): added to the layer's ``dense`` when it counts additions, otherwise to its
            ``dense_other``. The same-shape ANN's energy prices both.
        note: anything the reader must know about this count.
        info: facts about this call that are not operation counts (e.g. a spike mask's ratio and whether it
            was active); values are numbers, strings, bools or 0-d tensors (read back with the counts). A
            ``summary`` registered with the counter turns them into the layer's ``info`` and a report note.
    """

    dense: int = 0
    dense_is_mac: bool = True
    dense_also: int = 0
    dense_also_acs: int = 0
    macs: "Number" = 0
    synops: "Number" = 0
    acs: "Number" = 0
    neuron_updates: int = 0
    spike_input: TensorStats | None = None
    spike_input2: TensorStats | None = None
    spike_count: object = None
    spike_kind: str = "synops"
    note: str = ""
    info: dict = field(default_factory=dict)


def spike_or_dense(x_stats: TensorStats, dense: int, exact_synops) -> Count:
    """A synaptic layer: ``exact_synops`` when its input is binary, otherwise the ``dense`` MACs."""
    return Count(dense=dense, spike_input=x_stats, spike_count=exact_synops, spike_kind="synops")


# ----------------------------------------------------------------------------------------------- registry
Counter = Callable[[nn.Module, tuple, object], Count]
# summary(row, infos) -> (info dict for the layer's report row, one line for the report's notes, or "")
Summary = Callable[[object, list], tuple]
_COUNTERS: dict[type, Counter] = {}
_SUMMARIES: dict[type, Summary] = {}
_OWN_OPS: set[type] = set()  # types whose counter counts only their own arithmetic; their children are hooked too
_NO_REPLAY: set[type] = set()  # types whose counter makes Python numbers of tensors (register_counter(replay=False))
_ZERO_COST: tuple[type, ...] = (
    nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.FeatureAlphaDropout, nn.modules.padding._ConstantPadNd, nn.modules.padding._ReflectionPadNd,
    nn.modules.padding._ReplicationPadNd, nn.modules.padding._CircularPadNd, nn.PixelShuffle, nn.PixelUnshuffle,
    nn.ChannelShuffle, nn.modules.pooling._MaxUnpoolNd, nn.Unfold)  # values moved, copied or dropped: no arithmetic


def register_counter(module_type: type, fn: Counter | None = None, overwrite: bool = False,
                     summary: Summary | None = None, own_ops: bool = False, replay: bool = True):
    """Register ``fn(module, args, output) -> Count`` for ``module_type`` (and its subclasses).

    A module whose type has a counter is counted by it alone: the profiler does not look inside it. Usable
    as a decorator: ``@register_counter(MyLayer)``. ``own_ops=True``: the counter counts only the arithmetic
    the module's own ``forward`` does outside its child modules (e.g. element-wise terms around the products
    of an attention), and the children are hooked and counted by their own counters as well.

    ``summary(row, infos) -> (info, line)``, optional, is called when the report is built, with the layer's
    :class:`~neurosim.energy.LayerReport` (its counts, input/output nonzeros) and the ``Count.info`` of each
    call (tensors read back as floats); ``info`` becomes ``row.info`` (JSON, CSV) and a non-empty ``line`` is
    added to the report's notes (terminal table, JSON) and to the row's note (CSV).

    ``replay=False``: the counter turns tensors into Python numbers (``int()``, ``.item()``, ``.tolist()`` of a
    tensor), so its counts cannot be repeated from a recording (:mod:`neurosim.energy.replay`): a forward that runs
    it is metered with the hooks every time. (``int()`` / ``float()`` of a :class:`DeviceCount` is noticed without
    this flag; a counter that keeps its counts as :func:`stats` values and their arithmetic needs neither.)
    """
    if not isinstance(module_type, type) or not issubclass(module_type, nn.Module):
        raise ValueError(f"module_type must be an nn.Module subclass, got {module_type!r}")
    if summary is not None and not callable(summary):
        raise ValueError(f"summary for {module_type.__name__} must be callable, got {type(summary).__name__}")

    def deco(f: Counter) -> Counter:
        if not callable(f):
            raise ValueError(f"counter for {module_type.__name__} must be callable, got {type(f).__name__}")
        if module_type in _COUNTERS and _COUNTERS[module_type] is not f and not overwrite:
            raise ValueError(f"a counter for {module_type.__name__} is already registered; pass overwrite=True")
        _COUNTERS[module_type] = f
        _BY_TYPE.clear()
        if own_ops:
            _OWN_OPS.add(module_type)
        else:
            _OWN_OPS.discard(module_type)
        if replay:
            _NO_REPLAY.discard(module_type)
        else:
            _NO_REPLAY.add(module_type)
        if summary is not None:
            _SUMMARIES[module_type] = summary
        else:
            _SUMMARIES.pop(module_type, None)
        return f

    return deco(fn) if fn is not None else deco


_BY_TYPE: dict = {}  # module type -> (its most specific registered class or None, its counter or None)


def _lookup(module_type: type) -> tuple:
    """``(_registered, counter_for)`` of a module of ``module_type``, worked out once per type (a meter's set-up asks
    for every module of the model); :func:`register_counter` forgets them all."""
    hit = _BY_TYPE.get(module_type)
    if hit is None:
        cls = next((c for c in module_type.__mro__ if c in _COUNTERS), None)
        if cls is not None:
            counter = _COUNTERS[cls]
        elif is_spiking_neuron_class(module_type):
            counter = count_neuron
        elif issubclass(module_type, _ZERO_COST):
            counter = count_nothing
        else:
            counter = None
        hit = _BY_TYPE[module_type] = (cls, counter)
    return hit


def _registered(module: nn.Module) -> type | None:
    """The most specific class of ``module`` with a registered counter, or None."""
    return _lookup(type(module))[0]


def summary_for(module: nn.Module) -> Summary | None:
    """The summary registered with the counter that counts ``module``, or None."""
    cls = _registered(module)
    return None if cls is None else _SUMMARIES.get(cls)


def replayable(module: nn.Module) -> bool:
    """Whether the counts of ``module``'s counter can be repeated from a recording (see :func:`register_counter`)."""
    return _registered(module) not in _NO_REPLAY


def counts_own_ops(module: nn.Module) -> bool:
    """Whether the counter of ``module`` counts only its own arithmetic (``register_counter(own_ops=True)``)."""
    return _registered(module) in _OWN_OPS


def counter_for(module: nn.Module) -> Counter | None:
    """The registered counter for ``module`` (most specific class first), or None."""
    return _lookup(type(module))[1]


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


def transposed_fanout(spatial, kernel, stride, padding, dilation, out_spatial, device=None) -> tuple:
    """For a transposed convolution: the number of kernel taps of each input position that land inside the output,
    shape ``spatial`` (a tap ``k`` of position ``p`` lands at ``p * stride - padding + k * dilation``; taps cut off
    by ``padding``, or past the output's end, reach nothing). ``out_spatial`` is the shape the layer produced
    (``output_padding`` or an ``output_size`` included). Cached; returns the map on ``device`` and its total."""
    key = ("transposed", tuple(spatial), tuple(kernel), tuple(stride), tuple(padding), tuple(dilation),
           tuple(out_spatial), str(device))
    hit = _FANOUT_CACHE.get(key)
    if hit is not None:
        return hit
    fan = torch.ones((), dtype=torch.float64)
    for n, k, s, p, d, o in zip(spatial, kernel, stride, padding, dilation, out_spatial):
        at = torch.arange(n, dtype=torch.int64)[:, None] * s - p + torch.arange(k, dtype=torch.int64) * d
        fan = fan.unsqueeze(-1) * ((at >= 0) & (at < o)).sum(-1).to(torch.float64)
    total = int(fan.sum().item())
    _FANOUT_CACHE[key] = hit = (fan.to(device) if device is not None else fan, total)
    return hit


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
    return spike_or_dense(s, dense, s.nnz * module.out_features)


def count_conv(module: nn.modules.conv._ConvNd, args, output) -> Count:
    x = args[0]
    nd = len(module.kernel_size)
    out_spatial = tuple(output.shape[-nd:])
    k = tuple(module.kernel_size)
    per_group_out = module.out_channels // module.groups
    dense = output.numel() * (module.in_channels // module.groups) * math.prod(k)
    fan, _ = window_fanout(x.shape[-nd:], k, _tuple(module.stride, nd),
                        _pairs(module.padding, nd, k, _tuple(module.dilation, nd)), _tuple(module.dilation, nd),
                        out_spatial, module.padding_mode, device=x.device)
    s, weighted = fan_stats(x, fan)
    return spike_or_dense(s, dense, weighted * per_group_out)


def count_conv_transpose(module: nn.modules.conv._ConvTransposeNd, args, output) -> Count:
    """A transposed convolution scatters each input element through every kernel tap to ``out_channels / groups``
    outputs: a spike costs one SynOp per tap that lands inside the output, per output channel of its group; the
    ANN figure counts every tap (``input.numel() * out_channels / groups * prod(kernel)``, as SpikingJelly's MAC
    counter does)."""
    x = args[0]
    nd = len(module.kernel_size)
    k = tuple(module.kernel_size)
    per_group_out = module.out_channels // module.groups
    fan, _ = transposed_fanout(x.shape[-nd:], k, _tuple(module.stride, nd), _tuple(module.padding, nd),
                               _tuple(module.dilation, nd), tuple(output.shape[-nd:]), device=x.device)
    s, weighted = fan_stats(x, fan)
    return spike_or_dense(s, x.numel() * per_group_out * math.prod(k), weighted * per_group_out)


def window_sums(s: TensorStats, pairs: int, spike_pairs, note: str = "") -> Count:
    """The count of a layer that sums (or compares) its input over windows, pooling's convention: one AC per (input
    element, window holding it), ``pairs`` in all (the same-shape ANN's figure, and the count for a real input); for
    a binary input (``s``, the input's :func:`stats`) only its spikes count, ``spike_pairs`` (each spike weighted by
    the windows holding it), so silent or masked inputs cost nothing. An average's division by the window size is
    not counted (a constant scale, folded into the next layer at inference)."""
    return Count(dense=pairs, dense_is_mac=False, spike_input=s, spike_count=spike_pairs, spike_kind="acs",
                 note=note)


def _count_windows(x, output, nd, fan, total) -> Count:
    s, exact = fan_stats(x, fan)
    lead = x.numel() // max(math.prod(x.shape[-nd:]), 1)
    return window_sums(s, total * lead, exact)


_POOL_DIMS = {nn.MaxPool1d: 1, nn.AvgPool1d: 1, nn.AdaptiveAvgPool1d: 1, nn.AdaptiveMaxPool1d: 1,
              nn.MaxPool2d: 2, nn.AvgPool2d: 2, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveMaxPool2d: 2,
              nn.MaxPool3d: 3, nn.AvgPool3d: 3, nn.AdaptiveAvgPool3d: 3, nn.AdaptiveMaxPool3d: 3}


def _pool_dims(module) -> int:
    """Spatial dims of a pooling layer (one of :data:`_POOL_DIMS`, or a subclass of one)."""
    nd = _POOL_DIMS.get(type(module))
    return nd if nd is not None else next(n for cls, n in _POOL_DIMS.items() if isinstance(module, cls))


def count_pool(module, args, output) -> Count:
    x = args[0]
    out = output[0] if isinstance(output, tuple) else output
    nd = _pool_dims(module)
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
    nd = _pool_dims(module)
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


def count_instancenorm(module: nn.modules.instancenorm._InstanceNorm, args, output) -> Count:
    if module.track_running_stats and not module.training:  # running statistics: folded at inference, as BN's
        return count_batchnorm(module, args, output)
    return count_layernorm(module, args, output)


def count_rmsnorm(module, args, output) -> Count:
    n = args[0].numel()
    return Count(dense=2 * n, macs=2 * n, note="2 MACs per element (mean square, normalise+scale)")


# largest contraction length k for which a product of binary operands, p = (a @ b)[i, j] <= k, is recovered
# exactly as round(out / scale) from the result in this dtype (relative error of the stored result, plus the
# float32 division, times p must stay below 1/2)
_EXACT_PRODUCTS = {torch.float32: 1 << 21, torch.float64: 1 << 21, torch.float16: 1000, torch.bfloat16: 120}


def _broadcast(s1, s2) -> tuple:
    """torch.broadcast_shapes for two shapes that torch.matmul already accepted (without its symbolic-shape
    machinery, which costs tens of microseconds a call)."""
    n = max(len(s1), len(s2))
    s1, s2 = (1,) * (n - len(s1)) + tuple(s1), (1,) * (n - len(s2)) + tuple(s2)
    return tuple(b if a == 1 else a for a, b in zip(s1, s2))


def count_matmul(module: MatMul, args, output) -> Count:
    a, b = args[0], args[1]
    sa, sb = stats(a), stats(b)
    a2 = a.detach().unsqueeze(0) if a.dim() == 1 else a.detach()
    b2 = b.detach().unsqueeze(-1) if b.dim() == 1 else b.detach()
    m, k, n = a2.shape[-2], a2.shape[-1], b2.shape[-1]
    batch = _broadcast(a2.shape[:-2], b2.shape[:-2])
    dense = math.prod(batch) * m * k * n
    if module.scale != 0 and k <= _EXACT_PRODUCTS.get(output.dtype, 0):
        # when both operands are binary, out[i, j] = scale * (terms whose two operands are 1): summed from the
        # output itself, no pass over a or b (inside a meter read as the product returns, before the caller can
        # change it in place; the next layer reading it reuses that read)
        both = scaled_sum(output, 1.0 / module.scale)
    else:
        a_col = a2.sum(-2, dtype=torch.float64)  # [..., k]: ones in each column of a (when a is binary)
        b_row = b2.sum(-1, dtype=torch.float64)  # [..., k]: ones in each row of b (when b is binary)
        both = (a_col * b_row).sum()
    # batch dims broadcast: an operand repeated r times over the broadcast batch counts r times
    rep_a = math.prod(batch) // max(math.prod(a2.shape[:-2]), 1)
    rep_b = math.prod(batch) // max(math.prod(b2.shape[:-2]), 1)
    counts = {"both": both,  # product terms whose two operands are both 1
              "first": sa.nnz * (n * rep_a),  # each 1 of a meets the n values of its row of b
              "second": sb.nnz * (m * rep_b)}
    scale = output.numel() if module.scale != 1.0 else 0  # (the ANN of the same shape scales too)
    return Count(dense=dense, macs=scale, dense_also=scale, spike_input=sa,
                 spike_input2=sb, spike_count=counts, spike_kind="synops",
                 note="" if module.scale == 1.0 else "scale: 1 multiply per output counted as MAC")


def count_add(module: Add, args, output) -> Count:
    a, b = args[0], args[1]
    n = output.numel()
    if not (torch.is_tensor(a) and torch.is_tensor(b)):  # tensor + Python number: one addition per element
        return Count(dense=n, dense_is_mac=False, acs=n)
    sa, sb = stats(a), stats(b)
    # an addition is needed where no binary operand is 0; a broadcast operand repeats its spikes
    first, second = sa.nnz * (n // max(sa.numel, 1)), sb.nnz * (n // max(sb.numel, 1))
    # both binary: a + b is nonzero where either is 1, so the positions where both are 1 number
    # first + second - nonzeros(a + b), counted from the output as it was returned (no pass over a * b)
    counts = {"both": first + second - output_stats(output).nnz, "first": first, "second": second}
    return Count(dense=n, dense_is_mac=False, spike_input=sa, spike_input2=sb, spike_count=counts,
                 spike_kind="acs")


def count_mean(module: Mean, args, output) -> Count:
    """An average over ``dim``: counted as average pooling whose one window per output holds the elements averaged
    (each input element in exactly one window): one AC per input element, per spike for a binary input."""
    s = stats(args[0])
    return window_sums(s, s.numel, s.nnz, note="mean: one AC per input element (per spike), as average pooling")


def count_neuron(module, args, output) -> Count:
    x = args[0]
    return Count(dense=0, neuron_updates=x.numel())


# counters that count their first input with a fan-out map (:func:`fan_stats`): the meter leaves that input's
# deferred counts to them, so that one read gives its firing counts and its SynOps / ACs
FAN_COUNTERS = frozenset({count_conv, count_conv_transpose, count_pool, count_adaptive_pool})

for _t, _f in [(nn.Linear, count_linear), (nn.Conv1d, count_conv), (nn.Conv2d, count_conv),
               (nn.Conv3d, count_conv), (nn.ConvTranspose1d, count_conv_transpose),
               (nn.ConvTranspose2d, count_conv_transpose), (nn.ConvTranspose3d, count_conv_transpose),
               *((_t, count_adaptive_pool if _t.__name__.startswith("Adaptive") else count_pool) for _t in _POOL_DIMS),
               (nn.BatchNorm1d, count_batchnorm), (nn.BatchNorm2d, count_batchnorm),
               (nn.BatchNorm3d, count_batchnorm), (nn.SyncBatchNorm, count_batchnorm),
               (nn.modules.instancenorm._InstanceNorm, count_instancenorm), (nn.RMSNorm, count_rmsnorm),
               (nn.LayerNorm, count_layernorm),
               (nn.GroupNorm, count_layernorm), (MatMul, count_matmul), (Add, count_add),
               (Mean, count_mean)]:
    register_counter(_t, _f)
