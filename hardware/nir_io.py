r"""NIR (Neuromorphic Intermediate Representation) export and import for neurosim's exportable layer set.

NIR neurons are continuous-time; a graph is discretised with a step ``dt`` (stored in ``graph.metadata``;
the default 1e-4 is snnTorch's fixed import step, pass ``dt=1e-4`` to ``norse.torch.from_nir``). The mapping
keeps the spikes of every neuron equal under Euler discretisation (:math:`\beta = 1 - dt/\tau`):

* ``LIF(beta=1, threshold, reset="zero")`` (no leak, a readout's integrator) -> ``nir.IF(r = 1,
  v_threshold = threshold, v_reset = 0)``, read as :math:`v \mathrel{+}= r I` a step, as Norse's importer runs it
  (snnTorch's importer makes a leaky neuron of it);
* ``LIF(beta, threshold, reset="zero")`` -> ``nir.LIF(tau = dt/(1-beta), r = 1, v_leak = 0,
  v_threshold = threshold (1-beta), v_reset = 0)``. NIR's membrane is neurosim's times :math:`(1-\beta)`
  (Euler input gain :math:`r\,dt/\tau`), hence the scaled threshold; ``r = 1`` because Norse's importer
  ignores ``r`` for LIF (snnTorch's rescales the threshold back);
* ``CubaLIF(alpha, beta, threshold)`` -> ``nir.CubaLIF(tau_syn = dt/(1-alpha), tau_mem = dt/(1-beta),
  w_in = 1/(1-alpha), r = 1/(1-beta), v_threshold = threshold)`` (snnTorch's importer requires
  ``r = tau_mem/dt``); the current and membrane are then neurosim's exactly;
* ``Linear`` -> ``Affine`` (``Linear`` without bias), ``Conv2d`` -> ``Conv2d``, ``Flatten`` -> ``Flatten``;
  average pooling is folded into the next synapse (:mod:`neurosim.hardware.graph`), so importers that lack
  ``AvgPool2d`` (Norse) still read the graph.

Nodes are named by layer ``i`` (the model's own module names are Sequential indices, and folded pooling has
none): ``syn{i}`` for the synapse, the neuron by its NIR type (``lif{i}``, ``if{i}``, ``cubalif{i}``), ``flatten{i}``,
and ``input`` / ``output``. :func:`import_nir` follows the edges and ignores the names.

NIR neurons reset to ``v_reset`` in the spiking step. For LIF that is neurosim's ``reset="zero"`` spike for
spike; for CubaLIF the synaptic current after a spike is kept (neurosim's zero reset drops the spiking step's
input), and ``reset="subtract"`` has no NIR form: both are exported only with ``allow_reset_change=True``.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
from torch import nn

from neurosim import validate
from neurosim.layers import TimeDistributed
from neurosim.neurons.lif import CubaLIF, LIF

from .graph import ExportError, changes, lower

DT = 1e-4
_TOL = 1e-6  # (relative: time constants pass through float32 in a NIR file)


def _full(shape, value):
    return np.full(tuple(shape), float(value), dtype=np.float32)


def export_nir(model, input_shape=None, dt: float = DT, allow_reset_change: bool = False):
    """Convert a neurosim model (same layer set as :func:`export_lava`) to a ``nir.NIRGraph`` (float).

    ``reset="subtract"`` and CubaLIF (whose zero reset NIR's CubaLIF does not reproduce) need
    ``allow_reset_change=True`` and are then warned about (module docstring)."""
    import nir

    if not (dt > 0 and np.isfinite(dt)):
        raise ValueError(f"dt must be a finite number > 0, got {dt!r}")
    # (NIR's CubaLIF takes the bias through its synaptic current, as neurosim does)
    graph = lower(model, input_shape, allow_reset_change=allow_reset_change, allow_bias_change=True)
    for change in changes(graph, "NIR", bias=False):  # (as export_lava says it)
        warnings.warn(change, stacklevel=2)
    # (a LIF without leak is NIR's IF; a CubaLIF has no leak-free NIR form)
    problems = [(layer.name, "a CubaLIF with alpha=1 or beta=1 (no decay) has no finite NIR time constant")
                for layer in graph.layers
                if layer.neuron.alpha is not None and (layer.neuron.beta >= 1.0 or layer.neuron.alpha >= 1.0)]
    if problems:
        raise ExportError(problems)
    nodes = {"input": nir.Input(input_type=np.array(graph.input_shape))}
    edges, prev = [], "input"
    for i, layer in enumerate(graph.layers):
        if layer.flatten_before:  # (also before the first synapse: an image input to a Linear)
            before = graph.layers[i - 1].out_shape if i > 0 else graph.input_shape
            nodes[f"flatten{i}"] = nir.Flatten(input_type={"input": np.array(before)}, start_dim=0, end_dim=-1)
            edges.append((prev, f"flatten{i}"))
            prev = f"flatten{i}"
        w = layer.weight.astype(np.float32)
        b = None if layer.bias is None else layer.bias.astype(np.float32)
        if layer.kind == "dense":
            syn = nir.Linear(weight=w) if b is None else nir.Affine(weight=w, bias=b)
        else:
            syn = nir.Conv2d(input_shape=tuple(layer.in_shape[1:]), weight=w, stride=layer.stride,
                             padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                             bias=np.zeros(w.shape[0], np.float32) if b is None else b)
        n, shape = layer.neuron, layer.out_shape
        if n.alpha is None and n.beta >= 1.0:  # (IF: v += r I a step, as Norse's importer runs it)
            neuron = nir.IF(r=_full(shape, 1.0), v_threshold=_full(shape, n.threshold), v_reset=_full(shape, 0.0))
        elif n.alpha is None:
            neuron = nir.LIF(tau=_full(shape, dt / (1 - n.beta)), r=_full(shape, 1.0), v_leak=_full(shape, 0.0),
                             v_threshold=_full(shape, n.threshold * (1 - n.beta)), v_reset=_full(shape, 0.0))
        else:
            neuron = nir.CubaLIF(tau_syn=_full(shape, dt / (1 - n.alpha)), tau_mem=_full(shape, dt / (1 - n.beta)),
                                 r=_full(shape, 1 / (1 - n.beta)), v_leak=_full(shape, 0.0),
                                 v_threshold=_full(shape, n.threshold), w_in=_full(shape, 1 / (1 - n.alpha)),
                                 v_reset=_full(shape, 0.0))
        name = f"{type(neuron).__name__.lower()}{i}"  # (named by its NIR type: lif0, if1, cubalif2)
        nodes[f"syn{i}"], nodes[name] = syn, neuron
        edges += [(prev, f"syn{i}"), (f"syn{i}", name)]
        prev = name
    nodes["output"] = nir.Output(output_type=np.array(graph.output_shape))
    edges.append((prev, "output"))
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": dt, "source": "neurosim"})


def _one(name, what, arr, problems):
    a = np.asarray(arr, dtype=np.float64).reshape(-1)
    if a.size == 0 or not np.all(np.isfinite(a)):
        problems.append((name, f"{what} must be finite"))
        return None
    if not np.allclose(a, a[0], rtol=1e-6, atol=0):
        problems.append((name, f"{what} differs between neurons; neurosim layers have one value per layer"))
        return None
    return float(a[0])


def _chain(graph):
    """Node names from the Input to the Output of a chain-shaped graph (raises otherwise)."""
    import nir

    succ = {}
    for a, b in graph.edges:
        if a in succ:
            raise ExportError([(a, "has several outgoing edges; only chains can be imported")],
                              "the NIR graph cannot be imported")
        succ[a] = b
    starts = [k for k, v in graph.nodes.items() if isinstance(v, nir.Input)]
    if len(starts) != 1:
        raise ExportError([("graph", f"needs exactly one Input node, found {len(starts)}")],
                          "the NIR graph cannot be imported")
    order, cur = [], starts[0]
    while cur in succ:
        cur = succ[cur]
        if cur in order:
            raise ExportError([(cur, "the graph has a cycle (recurrence is not supported)")],
                              "the NIR graph cannot be imported")
        order.append(cur)
    if not order or not isinstance(graph.nodes[order[-1]], nir.Output):
        raise ExportError([("graph", "the chain from the Input does not end in an Output node")],
                          "the NIR graph cannot be imported")
    if len(order) + 1 != len(graph.nodes):
        raise ExportError([("graph", "nodes outside the Input->Output chain")], "the NIR graph cannot be imported")
    return order[:-1]


def import_nir(graph, dt: float | None = None, allow_reset_change: bool = False) -> nn.Sequential:
    """Build a neurosim ``nn.Sequential`` (on ``[T, B, ...]``) from a chain-shaped NIR graph.

    ``dt`` defaults to ``graph.metadata["dt"]`` and else 1e-4 (snnTorch's convention). Supported nodes:
    Affine, Linear, Conv2d, Flatten, AvgPool2d, IF, LIF and CubaLIF with ``v_leak = 0`` and ``v_reset = 0``.
    Anything else raises :class:`ExportError` listing each unsupported node. A NIR CubaLIF keeps its synaptic
    current after a spike, which neurosim's ``CubaLIF(reset="zero")`` drops: it is imported as that only with
    ``allow_reset_change=True``, and warned about (as :func:`export_nir` does the other way).
    """
    import nir

    allow_reset_change = validate.boolean("allow_reset_change", allow_reset_change)
    if isinstance(graph, (str, os.PathLike)):
        path = validate.input_file("graph", graph)
        try:
            graph = nir.read(str(path))
        except Exception as err:  # noqa: BLE001 - a cut or foreign file: h5py's or nir's own errors, named here
            raise ValueError(f"graph {str(path)!r} cannot be read as a NIR graph ({type(err).__name__}: "
                             f"{str(err).splitlines()[0][:200] if str(err) else 'no detail'})") from None
    if not isinstance(graph, nir.NIRGraph):
        raise ValueError(f"graph must be a nir.NIRGraph or a path to one, got {type(graph).__name__}")
    if dt is None:
        dt = float((graph.metadata or {}).get("dt", DT))
    if not (dt > 0 and np.isfinite(dt)):
        raise ValueError(f"dt must be a finite number > 0, got {dt!r}")
    problems, mods, cuba = [], [], []
    for name in _chain(graph):
        node = graph.nodes[name]
        bad = [k for k in ("weight", "bias") if getattr(node, k, None) is not None
               and not np.all(np.isfinite(np.asarray(getattr(node, k), dtype=np.float64)))]
        if bad:
            problems.append((name, f"its {' and '.join(bad)} hold NaN or inf"))
            continue
        if isinstance(node, (nir.Affine, nir.Linear)):
            w = np.asarray(node.weight, dtype=np.float32)
            if w.ndim != 2 or (isinstance(node, nir.Affine) and np.asarray(node.bias).shape != (w.shape[0],)):
                problems.append((name, f"weight {w.shape} must be 2-D [out, in] and the bias [out]"))
                continue
            lin = nn.Linear(w.shape[1], w.shape[0], bias=isinstance(node, nir.Affine))
            lin.weight.data.copy_(nn.Parameter(lin.weight.new_tensor(w)))
            if isinstance(node, nir.Affine):
                lin.bias.data.copy_(lin.bias.new_tensor(np.asarray(node.bias, dtype=np.float32)))
            mods.append((name, lin))
        elif isinstance(node, nir.Conv2d):
            w = np.asarray(node.weight, dtype=np.float32)
            pad = node.padding
            if isinstance(pad, str):
                problems.append((name, f"string padding {pad!r} is not supported"))
                continue
            conv = nn.Conv2d(w.shape[1] * int(node.groups), w.shape[0], tuple(w.shape[2:]), stride=tuple(node.stride),
                             padding=tuple(int(p) for p in pad), dilation=tuple(node.dilation),
                             groups=int(node.groups))
            conv.weight.data.copy_(conv.weight.new_tensor(w))
            conv.bias.data.copy_(conv.bias.new_tensor(np.asarray(node.bias, dtype=np.float32)))
            mods.append((name, TimeDistributed(conv)))
        elif isinstance(node, nir.Flatten):
            mods.append((name, TimeDistributed(nn.Flatten())))
        elif isinstance(node, nir.AvgPool2d):
            mods.append((name, TimeDistributed(nn.AvgPool2d(tuple(node.kernel_size), tuple(node.stride),
                                                            tuple(node.padding)))))
        elif isinstance(node, nir.IF):  # (no leak: neurosim's LIF with beta = 1)
            n = len(problems)
            reset = _one(name, "v_reset", getattr(node, "v_reset", 0.0), problems)
            vth, r = _one(name, "v_threshold", node.v_threshold, problems), _one(name, "r", node.r, problems)
            if len(problems) > n:
                continue
            if reset != 0 or not r > 0 or not vth > 0:
                problems.append((name, f"v_reset={reset:g}, r={r:g}, v_threshold={vth:g}: need v_reset 0, r > 0 and "
                                       "v_threshold > 0"))
                continue
            mods.append((name, LIF(beta=1.0, threshold=vth / r, reset="zero")))
        elif isinstance(node, (nir.LIF, nir.CubaLIF)):
            n = len(problems)
            leak = _one(name, "v_leak", node.v_leak, problems)
            reset = _one(name, "v_reset", getattr(node, "v_reset", 0.0), problems)
            vth = _one(name, "v_threshold", node.v_threshold, problems)
            r = _one(name, "r", node.r, problems)
            if isinstance(node, nir.LIF):
                tau = _one(name, "tau", node.tau, problems)
            else:
                tau = _one(name, "tau_mem", node.tau_mem, problems)
                tau_syn = _one(name, "tau_syn", node.tau_syn, problems)
                w_in = _one(name, "w_in", node.w_in, problems)
            if len(problems) > n:
                continue
            if leak != 0 or reset != 0:
                problems.append((name, f"v_leak={leak:g}, v_reset={reset:g}: only 0 is supported"))
                continue
            if not r > 0:
                problems.append((name, f"r={r:g}: it must be > 0"))
                continue
            if tau < dt * (1 - _TOL):  # (tau = dt, beta = 0, comes back from float32 a hair under dt)
                problems.append((name, f"tau={tau:g} < dt={dt:g} gives a negative decay"))
                continue
            beta = max(0.0, 1 - dt / tau)
            gain = r * dt / tau
            if isinstance(node, nir.LIF):
                mods.append((name, LIF(beta=beta, threshold=vth / gain, reset="zero")))
            else:
                if tau_syn < dt * (1 - _TOL):
                    problems.append((name, f"tau_syn={tau_syn:g} < dt={dt:g} gives a negative decay"))
                    continue
                if not allow_reset_change:
                    problems.append((name, "NIR's CubaLIF keeps the synaptic current after a spike, neurosim's "
                                           "CubaLIF(reset='zero') drops the spiking step's input: pass "
                                           "allow_reset_change=True to import it as that"))
                    continue
                alpha = max(0.0, 1 - dt / tau_syn)
                gain *= w_in * dt / tau_syn
                mods.append((name, CubaLIF(alpha=alpha, beta=beta, threshold=vth / gain, reset="zero")))
                cuba.append(name)
        else:
            problems.append((name, f"NIR node {type(node).__name__} is not supported (Affine, Linear, Conv2d, "
                                   "Flatten, AvgPool2d, IF, LIF, CubaLIF)"))
    if problems:
        raise ExportError(problems, "the NIR graph cannot be imported")
    if cuba:
        warnings.warn(f"nodes {cuba}: NIR's CubaLIF imported as neurosim's CubaLIF(reset='zero'), which drops the "
                      "synaptic current of the spiking step", stacklevel=2)
    return nn.Sequential(*[m for _, m in mods])
