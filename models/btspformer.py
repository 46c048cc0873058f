r"""BTSPFormer: a transformer with BTSP-plastic attention for one-step time-series prediction.

Input ``x`` ``[B, L]`` (or ``[B, L, 1]``): a window of L scalar values; output ``[B, 1]``: the next value.

* input projection ``Linear(1, model_dim)``;
* :class:`AsymmetricPositionEmbedding`: sinusoidal code plus a learned direction scaled by an asymmetric
  envelope that peaks ``peak_offset`` steps before the target step L (the step to predict) and falls off
  slowly into the past and sharply towards the target;
* ``layers`` pre-norm blocks: ``x + Attn(LN(x))`` then ``x + FFN(LN(x))``, FFN ``D -> 4D -> D`` with GELU;
* head on the last token: ``LN -> Linear(D, D/2) -> GELU -> Dropout -> Linear(D/2, 1)``.

``attention`` picks the attention of every block: ``"btsp"`` (softmax attention changed by
:class:`models.btsp.BTSPPlasticity`, whose time kernel is set by ``tau_et``, ``tau_is`` and ``lead``: the change
is largest for keys ``lead`` steps before the query), ``"softmax"`` (the vanilla transformer baseline) or ``"astro"``
(:class:`neurosim.layers.astro_attention.AstroAttention`). :class:`SpikingBTSPFormer` is the spiking variant.
"""
from __future__ import annotations

import math

import torch
from torch import nn

import neurosim
from neurosim import validate
from neurosim.layers import Add, MatMul, Mean
from neurosim.layers.astro_attention import AstroAttention

from .btsp import DEFAULT_LEAD, BTSPPlasticity

ATTENTIONS = ("btsp", "softmax", "astro")
POSITIONS = ("asymmetric", "sinusoidal")


