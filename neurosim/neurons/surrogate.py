r"""Surrogate gradients for the spike non-linearity.

The forward pass is always the strict Heaviside step :math:`S = H(u) = [u > 0]` with
:math:`u = \mathrm{mem} - \vartheta`; only the backward pass differs:

================  ===============================================  ==========================
name              :math:`\partial S / \partial u`                   snnTorch equivalent
================  ===============================================  ==========================
``fast_sigmoid``  :math:`1 / (k|u| + 1)^2`                          ``surrogate.fast_sigmoid(k)``
``arctan``        :math:`(k/2) / (1 + (\pi k u / 2)^2)`             ``surrogate.atan(k)``
``sigmoid``       :math:`k\,\sigma(ku)\,(1 - \sigma(ku))`           ``surrogate.sigmoid(k)``
================  ===============================================  ==========================

``k`` is the ``slope``. The same formulas are used by every backend, so gradients agree across backends.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import validate

SURROGATES = ("fast_sigmoid", "arctan", "sigmoid")
DEFAULT_SLOPE = {"fast_sigmoid": 25.0, "arctan": 2.0, "sigmoid": 25.0}


@dataclass(frozen=True)
class Surrogate:
    """A surrogate gradient: its ``name`` (one of :data:`SURROGATES`) and ``slope`` k > 0."""

    name: str = "fast_sigmoid"
    slope: float | None = None

    def __post_init__(self):
        validate.one_of("surrogate", self.name, SURROGATES)
        slope = DEFAULT_SLOPE[self.name] if self.slope is None else self.slope
        object.__setattr__(self, "slope", validate.positive_float("slope", slope))

    def grad(self, u: torch.Tensor) -> torch.Tensor:
        """:math:`\\partial S/\\partial u` evaluated at ``u = mem - threshold``."""
        k = self.slope
        if self.name == "fast_sigmoid":
            return 1.0 / (k * u.abs() + 1.0) ** 2
        if self.name == "arctan":
            return (k / 2) / (1 + (math.pi / 2 * k * u) ** 2)
        return k * torch.sigmoid(k * u) * torch.sigmoid(-k * u)  # = k s (1 - s) without cancellation

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        """Heaviside forward, this surrogate backward."""
        return _Spike.apply(u, self)

    def snntorch(self):
        """The ``spike_grad`` callable handed to snnTorch neurons.

        snnTorch's own ``fast_sigmoid`` and ``atan`` are used as they are. snnTorch 1.0's ``sigmoid`` computes
        ``k exp(-ku) / (exp(-ku) + 1)^2``, which overflows to NaN in float32 once ``k|u|`` exceeds ~44, so for
        ``sigmoid`` the numerically stable form above is passed to snnTorch instead (same values where
        snnTorch's is finite; tested).
        """
        from snntorch import surrogate as sg

        if self.name == "sigmoid":
            return self
        return {"fast_sigmoid": sg.fast_sigmoid, "arctan": sg.atan}[self.name](self.slope)


class _Spike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, surrogate):
        ctx.save_for_backward(u)
        ctx.surrogate = surrogate
        return (u > 0).to(u.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        (u,) = ctx.saved_tensors
        return grad_out * ctx.surrogate.grad(u), None


def make(surrogate: "str | Surrogate", slope: float | None = None) -> Surrogate:
    """Build a :class:`Surrogate` from a name (and optional slope) or pass one through."""
    if isinstance(surrogate, Surrogate):
        if slope is not None and float(slope) != surrogate.slope:
            raise ValueError(f"slope={slope} conflicts with the slope of {surrogate}")
        return surrogate
    if not isinstance(surrogate, str):
        raise ValueError(f"surrogate must be one of {SURROGATES} or a Surrogate, got {surrogate!r}")
    return Surrogate(surrogate, slope)
