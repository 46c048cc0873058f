"""Profiling a model over many input batches (a validation set) under one meter, with one report."""
from __future__ import annotations

import itertools
import warnings

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import validate
from .meter import EnergyMeter, _call, _first_tensor
from .report import EnergyReport

CUDA_GRAPH = ("auto", True, False)


def profile_batches(model: nn.Module, batches, hardware="cmos45nm", require_spikes=None, grad: bool = False,
                    counting: str = "auto", rates: str = "needed", cuda_graph="auto", warmup: int = 2,
                    progress: bool = True, batch_dim: int = 1) -> EnergyReport:
    """Count ``model``'s operations over every input in ``batches`` and report the sums (one report).

    Args:
        model: network taking ``[T, B, ...]`` input(s).
        batches: an iterable of inputs, each a tensor, a tuple/list of positional inputs or a dict of keyword
            inputs (e.g. ``(x for x, _ in loader)``, moved to the model's device by the caller).
        hardware, require_spikes, counting, rates: as in :func:`neurosim.energy.profile`.
        grad: run with autograd enabled (default: under ``torch.no_grad()``).
        cuda_graph: ``"auto"`` (default): on CUDA inputs the first batch's metered forward is captured in a CUDA
            graph (:mod:`neurosim.energy.graph`) and replayed for every batch of the same shapes, so the meter's
            host work is done once, not per batch; batches of other shapes (a smaller last batch) run eagerly
            under the same meter; a forward that cannot be captured runs eagerly, with a warning. ``True``: the
            same, but a failed capture raises. ``False``: every batch runs eagerly.
        warmup: metered forwards run on the first batch before the capture (not counted).
        progress: show a tqdm bar.
        batch_dim: the dim of each batch's first tensor that counts its samples (1: ``[T, B, ...]``; 0 for a
            batch-first ANN baseline).

    Returns:
        :class:`EnergyReport` over all batches: counts are sums, ``calls`` counts every batch, ``batch_size``
        is the number of samples (dim ``batch_dim`` of each batch's first tensor, summed), so per-sample energy is
        the mean.
    """
    if cuda_graph not in CUDA_GRAPH:
        raise ValueError(f"cuda_graph must be one of {CUDA_GRAPH}, got {cuda_graph!r}")
    batch_dim = validate.positive_int("batch_dim", batch_dim, minimum=0)
    warmup = validate.positive_int("warmup", warmup, minimum=0)
    for name, flag in (("grad", grad), ("progress", progress)):
        validate.boolean(name, flag)
    meter = EnergyMeter(model, hardware=hardware, require_spikes=require_spikes, counting=counting, rates=rates)
    graph, samples, n = None, 0, 0
    total = len(batches) if hasattr(batches, "__len__") else None
    batches = iter(batches)
    try:  # (an empty input is refused before the progress bar is drawn)
        batches = itertools.chain([next(batches)], batches)
    except StopIteration:
        raise ValueError("batches: got no batch; pass an iterable of at least one input") from None
    with meter, torch.set_grad_enabled(grad):
        for inputs in tqdm(batches, total=total, desc="energy", unit="batch", disable=not progress):
            first = _first_tensor(inputs)
            if first is None:
                raise ValueError(f"batches: batch {n} holds no tensor; each must contain a [T, B, ...] input")
            if first.dim() <= batch_dim:
                raise ValueError(f"batch_dim is {batch_dim} but batch {n}'s first tensor has {first.dim()} dim(s) "
                                 f"(shape {tuple(first.shape)}); batch_dim must be one of its dims")
            samples += int(first.shape[batch_dim])
            n += 1
            if graph is None and cuda_graph is not False and first.is_cuda:
                try:
                    graph = meter.graphed(inputs, warmup=warmup)
                except RuntimeError as exc:
                    if cuda_graph is True:
                        raise
                    warnings.warn(f"profile_batches: running eagerly ({exc})", RuntimeWarning, stacklevel=2)
                    cuda_graph = False
            if graph is not None and graph.matches(inputs):
                graph(inputs)
            else:
                _call(model, inputs)
    return meter.report(batch_size=samples or None)
