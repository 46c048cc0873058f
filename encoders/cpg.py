r"""CPG (central pattern generator) positional code in spike form.

``num_oscillators`` half-centre oscillators, each a pair of mutually inhibiting cells in anti-phase (the
spiking CPG-PE of Lv et al., NeurIPS 2024, "Advancing Spiking Neural Networks for Sequential Modeling with
Central Pattern Generators"). Oscillator ``i`` has integer period :math:`P_i` and phase
:math:`\phi_i(t) = 2\pi (t \bmod P_i) / P_i`; its two cells fire

.. math::  c_{2i}(t) = H(\sin\phi_i(t) - b), \qquad c_{2i+1}(t) = H(-\sin\phi_i(t) - b)

with threshold ``b`` in [0, 1) (0: each cell fires for half the cycle, neither at phases 0 and pi). Phases use ``t mod P_i`` exactly, so
every cell is periodic with period exactly :math:`P_i`. Default periods double from 4 (4, 8, 16, ...): with
``threshold=0`` the code is then distinct for every position below ``2**num_oscillators`` (half the longest
period: positions 0 and P_max/2 share every cell); :func:`cpg_code` checks
distinctness up to ``max_len`` and raises if the chosen periods cannot tell two positions apart.
"""
from __future__ import annotations

import math

import torch

from neurosim import validate


def default_periods(num_oscillators: int) -> list[int]:
    return [4 * 2**i for i in range(num_oscillators)]


def cpg_code(max_len: int, num_oscillators: int = 8, periods=None, threshold: float = 0.0,
             check_distinct: bool = True) -> torch.Tensor:
    """The CPG code table ``[max_len, 2 * num_oscillators]`` (float 0/1), row ``t`` coding position ``t``."""
    max_len = validate.positive_int("max_len", max_len)
    num_oscillators = validate.positive_int("num_oscillators", num_oscillators)
    validate.in_range("threshold", threshold, 0.0, 1.0, hi_open=True)
    if periods is not None and not all(isinstance(p, int) or (isinstance(p, float) and p.is_integer())
                                       for p in periods):
        raise ValueError(f"periods must be integers >= 2, got {list(periods)}")  # (4.9 is not truncated to 4)
    periods = default_periods(num_oscillators) if periods is None else [int(p) for p in periods]
    if len(periods) != num_oscillators:
        raise ValueError(f"periods must have num_oscillators={num_oscillators} entries, got {len(periods)}")
    if min(periods) < 2:
        raise ValueError(f"periods must be integers >= 2, got {periods}")
    t = torch.arange(max_len, dtype=torch.int64)
    cells = []
    for p in periods:
        r = t % p
        s = torch.sin(2 * math.pi * r.double() / p)
        s[(2 * r) % p == 0] = 0.0  # exact zeros at phase 0 and pi (float sin(pi) is 1e-16, not 0)
        cells += [(s > threshold).float(), (-s > threshold).float()]
    code = torch.stack(cells, dim=1)
    if check_distinct and torch.unique(code, dim=0).shape[0] != max_len:
        raise ValueError(
            f"CPG code with periods {periods} and threshold {threshold} is not distinct for all {max_len} "
            f"positions; raise num_oscillators or use longer periods"
        )
    return code


def cpg(num_steps: int, batch_size: int = 1, num_oscillators: int = 8, periods=None, threshold: float = 0.0,
        device=None) -> torch.Tensor:
    """CPG spikes for positions ``0..num_steps-1``, shaped ``[T, B, 2 * num_oscillators]``."""
    batch_size = validate.positive_int("batch_size", batch_size)
    code = cpg_code(num_steps, num_oscillators, periods, threshold)
    return code.to(device).unsqueeze(1).expand(-1, batch_size, -1).contiguous()
