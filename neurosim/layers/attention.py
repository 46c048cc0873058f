r"""Spiking self-attention without softmax (Spikformer, Zhou et al., ICLR 2023), its convolutional variant, and
astrocyte-modulated attention on spike Q/K/V.

Input spikes ``[T, B, N, D]`` (N tokens, e.g. sequence positions). Every kind shares one block structure
(:class:`SpikingAttentionBlock`): per timestep,

.. math::  Q = \mathrm{SN}(\mathrm{BN}(W_Q s)),\ K = \mathrm{SN}(\mathrm{BN}(W_K s)),\ V = \mathrm{SN}(\mathrm{BN}(W_V s)),
           \quad A = \mathrm{SN}_{0.5}\big(\mathrm{BN}(\mathrm{mix}(Q, K, V))\big), \quad y = \mathrm{BN}(W_O A)

per head; only :math:`\mathrm{mix}` differs.

* :class:`SpikingSelfAttention`: :math:`\mathrm{mix} = \mathrm{scale}\cdot Q K^\top V` (with ``attn_norm=True``,
  the default, a BatchNorm sits before :math:`\mathrm{SN}_{0.5}`: Spikformer's fixed scale 0.125 leaves the
  attention neuron silent in small models, where :math:`QK^\top V` sums few spikes; in eval mode that BatchNorm
  is a per-channel affine map that folds into the neuron's threshold, so inference stays spike-driven;
  ``attn_norm=False`` is the original). Q, K, V are binary, so both products are accumulate-only; there is no
  softmax.
* :class:`AstroSpikingAttention`: :math:`\mathrm{mix}` is the astrocyte-modulated attention of
  :mod:`neurosim.layers.astro_attention` applied to the spike Q, K, V (weights from Hebbian neuron and
  astrocyte terms, presynaptic non-linearity, relative positional astrocyte weights, row-normalised). Its
  neuron-term product reads :math:`\phi(Q)` and :math:`\phi(K)^\alpha`, which are real-valued even for spikes
  (``phi(0) = 1``), so it costs MACs; :math:`Q K^\top` is spike x spike; :math:`A V` reads real weights and
  binary V (an accumulate per spike of V and row of A, as a Linear layer reading spikes).

With ``qk="conv"`` (convolutional spiking self-attention) ``W_Q`` and ``W_K`` are causal 1-D convolutions along
the token axis (kernel ``kernel_size``), so queries and keys carry local context; V stays pointwise. With
``causal=True`` the mixing is masked to keys ``j <= i``, and every part of the layer is causal along the
tokens: output ``i`` depends on tokens ``<= i`` only (BatchNorm in eval mode). Each timestep is mixed on its
own, and the neurons are causal in time, so the block is causal along T too.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import validate
from .astro_attention import AstroMixing
from .conv import CausalConv1d
from .neuron import as_spec
from .norm import SpikeBatchNorm
from .ops import MatMul

QK = ("linear", "conv")


class SpikingAttentionBlock(nn.Module):
    """The shared structure of the spiking attention kinds: Q/K/V projections + SpikeBatchNorm + spiking neuron,
    per-head mixing (``mix``, given by subclasses), BatchNorm + attention neuron, output projection + BatchNorm
    and output neuron. ``pre(s)`` returns the real-valued ``BN(W_O A)``, ``forward(s)`` the spikes of its output
    neuron."""

    def __init__(self, dim: int, heads: int = 4, qk: str = "linear", kernel_size: int = 3, causal: bool = False,
                 attn_threshold: float = 0.5, attn_norm: bool = True, neuron=None):
        super().__init__()
        dim = validate.positive_int("dim", dim)
        heads = validate.positive_int("heads", heads)
        if dim % heads:
            raise ValueError(f"dim must be divisible by heads; got dim={dim}, heads={heads}")
        validate.one_of("qk", qk, QK)
        causal = validate.boolean("causal", causal)
        attn_norm = validate.boolean("attn_norm", attn_norm)
        spec = as_spec(neuron)
        self.dim, self.heads, self.qk, self.causal = dim, heads, qk, causal
        if qk == "conv":
            self.w_q = CausalConv1d(dim, kernel_size=kernel_size, axis="tokens", bias=False)
            self.w_k = CausalConv1d(dim, kernel_size=kernel_size, axis="tokens", bias=False)
        else:
            self.w_q = nn.Linear(dim, dim, bias=False)
            self.w_k = nn.Linear(dim, dim, bias=False)
        self.w_v = nn.Linear(dim, dim, bias=False)
        self.bn_q, self.bn_k, self.bn_v = SpikeBatchNorm(dim), SpikeBatchNorm(dim), SpikeBatchNorm(dim)
        self.sn_q, self.sn_k, self.sn_v = spec.make(), spec.make(), spec.make()
        self.bn_attn = SpikeBatchNorm(dim) if attn_norm else nn.Identity()
        self.sn_attn = spec.make(threshold=attn_threshold)
        self.w_o = nn.Linear(dim, dim)
        self.bn_o = SpikeBatchNorm(dim)
        self.sn_out = spec.make()

    def _heads(self, x):
        t, b, n, _ = x.shape
        return x.reshape(t, b, n, self.heads, self.dim // self.heads).transpose(2, 3)  # [T, B, H, N, dh]

    def qkv(self, s: torch.Tensor):
        """Spike Q, K, V per head, each ``[T, B, H, N, dh]``."""
        validate.rank_exactly("s", s, (4,), "[T, B, N, D]")
        q = self._heads(self.sn_q(self.bn_q(self.w_q(s))))
        k = self._heads(self.sn_k(self.bn_k(self.w_k(s))))
        v = self._heads(self.sn_v(self.bn_v(self.w_v(s))))
        return q, k, v

    def mix(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Per-head token mixing ``[T, B, H, N, dh]`` x3 -> ``[T, B, H, N, dh]`` (causal when ``self.causal``)."""
        raise NotImplementedError

    def attention_map(self, s: torch.Tensor) -> torch.Tensor:
        """Spikes of the attention neuron ``[T, B, N, D]`` (before the output projection)."""
        a = self.mix(*self.qkv(s))
        t, b, h, n, dh = a.shape
        return self.sn_attn(self.bn_attn(a.transpose(2, 3).reshape(t, b, n, h * dh)))

    def pre(self, s: torch.Tensor) -> torch.Tensor:
        return self.bn_o(self.w_o(self.attention_map(s)))

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.sn_out(self.pre(s))

    def extra_repr(self):
        return f"dim={self.dim}, heads={self.heads}, qk={self.qk!r}, causal={self.causal}"


