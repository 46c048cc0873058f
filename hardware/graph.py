"""Lowering a neurosim model to a flat list of exportable layers (shared by the Lava and NIR exporters).

A model to export is a stack (``nn.Sequential``, nested or not; :class:`neurosim.layers.TimeDistributed`
wrappers are looked through) of ``nn.Linear`` / ``nn.Conv2d`` synapses, ``nn.AvgPool2d`` / ``nn.Flatten``
and one ``neurosim.LIF`` / ``neurosim.CubaLIF`` after every synapse. :func:`lower` walks it once, checks every
module, and either returns a :class:`Graph` or raises :class:`ExportError` listing *every* offending layer
and why, so nothing half-exported is ever written.

Average pooling has no NetX layer (lava-dl 0.6.0 raises ``NotImplementedError`` for ``pool``), but it is
linear, so it is folded into the next synapse: into a ``Conv2d`` as a ``p``-times larger kernel with stride
multiplied by ``p``, into a ``Linear`` (through the ``Flatten``) as the product of the two matrices. The
folded layer computes exactly what pool-then-synapse computes (the pooled sizes must divide evenly).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from torch import nn

from neurosim.layers import Add, MatMul, TimeDistributed
from neurosim.neurons.lif import CubaLIF, LIF


class ExportError(ValueError):
    """A model (or file) that cannot be exported: ``problems`` lists ``(layer, reason)`` pairs."""

    def __init__(self, problems, what="the model cannot be exported"):
        self.problems = list(problems)
        self.what = what
        lines = [f"  - {name}: {why}" for name, why in self.problems]
        super().__init__(f"{what} ({len(self.problems)} problem(s)):\n" + "\n".join(lines))

    def reworded(self, words: dict) -> "ExportError":
        """The same error with each ``old: new`` of ``words`` replaced in its reasons: the reasons name the export
        functions' keyword arguments (``allow_reset_change=True``), a command names its own flags instead."""
        def reword(why: str) -> str:
            for old, new in words.items():
                why = why.replace(old, new)
            return why
        return ExportError([(name, reword(why)) for name, why in self.problems], self.what)


@dataclass
class Neuron:
    """Float neuron parameters of one layer; ``alpha`` is ``None`` for a plain LIF (no synaptic current)."""
    kind: str
    beta: float
    threshold: float
    reset: str
    alpha: Optional[float] = None


@dataclass
class Layer:
    """One synapse + neuron layer in float (``kind`` "dense" or "conv")."""
    name: str
    kind: str
    weight: np.ndarray                      # dense [out, in]; conv [C_out, C_in/groups, kh, kw]
    bias: Optional[np.ndarray]
    neuron: Neuron
    in_shape: tuple
    out_shape: tuple
    flatten_before: bool = False            # the input is a conv output that must be flattened (C, H, W order)
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1
    folded: list = field(default_factory=list)  # names of pooling layers folded into this synapse


@dataclass
class Graph:
    input_shape: tuple
    layers: list

    @property
    def output_shape(self) -> tuple:
        return self.layers[-1].out_shape


def _pair(v, what):
    if isinstance(v, str):
        raise ValueError(what)
    t = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    return tuple(int(i) for i in t)


def leaves(model: nn.Module, prefix: str = ""):
    """Yield ``(name, module)`` for the modules of a sequential stack in execution order.

    ``nn.Sequential`` and ``TimeDistributed`` are looked through only with their own ``forward``: a subclass that
    overrides it (an input gain, a skip...) computes something else and is yielded whole, as non-sequential."""
    if isinstance(model, nn.Sequential) and type(model).forward is nn.Sequential.forward:
        for name, child in model.named_children():
            yield from leaves(child, f"{prefix}.{name}" if prefix else name)
    elif isinstance(model, TimeDistributed) and type(model).forward is TimeDistributed.forward:
        yield from leaves(model.module, prefix or "0")
    else:
        yield (prefix or type(model).__name__), model


