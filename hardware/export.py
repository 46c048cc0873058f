"""``export_lava``: a trained neurosim model -> Lava-DL NetX HDF5 file (Loihi fixed point)."""
from __future__ import annotations

import warnings
from pathlib import Path

from neurosim import validate

from .graph import lower
from .loihi import LoihiNetwork, quantize
from .netx import write_netx


def export_lava(model, path, input_shape=None, steps: int = 0, allow_reset_change: bool = False) -> LoihiNetwork:
    """Write ``model`` as a NetX network file that ``lava.lib.dl.netx.hdf5.Network`` reads.

    The model is a stack of Linear/Conv2d (+ AvgPool2d/Flatten) synapses each followed by a ``neurosim.LIF`` or
    ``neurosim.CubaLIF`` (see :mod:`neurosim.hardware.graph`). Weights, biases, thresholds and decays are
    quantized to Loihi fixed point (:mod:`neurosim.hardware.loihi`). Anything that cannot be expressed raises
    :class:`~neurosim.hardware.graph.ExportError` listing every offending layer; nothing is written then, and
    the file itself is written atomically. ``steps`` is stored as ``simulation/tSample`` (informative).

    Returns the :class:`LoihiNetwork` (Loihi mode) of exactly what was written.
    """
    steps = validate.positive_int("steps", steps, minimum=0)
    graph = lower(model, input_shape, allow_reset_change=allow_reset_change)
    changed = [layer.name for layer in graph.layers if layer.neuron.reset == "subtract"]
    if changed:
        warnings.warn(f"layers {changed}: reset='subtract' exported as Lava's reset-to-zero", stacklevel=2)
    layers = quantize(graph)
    net = LoihiNetwork(layers, graph.input_shape)  # (checks the fixed-point weights before anything is written)
    write_netx(Path(path), layers, graph.input_shape, steps)
    return net
