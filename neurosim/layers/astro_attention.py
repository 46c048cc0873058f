r"""Astrocyte-modulated self-attention (after the Astromorphic Transformer, arXiv 2312.10925).

neurosim's formulation of the neuron-astrocyte attention, per head with queries :math:`q_i`, keys :math:`k_j`
and values :math:`v_j` of width :math:`d`:

* presynaptic firing rates :math:`\phi(u) = \mathrm{elu}(u) + 1 > 0`; presynaptic plasticity driven by the
  astrocyte's calcium, non-linear in the presynaptic rate: :math:`p_j = \phi(k_j)^{\alpha}` (``alpha=0.25``);
* Hebbian neuron term (pre x post coincidence): :math:`h^{n}_{ij} = \phi(q_i)\cdot p_j / d`;
* Hebbian astrocyte -> postsynaptic term with the non-linearity :math:`\sigma` (logistic):
  :math:`h^{a}_{ij} = m\,\sigma(q_i\cdot k_j/\sqrt d)`, with a learnable per-head scale ``m = softplus(.) >= 0``;
* relative positional astrocyte weights :math:`w_{ij} = \exp(a_{i-j})`, one learnable :math:`a` per head and
  relative offset (initialised to 0, i.e. no positional preference);
* astrocyte feedback normalises the synaptic drive: :math:`A_{ij} = w_{ij}(h^n_{ij} + h^a_{ij}) /
  \sum_{j'} w_{ij'}(h^n_{ij'} + h^a_{ij'})`, masked to :math:`j \le i` when ``causal``; output
  :math:`o_i = \sum_j A_{ij} v_j`.

Every weight is non-negative, so each row of :math:`A` is a distribution, as softmax attention's is.

In floating point: the weights of a bfloat16 or float16 ``q, k`` are computed in float32 (and returned in the
input's dtype), as the neurons integrate a 16-bit input with a float32 membrane; 16-bit :math:`\phi` rounds
to 0 below :math:`u \approx -6` (bfloat16) or :math:`-8` (float16), and a float16 drive overflows from
:math:`|q|, |k|` of a few hundred. :math:`\phi(q_i)` and :math:`p_j` are computed as :math:`e^{q_i}` and
:math:`e^{\alpha k_j}` for negative arguments (:func:`presynaptic_rate`, :func:`presynaptic_plasticity`), to the
float's relative precision: :math:`\phi` rounds to 0 only below about :math:`-87` in float32, and :math:`\sigma`
below about :math:`-104`. A row
whose every drive :math:`w_{ij}(h^n_{ij} + h^a_{ij})` rounds to 0 has the denominator 0: it is taken as 1
there (the only guard), so that row of :math:`A` is all zeros and its output 0, where the unguarded division
gave 0/0 = NaN; every other row is computed as written. (A drive beyond the float's largest value, from
:math:`|q|\,|k|^\alpha` near :math:`10^{38}/d` in float32, still gives inf/inf = NaN.)

Layouts: ``[B, L, D]`` (sequence of L tokens) or ``[T, B, N, D]`` (time-leading spiking layout: attention over
the N tokens of each time step, independently per step). All products go through
:class:`neurosim.layers.MatMul` so energy hooks count them.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .. import validate
from ..neurons.functional import state_dtype
from .ops import MatMul


def presynaptic_rate(u: torch.Tensor) -> torch.Tensor:
    r""":math:`\phi(u) = \mathrm{elu}(u) + 1`, a positive firing rate, computed as :math:`u + 1` for :math:`u > 0` and
    :math:`e^u` below: to the float's relative precision (``elu + 1`` rounded to 0 below :math:`u \approx -16.6`
    in float32, so a row whose queries all lay there lost its weights). The exponential is taken of
    :math:`u \le 0` only: of a large :math:`u` it overflowed to inf, which the branch's zero gradient turned
    into NaN. (Masked, not clamped: a selection, as in :func:`presynaptic_plasticity`, adds no arithmetic.)"""
    pos = u > 0
    return torch.where(pos, u + 1, torch.exp(u.masked_fill(pos, 0.0)))


def presynaptic_plasticity(k: torch.Tensor, alpha: float) -> torch.Tensor:
    r""":math:`p = \phi(k)^\alpha`, computed as :math:`(k + 1)^\alpha` for :math:`k > 0` and :math:`e^{\alpha k}`
    below: to the float's relative precision wherever it is representable. (:math:`\phi` from ``elu + 1`` and
    then the power magnified elu's rounding: ``alpha=0.25`` turned its absolute error of 6e-8 in float32 into
    0.016 near :math:`k = -16.6`, where :math:`p` jumped to 0 and its gradient to infinity.)"""
    pos = k > 0
    grown = k.masked_fill(~pos, 0.0) + 1                                  # k + 1 where k > 0, else 1
    return torch.where(pos, grown.pow(alpha), torch.pow(math.exp(alpha), k.masked_fill(pos, 0.0)))


class AstroMixing(nn.Module):
    """The astrocyte-modulated attention of per-head ``q, k, v`` (no projections): weights from ``q, k`` (see
    the module docstring), output ``A v``. Holds the relative positional astrocyte weights, the astrocyte
    scale and the three products (:class:`MatMul`, so energy hooks count them).

    Input ``q, k, v`` of one shape ``[..., heads, n, head_dim]`` (for this layer's ``heads`` and ``head_dim``:
    any other shape is refused, naming the tensor); used by :class:`AstroAttention` (real-valued tokens) and by
    :class:`neurosim.layers.AstroSpikingAttention` (spike Q/K/V).
    """

    def __init__(self, heads: int, head_dim: int, alpha: float = 0.25, max_len: int = 512, causal: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        self.heads = validate.positive_int("heads", heads)
        self.head_dim = validate.positive_int("head_dim", head_dim)
        validate.in_range("alpha", alpha, 0.0, 1.0, lo_open=True)
        self.alpha = float(alpha)
        self.max_len = validate.positive_int("max_len", max_len)
        self.causal = validate.boolean("causal", causal)
        validate.in_range("dropout", dropout, 0.0, 1.0)
        self.drop = nn.Dropout(dropout)
        self.rel_pos = nn.Parameter(torch.zeros(self.heads, 2 * self.max_len - 1))
        self.astro_scale = nn.Parameter(torch.zeros(self.heads))          # m = softplus(0) = log 2 at start
        self.neuron_mm = MatMul(scale=1.0 / self.head_dim)
        self.astro_mm = MatMul(scale=1.0 / math.sqrt(self.head_dim))
        self.value_mm = MatMul()
        self.last_attention: torch.Tensor | None = None
        self.record = False

    def relative_weights(self, n: int) -> torch.Tensor:
        """``[heads, n, n]`` astrocyte weights ``exp(a_{i-j})``."""
        idx = torch.arange(n, device=self.rel_pos.device)
        offsets = idx[:, None] - idx[None, :] + self.max_len - 1
        return torch.exp(self.rel_pos[:, offsets])

    def _check_heads(self, q: torch.Tensor, **others: torch.Tensor) -> None:
        """``q`` must be ``[..., heads, n, head_dim]`` for this layer's ``heads`` and ``head_dim``, and each of
        ``others`` (``k``, ``v``) of ``q``'s shape (the same tokens, heads and leading dimensions)."""
        layout = f"[..., heads, n, head_dim] with heads={self.heads}, head_dim={self.head_dim}"
        if q.dim() < 3 or q.shape[-3] != self.heads or q.shape[-1] != self.head_dim:
            raise ValueError(f"q must have shape {layout}, got {tuple(q.shape)}")
        for name, x in others.items():
            if x.shape != q.shape:
                raise ValueError(f"{name} must have q's shape {tuple(q.shape)} ({layout}), got {tuple(x.shape)}")

    def attention(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Weights ``[..., heads, n, n]`` from per-head ``q, k`` ``[..., heads, n, head_dim]``."""
        self._check_heads(q, k=k)
        n = q.shape[-2]
        if n > self.max_len:
            raise ValueError(f"sequence length {n} exceeds max_len={self.max_len}")
        dtype = q.dtype
        work = state_dtype(dtype)                                          # 16-bit -> float32 (module docstring)
        q, k = q.to(work), k.to(work)
        pre = presynaptic_plasticity(k, self.alpha)
        neuron = self.neuron_mm(presynaptic_rate(q), pre.transpose(-1, -2))
        astro = F.softplus(self.astro_scale)[:, None, None] * torch.sigmoid(self.astro_mm(q, k.transpose(-1, -2)))
        drive = self.relative_weights(n) * (neuron + astro)
        if self.causal:
            mask = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
            drive = drive.masked_fill(mask, 0.0)
        total = drive.sum(-1, keepdim=True)
        # a row whose drives all rounded to 0: weights 0 rather than 0/0 = NaN (the module docstring's guard)
        return (drive / total.masked_fill(total == 0, 1.0)).to(dtype)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``A v`` ``[..., heads, n, head_dim]``."""
        self._check_heads(q, v=v)
        attn = self.attention(q, k)
        if self.record:
            self.last_attention = attn.detach()
        return self.value_mm(self.drop(attn), v)

    def extra_repr(self):
        return f"heads={self.heads}, alpha={self.alpha:g}, max_len={self.max_len}, causal={self.causal}"


class AstroAttention(AstroMixing):
    """Multi-head astrocyte-modulated self-attention (see the module docstring for the equations).

    Args:
        dim: model width D (divisible by ``heads``).
        heads: number of heads.
        alpha: presynaptic non-linearity exponent in (0, 1] (0.25 as in the paper).
        max_len: longest sequence the relative positional weights cover.
        causal: mask future tokens (``j > i``).
        dropout: dropout on the attention weights.
    """

    def __init__(self, dim: int, heads: int = 4, alpha: float = 0.25, max_len: int = 512, causal: bool = False,
                 dropout: float = 0.0):
        dim = validate.positive_int("dim", dim)
        heads = validate.positive_int("heads", heads)
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        super().__init__(heads, dim // heads, alpha, max_len, causal, dropout)
        self.dim = dim
        self.qkv = nn.Linear(self.dim, 3 * self.dim)
        self.proj = nn.Linear(self.dim, self.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, L, D]`` -> ``[B, L, D]`` or ``[T, B, N, D]`` -> ``[T, B, N, D]``."""
        validate.finite("x", x)
        validate.rank_exactly("x", x, (3, 4), "[B, L, D] or [T, B, N, D]")
        if x.shape[-1] != self.dim:
            raise ValueError(f"x must have last dimension dim={self.dim}, got shape {tuple(x.shape)}")
        n = validate.holds_one("x", x, -2, "token").shape[-2]
        if n > self.max_len:
            raise ValueError(f"sequence length {n} exceeds max_len={self.max_len}")
        lead = x.shape[:-2]
        h = self.qkv(x.reshape(-1, n, self.dim)).reshape(-1, n, 3, self.heads, self.head_dim)
        q, k, v = h.permute(2, 0, 3, 1, 4)                                # [M, heads, n, head_dim] each
        out = super().forward(q, k, v)                                    # [M, heads, n, head_dim]
        out = out.transpose(1, 2).reshape(*lead, n, self.dim)
        return self.proj(out)

    def extra_repr(self):
        return f"dim={self.dim}, " + super().extra_repr()
