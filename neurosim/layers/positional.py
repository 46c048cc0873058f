"""Positional encodings for token sequences ``[T, B, N, F]``: spike-form CPG-PE, sinusoidal and learned.

Each encoding holds a table ``[max_len, P]`` whose row ``i`` codes position ``i``. ``mode="concat"`` appends
the row to every token's features (``F -> F + P``; the following embedding layer mixes them, as CPG-PE does
with its linear layer), ``mode="add"`` adds it (needs ``P == F``, through :class:`Add`). The CPG table is
binary (spikes of pairs of oscillators, :func:`neurosim.encoders.cpg_code`: neurosim's anti-phase half-centres,
or with ``form="lv2024"`` the quadrature cells of Lv et al.'s released code), the sinusoidal one is
real-valued (Vaswani et al.), the learned one is a trained parameter. ``x`` must be floating-point: the table is
cast to its dtype, and an integer or bool ``x`` (integer spikes) is refused rather than truncating the table.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .. import validate
from .ops import Add

PE_MODES = ("concat", "add")


class _PositionalEncoding(nn.Module):
    # protocol read by neurosim.energy: this module's own parameters (a learned table) are data handed to its child
    # modules (the Add), not weights it computes with outside them; its arithmetic is its children's
    parameters_feed_children = True

    def __init__(self, max_len: int, mode: str):
        super().__init__()
        self.max_len = validate.positive_int("max_len", max_len)
        validate.one_of("mode", mode, PE_MODES)
        self.mode = mode
        self.add = Add()

    @property
    def dim(self) -> int:
        return self.table().shape[1]

    def table(self) -> torch.Tensor:  # pragma: no cover - subclasses
        raise NotImplementedError

    def out_features(self, in_features: int) -> int:
        return in_features + self.dim if self.mode == "concat" else in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        validate.rank_exactly("x", x, (4,), "[T, B, N, F]")
        if not x.is_floating_point():  # the table in an integer dtype would lose its fractions (every kind alike)
            raise TypeError(f"x must be a floating-point tensor (float16, bfloat16, float32 or float64), got "
                            f"{x.dtype}; convert integer or bool spikes first, e.g. x.float()")
        n = x.shape[2]
        if n > self.max_len:
            raise ValueError(f"x has {n} positions (dim 2); this encoding covers max_len={self.max_len}")
        pe = self.table()[:n].to(x.dtype)
        pe = pe.expand(x.shape[0], x.shape[1], n, pe.shape[1])
        if self.mode == "concat":
            return torch.cat([x, pe], dim=-1)
        if pe.shape[-1] != x.shape[-1]:
            raise ValueError(f"mode='add' needs x with {pe.shape[-1]} features, got {x.shape[-1]}")
        return self.add(x, pe)

    def extra_repr(self):
        return f"max_len={self.max_len}, dim={self.dim}, mode={self.mode!r}"


class CPGPositionalEncoding(_PositionalEncoding):
    """Spike-form CPG-PE: ``2 * num_oscillators`` binary cells (see :mod:`neurosim.encoders.cpg`; ``form``
    "halfcentre" or "lv2024", ``threshold`` None for the form's default)."""

    def __init__(self, max_len: int, num_oscillators: int = 8, periods=None, threshold: float | None = None,
                 mode: str = "concat", form: str = "halfcentre"):
        super().__init__(max_len, mode)
        from neurosim.encoders import cpg_code

        self.register_buffer("code", cpg_code(max_len, num_oscillators, periods, threshold, form=form),
                             persistent=False)

    def table(self):
        return self.code


def sinusoidal_table(max_len: int, dim: int) -> torch.Tensor:
    """``[max_len, dim]``: ``sin(i / 10000^{2k/dim})`` in even and ``cos`` in odd columns."""
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    table = torch.zeros(max_len, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table.float()


class SinusoidalPositionalEncoding(_PositionalEncoding):
    def __init__(self, max_len: int, dim: int = 16, mode: str = "concat"):
        super().__init__(max_len, mode)
        self.register_buffer("pe", sinusoidal_table(max_len, validate.positive_int("dim", dim)), persistent=False)

    def table(self):
        return self.pe


class LearnedPositionalEncoding(_PositionalEncoding):
    def __init__(self, max_len: int, dim: int = 16, mode: str = "concat"):
        super().__init__(max_len, mode)
        self.pe = nn.Parameter(torch.randn(max_len, validate.positive_int("dim", dim)) * 0.5)

    def table(self):
        return self.pe


PE_KINDS = ("cpg", "cpg_lv2024", "sin", "learned", "none")


def positional_encoding(kind: str, max_len: int, dim: int = 16, mode: str = "concat"):
    """Build ``"cpg"`` (``dim`` cells: ``dim // 2`` half-centre oscillators), ``"cpg_lv2024"`` (``dim`` cells of
    Lv et al.'s quadrature form), ``"sin"``, ``"learned"``, or ``None`` for ``"none"``."""
    validate.one_of("kind", kind, PE_KINDS)
    if kind == "none":
        return None
    if kind.startswith("cpg"):
        dim = validate.positive_int("dim", dim)
        if dim % 2:
            raise ValueError(f"dim must be even for kind={kind!r} (two cells per oscillator); got {dim}")
        if kind == "cpg" and max_len > 2 ** (dim // 2):
            raise ValueError(f"kind='cpg' with dim={dim} ({dim // 2} oscillators) tells at most {2 ** (dim // 2)} "
                             f"positions apart, max_len={max_len}; raise dim (pe_dim of an ESTConfig) to at least "
                             f"{2 * math.ceil(math.log2(max_len))}")
        return CPGPositionalEncoding(max_len, dim // 2, mode=mode,
                                     form="halfcentre" if kind == "cpg" else "lv2024")
    cls = SinusoidalPositionalEncoding if kind == "sin" else LearnedPositionalEncoding
    return cls(max_len, dim, mode=mode)
