"""Counters for the rest of ``torch.nn``'s layers: rare in spiking networks, met in the ANN baselines they are
compared with. With these, every layer of ``torch.nn`` has a counter, is free (moves values) or is a container the
meter walks into (test: ``tests/test_energy_other_layers.py``); loss functions are not layers and stay "not counted".

Conventions (per call, from the actual shapes and, where the layer is spike-driven, the actual spikes):

* ``Bilinear`` ``y_k = x1^T A_k x2 (+ b_k)``: ``x1^T A_k`` first, then its product with ``x2``: ``in1 * in2 + in2``
  MACs per output element. A binary ``x1`` makes the first part synaptic: each spike adds a row of ``A_k``, ``in2``
  SynOps for every output feature; the product with ``x2`` stays ``in2`` MACs per output element. The bias is not
  counted, as a Linear's is not.
* ``CosineSimilarity`` over ``D`` elements: the dot product and the two squared norms (``3 D`` MACs), then the product
  of the norms, its root and the division (3 MACs) per output element; the ``eps`` floor compares (free).
* ``PairwiseDistance``: per element of the difference, the difference, ``+ eps`` and the p-th power (or absolute
  value) (3 MACs); per output element the ``D - 1`` additions and the p-th root (``D`` MACs).
* ``LocalResponseNorm`` (and ``CrossMapLRN2d``, the same function): per element the square, the ``size - 1``
  additions of its channel window (zero padding included: torch adds it), the scale ``alpha / size``, ``+ k``, the
  power ``beta`` and the division: ``size + 4`` MACs.
* ``LPPool`` ``(sum over the window of x^p)^(1/p)``: the p-th power of every input element and the root of every
  output (MACs), and the window sums as the other poolings count them: one AC per input element and window holding
  it (all elements: a power is not spike-driven).
* ``FractionalMaxPool``: one AC (a comparison, as the other poolings count them) per element of every window,
  ``kernel`` elements per output. The op draws its windows at random inside, so which inputs fall in which window is
  not known and no spike rule applies.
* ``EmbeddingBag``: looking rows up is free (as ``nn.Embedding``); a bag of ``L`` rows (``padding_idx`` rows left
  out, as torch does) costs ``L - 1`` additions (ACs) per feature in modes ``"sum"`` and ``"mean"``, ``"mean"`` one
  division per feature (MAC), and ``per_sample_weights`` one multiply per row and feature (MAC); ``"max"``
  compares (free). The bag sizes come from the indices and offsets, read back to the host at once (a transfer a
  call, where the meter otherwise reads everything once after the forward: this layer is rare in SNNs).
* ``Fold`` (col2im): the patches added where they overlap: per sample and channel, the patch values that land inside
  the output minus the output elements they cover (ACs); values moved to an element no other patch touches are free.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .counters import Count, _tuple, register_counter, stats, window_fanout

_FOLD_ADDS: dict = {}  # (output size, kernel, dilation, padding, stride) -> additions a sample and channel


def count_bilinear(module: nn.Bilinear, args, output) -> Count:
    x1 = args[0]
    outputs = output.numel()
    first, second = outputs * module.in1_features * module.in2_features, outputs * module.in2_features
    s = stats(x1)
    return Count(dense=first, dense_also=second, macs=second, spike_input=s,
                 spike_count=s.nnz * module.out_features * module.in2_features, spike_kind="synops",
                 note="x1^T A_k (SynOps when x1 is spikes), then its product with x2 (MACs); bias not counted")


def _reduced(args, output) -> tuple[int, int]:
    """(output elements, elements reduced into each) of a similarity/distance over the broadcast inputs."""
    shape = torch.broadcast_shapes(args[0].shape, args[1].shape)
    outputs = output.numel()
    return outputs, math.prod(shape) // max(outputs, 1)


def count_cosine(module: nn.CosineSimilarity, args, output) -> Count:
    outputs, d = _reduced(args, output)
    n = outputs * (3 * d + 3)
    return Count(dense=n, macs=n, note="dot product and two squared norms (3 MACs an element), 3 MACs an output")


def count_pairwise(module: nn.PairwiseDistance, args, output) -> Count:
    outputs, d = _reduced(args, output)
    n = outputs * d * 4
    return Count(dense=n, macs=n, note="difference, eps and power (3 MACs an element), the sum and root (D an output)")


def count_lrn(module, args, output) -> Count:
    n = args[0].numel() * (module.size + 4)
    return Count(dense=n, macs=n, note=f"square, {module.size - 1} window additions, scale, +k, power, division "
                                       f"({module.size + 4} MACs an element)")


def count_lppool(module, args, output) -> Count:
    x = args[0]
    nd = 1 if isinstance(module, nn.LPPool1d) else 2 if isinstance(module, nn.LPPool2d) else 3
    k = _tuple(module.kernel_size, nd)
    stride = _tuple(module.stride if module.stride else module.kernel_size, nd)
    _, total = window_fanout(x.shape[-nd:], k, stride, ((0, 0),) * nd, (1,) * nd, tuple(output.shape[-nd:]),
                             device=x.device)
    lead = x.numel() // max(math.prod(x.shape[-nd:]), 1)
    acs, macs = total * lead, x.numel() + output.numel()
    return Count(dense=acs, dense_is_mac=False, acs=acs, dense_also=macs, macs=macs,
                 note="p-th powers and roots (MACs), window sums (ACs)")


def count_fractional_pool(module, args, output) -> Count:
    out = output[0] if isinstance(output, tuple) else output
    n = out.numel() * math.prod(module.kernel_size)
    return Count(dense=n, dense_is_mac=False, acs=n,
                 note="random windows: every window element compared (no spike rule: the windows are not known)")


def count_embedding_bag(module: nn.EmbeddingBag, args, output) -> Count:
    idx = args[0]
    offsets = args[1] if len(args) > 1 else None
    weights = args[2] if len(args) > 2 else None
    d = module.embedding_dim
    valid = (idx != module.padding_idx) if module.padding_idx is not None else torch.ones_like(idx, dtype=torch.bool)
    if idx.dim() == 2:
        rows = valid.sum(1)
    else:
        cs = torch.cat([valid.new_zeros(1, dtype=torch.long), valid.long().cumsum(0)])
        starts = offsets[:-1] if module.include_last_offset else offsets
        ends = offsets[1:] if module.include_last_offset else torch.cat([offsets[1:], offsets.new_tensor([idx.numel()])])
        rows = cs[ends] - cs[starts]
    if module.mode == "max":
        return Count(dense=0, note="a bag's maximum: comparisons, no arithmetic counted")
    # (read back at once, a transfer a call: the same-shape ANN's figure is a number, and this layer is rare)
    looked_up, filled = (int(v) for v in torch.stack([rows.sum(), (rows > 0).sum()]).tolist())
    adds = (looked_up - filled) * d
    macs = (filled * d if module.mode == "mean" else 0) + (looked_up * d if weights is not None else 0)
    return Count(dense=adds, dense_is_mac=False, acs=adds, dense_also=macs, macs=macs,
                 note=f"bags ({module.mode}): L-1 additions a feature"
                 + (", a division a feature" if module.mode == "mean" else "")
                 + (", a weight multiply a row and feature" if weights is not None else ""))


def count_fold(module: nn.Fold, args, output) -> Count:
    cols = args[0]
    batch = cols.shape[0] if cols.dim() == 3 else 1
    k = _tuple(module.kernel_size, 2)
    blocks = cols.shape[-2] // math.prod(k)  # channels
    key = ("fold", tuple(output.shape[-2:]), k, module.dilation, module.padding, module.stride)
    if key not in _FOLD_ADDS:  # (on the CPU, once per geometry: how many patch values land on each output element)
        ones = torch.ones(1, math.prod(k), cols.shape[-1], dtype=torch.float64)
        cover = F.fold(ones, tuple(output.shape[-2:]), k, dilation=module.dilation, padding=module.padding,
                       stride=module.stride)
        _FOLD_ADDS[key] = int((cover - (cover > 0).double()).sum().item())
    adds = _FOLD_ADDS[key] * blocks * batch
    return Count(dense=adds, dense_is_mac=False, acs=adds, note="overlapping patches added (ACs)")


register_counter(nn.Bilinear, count_bilinear)
register_counter(nn.CosineSimilarity, count_cosine)
register_counter(nn.PairwiseDistance, count_pairwise)
register_counter(nn.LocalResponseNorm, count_lrn)
register_counter(nn.CrossMapLRN2d, count_lrn)
for _t in (nn.LPPool1d, nn.LPPool2d, nn.LPPool3d):
    register_counter(_t, count_lppool)
for _t in (nn.FractionalMaxPool2d, nn.FractionalMaxPool3d):
    register_counter(_t, count_fractional_pool)
register_counter(nn.EmbeddingBag, count_embedding_bag, replay=False)  # (reads the bag sizes back)
register_counter(nn.Fold, count_fold)
