"""``export_lava``: a trained neurosim model -> Lava-DL NetX HDF5 file (Loihi fixed point)."""
from __future__ import annotations

import warnings
from pathlib import Path

from neurosim import validate

from .graph import ExportError, changes, lower
from .loihi import LoihiNetwork, quantize, refuse_analog_input
from .netx import write_netx


def export_lava(model, path, input_shape=None, steps: int = 0, allow_reset_change: bool = False,
                allow_bias_change: bool = False) -> LoihiNetwork:
    """Write ``model`` as a NetX network file that ``lava.lib.dl.netx.hdf5.Network`` reads.

    The model is a stack of Linear/Conv2d (+ AvgPool2d/Flatten) synapses each followed by a ``neurosim.LIF`` or
    ``neurosim.CubaLIF`` (see :mod:`neurosim.hardware.graph`). Weights, biases, thresholds and decays are
    quantized to Loihi fixed point (:mod:`neurosim.hardware.loihi`). Anything that cannot be expressed raises
    :class:`~neurosim.hardware.graph.ExportError` listing every offending layer; nothing is written then, and
    the file itself is written atomically. ``steps`` is stored as ``simulation/tSample`` (informative).

    Dynamics Lava changes are refused unless allowed, and then warned about: ``allow_reset_change`` for
    ``reset="subtract"`` (Lava resets to zero) and for CubaLIF (whose zero reset Lava's neuron does not
    reproduce), ``allow_bias_change`` for a CubaLIF's bias (Lava adds it to the membrane, not the current).

    A model marked ``analog_input`` (``SpikingMLP.export_stack`` of a model trained with the "direct" encoder)
    is refused: a NetX network's input takes binary spikes.

    Returns the :class:`LoihiNetwork` (Loihi mode) of exactly what was written.
    """
    steps = validate.positive_int("steps", steps, minimum=0)
    refuse_analog_input(model)
    graph = lower(model, input_shape, allow_reset_change=allow_reset_change, allow_bias_change=allow_bias_change)
    for change in changes(graph, "Lava"):
        warnings.warn(change, stacklevel=2)
    layers = quantize(graph)
    net = LoihiNetwork(layers, graph.input_shape)  # (checks the fixed-point weights before anything is written)
    write_netx(Path(path), layers, graph.input_shape, steps)
    return net
