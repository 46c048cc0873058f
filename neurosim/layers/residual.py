r"""Spike-aware residual connections.

SEW (spike-element-wise, Fang et al., NeurIPS 2021): the block's output spikes ``A = f(S)`` are combined with
the shortcut spikes ``S`` by a connect function ``g``:

=======  ====================  ==========================================
mode     ``g(A, S)``           output
=======  ====================  ==========================================
``add``  ``A + S``             integer (counts grow with depth)
``and``  ``A AND S = A S``     binary
``iand`` ``(NOT A) AND S``     binary; ``A = 0`` gives the identity
=======  ====================  ==========================================

Membrane shortcut (pre-activation, as in MS-ResNet / the Spike-driven Transformer): the residual stream holds
real membrane-like values ``x``; each block first fires ``S = SN(x)`` and its real pre-activation output is
added: ``x + \mathrm{BN}(W S)``. Every weight then reads binary spikes, and the identity path needs no spikes.
AND/IAND are written as the paper's products ``A S`` and ``(1 - A) S``: on binary spikes they are logic (no
synaptic operation, nothing for the energy meter to count), and their gradient reaches the block through its
neuron's surrogate (a selection ``where(A > 0, S, 0)`` has the same values but no gradient for ``A``, so a
``sew_and`` network trained only its head). The sums go through :class:`neurosim.layers.Add` so energy hooks see
them.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import validate
from .masking import RandomSpikeMask
from .neuron import as_spec
from .ops import Add

SEW = ("add", "and", "iand")
MODES = ("sew_add", "sew_and", "sew_iand", "membrane")


def _same_shape(block_out: torch.Tensor, shortcut: torch.Tensor) -> None:
    # (a block that changed the width would broadcast against the shortcut: a bigger output, silently)
    if block_out.shape != shortcut.shape:
        raise ValueError(f"a residual's block output must have its input's shape {tuple(shortcut.shape)}; got "
                         f"{tuple(block_out.shape)}")


def sew_connect(a: torch.Tensor, s: torch.Tensor, fn: str) -> torch.Tensor:
    """SEW connect function ``g(A, S)`` for ``fn`` in ``("add", "and", "iand")`` (plain ``+`` for "add";
    :class:`SEWConnect` routes it through ``Add``)."""
    validate.one_of("fn", fn, SEW)
    _same_shape(a, s)
    if fn == "add":
        return a + s
    validate.binary("a", a)  # (AND/IAND are logic on spikes: graded values would pass through s unnoticed)
    validate.binary("s", s)
    return a * s if fn == "and" else (1 - a) * s


class SEWConnect(nn.Module):
    def __init__(self, fn: str = "add"):
        super().__init__()
        validate.one_of("fn", fn, SEW)
        self.fn = fn
        self.add = Add()

    def forward(self, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        if self.fn == "add":
            _same_shape(a, s)
            return self.add(a, s)
        return sew_connect(a, s, self.fn)

    def extra_repr(self):
        return f"fn={self.fn!r}"


class SpikeResidual(nn.Module):
    """Wrap a block that has ``pre(s)`` (real output) and ``forward(s)`` (spikes) in a spike-aware residual.

    Args:
        block: e.g. :class:`SpikingSelfAttention`, :class:`SpikingMLP`, :class:`TemporalProcessingUnit`.
        mode: ``"sew_add"``, ``"sew_and"``, ``"sew_iand"`` (stream of spikes) or ``"membrane"`` (real stream,
            pre-activation block).
        rsm: optional :class:`RandomSpikeMask` applied to the spikes entering the block (not to the shortcut).
    """

    def __init__(self, block: nn.Module, mode: str = "sew_add", neuron=None, rsm: RandomSpikeMask | None = None):
        super().__init__()
        validate.one_of("mode", mode, MODES)
        if mode == "membrane" and not callable(getattr(block, "pre", None)):
            raise ValueError(f"mode='membrane' needs a block with a pre(s) method (its real output before the "
                             f"output neuron), such as SpikingMLP; {type(block).__name__} has none")
        if rsm is not None and not isinstance(rsm, RandomSpikeMask):
            raise ValueError(f"rsm must be a RandomSpikeMask or None; got {type(rsm).__name__} (for a ratio, pass "
                             f"RandomSpikeMask(ratio))")
        self.mode = mode
        self.block = block
        self.rsm = rsm if rsm is not None else nn.Identity()
        if mode == "membrane":
            self.sn_pre = as_spec(neuron).make()
            self.add = Add()
        else:
            self.connect = SEWConnect(mode[4:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "membrane":
            pre = self.block.pre(self.rsm(self.sn_pre(x)))
            _same_shape(pre, x)
            return self.add(x, pre)
        return self.connect(self.block(self.rsm(x)), x)

    def extra_repr(self):
        return f"mode={self.mode!r}"
