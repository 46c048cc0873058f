"""Record what the spiking neurons of a network emit during one forward pass (for rasters and firing rates).

>>> spikes = record_spikes(model, x)                  # {"layers.0.attn.sn_q": [T, B, ...], ...}
>>> rates = firing_rates(spikes)                      # {"layers.0.attn.sn_q": 0.12, ...}

A neuron is any module whose class sets ``is_spiking_neuron = True``, or a neuron of snnTorch, SpikingJelly or
Norse (:mod:`neurosim.neurons.protocol`, which neurosim.energy reads too).
"""
from __future__ import annotations

import fnmatch
from collections import OrderedDict

import torch
from torch import nn

from .protocol import is_spiking_neuron, single_step


def spiking_neurons(model: nn.Module) -> "OrderedDict[str, nn.Module]":
    """Name -> module of every spiking neuron in ``model`` (registration order)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return OrderedDict((name, m) for name, m in model.named_modules() if is_spiking_neuron(m))


def record_spikes(model: nn.Module, inputs, names=None, grad: bool = False) -> "OrderedDict[str, torch.Tensor]":
    """Run ``model(inputs)`` once and return the spikes each neuron emitted, detached, in call order.

    Args:
        model: the network. ``inputs``: a tensor, or a tuple/list of positional inputs.
        names: neuron names or glob patterns to record (default: all); a pattern matching no neuron is an error.
        grad: run with autograd enabled (default: under ``torch.no_grad()``).

    A neuron called more than once in the pass gets its outputs concatenated along dim 0 (time); those of a neuron
    that advances one time step a call (snnTorch's, Norse's cells, SpikingJelly's in step mode "s": see
    :func:`~neurosim.neurons.protocol.single_step`) are stacked into a new dim 0, so every recording is
    ``[T, B, ...]``.
    Hooks are removed afterwards, also when the forward pass raises.
    """
    neurons = spiking_neurons(model)
    if not neurons:
        raise ValueError(f"model ({type(model).__name__}) has no spiking neurons (neurosim's, or snnTorch's, "
                         "SpikingJelly's or Norse's)")
    if names is not None:
        patterns = [names] if isinstance(names, str) else list(names)
        for p in patterns:
            if not any(fnmatch.fnmatchcase(n, p) for n in neurons):
                raise ValueError(f"names: {p!r} matches no spiking neuron; neurons: {', '.join(neurons)}")
        neurons = OrderedDict((n, m) for n, m in neurons.items() if any(fnmatch.fnmatchcase(n, p) for p in patterns))
    seen: "OrderedDict[str, list]" = OrderedDict()

    def hook_for(name):
        def hook(module, args, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            seen.setdefault(name, []).append(out.detach())
        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in neurons.items()]
    try:
        with torch.set_grad_enabled(grad):
            model(*inputs) if isinstance(inputs, (tuple, list)) else model(inputs)
    finally:
        for h in handles:
            h.remove()
    return OrderedDict((n, torch.stack(outs) if single_step(neurons[n]) else outs[0] if len(outs) == 1
                        else torch.cat(outs)) for n, outs in seen.items())


def firing_rates(spikes: dict) -> "OrderedDict[str, float]":
    """Mean spikes per neuron per time step of each recorded tensor (the fraction of nonzero elements)."""
    return OrderedDict((n, float((s != 0).float().mean())) for n, s in spikes.items())
