r"""Pure functional LIF dynamics: ``params, state, input -> spikes, state``.

This is neurosim's definition of the neuron semantics (snnTorch 1.0's ``Leaky``/``Synaptic`` update order,
strict ``mem > threshold``); every backend must reproduce it. With input current :math:`x_t`, the reset
signal is computed from the *previous* membrane, :math:`r_t = H(m_{t-1} - \vartheta)` (detached from the
graph unless ``detach_reset=False``), and

LIF (``reset="subtract"``):  :math:`m_t = \beta m_{t-1} + x_t - r_t \vartheta`

LIF (``reset="zero"``):      :math:`m_t = \beta (1 - r_t) m_{t-1} + x_t`

CubaLIF: :math:`i_t = \alpha i_{t-1} + x_t`, then ``subtract``: :math:`m_t = \beta m_{t-1} + i_t - r_t\vartheta`,
``zero``: :math:`m_t = (1 - r_t)(\beta m_{t-1} + i_t)` (snnTorch's ``Synaptic`` discards that step's input too).

Spikes :math:`s_t = H(m_t - \vartheta)` with a surrogate gradient. ``beta`` and ``alpha`` are clamped to
[0, 1] inside the step, as snnTorch does, so a learnable decay cannot leave the stable range (a NaN stays NaN, on
every backend; the layers refuse a learnable one that became NaN/inf:
:func:`neurosim.neurons.lif.check_learned_parameters`).
The reported membrane trace is :math:`m_t` (before the reset that the next step applies).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .surrogate import Surrogate


class LIFParameters(NamedTuple):
    beta: torch.Tensor
    threshold: torch.Tensor
    reset: str = "subtract"
    surrogate: Surrogate = Surrogate()
    detach_reset: bool = True


class CubaLIFParameters(NamedTuple):
    alpha: torch.Tensor
    beta: torch.Tensor
    threshold: torch.Tensor
    reset: str = "subtract"
    surrogate: Surrogate = Surrogate()
    detach_reset: bool = True


class LIFState(NamedTuple):
    mem: torch.Tensor


class CubaLIFState(NamedTuple):
    syn: torch.Tensor
    mem: torch.Tensor


def _reset_signal(mem: torch.Tensor, p) -> torch.Tensor:
    r = (mem > p.threshold).to(mem.dtype) if p.detach_reset else p.surrogate(mem - p.threshold)
    return r


def lif_membrane(x: torch.Tensor, state: LIFState, p: LIFParameters) -> LIFState:
    """The state after one LIF step (its spikes are ``H(mem - threshold)``: :func:`lif_step`)."""
    beta = p.beta.clamp(0, 1)
    r = _reset_signal(state.mem, p)
    if p.reset == "subtract":
        mem = beta * state.mem + x - r * p.threshold
    else:
        mem = beta * (1 - r) * state.mem + x
    return LIFState(mem)


def lif_step(x: torch.Tensor, state: LIFState, p: LIFParameters):
    """One LIF step; returns ``(spikes, new_state)``."""
    state = lif_membrane(x, state, p)
    return p.surrogate(state.mem - p.threshold), state


def cuba_lif_step(x: torch.Tensor, state: CubaLIFState, p: CubaLIFParameters):
    """One current-based LIF step; returns ``(spikes, new_state)``."""
    beta, alpha = p.beta.clamp(0, 1), p.alpha.clamp(0, 1)
    r = _reset_signal(state.mem, p)
    syn = alpha * state.syn + x
    if p.reset == "subtract":
        mem = beta * state.mem + syn - r * p.threshold
    else:
        mem = (1 - r) * (beta * state.mem + syn)
    return p.surrogate(mem - p.threshold), CubaLIFState(syn, mem)


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a neuron integrates an input of ``dtype`` in, on every backend: float32 for bfloat16 and float16
    (a 16-bit membrane loses small inputs), the input's own for float32 and float64."""
    return torch.promote_types(dtype, torch.float32)


def initial_state(kind: str, like: torch.Tensor):
    z = torch.zeros_like(like)
    return LIFState(z) if kind == "lif" else CubaLIFState(z, z.clone())


def no_steps(kind: str, x: torch.Tensor, state=None):
    """What a run over ``x`` with no time steps (``T = 0``) returns, on every backend: empty spikes and membrane
    trace (``[0, B, ...]``) and the initial state (zeros, or ``state`` broadcast to the neuron shape ``x.shape[1:]``,
    the shape a final state has after any step)."""
    neurons = x.shape[1:]
    state = initial_state(kind, x.new_zeros(neurons)) if state is None else type(state)(*(s.expand(neurons)
                                                                                          for s in state))
    return x.new_zeros(x.shape), x.new_zeros(x.shape, dtype=state.mem.dtype), state


def run_sequence(kind: str, p, x: torch.Tensor, state=None):
    """Step through ``x`` of shape ``[T, B, ...]``; returns ``(spikes, mem_trace, final_state)``."""
    if not x.shape[0]:
        return no_steps(kind, x, state)
    step = lif_step if kind == "lif" else cuba_lif_step
    state = initial_state(kind, x[0]) if state is None else state
    spikes, mems = [], []
    for x_t in x:
        s, state = step(x_t, state, p)
        spikes.append(s)
        mems.append(state.mem)
    return torch.stack(spikes), torch.stack(mems), state
