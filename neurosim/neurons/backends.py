"""Neuron backends: who runs the time loop of :class:`neurosim.LIF` / :class:`neurosim.CubaLIF`.

Every backend implements the semantics of :mod:`neurosim.neurons.functional` and exposes

* ``check(kind, p)``: raise ``ValueError`` for a combination it cannot express exactly (never approximate);
* ``run(kind, p, x, state) -> (spikes, mem_trace, final_state)`` for ``x`` of shape ``[T, B, ...]`` (``T = 0``
  included: :func:`neurosim.neurons.functional.no_steps`).

=====================  ==========================  =============================================
backend                LIF                          CubaLIF
=====================  ==========================  =============================================
``"snntorch"``         all modes (``Leaky``)       all modes (``Synaptic``)
``"norse"``            ``reset="zero"`` with        not available: Norse's ``LIFCell`` resets
                       fast_sigmoid or sigmoid       before the next input and does not detach
                       (``LIFBoxCell``)              the reset, so it cannot match either mode
``"fused"``            all modes (Triton kernel on CUDA, reference path elsewhere)
``"torch"``            all modes (the pure PyTorch reference loop)
=====================  ==========================  =============================================

snnTorch detaches the reset from the graph, so ``detach_reset=False`` is only available on ``"fused"`` and
``"torch"``. Norse cannot express ``reset="subtract"`` (it subtracts the threshold *before* the next decay,
snnTorch after it) nor the arctan surrogate (Norse 1.1 has none), and needs ``beta < 1``.
"""
from __future__ import annotations

import importlib
import threading

import torch

from . import functional as F
from .. import validate

BACKENDS = ("snntorch", "norse", "fused", "torch")
_MODULES = {
    "snntorch": "neurosim.neurons.backends",
    "norse": "neurosim.neurons.backends",
    "fused": "neurosim.kernels.lif",
    "torch": "neurosim.neurons.backends",
}


