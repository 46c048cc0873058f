"""``neurosim.LIF`` and ``neurosim.CubaLIF``: spiking neuron layers with interchangeable backends.

Both take input current shaped ``[T, B, ...]`` (time leading) and return spikes of the same shape; the
dynamics are those of :mod:`neurosim.neurons.functional`, whichever ``backend`` runs them.

Precision, the same on every backend: a bfloat16 or float16 input is integrated with a float32 state (a 16-bit
membrane loses small inputs: in bfloat16, ``0.9 + 0.001`` is ``0.9``), float32 and float64 inputs with a state of
their own dtype. Spikes come back in the input's dtype; the membrane trace and the final state in the state's.
A given ``state`` is converted to that dtype.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .. import validate
from . import backends as B
from . import functional as F
from .surrogate import Surrogate, make

RESETS = ("subtract", "zero")
# the range (lo, hi, lo_open) a neuron parameter is made in, and a fixed one is loaded in (check_loaded)
RANGES = {"threshold": (0.0, math.inf, True), "beta": (0.0, 1.0, False), "alpha": (0.0, 1.0, False)}


def _as_param(name, value, learn):
    """The layer's own float32 copy of a parameter's initial ``value`` (a number or a tensor), checked to lie in
    its range (:data:`RANGES`); an ``nn.Parameter`` when ``learn`` (``learn_{name}``, a bool). A tensor is
    copied and detached: one that requires grad (say an ``nn.Parameter`` shared with another layer) gives the
    initial value only; training it is ``learn_{name}=True``."""
    validate.boolean(f"learn_{name}", learn)
    lo, hi, lo_open = RANGES[name]
    validate.in_range(name, value, lo, hi, lo_open=lo_open)
    t = torch.as_tensor(value.detach() if torch.is_tensor(value) else value, dtype=torch.float32).clone()
    return nn.Parameter(t) if learn else t


def check_state(state, kind: type, neuron_shape=None) -> None:
    """A given initial state is a ``kind`` (LIFState / CubaLIFState, as ``return_state=True`` gives) of finite
    tensors; with ``neuron_shape``, each broadcasts to it (the fused kernel checks shapes itself)."""
    if not isinstance(state, kind):
        raise ValueError(f"state must be a {kind.__name__} (as return_state=True gives), got {type(state).__name__}")
    for name, s in zip(state._fields, state):
        validate.finite(f"state.{name}", s)
    if neuron_shape is not None:
        validate.neuron_state(state, neuron_shape)


def check_learned_parameters(p) -> None:
    """What training can do to a learnable parameter that no backend can run, refused at every forward of a layer
    that learns it (a small read each; queued inside deferred checks). Not cached by the tensor's version: a fused
    optimizer step and ``.data`` updates leave that unchanged. Fixed parameters are checked when they are made and
    when they are loaded (:func:`check_loaded`).

    * threshold: > 0 at construction, but training can take it to 0 or below (every neuron then fires on silence).
    * beta, alpha (``p.alpha`` where ``p`` has one): in [0, 1] at construction; training can move them outside,
      where every backend clamps them into [0, 1] (snnTorch's rule, :mod:`neurosim.neurons.functional`), but not to
      NaN/inf (a NaN has no clamped value: the torch backends ran on with a NaN membrane and no spikes, the fused
      kernel took it as 0).

    Outside deferred checks the learned parameters are read together, once (one host-device synchronisation a
    forward, not one per parameter), and checked one by one, for the error, only when something is wrong."""
    learned = [(name, value) for name, value in (("threshold", p.threshold), ("beta", p.beta),
                                                  ("alpha", getattr(p, "alpha", None)))
               if value is not None and value.requires_grad]
    if not learned:
        return
    if len(learned) > 1 and validate.active_checks() is None:
        bad = [validate.not_positive(v).any() if name == "threshold" else (~torch.isfinite(v.detach())).any()
               for name, v in learned]
        if not bool(torch.stack(bad).any()):
            return
    for name, value in learned:
        if name == "threshold":
            validate.positive(name, value)
        else:
            validate.finite(name, value)


def check_loaded(layer: nn.Module, state_dict: dict, prefix: str = "") -> None:
    """Refuse the values ``state_dict`` holds (keys ``prefix + name``) for a neuron layer's parameters that the
    layer could not run, naming the key: for a fixed one (a buffer, not checked at every forward), a value outside
    the range it is made in (:data:`RANGES`, NaN/inf included); for a learned one, what
    :func:`check_learned_parameters` refuses (NaN/inf, a threshold not > 0; a beta or alpha outside [0, 1] runs
    clamped). One read of each value, when loaded."""
    for name, (lo, hi, lo_open) in RANGES.items():
        value, own = state_dict.get(prefix + name), getattr(layer, name, None)
        if not (torch.is_tensor(value) and torch.is_tensor(own)):
            continue
        if isinstance(own, nn.Parameter) and name != "threshold":
            validate.finite_after_flag(prefix + name, value)
        else:
            validate.in_range(prefix + name, value, lo, hi, lo_open=lo_open)


def check_loadable(model: nn.Module, state_dict: dict) -> None:
    """:func:`check_loaded` for every neuron layer of ``model`` at once, before anything of ``state_dict`` is
    loaded (``load_state_dict`` checks each layer as it comes to it, after the modules before it are loaded)."""
    for name, layer in model.named_modules():
        if isinstance(layer, ChecksLoadedParameters):
            check_loaded(layer, state_dict, name + "." if name else "")


class ChecksLoadedParameters(nn.Module):
    """A neuron layer whose ``load_state_dict`` refuses parameter values it could not run (:func:`check_loaded`)
    before loading any of its own: a NaN beta ran on silently with a NaN membrane and no spikes."""

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        try:
            check_loaded(self, state_dict, prefix)
        except ValueError as err:
            where = f"the module {prefix[:-1]!r} keeps its previous values; the modules before it were loaded" \
                if prefix else "this layer keeps its previous values"
            raise ValueError(f"{err} (refused by load_state_dict: {where})") from None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class _SpikingNeuron(ChecksLoadedParameters):
    kind = "lif"
    # protocol read by neurosim.energy (and anything else that must find the neurons of a network)
    is_spiking_neuron = True
    checks_finite_input = True  # forward checks x for NaN/inf (the energy meter need not read it: protocol.py)

    def __init__(self, threshold, reset, surrogate, slope, learn_threshold, backend, detach_reset):
        super().__init__()
        validate.one_of("backend", backend, B.BACKENDS)
        self.reset = reset
        self.surrogate: Surrogate = make(surrogate, slope)
        self.detach_reset = validate.boolean("detach_reset", detach_reset)  # ("False" was taken as true)
        self._register("threshold", _as_param("threshold", threshold, learn_threshold))
        self._backend_name = backend

    def __setstate__(self, state):
        # (a layer pickled before reset became a checked property kept it as a plain attribute; one pickled while
        # the snnTorch backend kept a neuron in the layer has an empty _cache)
        if "reset" in state and "_reset" not in state:
            state["_reset"] = state.pop("reset")
        state.pop("_cache", None)
        super().__setstate__(state)

    def _register(self, name, t):
        if isinstance(t, nn.Parameter):
            self.register_parameter(name, t)
        else:
            self.register_buffer(name, t)

    @property
    def reset(self) -> str:
        """``"subtract"`` or ``"zero"``; checked when set (any other value would run as a zero reset on some
        backends, silently)."""
        return self._reset

    @reset.setter
    def reset(self, value: str):
        validate.one_of("reset", value, RESETS)
        self._reset = value

    @property
    def backend(self) -> str:
        return self._backend_name

    @backend.setter
    def backend(self, name: str):
        validate.one_of("backend", name, B.BACKENDS)
        B.get(name).check(self.kind, self.params())
        self._backend_name = name

    def params(self):  # pragma: no cover - defined by subclasses
        raise NotImplementedError

    def forward(self, x: torch.Tensor, state=None, return_mem: bool = False, return_state: bool = False):
        """Run the neuron over ``x`` of shape ``[T, B, ...]``.

        Returns spikes ``[T, B, ...]``; with ``return_mem`` also the membrane trace, with ``return_state``
        also the final state (to continue a stream with ``state=``).
        """
        validate.rank_at_least("x", x, 2, "[T, B, ...]")
        p = self.params()
        check_learned_parameters(p)
        backend = B.get(self._backend_name)
        backend.check(self.kind, p)
        if state is not None:  # (every backend: snnTorch's would drop a state of another shape, silently)
            check_state(state, F.LIFState if self.kind == "lif" else F.CubaLIFState)
        if backend.name != "fused":  # the fused backend checks x, the parameters' and state's shapes as it runs
            validate.finite("x", x)
            for name in ("beta", "threshold") + (("alpha",) if self.kind == "cuba" else ()):
                validate.neuron_param(name, getattr(p, name), x.shape[1:])
            if state is not None:
                validate.neuron_state(state, x.shape[1:])
        if backend.name == "fused":  # writes the membrane trace only when asked for; reads 16-bit x itself
            spikes, mem, final = backend.run(self.kind, p, x, state, need_mem=return_mem)
        else:
            work = F.state_dtype(x.dtype)
            xw = x if x.dtype == work else x.to(work)  # (a no-op .to still costs a few us a call)
            if state is not None:
                state = type(state)(*(s.to(work) for s in state))
            spikes, mem, final = backend.run(self.kind, p, xw, state)
            if spikes.dtype != x.dtype:  # (snnTorch gives float32 spikes for float64 input)
                spikes = spikes.to(x.dtype)
        out = (spikes,)
        if return_mem:
            out += (mem,)
        if return_state:
            out += (final,)
        return out[0] if len(out) == 1 else out

    def extra_repr(self):
        return f"reset={self.reset!r}, surrogate={self.surrogate.name}({self.surrogate.slope:g}), backend={self.backend!r}"


class LIF(_SpikingNeuron):
    r"""Leaky integrate-and-fire neuron layer.

    .. math::
        m_t = \beta m_{t-1} + x_t - r_t \vartheta \;(\text{subtract}) \quad\text{or}\quad
        m_t = \beta (1 - r_t) m_{t-1} + x_t \;(\text{zero}),\qquad s_t = H(m_t - \vartheta)

    with :math:`r_t = H(m_{t-1} - \vartheta)` (snnTorch's update order; see :mod:`neurosim.neurons.functional`).

    Args:
        beta: membrane decay in [0, 1] (scalar or a tensor broadcastable to the neuron shape).
        threshold: firing threshold (> 0).
        reset: ``"subtract"`` or ``"zero"``.
        surrogate: ``"fast_sigmoid"``, ``"arctan"``, ``"sigmoid"`` or a :class:`Surrogate`; ``slope`` its k.
        learn_beta, learn_threshold: make the parameter trainable (True or False).
        backend: ``"snntorch"``, ``"norse"``, ``"fused"`` or ``"torch"`` (see :mod:`neurosim.neurons.backends`
            for which modes each supports; an unsupported combination raises ``ValueError``).
        detach_reset: cut the reset out of the gradient (snnTorch's behaviour, default; True or False).

    A tensor given as ``beta`` or ``threshold`` is copied as the initial value: the layer keeps its own parameter
    (or buffer), not tied to the tensor given, even one that requires grad (say an ``nn.Parameter`` of another
    layer); ``learn_beta`` / ``learn_threshold`` make the layer's copy trainable.
    """

    kind = "lif"

    def __init__(self, beta=0.9, threshold=1.0, reset="subtract", surrogate="fast_sigmoid", slope=None,
                 learn_beta=False, learn_threshold=False, backend="snntorch", detach_reset=True):
        super().__init__(threshold, reset, surrogate, slope, learn_threshold, backend, detach_reset)
        self._register("beta", _as_param("beta", beta, learn_beta))
        B.get(backend).check(self.kind, self.params())

    def params(self) -> F.LIFParameters:
        return F.LIFParameters(self.beta, self.threshold, self.reset, self.surrogate, self.detach_reset)


class CubaLIF(_SpikingNeuron):
    r"""Current-based LIF: a synaptic current with decay ``alpha`` feeds the membrane.

    .. math::
        i_t = \alpha i_{t-1} + x_t,\quad
        m_t = \beta m_{t-1} + i_t - r_t\vartheta \;(\text{subtract}) \quad\text{or}\quad
        m_t = (1 - r_t)(\beta m_{t-1} + i_t) \;(\text{zero}),\qquad s_t = H(m_t - \vartheta)

    Same arguments as :class:`LIF` plus ``alpha`` in [0, 1] and ``learn_alpha`` (True or False; a tensor ``alpha``
    is copied as the initial value, as ``beta`` is).
    """

    kind = "cuba"

    def __init__(self, alpha=0.8, beta=0.9, threshold=1.0, reset="subtract", surrogate="fast_sigmoid", slope=None,
                 learn_alpha=False, learn_beta=False, learn_threshold=False, backend="snntorch", detach_reset=True):
        super().__init__(threshold, reset, surrogate, slope, learn_threshold, backend, detach_reset)
        self._register("alpha", _as_param("alpha", alpha, learn_alpha))
        self._register("beta", _as_param("beta", beta, learn_beta))
        B.get(backend).check(self.kind, self.params())

    def params(self) -> F.CubaLIFParameters:
        return F.CubaLIFParameters(self.alpha, self.beta, self.threshold, self.reset, self.surrogate, self.detach_reset)
