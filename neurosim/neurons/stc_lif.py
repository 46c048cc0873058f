r"""STC-LIF: LIF with a learnable spatio-temporal (autaptic) circuit (after arXiv 2406.00405).

The neuron keeps neurosim's LIF update order and soft (subtractive) reset, with the fixed leak and the input
gain replaced by factors computed from the *previous* spikes :math:`s_{t-1}`:

.. math::
    z^\beta_t = G_\beta * s_{t-1},\qquad z^\gamma_t = G_\gamma * s_{t-1}

    \beta_t = \beta + \tanh(z^\beta_t)^+ (1 - \beta) - \tanh(z^\beta_t)^- \beta \quad\in[0, 1]

    \gamma_t = 1 + \tanh(z^\gamma_t) \quad\in(0, 2)

    m_t = \beta_t \odot m_{t-1} + \gamma_t \odot x_t - r_t \vartheta,\qquad r_t = H(m_{t-1} - \vartheta),
    \qquad s_t = H(m_t - \vartheta)

``G_beta`` (temporal circuit) and ``G_gamma`` (spatial circuit) are group convolutions that connect each neuron
to its neighbours: neighbouring channels inside a group and, for inputs with spatial dimensions, a
``kernel_size`` window around the same position. The factor for :math:`\beta_t` moves it towards 1 or 0
without ever leaving [0, 1] (no clamping needed), and both factors are exactly the plain LIF values
(:math:`\beta_t = \beta`, :math:`\gamma_t = 1`) when a circuit's output is zero. The circuits are
zero-initialised, so an untrained STC-LIF starts as the LIF it extends and learns its modulation.
The previous spikes feeding the circuits carry the surrogate gradient (the circuits learn through time); the
reset itself is detached, as in :class:`neurosim.LIF`.

Precision as for :class:`neurosim.LIF`: a 16-bit input runs with a float32 state, float64 with a float64 one,
spikes come back in the input's dtype; the circuits run in their weights' dtype.

With ``temporal=False, spatial=False`` the update is exactly :func:`neurosim.neurons.functional.lif_step`
with ``reset="subtract"`` (tested against ``neurosim.LIF(backend="snntorch")``).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .. import validate
from . import functional as F
from .lif import ChecksLoadedParameters, _as_param, check_learned_parameters, check_state
from .surrogate import Surrogate, make


class STCModulation(NamedTuple):
    """Per-step modulation factors (``None``: that path is disabled)."""

    beta: torch.Tensor | None
    gamma: torch.Tensor | None


def modulated_beta(beta: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    r""":math:`\beta + \tanh(z)^+(1-\beta) - \tanh(z)^-\beta`: in [0, 1] for beta in [0, 1], equal to beta at z = 0."""
    t = torch.tanh(z)
    return beta + t.clamp(min=0) * (1 - beta) + t.clamp(max=0) * beta


def stc_lif_step(x: torch.Tensor, state: F.LIFState, p: F.LIFParameters, mod: STCModulation):
    """One STC-LIF step with the modulation factors for this step; returns ``(spikes, new_state)``."""
    beta = p.beta.clamp(0, 1) if mod.beta is None else mod.beta
    inp = x if mod.gamma is None else mod.gamma * x
    r = F._reset_signal(state.mem, p)
    mem = beta * state.mem + inp - r * p.threshold
    return p.surrogate(mem - p.threshold), F.LIFState(mem)


def _group_conv(channels: int, groups: int, kernel_size: int, spatial_dims: int) -> nn.Module:
    if spatial_dims == 0:
        conv = nn.Conv1d(channels, channels, 1, groups=groups)
    else:
        cls = nn.Conv1d if spatial_dims == 1 else nn.Conv2d
        conv = cls(channels, channels, kernel_size, padding=kernel_size // 2, groups=groups)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class STCLIF(ChecksLoadedParameters):
    """Spatio-temporal-circuit LIF neuron layer; same ``[T, B, ...]`` interface as :class:`neurosim.LIF`.

    Args:
        channels: number of channels C (input ``[T, B, C]``, ``[T, B, C, L]`` or ``[T, B, C, H, W]``).
        spatial_dims: 0, 1 or 2 spatial dimensions after the channel axis.
        groups: channel groups of the circuits' group convolutions (must divide ``channels``); each neuron is
            connected to the ``channels / groups`` neighbouring channels of its group.
        kernel_size: odd spatial window of the circuits (ignored for ``spatial_dims=0``).
        temporal, spatial: enable the beta (temporal) and gamma (spatial) circuits.
        beta, threshold, surrogate, slope, learn_beta, learn_threshold, detach_reset: as for :class:`neurosim.LIF`
            (the reset is always the soft, subtractive one).

    The time loop is neurosim's own (the circuits depend on the previous step's spikes, which none of the
    wrapped libraries' neurons expose), so there is no ``backend`` choice.
    """

    is_spiking_neuron = True
    checks_finite_input = True  # forward checks x for NaN/inf (the energy meter need not read it: protocol.py)
    kind = "stc_lif"

    def __init__(self, channels: int, spatial_dims: int = 0, groups: int = 1, kernel_size: int = 3,
                 temporal: bool = True, spatial: bool = True, beta=0.9, threshold=1.0, surrogate="fast_sigmoid",
                 slope=None, learn_beta=False, learn_threshold=False, detach_reset=True):
        super().__init__()
        self.channels = validate.positive_int("channels", channels)
        self.spatial_dims = validate.positive_int("spatial_dims", spatial_dims, minimum=0)  # (1.7 was taken as 1)
        validate.one_of("spatial_dims", self.spatial_dims, (0, 1, 2))
        for name, flag in (("temporal", temporal), ("spatial", spatial), ("learn_beta", learn_beta),
                           ("learn_threshold", learn_threshold), ("detach_reset", detach_reset)):
            validate.boolean(name, flag)  # ("no" was taken as true)
        self.groups = validate.positive_int("groups", groups)
        if self.channels % self.groups:
            raise ValueError(f"groups must divide channels={self.channels}, got groups={self.groups}")
        self.kernel_size = validate.positive_int("kernel_size", kernel_size)
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (same-size output), got {self.kernel_size}")
        self.surrogate: Surrogate = make(surrogate, slope)
        self.detach_reset = bool(detach_reset)
        for name, value, learn in (("beta", beta, learn_beta), ("threshold", threshold, learn_threshold)):
            t = _as_param(name, value, learn)
            if isinstance(t, nn.Parameter):
                self.register_parameter(name, t)
            else:
                self.register_buffer(name, t)
        conv = (self.channels, self.groups, self.kernel_size, self.spatial_dims)
        self.temporal_circuit = _group_conv(*conv) if temporal else None
        self.spatial_circuit = _group_conv(*conv) if spatial else None

    @property
    def reset(self) -> str:
        """Always ``"subtract"`` (what the exporters read)."""
        return "subtract"

    @reset.setter
    def reset(self, value):
        if value != "subtract":
            raise ValueError(f"reset of an STCLIF is 'subtract' only (its step subtracts the threshold); got {value!r}")

    def params(self) -> F.LIFParameters:
        return F.LIFParameters(self.beta, self.threshold, "subtract", self.surrogate, self.detach_reset)

    def _circuit(self, conv: nn.Module, s: torch.Tensor) -> torch.Tensor:
        """The circuit runs in its weights' dtype; its output comes back in the state's."""
        z = s.to(conv.weight.dtype)
        z = conv(z) if self.spatial_dims in (1, 2) else conv(z.unsqueeze(-1)).squeeze(-1)
        return z.to(s.dtype)

    def modulation(self, prev_spikes: torch.Tensor, p: F.LIFParameters) -> STCModulation:
        """Factors for the next step from the previous spikes ``[B, C, ...]``."""
        beta = gamma = None
        if self.temporal_circuit is not None:
            beta = modulated_beta(p.beta.clamp(0, 1), self._circuit(self.temporal_circuit, prev_spikes))
        if self.spatial_circuit is not None:
            gamma = 1 + torch.tanh(self._circuit(self.spatial_circuit, prev_spikes))
        return STCModulation(beta, gamma)

    def forward(self, x: torch.Tensor, state=None, return_mem: bool = False, return_state: bool = False,
                return_modulation: bool = False):
        """Run over ``x`` ``[T, B, C, *spatial]``; extra outputs as for :class:`neurosim.LIF`.

        ``return_modulation`` also returns the per-step factors ``(beta [T, B, ...], gamma [T, B, ...])``
        (``None`` for a disabled path).
        """
        validate.finite("x", x)
        validate.rank_exactly("x", x, (3 + self.spatial_dims,), "[T, B, C" + ", *spatial" * (self.spatial_dims > 0) + "]")
        if x.shape[2] != self.channels:
            raise ValueError(f"x must have {self.channels} channels at dim 2 ([T, B, C, ...]), got shape {tuple(x.shape)}")
        p = self.params()
        check_learned_parameters(p)
        for name in ("beta", "threshold"):
            validate.neuron_param(name, getattr(p, name), x.shape[1:])
        dtype = x.dtype  # (the LIF layers' precision rule: a 16-bit input runs with a float32 state)
        x = x.to(F.state_dtype(dtype))
        if state is None:
            state = F.initial_state("lif", x.new_zeros(x.shape[1:]))
        else:  # (a NaN state ran on, silently; a CubaLIFState lost its current; the circuits need the full shape)
            check_state(state, F.LIFState, x.shape[1:])
            state = F.LIFState(state.mem.to(x.dtype).expand(x.shape[1:]))
        if x.shape[0]:
            spikes, mems, betas, gammas = [], [], [], []
            for x_t in x:
                prev = p.surrogate(state.mem - p.threshold)
                mod = self.modulation(prev, p)
                s, state = stc_lif_step(x_t, state, p, mod)
                spikes.append(s)
                mems.append(state.mem)
                betas.append(mod.beta)
                gammas.append(mod.gamma)
            spikes, mems = torch.stack(spikes), torch.stack(mems)
            mods = tuple(None if v[0] is None else torch.stack(v) for v in (betas, gammas))
        else:  # no time steps: empty outputs and the initial state, as neurosim.LIF gives
            spikes, mems, state = F.no_steps("lif", x, state)
            mods = tuple(None if c is None else x.new_zeros(x.shape) for c in (self.temporal_circuit,
                                                                               self.spatial_circuit))
        out = (spikes.to(dtype),)
        if return_mem:
            out += (mems,)
        if return_state:
            out += (state,)
        if return_modulation:
            out += (mods,)
        return out[0] if len(out) == 1 else out

    def extra_repr(self):
        return (f"channels={self.channels}, spatial_dims={self.spatial_dims}, groups={self.groups}, "
                f"kernel_size={self.kernel_size}, temporal={self.temporal_circuit is not None}, "
                f"spatial={self.spatial_circuit is not None}, surrogate={self.surrogate.name}({self.surrogate.slope:g})")
