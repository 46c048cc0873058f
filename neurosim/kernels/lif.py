"""``backend="fused"``: LIF / CubaLIF with the whole time loop in one Triton kernel (forward and backward).

Three ways to run, same results:

* CUDA tensor and Triton importable: the kernels of :mod:`neurosim.kernels.triton_lif`, compiled.
* ``interpret=True`` (or ``NEUROSIM_TRITON_INTERPRET=1``) on CPU tensors: the *same kernel code* run by Triton's
  interpreter (slow; used by the test suite to check the kernels on machines without a GPU).
* otherwise (no CUDA, no Triton, float64 input, empty input): the reference loop of
  :mod:`neurosim.neurons.functional`, run with a float32 state.

The state is kept in float32 whatever the input dtype (float32, bfloat16 or float16); spikes come back in the
input's dtype, the membrane trace and the final state in float32. ``beta``/``alpha``/``threshold`` may be scalars
or tensors broadcastable to the neuron shape ``x.shape[1:]``; their gradients are per-neuron partials reduced here.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .. import spike_tally, validate
from . import runtime
from ..neurons import functional as F
from ..neurons.surrogate import SURROGATES

_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class _Cfg(NamedTuple):
    kind: str
    reset: str
    surrogate: str
    slope: float
    detach: bool
    need_mem: bool
    interpret: bool


def _check_device(name, value: torch.Tensor, x: torch.Tensor):
    """The kernels read parameters and state through pointers on ``x``'s device: anything else is an error
    (the torch backends would broadcast a CPU scalar; the kernel would fail inside Triton)."""
    if value.device != x.device:
        raise ValueError(f"{name} is on {value.device} but the input x is on {x.device}: the fused backend needs "
                         f"both on one device (move the layer with .to({str(x.device)!r}))")


def _flat_param(name, value: torch.Tensor, neuron_shape):
    """A parameter as a float32 vector of 1 or N elements (N = neurons of one time step)."""
    validate.neuron_param(name, value, neuron_shape)
    if value.numel() == 1:
        return value.detach().reshape(1).float().contiguous()
    return value.detach().float().expand(neuron_shape).contiguous().reshape(-1)


def _param_grad(partial, param, neuron_shape, clamp):
    """Reduce per-neuron partials to ``param``'s shape; ``clamp``: through ``param.clamp(0, 1)``."""
    if partial is None:
        return None
    partial = partial.double()  # the per-neuron partials often cancel: sum them in float64
    if param.numel() == 1:
        g = partial.sum().reshape(param.shape)
    else:
        g = partial.reshape(neuron_shape).sum_to_size(param.shape)
    if clamp:
        g = g * ((param >= 0) & (param <= 1)).to(g.dtype)
    return g.to(param.dtype)


class _FusedFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, mem0, syn0, beta, threshold, alpha, bad, count, cfg: _Cfg):
        from . import triton_lif as K

        T = x.shape[0]
        neuron_shape = x.shape[1:]
        N = x[0].numel()
        xf = x.contiguous().reshape(T, N)
        cuba = cfg.kind == "cuba"
        b = _flat_param("beta", beta, neuron_shape)
        th = _flat_param("threshold", threshold, neuron_shape)
        a = _flat_param("alpha", alpha, neuron_shape) if cuba else None
        m0 = None if mem0 is None else mem0.detach().float().expand(neuron_shape).contiguous().reshape(N)
        i0 = None
        if cuba and mem0 is not None:
            i0 = syn0.detach().float().expand(neuron_shape).contiguous().reshape(N)
        needs_grad = any(ctx.needs_input_grad[:6])
        spikes, trace, mT, iT, ck, launch_cfg = K.launch_forward(
            xf, m0, i0, b, th, a, cuba=cuba, zero=cfg.reset == "zero", write_trace=cfg.need_mem,
            write_ck=needs_grad, bad=bad, count=count, interpret=cfg.interpret,
        )
        ctx.cfg = cfg
        ctx.launch_cfg = launch_cfg
        ctx.neuron_shape = neuron_shape
        ctx.set_materialize_grads(False)
        if needs_grad:
            ckm, cki = ck
            ctx.save_for_backward(xf, ckm, cki, b, th, a, beta, threshold, alpha)
        empty = x.new_empty(0, dtype=torch.float32)
        trace = empty if trace is None else trace.reshape(x.shape)
        iT = empty if iT is None else iT.reshape(neuron_shape)
        return spikes.reshape(x.shape), trace, mT.reshape(neuron_shape), iT

    @staticmethod
    def backward(ctx, g_spikes, g_trace, g_mT, g_iT):
        from . import triton_lif as K

        cfg = ctx.cfg
        xf, ckm, cki, b, th, a, beta, threshold, alpha = ctx.saved_tensors
        T, N = xf.shape
        cuba = cfg.kind == "cuba"
        g_spikes = torch.zeros_like(xf) if g_spikes is None else g_spikes.contiguous().reshape(T, N)
        if g_trace is not None:
            g_trace = g_trace.float().contiguous().reshape(T, N) if g_trace.numel() else None
        if g_mT is not None:
            g_mT = g_mT.float().contiguous().reshape(N)
        if g_iT is not None:
            g_iT = g_iT.float().contiguous().reshape(N) if (cuba and g_iT.numel()) else None
        need = ctx.needs_input_grad
        gx, gm0, gi0, gb, gth, ga = K.launch_backward(
            xf, g_spikes, g_trace, g_mT, g_iT, (ckm, cki), b, th, a, cuba=cuba, zero=cfg.reset == "zero",
            detach=cfg.detach, surrogate=cfg.surrogate, slope=cfg.slope, learn_beta=need[3], learn_th=need[4],
            learn_alpha=cuba and need[5], cfg=ctx.launch_cfg, interpret=cfg.interpret,
        )
        shape = ctx.neuron_shape
        g_mem0 = gm0.reshape(shape) if need[1] else None
        g_syn0 = gi0.reshape(shape) if (cuba and need[2]) else None
        return (
            gx.reshape((T,) + tuple(shape)),
            g_mem0,
            g_syn0,
            _param_grad(gb, beta, shape, clamp=True),
            _param_grad(gth, threshold, shape, clamp=False),
            _param_grad(ga, alpha, shape, clamp=True) if cuba else None,
            None,
            None,
            None,
        )


