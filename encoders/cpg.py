r"""CPG (central pattern generator) positional code in spike form, after the CPG-PE of Lv et al., NeurIPS 2024,
"Advancing Spiking Neural Networks for Sequential Modeling with Central Pattern Generators".

Two forms. Both give ``2 * num_oscillators`` binary cells per position ``t``, a pair per oscillator.

``form="halfcentre"`` (the default, neurosim's variant): each oscillator is a half-centre pair of mutually
inhibiting cells in anti-phase. Oscillator ``i`` has integer period :math:`P_i` and phase
:math:`\phi_i(t) = 2\pi (t \bmod P_i) / P_i`; its two cells fire

.. math::  c_{2i}(t) = H(\sin\phi_i(t) - b), \qquad c_{2i+1}(t) = H(-\sin\phi_i(t) - b)

with threshold ``b`` in [0, 1) and a strict step ``H`` (0: each cell fires for half the cycle, neither at phases
0 and pi). Phases use ``t mod P_i`` exactly, and the sine is evaluated on the phase folded into the first
quarter cycle, so every cell is periodic with period exactly :math:`P_i` and the two cells of a pair are mirror
images at any ``b``. Default periods double from 4 (4, 8, 16, ...): with ``threshold=0`` the code is then distinct
for every position below ``2**num_oscillators`` (half the longest period: positions 0 and P_max/2 share every
cell); :func:`cpg_code` checks distinctness up to ``max_len`` and raises if the periods cannot tell two positions
apart.

``form="lv2024"`` (the cells of Lv et al.'s released code, SeqSNN's ``CPG``): the pair is in quadrature,

.. math::  c_{2i}(t) = H(\sin\omega_i t - b), \qquad c_{2i+1}(t) = H(\cos\omega_i t - b), \qquad
           \omega_i = 10000^{-i/N}

(``N = num_oscillators``, ``i = 0..N-1``), with ``b = 0.8`` and ``H(0) = 1``. Its angular frequencies are not
commensurate, so the cells are not periodic in whole steps, and positions are not all told apart (8 oscillators:
33 distinct rows among the first 64), so ``check_distinct`` is off by default for it. The two forms differ in
phase offset (180 against 90 degrees), periods (whole powers of two against a geometric series from
:math:`2\pi`), threshold and the step's value at 0.
"""
from __future__ import annotations

import math
import numbers

import torch

from neurosim import validate

FORMS = ("halfcentre", "lv2024")
LV2024_THRESHOLD = 0.8
LV2024_MAX_WAVELENGTH = 10000.0


def default_periods(num_oscillators: int) -> list[int]:
    return [4 * 2**i for i in range(num_oscillators)]


def _periods(periods, num_oscillators: int) -> list[int]:
    if periods is None:
        return default_periods(num_oscillators)
    periods = periods.tolist() if hasattr(periods, "tolist") else list(periods)  # (tensors, arrays, generators)
    if not all(isinstance(p, numbers.Integral) and not isinstance(p, bool)
               or isinstance(p, float) and p.is_integer() for p in periods):
        raise ValueError(f"periods must be integers >= 2, got {periods}")  # (4.9 is not truncated to 4)
    periods = [int(p) for p in periods]
    if len(periods) != num_oscillators:
        raise ValueError(f"periods must have num_oscillators={num_oscillators} entries, got {len(periods)}")
    if min(periods) < 2:
        raise ValueError(f"periods must be integers >= 2, got {periods}")
    return periods


def _halfcentre(max_len: int, periods: list[int], threshold: float) -> list[torch.Tensor]:
    t = torch.arange(max_len, dtype=torch.int64)
    cells = []
    for p in periods:
        twice = (2 * (t % p)) % (2 * p)          # 2r, r = t mod P: the phase in half-steps of 2*pi/(2P)
        first_half = twice < p
        m = torch.where(first_half, twice, twice - p)            # 2r mod P: the phase within its half cycle
        folded = torch.minimum(m, p - m)                         # mirrored about the quarter cycle
        magnitude = torch.sin(math.pi * folded.double() / p)     # sin(pi m / P) = |sin(2 pi r / P)|
        magnitude[m == 0] = 0.0                                  # exact zeros at phases 0 and pi
        cells += [(first_half & (magnitude > threshold)).float(), (~first_half & (magnitude > threshold)).float()]
    return cells


def _lv2024(max_len: int, num_oscillators: int, threshold: float) -> list[torch.Tensor]:
    t = torch.arange(max_len, dtype=torch.float64)
    cells = []
    for i in range(num_oscillators):
        angle = t * LV2024_MAX_WAVELENGTH ** (-i / num_oscillators)
        cells += [(torch.sin(angle) >= threshold).float(), (torch.cos(angle) >= threshold).float()]
    return cells


def cpg_code(max_len: int, num_oscillators: int = 8, periods=None, threshold: float | None = None,
             check_distinct: bool | None = None, form: str = "halfcentre") -> torch.Tensor:
    """The CPG code table ``[max_len, 2 * num_oscillators]`` (float 0/1), row ``t`` coding position ``t``.

    ``threshold`` defaults to 0 (``"halfcentre"``) or 0.8 (``"lv2024"``); ``periods`` (integers >= 2) apply to
    ``"halfcentre"`` only; ``check_distinct`` (raise unless all ``max_len`` rows differ) defaults to True for
    ``"halfcentre"`` and False for ``"lv2024"``.
    """
    max_len = validate.positive_int("max_len", max_len)
    num_oscillators = validate.positive_int("num_oscillators", num_oscillators)
    validate.one_of("form", form, FORMS)
    lv = form == "lv2024"
    threshold = (LV2024_THRESHOLD if lv else 0.0) if threshold is None else threshold
    validate.in_range("threshold", threshold, 0.0, 1.0, hi_open=True)
    check_distinct = validate.boolean("check_distinct", not lv if check_distinct is None else check_distinct)
    if lv:
        if periods is not None:
            raise ValueError("periods apply to form='halfcentre' only; form='lv2024' has the frequencies "
                             "10000**(-i/num_oscillators)")
        cells = _lv2024(max_len, num_oscillators, threshold)
    else:
        periods = _periods(periods, num_oscillators)
        cells = _halfcentre(max_len, periods, threshold)
    code = torch.stack(cells, dim=1)
    if check_distinct and torch.unique(code, dim=0).shape[0] != max_len:
        what = f"periods {periods}" if not lv else "form='lv2024'"
        raise ValueError(
            f"CPG code with {what} and threshold {threshold} is not distinct for all {max_len} positions; raise "
            f"num_oscillators or use longer periods (or check_distinct=False)"
        )
    return code


def cpg(num_steps: int, batch_size: int = 1, num_oscillators: int = 8, periods=None,
        threshold: float | None = None, device=None, form: str = "halfcentre") -> torch.Tensor:
    """CPG spikes for positions ``0..num_steps-1``, shaped ``[T, B, 2 * num_oscillators]`` (see :func:`cpg_code`)."""
    num_steps = validate.positive_int("num_steps", num_steps)
    batch_size = validate.positive_int("batch_size", batch_size)
    code = cpg_code(num_steps, num_oscillators, periods, threshold, form=form)
    return code.to(device).unsqueeze(1).expand(-1, batch_size, -1).contiguous()
