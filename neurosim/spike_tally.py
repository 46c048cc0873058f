"""Spike counts reported by the kernels that make the spikes, so that counting them costs no extra read.

An energy meter (:class:`neurosim.energy.EnergyMeter`) opens :func:`collecting` with a sink while a spiking
neuron layer runs. A neuron backend whose kernel can count the spikes it writes (``backend="fused"``) asks
:func:`row` for an int64 tensor of :data:`SLOTS` elements, launches the kernel, whose programs each add their
spike count to one element (program ``i`` to element ``i % SLOTS``: thousands of programs adding to one address
would queue behind each other), then tells :func:`counted` which tensor the row counts: the spike count is the
sum of the row. Outside such a block
:func:`row` returns None and nothing is counted; backends that cannot count leave the spikes to be read.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Protocol

import torch

from .context_stack import Stacked


SLOTS = 32  # elements of a tally row (the number of addresses the kernel's programs spread their counts over)


class Sink(Protocol):
    def row(self, x: torch.Tensor) -> torch.Tensor | None:
        """An int64 tensor of SLOTS elements (on ``x``'s device, zeroed) whose sum will be the spike count of a
        neuron layer fed ``x``."""

    def counted(self, row: torch.Tensor, spikes: torch.Tensor) -> None:
        """``row`` holds (once the kernel ran) the count of ``spikes``."""


_SINK = Stacked("neurosim_spike_tally")  # the innermost collecting block's sink


@contextmanager
def collecting(sink: Sink):
    """Route the spike counts of kernels run inside the block to ``sink``."""
    frame = _SINK.push(sink)
    try:
        yield sink
    finally:
        _SINK.pop(frame)


def row(x: torch.Tensor) -> torch.Tensor | None:
    """Where a kernel about to spike on input ``x`` adds its spike count, or None (not collecting)."""
    sink = _SINK.get()
    return None if sink is None else sink.row(x)


def counted(row: torch.Tensor | None, spikes: torch.Tensor) -> None:
    """Report that ``row`` (from :func:`row`) counts ``spikes``; no-op for ``row=None``."""
    if row is not None:
        sink = _SINK.get()
        if sink is not None:
            sink.counted(row, spikes)