def _own_forward(m: nn.Module) -> str:
    return " (it overrides forward: not a plain chain)" if isinstance(m, (nn.Sequential, TimeDistributed)) else ""


ACTIVATION_PRODUCT = ("multiplies/adds two activations (attention products, residual sums); NetX and NIR chains "
                      "only have weight synapses")
_EXPORTABLE = (nn.Linear, nn.Conv2d, nn.AvgPool2d, nn.Flatten, nn.Identity, nn.Dropout, LIF, CubaLIF)


def _inexpressible(model: nn.Module) -> list:
    """``(name, why)`` for every module inside a non-sequential ``model`` that no NetX/NIR layer can express, so
    the error names each offending layer, not only the structure."""
    from neurosim.layers import RandomSpikeMask

    out = []
    for name, m in model.named_modules():
        if not name or isinstance(m, _EXPORTABLE) or isinstance(m, TimeDistributed):
            continue
        if isinstance(m, (MatMul, Add)):
            why = ACTIVATION_PRODUCT
        elif isinstance(m, RandomSpikeMask):
            why = "random spike masking has no hardware equivalent (drops spikes at random)"
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            why = "normalisation layers are not folded into the synapse before it automatically"
        elif any(True for _ in m.children()):
            continue                       # a container: its leaves are listed
        else:
            why = f"{type(m).__name__} is not an exportable layer (Linear, Conv2d, AvgPool2d, Flatten, LIF, CubaLIF)"
        out.append((name, why))
    return out


def _uniform(name, what, t, problems):
    t = torch.as_tensor(t).detach().double().flatten()
    if t.numel() > 1 and not bool((t == t[0]).all()):
        problems.append((name, f"{what} differs between neurons ({t.min():g}..{t.max():g}); Lava's LIF process "
                               f"has one {what} per layer"))
    return float(t[0])


def _neuron(name, m, allow_reset_change, problems) -> Neuron:
    beta = _uniform(name, "beta", m.beta, problems)
    threshold = _uniform(name, "threshold", m.threshold, problems)
    alpha = _uniform(name, "alpha", m.alpha, problems) if isinstance(m, CubaLIF) else None
    for what, v in (("beta", beta), ("threshold", threshold), ("alpha", alpha)):
        if v is not None and not math.isfinite(v):
            problems.append((name, f"{what} is {v}: it must be finite"))
    if math.isfinite(threshold) and threshold <= 0:
        problems.append((name, f"threshold is {threshold:g}: it must be > 0 (the neuron would spike without input)"))
    if m.reset == "subtract" and not allow_reset_change:
        problems.append((name, "reset='subtract' has no exact equivalent: Lava's CUBA neuron and NIR neurons reset "
                               "the membrane to 0. Train with reset='zero', or pass allow_reset_change=True to "
                               "export with reset-to-zero (measure the cost with the Loihi mode)"))
    elif isinstance(m, CubaLIF) and not allow_reset_change:
        problems.append((name, "CubaLIF's reset='zero' has no exact equivalent: neurosim (as snnTorch's Synaptic) "
                               "also discards the synaptic current of the step after a spike, Lava's CUBA neuron and "
                               "NIR's CubaLIF add it to the reset membrane. Use LIF, or pass allow_reset_change=True "
                               "to export it so (measure the cost with the Loihi mode)"))
    return Neuron(m.kind, min(max(beta, 0.0), 1.0), threshold, m.reset,
                  None if alpha is None else min(max(alpha, 0.0), 1.0))


def _pool_params(name, m, problems):
    k = _pair(m.kernel_size, "")
    s = k if m.stride is None else _pair(m.stride, "")
    bad = []
    if s != k:
        bad.append(f"stride {s} != kernel_size {k}")
    if _pair(m.padding, "") != (0, 0):
        bad.append("padding != 0")
    if m.ceil_mode:
        bad.append("ceil_mode=True")
    if m.divisor_override is not None:
        bad.append("divisor_override is set")
    if bad:
        problems.append((name, "AvgPool2d can only be folded into the next synapse with non-overlapping windows "
                               "(stride == kernel_size, padding 0, ceil_mode False): " + ", ".join(bad)))
        return None
    return k


