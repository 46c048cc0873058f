"""Which modules are spiking neurons: neurosim's (a class with ``is_spiking_neuron = True``) and those of
snnTorch, SpikingJelly and Norse, recognised by base class name (those packages are not imported here). Read by
:func:`~neurosim.neurons.record_spikes` and by :mod:`neurosim.energy`, which counts their updates."""
from __future__ import annotations

import functools

from torch import nn

# Norse's recurrent cells hold their recurrent weights as their own parameters (no synapse module a hook could
# count) and are not among them: the energy meter reports them as "not counted".
_SJ_NODE = "spikingjelly.activation_based.neuron.base_node.BaseNode"
PEER_NEURONS = frozenset({"snntorch._neurons.neurons.SpikingNeuron", _SJ_NODE,
                          "norse.torch.module.snn.SNN", "norse.torch.module.snn.SNNCell"})
_NOT_NEURONS = frozenset({"snntorch._neurons.sconv2dlstm.SConv2dLSTM", "snntorch._neurons.slstm.SLSTM"})  # LSTMs
_SINGLE_STEP = frozenset({"snntorch._neurons.neurons.SpikingNeuron", "norse.torch.module.snn.SNNCell"})


def is_spiking_neuron(module: nn.Module) -> bool:
    """The neuron protocol: a module class with ``is_spiking_neuron = True`` (e.g. neurosim.LIF), or a neuron
    of snnTorch, SpikingJelly or Norse (:data:`PEER_NEURONS`)."""
    return is_spiking_neuron_class(type(module))


def is_spiking_neuron_class(cls: type) -> bool:
    """:func:`is_spiking_neuron` for the modules of class ``cls``."""
    return bool(getattr(cls, "is_spiking_neuron", False)) or _peer_neuron(cls)


def checks_own_input(module: nn.Module) -> bool:
    """Whether the spiking neuron ``module`` checks its input for NaN/inf itself: a class with
    ``checks_finite_input = True`` (neurosim's neurons: :func:`neurosim.validate.finite`, or the fused kernel's flag,
    on every call). A NaN reaching a neuron vanishes in its threshold test (``NaN > threshold`` is False), so
    :mod:`neurosim.energy` reads the input of every other neuron (those of snnTorch, SpikingJelly, Norse, and any class
    with the protocol alone) to check it."""
    return bool(getattr(type(module), "checks_finite_input", False))


def single_step(module: nn.Module) -> bool:
    """Whether one call of the neuron ``module`` advances one time step, its output without a time dim:
    snnTorch's neurons, Norse's cells, SpikingJelly's neurons in ``step_mode="s"``. neurosim's neurons, Norse's
    sequence modules and SpikingJelly's in ``step_mode="m"`` take ``[T, ...]``."""
    names = _names(type(module))
    if names & _SINGLE_STEP:
        return True
    return _SJ_NODE in names and getattr(module, "step_mode", "s") == "s"


@functools.lru_cache(maxsize=None)
def _names(cls: type) -> frozenset:
    return frozenset(f"{c.__module__}.{c.__qualname__}" for c in cls.__mro__)


@functools.lru_cache(maxsize=None)
def _peer_neuron(cls: type) -> bool:
    names = _names(cls)
    return bool(names & PEER_NEURONS) and not names & _NOT_NEURONS