def sinusoidal_table(n: int, dim: int) -> torch.Tensor:
    """The usual ``[n, dim]`` sine/cosine position code."""
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    table = torch.zeros(n, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return table.float()


def asymmetric_envelope(seq_len: int, peak_offset: float = 2.0, width_past: float | None = None,
                        width_future: float = 1.0) -> torch.Tensor:
    """``[seq_len]`` envelope over input steps ``t = 0..L-1`` relative to the target step ``L``.

    With ``d = L - t`` steps before the target, a two-sided Gaussian in ``d`` centred at ``peak_offset``: width
    ``width_past`` (default ``L/4``) on the past side, ``width_future`` on the side of the target.
    ``seq_len`` >= 1; ``peak_offset`` finite and >= 0 (at or before the target); widths finite and > 0.
    """
    seq_len = validate.positive_int("seq_len", seq_len)
    peak_offset = validate.non_negative_float("peak_offset", peak_offset)
    width_past = seq_len / 4 if width_past is None else validate.positive_float("width_past", width_past)
    validate.positive_float("width_future", width_future)
    d = seq_len - torch.arange(seq_len, dtype=torch.float64)
    width = torch.where(d >= peak_offset, torch.full_like(d, width_past), torch.full_like(d, width_future))
    return torch.exp(-0.5 * ((d - peak_offset) / width) ** 2).float()


class AsymmetricPositionEmbedding(nn.Module):
    """``x + sinusoidal[t] + envelope[t] * v`` with a learned vector ``v`` (BTSP's predictive time asymmetry).

    ``position="sinusoidal"`` in :class:`BTSPFormer` uses the sinusoidal code alone.
    """

    def __init__(self, seq_len: int, dim: int, peak_offset: float = 2.0, width_past: float | None = None,
                 width_future: float = 1.0):
        super().__init__()
        self.register_buffer("table", sinusoidal_table(seq_len, dim))
        self.register_buffer("envelope", asymmetric_envelope(seq_len, peak_offset, width_past, width_future))
        self.direction = nn.Parameter(torch.randn(dim) / math.sqrt(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, seq_len = x.shape[-2], self.envelope.shape[0]
        if not 1 <= n <= seq_len:
            raise ValueError(f"x has {n} steps; this position embedding takes 1 to seq_len={seq_len} steps")
        # the last n envelope values: the window ends at the step before the target (not envelope[-n:], which
        # is the whole table for n=0)
        return x + self.table[:n] + self.envelope[seq_len - n:, None] * self.direction


class SinusoidalPositionEmbedding(nn.Module):
    def __init__(self, seq_len: int, dim: int):
        super().__init__()
        self.register_buffer("table", sinusoidal_table(seq_len, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.table[: x.shape[-2]]


class SoftmaxAttention(nn.Module):
    """Multi-head softmax attention over ``[B, L, D]``; with ``plasticity`` the weights pass the BTSP rule.

    ``record=True`` keeps the last weights before (``last_attention_pre``) and after plasticity
    (``last_attention``).
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, plasticity: BTSPPlasticity | None = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"model_dim={dim} must be divisible by heads={heads}")
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)
        self.score_mm = MatMul(scale=1.0 / math.sqrt(self.head_dim))
        self.value_mm = MatMul()
        self.softmax = nn.Softmax(dim=-1)  # a module, so that energy hooks count it
        self.plasticity = plasticity
        self.record = False
        self.last_attention_pre = self.last_attention = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        attn = self.softmax(self.score_mm(q, k.transpose(-1, -2)))
        pre = attn
        if self.plasticity is not None:
            attn = self.plasticity(attn, x)
        if self.record:
            self.last_attention_pre, self.last_attention = pre.detach(), attn.detach()
        out = self.value_mm(self.drop(attn), v).transpose(1, 2).reshape(b, n, self.dim)
        return self.proj(out)


def make_attention(kind: str, dim: int, heads: int, seq_len: int, dropout: float, tau_et: float = 8.0,
                   tau_is: float = 2.0, lead: float = DEFAULT_LEAD) -> nn.Module:
    validate.one_of("attention", kind, ATTENTIONS)
    if kind == "astro":
        return AstroAttention(dim, heads, max_len=seq_len, dropout=dropout)
    plastic = BTSPPlasticity(dim, heads, tau_et, tau_is, lead) if kind == "btsp" else None
    return SoftmaxAttention(dim, heads, dropout, plastic)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + Attn(LN(x))``, then ``x + FFN(LN(x))`` (FFN D -> 4D -> D, GELU)."""

    def __init__(self, dim: int, heads: int, seq_len: int, attention: str = "btsp", dropout: float = 0.1, **kw):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = make_attention(attention, dim, heads, seq_len, dropout, **kw)
        self.ffn = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim))
        self.drop = nn.Dropout(dropout)
        self.add1, self.add2 = Add(), Add()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.add1(x, self.drop(self.attn(self.norm1(x))))
        return self.add2(x, self.drop(self.ffn(self.norm2(x))))


def regression_head(dim: int, dropout: float) -> nn.Sequential:
    """``LN -> Linear(D, D/2) -> GELU -> Dropout -> Linear(D/2, 1)``."""
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim // 2), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(dim // 2, 1))


def _window(x: torch.Tensor, seq_len: int, weight: torch.Tensor) -> torch.Tensor:
    validate.input_dtype("x", x, weight)
    validate.finite("x", x)
    if x.dim() == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    validate.rank_exactly("x", x, (2,), "[B, L] (or [B, L, 1])")
    if not 1 <= x.shape[1] <= seq_len:
        raise ValueError(f"x has {x.shape[1]} steps; the model was built for 1 <= L <= seq_len={seq_len}")
    return x


class BTSPFormer(nn.Module):
    """See the module docstring. ``x [B, L] -> [B, 1]``."""

    def __init__(self, seq_len: int, model_dim: int = 64, heads: int = 4, layers: int = 2, dropout: float = 0.1,
                 attention: str = "btsp", position: str = "asymmetric", peak_offset: float = 2.0,
                 tau_et: float = 8.0, tau_is: float = 2.0, lead: float = DEFAULT_LEAD):
        super().__init__()
        self.seq_len = validate.positive_int("seq_len", seq_len)
        model_dim = validate.positive_int("model_dim", model_dim, minimum=2)
        heads = validate.positive_int("heads", heads)
        layers = validate.positive_int("layers", layers)
        validate.in_range("dropout", dropout, 0.0, 1.0, hi_open=True)
        validate.one_of("attention", attention, ATTENTIONS)
        validate.one_of("position", position, POSITIONS)
        validate.non_negative_float("peak_offset", peak_offset)
        validate.non_negative_float("lead", lead)
        if model_dim % heads:
            raise ValueError(f"model_dim={model_dim} must be divisible by heads={heads}")
        self.attention_kind = attention
        self.input_proj = nn.Linear(1, model_dim)
        self.pos = (AsymmetricPositionEmbedding(seq_len, model_dim, peak_offset) if position == "asymmetric"
                    else SinusoidalPositionEmbedding(seq_len, model_dim))
        kw = dict(tau_et=tau_et, tau_is=tau_is, lead=lead) if attention == "btsp" else {}
        self.blocks = nn.ModuleList(Block(model_dim, heads, seq_len, attention, dropout, **kw) for _ in range(layers))
        self.head = regression_head(model_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pos(self.input_proj(_window(x, self.seq_len, self.input_proj.weight).unsqueeze(-1)))
        for block in self.blocks:
            h = block(h)
        return self.head(h[:, -1])

    def plasticity_modules(self) -> list[BTSPPlasticity]:
        return [m for m in self.modules() if isinstance(m, BTSPPlasticity)]

    def set_plasticity(self, enabled: bool) -> None:
        """Switch the BTSP rule on or off in every block (ablation: same weights, plain softmax attention)."""
        for m in self.plasticity_modules():
            m.enabled = bool(enabled)


class SpikingBTSPAttention(nn.Module):
    """Spike-driven BTSP attention on ``[T, B, L, D]`` spikes.

    Q, K, V are LIF spikes of linear maps of the input spikes; the attention weight is the fraction of
    coincident query/key spike channels, ``a_ij = q_i . k_j / head_dim`` in [0, 1] (no softmax), changed by the
    same BTSP rule (signals read from the input spikes, no renormalisation); ``a V`` then a linear map, LayerNorm
    and a LIF give the output spikes.
    """

    def __init__(self, dim: int, heads: int, beta: float = 0.9, threshold: float = 1.0, backend: str = "snntorch",
                 tau_et: float = 8.0, tau_is: float = 2.0, lead: float = DEFAULT_LEAD):
        super().__init__()
        if dim % heads:
            raise ValueError(f"model_dim={dim} must be divisible by heads={heads}")
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.qkv_norm = nn.LayerNorm(3 * dim)
        self.qkv_lif = neurosim.LIF(beta=beta, threshold=threshold, backend=backend)
        self.score_mm = MatMul(scale=1.0 / self.head_dim)
        self.value_mm = MatMul()
        self.plasticity = BTSPPlasticity(dim, heads, tau_et, tau_is, lead)
        self.proj = nn.Linear(dim, dim)
        self.proj_norm = nn.LayerNorm(dim)
        self.out_lif = neurosim.LIF(beta=beta, threshold=threshold, backend=backend)
        self.record = False
        self.last_attention_pre = self.last_attention = None

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        t, b, n, _ = s.shape
        spikes = self.qkv_lif(self.qkv_norm(self.qkv(s)))                               # [T, B, L, 3D]
        q, k, v = spikes.reshape(t * b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        attn = self.score_mm(q, k.transpose(-1, -2))                                    # [TB, H, L, L] in [0, 1]
        plastic = self.plasticity(attn, s.reshape(t * b, n, self.dim), renormalize=False)
        if self.record:
            self.last_attention_pre, self.last_attention = attn.detach(), plastic.detach()
        out = self.value_mm(plastic, v).transpose(1, 2).reshape(t, b, n, self.dim)
        return self.out_lif(self.proj_norm(self.proj(out)))


class SpikingBTSPFormer(nn.Module):
    """Spiking BTSPFormer: ``x [B, L] -> [B, 1]`` through LIF spikes over ``num_steps`` time steps.

    The input window is projected and position-embedded as in :class:`BTSPFormer`, presented as a constant
    current for ``num_steps`` steps to a LIF layer (spike encoding), and processed by blocks of
    spike-driven BTSP attention and a spiking FFN (``LIF(LN(Linear D->4D))`` then ``LIF(LN(Linear 4D->D))``),
    each added to the residual stream of spike counts (SEW-style ADD). The head reads the last token's
    time-averaged residual stream.
    """

    def __init__(self, seq_len: int, model_dim: int = 64, heads: int = 4, layers: int = 2, dropout: float = 0.1,
                 num_steps: int = 4, beta: float = 0.9, threshold: float = 1.0, backend: str = "snntorch",
                 peak_offset: float = 2.0, tau_et: float = 8.0, tau_is: float = 2.0, lead: float = DEFAULT_LEAD):
        super().__init__()
        self.seq_len = validate.positive_int("seq_len", seq_len)
        model_dim = validate.positive_int("model_dim", model_dim, minimum=2)
        heads = validate.positive_int("heads", heads)
        layers = validate.positive_int("layers", layers)
        self.num_steps = validate.positive_int("num_steps", num_steps)
        validate.in_range("dropout", dropout, 0.0, 1.0, hi_open=True)
        validate.non_negative_float("peak_offset", peak_offset)
        if model_dim % heads:
            raise ValueError(f"model_dim={model_dim} must be divisible by heads={heads}")
        lif = dict(beta=beta, threshold=threshold, backend=backend)
        self.input_proj = nn.Linear(1, model_dim)
        self.pos = AsymmetricPositionEmbedding(seq_len, model_dim, peak_offset)
        self.input_norm = nn.LayerNorm(model_dim)
        self.encoder = neurosim.LIF(**lif)
        self.attn = nn.ModuleList(SpikingBTSPAttention(model_dim, heads, tau_et=tau_et, tau_is=tau_is, lead=lead,
                                                       **lif) for _ in range(layers))
        self.ffn = nn.ModuleList(
            nn.ModuleDict(dict(up=nn.Linear(model_dim, 4 * model_dim), up_norm=nn.LayerNorm(4 * model_dim),
                               up_lif=neurosim.LIF(**lif), down=nn.Linear(4 * model_dim, model_dim),
                               down_norm=nn.LayerNorm(model_dim), down_lif=neurosim.LIF(**lif)))
            for _ in range(layers))
        self.adds = nn.ModuleList(Add() for _ in range(2 * layers))
        self.head = regression_head(model_dim, dropout)
        self.time_mean = Mean(0)  # the head reads the last token's time-averaged residual stream

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _window(x, self.seq_len, self.input_proj.weight)
        h = self.input_norm(self.pos(self.input_proj(x.unsqueeze(-1))))
        s = self.encoder(h.unsqueeze(0).expand(self.num_steps, *h.shape))            # [T, B, L, D] spikes
        for i, (attn, f) in enumerate(zip(self.attn, self.ffn)):
            s = self.adds[2 * i](s, attn(s))
            ff = f["up_lif"](f["up_norm"](f["up"](s)))
            s = self.adds[2 * i + 1](s, f["down_lif"](f["down_norm"](f["down"](ff))))
        return self.head(self.time_mean(s[:, :, -1]))

    def plasticity_modules(self) -> list[BTSPPlasticity]:
        return [m for m in self.modules() if isinstance(m, BTSPPlasticity)]

    def set_plasticity(self, enabled: bool) -> None:
        for m in self.plasticity_modules():
            m.enabled = bool(enabled)