def _avgpool_np(x, k):
    """Average-pool the last two axes of ``x`` with non-overlapping windows ``k`` (sizes divide evenly)."""
    *lead, h, w = x.shape
    return x.reshape(*lead, h // k[0], k[0], w // k[1], k[1]).mean(axis=(-3, -1))


def _fold_pool_into_conv(weight, stride, padding, dilation, k):
    """Conv(pool_k(x)) == Conv'(x): kernel positions spread by ``k``, each covering a ``k`` block, value / (k0*k1)."""
    co, ci, kh, kw = weight.shape
    out = np.zeros((co, ci, ((kh - 1) * dilation[0] + 1) * k[0], ((kw - 1) * dilation[1] + 1) * k[1]))
    for a in range(kh):
        for b in range(kw):
            r0, c0 = a * dilation[0] * k[0], b * dilation[1] * k[1]
            out[:, :, r0:r0 + k[0], c0:c0 + k[1]] = weight[:, :, a:a + 1, b:b + 1] / (k[0] * k[1])
    return out, (stride[0] * k[0], stride[1] * k[1]), (padding[0] * k[0], padding[1] * k[1]), (1, 1)


def _cuba_bias(layer: Layer) -> bool:
    return layer.neuron.alpha is not None and layer.bias is not None and bool(np.any(layer.bias))


def changes(graph: Graph, target: str, bias: bool = True) -> list:
    """What exporting ``graph`` to ``target`` ("Lava", "NIR") changes in its dynamics, one line per kind (for a
    warning): resets, and with ``bias`` CubaLIF biases (which Lava adds to the membrane)."""
    layers = graph.layers
    found = [([x.name for x in layers if x.neuron.reset == "subtract"],
              f"reset='subtract' exported as {target}'s reset to zero"),
             ([x.name for x in layers if x.neuron.alpha is not None and x.neuron.reset == "zero"],
              f"CubaLIF's zero reset exported as {target}'s, which keeps the synaptic current of the step after a "
              "spike"),
             ([x.name for x in layers if bias and _cuba_bias(x)],
              f"CubaLIF bias exported as {target}'s, added to the membrane instead of the synaptic current")]
    return [f"layers {names}: {what}" for names, what in found if names]


def lower(model: nn.Module, input_shape=None, allow_reset_change: bool = False,
          allow_bias_change: bool = False) -> Graph:
    """Check ``model`` and turn it into a :class:`Graph` of float layers (pooling folded in).

    ``input_shape``: the shape of one timestep of one sample, ``(features,)`` or ``(C, H, W)``; needed when
    the first synapse is a convolution (a ``Linear`` first layer gives it). Raises :class:`ExportError`.
    Dynamics the targets change are refused unless allowed (:func:`changes` lists them for a warning):
    ``allow_reset_change`` for ``reset="subtract"`` (exported as reset-to-zero) and for CubaLIF's zero reset;
    ``allow_bias_change`` for a CubaLIF's bias, which Lava adds to the membrane instead of the synaptic current
    (NIR's CubaLIF keeps it in the current: its exporter allows it).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    problems: list = []
    items = list(leaves(model))
    if len(items) == 1 and len(list(items[0][1].children())) > 0 and not isinstance(items[0][1], (LIF, CubaLIF)):
        name, m = items[0]
        raise ExportError([(name, f"{type(m).__name__} is not a sequential stack{_own_forward(m)}; export an "
                                  "nn.Sequential of Linear/Conv2d/AvgPool2d/Flatten and LIF/CubaLIF modules (wrap "
                                  "per-timestep layers in neurosim.layers.TimeDistributed)")] + _inexpressible(m))
    if input_shape is None:
        first = next((m for _, m in items if isinstance(m, (nn.Linear, nn.Conv2d))), None)
        if isinstance(first, nn.Linear):
            input_shape = (first.in_features,)
        elif isinstance(first, nn.Conv2d):
            raise ExportError([("input", "the first synapse is a Conv2d: pass input_shape=(C, H, W)")])
    if isinstance(input_shape, int) and not isinstance(input_shape, bool):
        input_shape = (input_shape,)
    if input_shape is not None and (isinstance(input_shape, (str, bytes)) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in input_shape)):
        raise ValueError(f"input_shape must be (features,) or (C, H, W) of integers, got {input_shape!r}")
    input_shape = tuple(int(s) for s in input_shape) if input_shape is not None else None
    if input_shape is not None and (len(input_shape) not in (1, 3) or min(input_shape) < 1):
        raise ValueError(f"input_shape must be (features,) or (C, H, W) with positive sizes, got {input_shape}")

    shape = input_shape
    pre_ops: list = []          # ("pool", name, k) / ("flatten", name) since the last neuron (or the input)
    pending = None              # synapse waiting for its neuron
    layers: list = []
    for name, m in items:
        if isinstance(m, (nn.Identity, nn.Dropout)):
            continue
        if isinstance(m, (MatMul, Add)):
            problems.append((name, f"{type(m).__name__} {ACTIVATION_PRODUCT}"))
            continue
        if isinstance(m, (LIF, CubaLIF)):
            neuron = _neuron(name, m, allow_reset_change, problems)
            if pending is None:
                problems.append((name, "neuron without a synaptic layer (Linear/Conv2d) right before it"
                                 + (" (pooling/flatten between synapse and neuron has no NetX layer)" if pre_ops else "")))
                pre_ops = []
            else:
                pending.neuron = neuron
                layers.append(pending)
                shape = pending.out_shape
                pending = None
            continue
        if pending is not None and not isinstance(m, (LIF, CubaLIF)):
            problems.append((pending.name, f"synapse followed by {type(m).__name__} ({name}) instead of a LIF/CubaLIF "
                                           "neuron; every Linear/Conv2d needs its own neuron layer"))
            shape = pending.out_shape
            pending = None
        if isinstance(m, nn.AvgPool2d):
            k = _pool_params(name, m, problems)
            if k is not None and shape is not None:
                if len(shape) != 3 or any(pre[0] == "flatten" for pre in pre_ops):
                    problems.append((name, f"AvgPool2d needs a (C, H, W) input, got shape {shape}"))
                elif shape[1] % k[0] or shape[2] % k[1]:
                    problems.append((name, f"input {shape[1]}x{shape[2]} is not divisible by the pool size {k}; "
                                           "only evenly dividing pools can be folded into the next synapse"))
                else:
                    pre_ops.append(("pool", name, k))
                    shape = (shape[0], shape[1] // k[0], shape[2] // k[1])
            continue
        if isinstance(m, nn.MaxPool2d):
            problems.append((name, "MaxPool2d is not linear (an OR of spikes) and NetX 0.6.0 has no pool layer; use "
                                   "AvgPool2d, which is folded into the next synapse"))
            continue
        if isinstance(m, nn.Flatten):
            if shape is not None and len(shape) == 3:
                pre_ops.append(("flatten", name))
                shape = (int(np.prod(shape)),)
            continue
        if isinstance(m, nn.Linear):
            if shape is not None and shape != (m.in_features,):
                problems.append((name, f"Linear expects {m.in_features} features but receives shape {shape}"
                                       + (" (add nn.Flatten)" if shape and len(shape) == 3 else "")))
                shape = None
            w = m.weight.detach().double().cpu().numpy()
            b = None if m.bias is None else m.bias.detach().double().cpu().numpy()
            flatten = any(p[0] == "flatten" for p in pre_ops)
            in_shape = shape
            pools = [p for p in pre_ops if p[0] == "pool"]
            if pools and shape is not None:
                # Fold pool(s)+flatten into the matrix: W' = W @ M, M maps the pre-pool (C,H,W) to the pooled vector.
                c, h, wd = layers[-1].out_shape if layers else input_shape
                basis = np.eye(c * h * wd).reshape(c * h * wd, c, h, wd)
                for p in pools:
                    basis = _avgpool_np(basis, p[2])
                w = w @ basis.reshape(c * h * wd, -1).T
                in_shape = (c * h * wd,)
            pending = Layer(name, "dense", w, b, None, in_shape, (m.out_features,), flatten_before=flatten,
                            folded=[p[1] for p in pools])
            pre_ops = []
            continue
        if isinstance(m, nn.Conv2d):
            try:
                stride = _pair(m.stride, "")
                padding = _pair(m.padding, f"padding={m.padding!r}: use explicit integer padding")
                dilation = _pair(m.dilation, "")
            except ValueError as err:
                problems.append((name, str(err)))
                continue
            if m.padding_mode != "zeros":
                problems.append((name, f"padding_mode={m.padding_mode!r}: Lava's Conv pads with zeros only"))
            if any(p[0] == "flatten" for p in pre_ops):
                problems.append((name, "Conv2d after Flatten"))
            if shape is not None and (len(shape) != 3 or shape[0] != m.in_channels):
                problems.append((name, f"Conv2d expects {m.in_channels} input channels (C, H, W) but receives shape "
                                       f"{shape}"))
                shape = None
            w = m.weight.detach().double().cpu().numpy()
            b = None if m.bias is None else m.bias.detach().double().cpu().numpy()
            pools = [p for p in pre_ops if p[0] == "pool"]
            in_shape = shape
            for p in reversed(pools):
                w, stride, padding, dilation = _fold_pool_into_conv(w, stride, padding, dilation, p[2])
            if pools and shape is not None:
                in_shape = (shape[0], shape[1] * int(np.prod([p[2][0] for p in pools])),
                            shape[2] * int(np.prod([p[2][1] for p in pools])))
            out_shape = None
            if in_shape is not None:
                kh, kw = w.shape[2:]
                oh = (in_shape[1] + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
                ow = (in_shape[2] + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
                if oh < 1 or ow < 1:
                    problems.append((name, f"output size {oh}x{ow} < 1 for input {in_shape}"))
                out_shape = (m.out_channels, oh, ow)
            pending = Layer(name, "conv", w, b, None, in_shape, out_shape, stride=stride, padding=padding,
                            dilation=dilation, groups=int(m.groups), folded=[p[1] for p in pools])
            pre_ops = []
            continue
        problems.append((name, f"{type(m).__name__}{_own_forward(m)} is not supported (supported: Linear, Conv2d, "
                               "AvgPool2d, Flatten, "
                               "Dropout/Identity, neurosim LIF/CubaLIF)"))
    if pending is not None:
        problems.append((pending.name, "the last synapse has no LIF/CubaLIF neuron: the exported network would emit "
                                       "no spikes (NetX gives it a non-spiking integrator)"))
    if pre_ops:
        problems.append((pre_ops[-1][1], "pooling/flatten after the last neuron has no NetX layer; remove it and "
                                         "pool/flatten the output spikes outside the network"))
    if not layers and not problems:
        problems.append(("model", "no Linear/Conv2d + neuron layer found"))
    for layer in layers:
        for what, arr in (("weight", layer.weight), ("bias", layer.bias)):
            if arr is not None and not np.all(np.isfinite(arr)):
                problems.append((layer.name, f"its {what} holds NaN or inf"))
        if not np.any(layer.weight):
            problems.append((layer.name, "all weights are zero (Lava's weight-bit optimiser divides by the largest "
                                         "weight)"))
        if _cuba_bias(layer) and not allow_bias_change:
            problems.append((layer.name, "a CubaLIF's bias enters its synaptic current in neurosim (the drive grows "
                                         "to bias / (1 - alpha)), but Lava's CUBA neuron adds it to the membrane "
                                         "directly (bias a step). Train without bias, or pass allow_bias_change=True "
                                         "to export it so (measure the cost with the Loihi mode)"))
    if problems:
        raise ExportError(problems)
    return Graph(input_shape, layers)
