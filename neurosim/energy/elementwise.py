"""Counters for element-wise arithmetic: activation functions, softmax, and the astrocyte terms of
:class:`neurosim.layers.AstroMixing` around its three products.

Conventions (every figure is per call, from the actual shapes; none depends on spikes, so these layers cost
the same in an SNN and in the ANN of the same shape: ``dense`` equals the count):

* A smooth activation (GELU, SiLU, sigmoid, tanh, ELU, softplus, Mish, LeakyReLU, PReLU, softsign, tanhshrink,
  softshrink, RReLU) is one MAC per element: the multiply-accumulate stands for one evaluation of the function, a
  lower bound on its arithmetic (the 45 nm figures of :mod:`neurosim.energy.hardware` price adds and multiplies
  only). GLU, ``a * sigmoid(b)`` of the input's two halves: 2 MACs per output element.
* ReLU, ReLU6, hardtanh, hardshrink and threshold compare and select: no arithmetic is counted.
* Softmax over a dimension of length ``L``: an exponential and a division per element (2 MACs) and ``L - 1``
  additions per row for the denominator (counted as MACs, as normalisation is); log-softmax adds one
  logarithm per row. Softmin is the softmax of ``-x`` (the sign is free); Softmax2d is a softmax over channels.
* Upsampling: nearest-neighbour copies (no arithmetic); an interpolating mode weighs the ``2^d`` (``linear``,
  ``bilinear``, ``trilinear``) or ``4^2`` (``bicubic``) input values around each output element: that many MACs
  per output element.
* An embedding table lookup (``nn.Embedding``) reads a row: no arithmetic.
* Arithmetic on parameters alone (a positional table, ``softplus`` of a learned scale) is folded into
  constants at inference, as BatchNorm's affine is, and not counted.
"""
from __future__ import annotations

import math

from torch import nn

from ..layers.astro_attention import AstroMixing
from .counters import Count, register_counter

SMOOTH = (nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.ELU, nn.CELU, nn.SELU, nn.Softplus, nn.Mish, nn.LeakyReLU,
          nn.PReLU, nn.Hardswish, nn.Hardsigmoid, nn.LogSigmoid, nn.Softsign, nn.Tanhshrink, nn.Softshrink, nn.RReLU)
COMPARE = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Hardshrink, nn.Threshold)


def count_activation(module, args, output) -> Count:
    n = args[0].numel()
    return Count(dense=n, macs=n, note="1 MAC per element (one evaluation of the activation function)")


def count_compare(module, args, output) -> Count:
    return Count(dense=0, note="a comparison per element: no arithmetic counted")


def softmax_ops(shape, dim: int, log: bool = False) -> int:
    """Operations of a (log-)softmax over ``dim`` of a tensor of ``shape``: 2 per element, ``L - 1`` additions
    per row (and one logarithm per row for log-softmax)."""
    n = math.prod(shape)
    length = shape[dim] if shape else 1
    rows = n // max(length, 1)
    return 2 * n + rows * (length - 1) + (rows if log else 0)


def count_glu(module, args, output) -> Count:
    n = 2 * output.numel()
    return Count(dense=n, macs=n, note="GLU: a sigmoid and a product per output element (2 MACs)")


def count_softmax(module, args, output) -> Count:
    x = args[0]
    if isinstance(module, nn.Softmax2d):
        dim = -3
    else:  # (torch's legacy default when dim is None)
        dim = module.dim if module.dim is not None else (0 if x.dim() in (0, 1, 3) else 1)
    ops = softmax_ops(tuple(x.shape), dim, log=isinstance(module, nn.LogSoftmax))
    return Count(dense=ops, macs=ops, note="softmax: exp and division per element, L-1 additions per row (MACs)")


def count_astro(module: AstroMixing, args, output) -> Count:
    r"""The astrocyte terms of :class:`~neurosim.layers.AstroMixing` (its three products count themselves):
    :math:`\phi(q) = \mathrm{elu}(q) + 1` (computed as :math:`q + 1` or :math:`e^q`: 2 a query element),
    :math:`\phi(k)^\alpha` (3 a key element);
    per attention weight the sigmoid of :math:`q\cdot k/\sqrt d`, the product by the astrocyte scale, the sum of
    the neuron and astrocyte terms, the product by the positional weight and the division by the row sum (5),
    and the row sums (``n - 1`` additions a row). ``softplus`` of the scale and ``exp`` of the positional
    parameters depend on parameters alone (folded at inference); the causal mask selects and costs nothing.

    Called with ``(q, k, v)`` per head, or, for :class:`~neurosim.layers.AstroAttention`, with the tokens
    ``x [..., n, dim]`` its own projections turn into them."""
    q = args[0]
    if len(args) >= 3:
        k_numel, n, rows = args[1].numel(), args[1].shape[-2], q.numel() // max(q.shape[-1], 1)
    else:  # AstroAttention(x): q and k have x's numel, one row per token and head
        k_numel, n, rows = q.numel(), q.shape[-2], q.numel() // module.head_dim
    ops = 2 * q.numel() + 3 * k_numel + 5 * rows * n + rows * (n - 1)
    return Count(dense=ops, macs=ops, note="astrocyte terms: element-wise MACs around the three products")


_INTERPOLATED = {"linear": 2, "bilinear": 4, "bicubic": 16, "trilinear": 8}  # input values an output weighs


def count_upsample(module: nn.Upsample, args, output) -> Count:
    per = _INTERPOLATED.get(module.mode, 0)
    if not per:
        return Count(dense=0, note=f"upsampling ({module.mode}): copies, no arithmetic counted")
    n = per * output.numel()
    return Count(dense=n, macs=n, note=f"upsampling ({module.mode}): {per} MACs per output element")


def count_lookup(module, args, output) -> Count:
    return Count(dense=0, note="a table lookup: no arithmetic counted")


for _t in SMOOTH:
    register_counter(_t, count_activation)
for _t in COMPARE:
    register_counter(_t, count_compare)
for _t in (nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.Softmax2d):
    register_counter(_t, count_softmax)
register_counter(nn.GLU, count_glu)
register_counter(AstroMixing, count_astro, own_ops=True)
register_counter(nn.Upsample, count_upsample)
register_counter(nn.Embedding, count_lookup)