def get(name: str):
    """Return the backend object for ``name`` (imported lazily: Triton and Norse only when used)."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}; got {name!r}")
    module = importlib.import_module(_MODULES[name])
    return module.BACKEND if name == "fused" else _LOCAL[name]


class TorchBackend:
    """The reference loop of :mod:`neurosim.neurons.functional`."""

    name = "torch"

    def check(self, kind, p):
        pass

    def run(self, kind, p, x, state=None):
        return F.run_sequence(kind, p, x, state)


_ONES: dict = {}
_EMPTY = torch.zeros(0)  # what a kept snnTorch neuron holds between runs (snnTorch's own initial membrane)


def _one(device) -> torch.Tensor:
    """A 0-d 1.0 on ``device``, made once: the factor snnTorch multiplies its spikes by. (Its own, made on the CPU,
    moved to a GPU at every run was a host-to-device copy, which waits for the stream, in every LIF call.)"""
    one = _ONES.get(device)
    if one is None:
        one = _ONES[device] = torch.ones((), device=device)
    return one


class SnnTorchBackend:
    """Steps ``snntorch.Leaky`` / ``snntorch.Synaptic`` over time."""

    name = "snntorch"

    def check(self, kind, p):
        if not p.detach_reset:
            raise ValueError(
                "backend='snntorch' always detaches the reset from the graph; detach_reset=False needs "
                "backend='fused' or 'torch'"
            )

    def __init__(self):
        self._local = threading.local()

    def _neuron(self, kind, p):
        """This thread's ``snntorch.Leaky`` / ``Synaptic`` for the kind, reset and surrogate, handed the layer's
        parameters for one run. One per thread: a neuron keeps its membrane and reset on itself between the lines of
        its forward, so one neuron run by two threads at once (a layer called from two threads, ``nn.DataParallel``'s
        replicas) mixed the runs. Kept, not built per run: building one costs about as much as a 4-step run on a
        GPU host (BENCHMARKS.md, "LIF call cost")."""
        import snntorch

        neurons = self._local.__dict__.setdefault("neurons", {})
        learned = tuple(isinstance(t, torch.nn.Parameter) for t in (p.beta, p.threshold, getattr(p, "alpha", None)))
        key = (kind, p.reset, p.surrogate, learned)  # (a Parameter cannot be replaced by a plain tensor in a module)
        neuron = neurons.get(key)
        if neuron is None:
            common = dict(threshold=1.0, spike_grad=p.surrogate.snntorch(), reset_mechanism=p.reset)
            neuron = neurons[key] = (snntorch.Leaky(beta=0.5, **common) if kind == "lif"
                                     else snntorch.Synaptic(alpha=0.5, beta=0.5, **common))
        # neurosim owns the (possibly learnable) parameters: hand snnTorch the very tensors, so gradients reach them.
        neuron.beta = p.beta
        neuron.threshold = p.threshold
        if kind == "cuba":
            neuron.alpha = p.alpha
        neuron.graded_spikes_factor = _one(p.beta.device)
        return neuron

    @staticmethod
    def _release(neuron):
        """Drop the last step's tensors the neuron keeps on itself (its membrane holds the run's autograd graph)."""
        for name in ("mem", "syn", "reset"):
            if name in neuron._buffers or name in neuron.__dict__:
                setattr(neuron, name, _EMPTY)

    def run(self, kind, p, x, state=None):
        if not x.shape[0]:
            return F.no_steps(kind, x, state)
        neuron = self._neuron(kind, p)
        try:
            return self._steps(neuron, kind, x, state)
        finally:
            self._release(neuron)

    @staticmethod
    def _steps(neuron, kind, x, state):
        state = F.initial_state(kind, x[0]) if state is None else state
        spikes, mems = [], []
        # (snnTorch replaces a state whose shape is not the input's by zeros: a broadcast one is expanded first)
        if kind == "lif":
            mem = state.mem.expand_as(x[0])
            for x_t in x:
                s, mem = neuron(x_t, mem)
                spikes.append(s)
                mems.append(mem)
            final = F.LIFState(mem)
        else:
            syn, mem = state.syn.expand_as(x[0]), state.mem.expand_as(x[0])
            for x_t in x:
                s, syn, mem = neuron(x_t, syn, mem)
                spikes.append(s)
                mems.append(mem)
            final = F.CubaLIFState(syn, mem)
        return torch.stack(spikes), torch.stack(mems), final


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.scale, None


NORSE_BETA = "needs beta < 1 (tau_mem_inv = 1 - beta must be > 0)"


class NorseBackend:
    r"""Steps Norse's ``LIFBoxCell`` with parameters mapped onto neurosim's semantics.

    With ``dt = 1`` Norse's Euler step ``v <- v + a (i - v)`` equals ``beta v + x`` for ``a = 1 - beta``
    (``tau_mem_inv = 1 - beta``) and input ``i = x / a``; its reset-to-``v_reset = 0`` applied right after the
    spike equals snnTorch's zero reset applied at the next step. The surrogate shapes map as
    fast_sigmoid(k) -> Norse ``"super"`` on a membrane scaled by ``k`` and sigmoid(k) -> Norse ``"tanh"`` with
    ``alpha = k/2``; the constant factor between Norse's surrogate and neurosim's (``1/k`` resp. ``k/4``) is
    applied to the gradient of the spike output, so gradients agree exactly.

    Equal in exact arithmetic, not in floating point: Norse's ``v + a (x / a - v)`` (on a membrane scaled by ``k``)
    rounds otherwise than ``beta v + x``, so a membrane that lands exactly on the threshold in snnTorch could land
    an ulp above it in Norse and fire, and the rounding carried on in Norse's state. So the values are snnTorch's:
    the membrane and its reset are :func:`neurosim.neurons.functional.lif_membrane`'s, the spikes
    ``mem > threshold`` (strict); Norse's cell, stepped each step from that membrane (after its reset), gives the
    spikes their gradient (its surrogate through its own Euler step; the spike value passes straight through).
    """

    name = "norse"

    def check(self, kind, p):
        if kind != "lif":
            raise ValueError(
                "backend='norse' does not provide CubaLIF: Norse's LIFCell resets the membrane before the next "
                "input (snnTorch's Synaptic zero-reset also drops that input) and does not detach the reset; "
                "use backend='snntorch', 'fused' or 'torch'"
            )
        if p.reset != "zero":
            raise ValueError(
                "backend='norse' supports reset='zero' only: Norse's subtractive reset removes the threshold "
                "before the next decay, snnTorch after it; use backend='snntorch', 'fused' or 'torch'"
            )
        if p.surrogate.name not in ("fast_sigmoid", "sigmoid"):
            raise ValueError(
                f"backend='norse' supports surrogate 'fast_sigmoid' or 'sigmoid' (Norse 1.1 has no arctan "
                f"surrogate); got {p.surrogate.name!r}"
            )
        if not p.detach_reset:
            raise ValueError("backend='norse' resets with a detached spike here; detach_reset=False needs 'fused'/'torch'")
        # (at every forward: a learnable beta can reach 1, a fixed one be loaded at 1; queued inside deferred checks)
        validate.refuse_if("backend='norse'", (p.beta >= 1).any(), NORSE_BETA)

    def run(self, kind, p, x, state=None):
        if not x.shape[0]:
            return F.no_steps(kind, x, state)
        from norse.torch import LIFBoxCell, LIFBoxParameters
        from norse.torch.functional.lif_box import LIFBoxFeedForwardState

        a = 1 - p.beta.clamp(0, 1)  # (> 0: check() refused beta >= 1)
        k = p.surrogate.slope
        if p.surrogate.name == "fast_sigmoid":
            scale, method, alpha, gfactor = k, "super", k, 1.0 / k
        else:
            scale, method, alpha, gfactor = 1.0, "tanh", k / 2, k / 4
        cell = LIFBoxCell(
            LIFBoxParameters(
                tau_mem_inv=a,
                v_leak=torch.zeros((), device=x.device, dtype=x.dtype),
                v_th=p.threshold * scale,
                v_reset=torch.zeros((), device=x.device, dtype=x.dtype),
                method=method,
                alpha=alpha,
            ),
            dt=1.0,
        )
        st = F.initial_state("lif", x[0]) if state is None else state
        fired = (st.mem > p.threshold).to(st.mem.dtype)
        spikes, mems = [], []
        for x_t in x:
            # Norse's voltage: the membrane after the zero reset of a spike (detached, as snnTorch's reset)
            z, _ = cell(x_t * scale / a, LIFBoxFeedForwardState(v=st.mem * scale * (1 - fired)))
            st = F.lif_membrane(x_t, st, p)
            fired = (st.mem > p.threshold).to(z.dtype)  # (this step's spikes, and the next step's reset)
            spikes.append(_ScaleGrad.apply(z + (fired - z).detach(), gfactor))
            mems.append(st.mem)
        return torch.stack(spikes), torch.stack(mems), st


_LOCAL = {"snntorch": SnnTorchBackend(), "norse": NorseBackend(), "torch": TorchBackend()}