def _use_interpreter(interpret) -> bool:
    return runtime.interpreter_requested() if interpret is None else bool(interpret)


if runtime.interpreter_requested():
    runtime.request_interpreter()


class FusedBackend:
    """The fused Triton backend (see the module docstring)."""

    name = "fused"

    def check(self, kind, p):
        if kind not in ("lif", "cuba"):
            raise ValueError(f"kind must be 'lif' or 'cuba'; got {kind!r}")
        if p.reset not in ("subtract", "zero"):
            raise ValueError(f"reset must be 'subtract' or 'zero'; got {p.reset!r}")
        if p.surrogate.name not in SURROGATES:
            raise ValueError(f"surrogate must be one of {SURROGATES}; got {p.surrogate.name!r}")

    def path(self, x: torch.Tensor, interpret=None) -> str:
        """Which implementation :meth:`run` uses for ``x``: ``"triton"``, ``"interpreter"`` or ``"reference"``."""
        if x.dtype not in _KERNEL_DTYPES or x.numel() == 0 or not runtime.triton_available():
            return "reference"
        if x.is_cuda:
            return "triton"
        if x.device.type == "cpu" and _use_interpreter(interpret):
            return "interpreter"
        return "reference"

    def run(self, kind, p, x, state=None, need_mem: bool = True, interpret=None, check_finite: bool = True):
        """``(spikes, mem_trace, final_state)``; ``need_mem=False`` returns ``None`` for the trace and skips
        writing it. ``interpret=True`` runs the Triton kernels in Triton's interpreter on CPU tensors.
        ``check_finite``: raise ValueError when ``x`` holds NaN/inf (the kernel flags them as it reads ``x``;
        one device->host read of the flag, or queued inside :func:`neurosim.validate.deferred_checks`).
        Inside an energy meter the kernel also counts the spikes it writes (:mod:`neurosim.spike_tally`)."""
        self.check(kind, p)
        for name in ("beta", "threshold") + (("alpha",) if kind == "cuba" else ()):
            validate.neuron_param(name, getattr(p, name), x.shape[1:])
            _check_device(name, getattr(p, name), x)
        if state is not None:
            validate.neuron_state(state, x.shape[1:])
            for name, s in zip(state._fields, state):
                _check_device(f"state.{name}", s, x)
        path = self.path(x, interpret)
        if path == "reference":
            if check_finite:
                validate.finite("x", x)
            return _reference(kind, p, x, state, need_mem)
        cfg = _Cfg(kind, p.reset, p.surrogate.name, float(p.surrogate.slope), bool(p.detach_reset),
                   bool(need_mem), path == "interpreter")
        mem0 = syn0 = None
        if state is not None:
            mem0 = state.mem
            syn0 = state.syn if kind == "cuba" else None
        alpha = p.alpha if kind == "cuba" else None
        bad = torch.zeros(1, dtype=torch.int32, device=x.device) if check_finite else None
        count = spike_tally.row(x)  # an energy meter's row for the spike count (None: not metering)
        spikes, trace, mT, iT = _FusedFn.apply(x, mem0, syn0, p.beta, p.threshold, alpha, bad, count, cfg)
        spike_tally.counted(count, spikes)
        if bad is not None:
            validate.flag("x", x, bad)
        final = F.CubaLIFState(iT, mT) if kind == "cuba" else F.LIFState(mT)
        return spikes, (trace if need_mem else None), final


def _reference(kind, p, x, state, need_mem):
    """The functional loop with a float32 state (what the kernels compute), spikes cast to x's dtype."""
    x32 = x.to(F.state_dtype(x.dtype))
    if state is not None:
        state = type(state)(*(s.to(x32.dtype) for s in state))
    spikes, mem, final = F.run_sequence(kind, p, x32, state)
    return spikes.to(x.dtype), (mem if need_mem else None), final


BACKEND = FusedBackend()
