"""The small spiking MLP the demo trains (registered as model "spiking_mlp").

Batch-first in, batch-first out: ``x [B, ...]`` is encoded to spikes ``[T, B, F]`` (or, for ``"direct"``,
the analog input is fed as a constant current for T steps), passes Linear -> LIF layers, and a linear
readout is averaged over time to give ``[B, num_outputs]`` (logits, or regression predictions).
"""
from __future__ import annotations

import torch
from torch import nn

from .. import validate
from ..layers import Mean
from ..neurons import LIF
from .config import ENCODERS
from .registry import register_model


def encode(x: torch.Tensor, encoder: str, num_steps: int) -> torch.Tensor:
    """``[B, F]`` -> ``[T, B, F]`` with :mod:`neurosim.encoders` (global RNG, so checkpoints can restore it).

    "rate": Bernoulli; "latency": each input on its own, intensity 1 at step 0 down to the threshold (0.01) and
    below at step T-1 (linear, normalised, snnTorch's default of no clipping: a zero fires last); "latency_log":
    the logarithmic code normalised by the largest time in the batch, kept for checkpoints before format 3 (one
    sample's times depend on the others, and with zeros in the data every nonzero input fires in the first steps);
    "direct": the analog input at every step.
    """
    if encoder == "direct":
        return x.unsqueeze(0).expand(num_steps, *x.shape)
    from .. import encoders

    if encoder == "rate":
        return encoders.rate(x, num_steps)
    if encoder == "latency":
        return encoders.latency(x, num_steps, linear=True, normalize=True)
    if encoder == "latency_log":
        return encoders.latency(x, num_steps, normalize=True)
    raise ValueError(f"encoder must be one of {', '.join(repr(e) for e in ENCODERS)}; got {encoder!r}")


class SpikingMLP(nn.Module):
    def __init__(self, in_features: int, num_outputs: int, hidden=(128,), num_steps: int = 16,
                 encoder: str = "rate", beta: float = 0.9, threshold: float = 1.0, backend: str = "snntorch",
                 reset: str = "subtract"):
        super().__init__()
        validate.one_of("encoder", encoder, ENCODERS)
        self.encoder = encoder
        self.num_steps = validate.positive_int("num_steps", num_steps)
        layers = list(hidden) if isinstance(hidden, (list, tuple)) else [hidden]
        try:   # (a string such as "256,128" was read character by character; [] built no spiking layer at all)
            layers = [validate.positive_int("hidden", h) for h in layers] or None
        except ValueError:
            layers = None
        if layers is None:
            raise ValueError(f"hidden must be a layer size >= 1 or a non-empty list of them, such as [256, 128]; "
                             f"got {hidden!r}")
        sizes = [validate.positive_int("in_features", in_features)] + layers
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.neurons = nn.ModuleList(LIF(beta=beta, threshold=threshold, reset=reset, backend=backend) for _ in layers)
        self.readout = nn.Linear(sizes[-1], validate.positive_int("num_outputs", num_outputs))
        self.time_mean = Mean(0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, ...]`` -> input spikes (or currents, for "direct") ``[T, B, F]``."""
        validate.rank_at_least("x", x, 2, "[B, ...]")
        return encode(x.flatten(1), self.encoder, self.num_steps)

    def forward_spikes(self, s: torch.Tensor) -> torch.Tensor:
        """The network on encoded input ``[T, B, F]`` -> ``[B, num_outputs]`` (mean readout over T)."""
        for linear, neuron in zip(self.linears, self.neurons):
            s = neuron(linear(s))
        return self.time_mean(self.readout(s))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_spikes(self.encode(x))

    def export_stack(self) -> nn.Sequential:
        """The network as a stack of synapses and LIF neurons on encoded input ``[T, B, F]`` (for export).

        The time-averaged readout becomes a non-leaking integrator (beta=1) whose threshold lies above any
        membrane it can reach in ``num_steps`` steps (T * max over outputs of sum|W| + |b|), so it never fires:
        its final membrane is ``num_steps`` times this model's output, the same class ranking. With the "direct"
        encoder the stack takes analog currents, not spikes: it is marked ``analog_input``, which
        :func:`neurosim.hardware.export_lava` refuses (a NetX network's input takes binary spikes).
        """
        layers = []
        for linear, neuron in zip(self.linears, self.neurons):
            layers += [linear, neuron]
        w, b = self.readout.weight.detach(), self.readout.bias.detach()
        bound = float((w.abs().sum(1) + b.abs()).max()) * self.num_steps
        layers += [self.readout, LIF(beta=1.0, threshold=bound + 1.0, reset="zero", backend=self.neurons[0].backend
                                     if len(self.neurons) else "snntorch")]
        stack = nn.Sequential(*layers)
        stack.analog_input = self.encoder == "direct"
        return stack


def refuse_norse_reset(cfg, name: str, reset: str, flag: str, option: str) -> None:
    """Backend "norse" resets to zero only (:mod:`neurosim.neurons.backends`): model ``name``, whose neurons reset by
    ``reset``, is refused with the option (``--opt`` ``flag``, model_options ``option``) that makes it train there."""
    if cfg.backend == "norse" and reset != "zero":
        raise ValueError(f"backend='norse' supports reset='zero' only, and the neurons of model {name!r} reset by "
                         f"{reset!r}: give them zero reset with --opt {flag} (model_options {option}) to train on "
                         f"norse, or use backend 'snntorch', 'fused' or 'torch'")


def build(info, cfg) -> SpikingMLP:
    """Registry builder: options ``hidden`` (a layer size or a non-empty list of them, default [128]), ``beta``
    (0.9), ``threshold`` (1.0), ``reset`` ("subtract"; "zero" exports exactly to Lava-DL / NIR, and trains on
    backend "norse")."""
    allowed = {"hidden": [128], "beta": 0.9, "threshold": 1.0, "reset": "subtract"}
    unknown = sorted(set(cfg.model_options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown model_options {', '.join(unknown)} for model 'spiking_mlp'; "
                         f"allowed: {', '.join(sorted(allowed))}")
    opts = {**allowed, **cfg.model_options}
    refuse_norse_reset(cfg, "spiking_mlp", opts["reset"], "reset=zero", "reset='zero'")
    encoder = cfg.encoder or ("rate" if info.task == "classification" else "direct")
    in_features = 1
    for s in info.input_shape:
        in_features *= s
    return SpikingMLP(in_features, info.num_outputs, opts["hidden"], cfg.num_steps, encoder, opts["beta"],
                      opts["threshold"], cfg.backend, opts["reset"])


def upgrade_encoder(config: dict, version: int) -> dict:
    """``builder.upgrade`` of the models that encode with :func:`encode`: before checkpoint format 3, "latency" was
    today's "latency_log"."""
    if version < 3 and config.get("encoder") == "latency":
        config["encoder"] = "latency_log"
    return config


build.upgrade = upgrade_encoder
register_model("spiking_mlp", build)