class SpikingSelfAttention(SpikingAttentionBlock):
    """Spikformer-style spiking self-attention: ``mix = scale * Q K^T V`` (no softmax); ``scale`` a finite
    number > 0 (0.125 as in Spikformer)."""

    def __init__(self, dim: int, heads: int = 4, qk: str = "linear", kernel_size: int = 3, causal: bool = False,
                 scale: float = 0.125, attn_threshold: float = 0.5, attn_norm: bool = True, neuron=None):
        super().__init__(dim, heads, qk, kernel_size, causal, attn_threshold, attn_norm, neuron)
        self.qk_matmul = MatMul(scale=validate.positive_float("scale", scale))
        self.av_matmul = MatMul()

    def mix(self, q, k, v):
        scores = self.qk_matmul(q, k.transpose(-1, -2))  # [T, B, H, N, N]
        if self.causal:
            n = scores.shape[-1]
            future = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
            scores = scores.masked_fill(future, 0.0)
        return self.av_matmul(scores, v)  # [T, B, H, N, dh]


class AstroSpikingAttention(SpikingAttentionBlock):
    """Astrocyte-modulated attention on spike Q/K/V (:class:`neurosim.layers.astro_attention.AstroMixing`), in
    the block structure of :class:`SpikingSelfAttention`.

    Args (besides the block's): ``alpha`` the presynaptic exponent (0.25), ``max_len`` the longest token
    sequence the relative positional astrocyte weights cover.
    """

    def __init__(self, dim: int, heads: int = 4, qk: str = "linear", kernel_size: int = 3, causal: bool = False,
                 alpha: float = 0.25, max_len: int = 512, attn_threshold: float = 0.5, attn_norm: bool = True,
                 neuron=None):
        super().__init__(dim, heads, qk, kernel_size, causal, attn_threshold, attn_norm, neuron)
        self.astro = AstroMixing(self.heads, self.dim // self.heads, alpha=alpha, max_len=max_len, causal=causal)

    def mix(self, q, k, v):
        return self.astro(q, k, v)

    def extra_repr(self):
        return super().extra_repr() + f", alpha={self.astro.alpha:g}, max_len={self.astro.max_len}"
