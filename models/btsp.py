r"""Behavioral-timescale synaptic plasticity (BTSP) applied to attention weights.

After Milstein et al., eLife 2021 (doi 10.7554/eLife.73046): a synapse carries an *eligibility trace* (ET) left
by recent presynaptic activity, a dendritic plateau delivers an *instructive signal* (IS), and the weight moves
by an amount set by the overlap of the two, towards a target: weak synapses are potentiated, strong ones
depressed. neurosim maps this onto attention, with query position ``i`` as the postsynaptic site (the plateau)
and key position ``j`` as the presynaptic input:

* presynaptic tag :math:`e_j = \sigma(w_e\cdot x_j + b_e)` and plateau :math:`p_i = \sigma(w_p\cdot x_i + b_p)`
  (one per head, learned);
* time-asymmetric overlap kernel over :math:`\Delta = i - j` (how many steps the input comes before the plateau),
  peaking at a lead :math:`\lambda \ge 0` (``lead``, 1 step by default):

  .. math::

     K(\Delta) = e^{-(\Delta - \lambda)/\tau_{ET}} \ (\Delta \ge \lambda), \qquad
     K(\Delta) = e^{-(\lambda - \Delta)/\tau_{IS}} \ (\Delta < \lambda),

  so :math:`K(\lambda) = 1` is the maximum: the largest change goes to inputs :math:`\lambda` steps *before* the
  plateau, as the seed states ("weight change is stronger for inputs that occur slightly before plateau
  events"). Further into the past the kernel falls with the long eligibility trace :math:`\tau_{ET}`; towards
  and after the plateau with the short instructive signal :math:`\tau_{IS}` (:math:`\tau_{ET} > \tau_{IS}` at
  initialisation, 8 vs 2 steps; both are learned and the order is not enforced in training). With
  :math:`\lambda = 0` this is the overlap of two instantaneous exponential traces, whose maximum is at
  coincidence (:math:`\Delta = 0`), not before the plateau. Example, :math:`\lambda = 1`, :math:`\tau_{ET} = 8`,
  :math:`\tau_{IS} = 2`: :math:`K(1) = 1`, :math:`K(2) = e^{-1/8} \approx 0.88`, :math:`K(0) = e^{-1/2} \approx
  0.61`, :math:`K(-1) = e^{-1} \approx 0.37`;
* signal overlap :math:`c_{ij} = p_i\,e_j\,K(i-j) \in [0, 1]`;
* bidirectional update of an attention weight :math:`a \in [0, 1]`:
  :math:`\Delta a = c\,(k_+ (1 - a) - k_- a)` with rates :math:`k_\pm = \tfrac12\sigma(\rho_\pm)`. The update is
  positive below the equilibrium :math:`a^* = k_+/(k_+ + k_-)` and negative above it; since
  :math:`c(k_+ + k_-) \le 1` the new weight stays in [0, 1] without clamping.

:func:`btsp_update` is the pure rule; :class:`BTSPPlasticity` holds the learned gates, time constants and rates
and is shared by the analog and the spiking BTSP attention.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from neurosim import validate
from neurosim.layers import MatMul
from neurosim.neurons.functional import state_dtype


DEFAULT_LEAD = 1.0


def asymmetric_kernel(n: int, tau_et: torch.Tensor, tau_is: torch.Tensor, lead: float = DEFAULT_LEAD) -> torch.Tensor:
    """``[..., n, n]`` kernel ``K[i, j]`` over ``d = i - j``, peaking at ``d = lead``:
    ``exp(-(d - lead)/tau_et)`` for ``d >= lead``, ``exp(-(lead - d)/tau_is)`` for ``d < lead``.

    ``tau_et``/``tau_is`` are tensors broadcastable to the leading dimensions (e.g. ``[heads, 1, 1]``);
    ``lead`` >= 0 steps (0: the maximum at ``j = i``).
    """
    lead = validate.non_negative_float("lead", lead)
    # (positions as integers and the exponent in float32 at least: bfloat16 holds whole numbers only up to 256)
    work = state_dtype(tau_et.dtype)
    idx = torch.arange(n, device=tau_et.device)
    shift = (idx[:, None] - idx[None, :]).to(work) - lead                # (i - j) - lead
    past = torch.exp(-shift.clamp(min=0) / tau_et.to(work))
    near = torch.exp(shift.clamp(max=0) / tau_is.to(work))
    return torch.where(shift >= 0, past, near).to(tau_et.dtype)


def btsp_update(weights: torch.Tensor, overlap: torch.Tensor, k_plus: torch.Tensor, k_minus: torch.Tensor) -> torch.Tensor:
    r"""The bidirectional BTSP change :math:`\Delta a = c\,(k_+(1-a) - k_- a)` (broadcasting)."""
    return overlap * (k_plus * (1 - weights) - k_minus * weights)


class PlasticityStats(NamedTuple):
    """What one plastic step did (detached): mean |delta a|, mean total-variation distance per row between the
    attention before and after plasticity, and the fractions of weights potentiated / depressed."""

    mean_abs_change: float
    mean_row_tv: float
    potentiated: float
    depressed: float


class BTSPPlasticity(nn.Module):
    """Learned ET/IS gates, asymmetric time constants and rates of the BTSP rule, per head; ``lead`` (fixed, not
    learned) is where the time kernel peaks, in steps before the plateau (see the module docstring).

    ``forward(attn, x, renormalize)``: ``attn`` ``[M, heads, n, n]`` in [0, 1], ``x`` ``[M, n, dim]`` the tokens
    the signals are read from; returns the plastic weights (rows renormalised to sum 1 when ``renormalize``).
    With ``record=True`` the last call's :class:`PlasticityStats` is kept in ``last_stats`` (all zero when the
    rule is switched off, ``enabled=False``: that call changed nothing); a call with ``record=False`` sets it to
    None.
    """

    def __init__(self, dim: int, heads: int, tau_et: float = 8.0, tau_is: float = 2.0, lead: float = DEFAULT_LEAD):
        super().__init__()
        validate.positive_float("tau_et", tau_et)
        validate.positive_float("tau_is", tau_is)
        self.lead = validate.non_negative_float("lead", lead)
        self.heads = heads
        self.et_gate = nn.Linear(dim, heads)
        self.is_gate = nn.Linear(dim, heads)
        # softplus^-1(tau) so that the time constants start at the given values and stay positive
        self.raw_tau_et = nn.Parameter(torch.full((heads,), float(tau_et)).expm1().log())
        self.raw_tau_is = nn.Parameter(torch.full((heads,), float(tau_is)).expm1().log())
        self.rho_plus = nn.Parameter(torch.zeros(heads))
        self.rho_minus = nn.Parameter(torch.zeros(heads))
        self.outer = MatMul()
        self.enabled = True
        self.record = False
        self.last_stats: PlasticityStats | None = None

    def time_constants(self) -> tuple[torch.Tensor, torch.Tensor]:
        return F.softplus(self.raw_tau_et), F.softplus(self.raw_tau_is)

    def rates(self) -> tuple[torch.Tensor, torch.Tensor]:
        return 0.5 * torch.sigmoid(self.rho_plus), 0.5 * torch.sigmoid(self.rho_minus)

    def overlap(self, x: torch.Tensor) -> torch.Tensor:
        """Signal overlap ``c`` ``[M, heads, n, n]`` from tokens ``x`` ``[M, n, dim]``."""
        n = x.shape[-2]
        plateau = torch.sigmoid(self.is_gate(x)).transpose(-1, -2).unsqueeze(-1)   # [M, heads, n, 1]
        tag = torch.sigmoid(self.et_gate(x)).transpose(-1, -2).unsqueeze(-2)       # [M, heads, 1, n]
        tau_et, tau_is = self.time_constants()
        kernel = asymmetric_kernel(n, tau_et[:, None, None], tau_is[:, None, None], self.lead)
        return self.outer(plateau, tag) * kernel

    def extra_repr(self) -> str:
        return f"heads={self.heads}, lead={self.lead:g}"

    def forward(self, attn: torch.Tensor, x: torch.Tensor, renormalize: bool = True) -> torch.Tensor:
        # every call replaces last_stats: this call's numbers when recording (all zero when the rule is switched
        # off: it changed nothing), None otherwise, so that no reader ever sees an earlier call's numbers
        self.last_stats = None
        if not self.enabled:
            if self.record:
                self.last_stats = PlasticityStats(0.0, 0.0, 0.0, 0.0)
            return attn
        k_plus, k_minus = self.rates()
        delta = btsp_update(attn, self.overlap(x), k_plus[:, None, None], k_minus[:, None, None])
        new = attn + delta
        if renormalize:
            new = new / new.sum(-1, keepdim=True)
        if self.record:
            with torch.no_grad():
                self.last_stats = PlasticityStats(
                    float(delta.abs().mean()), float(0.5 * (new - attn).abs().sum(-1).mean()),
                    float((delta > 0).float().mean()), float((delta < 0).float().mean()))
        return new
