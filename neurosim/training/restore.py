"""Rebuild a trained model from a trainer checkpoint (for ``neurosim energy`` / ``export`` and notebooks).

The checkpoint's config names the registered model and dataset, so nothing but the file is needed.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from . import checkpoint as ckpt_io
from .config import TrainConfig
from .data import split_indices
from .registry import get_dataset, get_model


def load_trained(path: str | Path, device: str | torch.device = "cpu"):
    """Return ``(model, cfg, info, val_indices)`` from a neurosim checkpoint (weights loaded, eval mode)."""
    ck = ckpt_io.load(path)
    cfg = TrainConfig.from_dict(ck["config"])
    info = get_dataset(cfg.dataset)(cfg)
    model = get_model(cfg.model)(info, cfg)
    ckpt_io.check_state_dict(path, "model", ck["model"], model.state_dict())
    ckpt_io.check_neuron_values(path, model, ck["model"])
    model.load_state_dict(ck["model"])
    if info.val_indices is not None:
        val = list(info.val_indices)
    else:
        val = split_indices(len(info.dataset), cfg.val_fraction, cfg.seed)[1]
    return model.to(device).eval(), cfg, info, val


class SpikeInput(nn.Module):
    """Wraps a model with ``encode``/``forward_spikes`` so it takes already-encoded ``[T, B, ...]`` input."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, s):
        return self.model.forward_spikes(s)


def takes_spikes(model: nn.Module) -> bool:
    """Whether the model encodes its own input (``encode``/``forward_spikes``: the spiking MLP, the EST and Spikformer):
    then it can take time-major spikes ``[T, B, ...]``; the others (the BTSPFormer family, the frame predictor) take
    batch-first samples ``[B, ...]``."""
    return hasattr(model, "encode") and hasattr(model, "forward_spikes")


def time_major_inputs(path: str | Path, num_samples: int = 64, seed: int = 0):
    """``(module, inputs)``: the model of a checkpoint on ``num_samples`` validation samples, encoded by the model
    itself (seeded) into time-major spikes ``[T, B, ...]`` when it can (:func:`takes_spikes`), else the samples as
    the model takes them, batch first ``[B, ...]``."""
    model, cfg, info, val = load_trained(path)
    x = torch.stack([info.dataset[i][0] for i in val[:num_samples]])
    if takes_spikes(model):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return SpikeInput(model), model.encode(x)
    return model, x


def energy_loader(path, args):
    """``load`` hook for :func:`neurosim.energy.cli_main`: trainer checkpoints rebuild themselves (their model, and
    ``--samples`` validation samples encoded as in training unless ``--input`` / ``--input-shape`` give the input,
    and the inputs' batch dimension: 1 for time-major spikes, 0 for a batch-first model); any other torch file goes
    to the energy module's own loader (state dict + ``--model``). A truncated or unreadable file is an error.
    Last, the shape of the input it would feed (so that an ``--input`` / ``--input-shape`` of another layout is
    refused, naming this one)."""
    try:
        ckpt_io.load(path)
    except ckpt_io.ForeignCheckpoint:
        from ..energy.cli import default_load

        return default_load(path, args)
    given = ["--model"] if getattr(args, "model", None) is not None else []
    if getattr(args, "model_kwargs", "{}") not in (None, "{}"):
        given.append("--model-kwargs")
    if given:
        raise ValueError(f"{' and '.join(given)}: {str(path)!r} is a neurosim trainer checkpoint, which rebuilds "
                         "its own model (these options are for plain state-dict files)")
    samples = getattr(args, "samples", None)
    own_input = getattr(args, "input", None) is not None or getattr(args, "input_shape", None) is not None
    if own_input and samples is not None:
        raise ValueError("--samples picks validation samples; it does not go with --input / --input-shape")
    model, x = time_major_inputs(path, num_samples=64 if samples is None else samples,
                                 seed=getattr(args, "seed", 0))
    # (the samples' dim: a batch-first model's dim 1 is its sequence, which the report took as the batch size)
    batch_dim = 1 if isinstance(model, SpikeInput) else 0
    if samples is not None and x.shape[batch_dim] < samples:  # (time_major_inputs took them all)
        raise ValueError(f"--samples {samples}: this checkpoint's dataset has only {x.shape[batch_dim]} validation "
                         f"samples; give at most {x.shape[batch_dim]}")
    return model, (None if own_input else x), batch_dim, tuple(x.shape)


def export_loader(path):
    """``load_model`` hook for :func:`neurosim.hardware.cli.cli_main`: a trainer checkpoint gives its model's
    ``export_stack()`` (a Sequential of synapses and LIF neurons taking ``[T, B, F]``) when the model has one,
    else the model; any other file goes to the exporter's own loader."""
    try:
        ckpt_io.load(path)
    except ckpt_io.ForeignCheckpoint:
        from ..hardware.cli import load_exportable

        return load_exportable(path)
    model = load_trained(path)[0]
    return model.export_stack() if hasattr(model, "export_stack") else model
