r"""Loihi mode: neurosim's network quantized to Loihi fixed point and run with Lava's CUBA-LIF dynamics.

This is what the exported NetX file does on Lava's CPU simulator (``Loihi2SimCfg``, ``fixed_pt`` models:
``lava.proc.lif.models.PyLifModelBitAcc``, ``lava.proc.dense.models.PyDenseModelBitAcc``,
``lava.proc.conv.models.PyConvModelFixed``), reproduced with integer tensors so the accuracy cost of
deploying can be measured before deploying, and so the Lava run can be checked spike for spike.

Quantization of one layer (scale :math:`S` per layer: spikes are binary, so layers scale independently):
:math:`S = \min(254/\max|W|,\ 4095/\max|b|,\ 131071/\vartheta)`, lowered for a dense layer without positive
weights where NetX would otherwise lose some (the strongest then quantizes to :math:`-(2^k-1)`, at most -127),
``weight = round(W S)`` (8-bit, what NetX keeps losslessly), ``bias = round(b S)`` (13-bit mantissa,
exponent 6), ``vThMant = round(theta S)`` (17-bit), ``vDecay = round((1 - beta) 4096)``,
``iDecay = round((1 - alpha) 4096)`` for CubaLIF and 4096 (the current forgets everything each step) for LIF.

Integer dynamics per step (24-bit ``u`` and ``v``, all values in units of one weight LSB << 6):

* synapse output is delayed by one step per layer: layer ``l`` receives ``a_t = W s_{t-1}`` (Lava's
  ``Dense``/``Conv`` send the previous step's accumulation), ``a_0 = 0``; the bias acts from step 0;
* ``u <- trunc(u (4096 - iDecay) / 4096) + (a << 6)``, wrapped to 24 bits;
* ``v <- trunc(v (4096 - vDecay) / 4096) + u + (bias << 6)``, clipped to :math:`\pm(2^{23}-1)`;
* spike when ``v > vThMant << 6``; then ``v <- 0`` (``u`` keeps its value).

How this differs from neurosim's float model (the accuracy cost is measured by comparing the two):

1. weights/bias/threshold rounding and 12-bit decays (quantization);
2. one step of latency per layer: an ``L``-layer network needs ``T + L`` steps to see all ``T`` input
   steps (:func:`pad_steps` / ``steps=``), and biases act during the first steps before input arrives;
3. reset: Lava resets ``v`` to 0 in the spiking step. For ``LIF(reset="zero")`` this gives the *same*
   spikes as neurosim (whose zero reset removes the previous membrane one step later); ``reset="subtract"``
   becomes reset-to-zero (only with ``allow_reset_change=True``). For ``CubaLIF`` the synaptic current
   after a spike still enters the membrane on the next step, while neurosim's (snnTorch's) zero reset
   discards it for the spiking step (so CubaLIF, too, is exported only with ``allow_reset_change=True``);
4. for CubaLIF a bias is added to ``v`` directly, not through the synaptic current (exported only with
   ``allow_bias_change=True``).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as Fn

from neurosim import validate
from neurosim.neurons.lif import CubaLIF, LIF

from .graph import ExportError, Graph, Layer, leaves, lower

W_MAX = 254            # largest |weight|: NetX's weight-bit optimiser keeps [-256, 254] without loss
BIAS_MAX = 4095        # 13-bit signed bias mantissa
VTH_MAX = 131071       # 17-bit threshold mantissa
DECAY_UNITY = 4096     # 12-bit decays
UV_MAX = 1 << 23       # 24-bit state
SHIFT = 6              # activation, bias and threshold MSB alignment (act_shift, bias_exp, vth_shift)


@dataclass
class QLayer:
    """One exported layer in Loihi integers (what the NetX file stores)."""
    name: str
    kind: str                      # "dense" or "conv"
    weight: np.ndarray             # int64; dense [out, in], conv [C_out, C_in/groups, kh, kw]
    bias: Optional[np.ndarray]     # int64 [out] / [C_out] or None
    i_decay: int
    v_decay: int
    vth: int
    in_shape: tuple
    out_shape: tuple
    flatten_before: bool = False
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1
    scale: float = 1.0             # float value of one weight LSB is 1/scale


LOST_WARN = 0.25  # a layer losing more than this share of its nonzero weights to rounding is warned about


def netx_keeps(w: np.ndarray) -> bool:
    """Whether Lava's fixed-point ``Dense`` uses the NetX dense weights ``w`` unchanged: its weights are ``w`` shifted
    by the exponent exactly (:func:`netx_dense_weights`; the exponent shifts the summed activation)."""
    w = np.asarray(w, dtype=np.int64)
    eff, e = netx_dense_weights(w)
    return np.array_equal(eff << e, w) if e > 0 else np.array_equal(eff, w << -e)


def _dense_scale(weight: np.ndarray, s: float, w_abs: float):
    """The weight scale, at most ``s``, at which Lava keeps a dense layer's quantized weights exactly (None: none).

    Only layers without a positive weight can lose weights: lava-dl's optimiser shifts the strongest weight to the
    bottom of the 8-bit range, so a strongest weight of -2^k becomes -256, which the synapse clips to -255 and then
    truncates to the weights' common bits (-64 alone becomes 0), and with exact zeros among the weights (its mixed
    sign mode) a strongest weight beyond -128 loses every weight unless all are even. A strongest weight of
    -(2^k - 1), at most -127, is kept exactly, so the scale is lowered to give that (the strongest weight loses
    one level of 2^k, or with zeros at most half its range); -1 and -2 have no such neighbour (None).
    """
    q = np.rint(weight * s)
    if not q.any() or netx_keeps(q):
        return s
    m = int(np.abs(q).max())
    m = min(m, 127) if m & (m - 1) else m - 1
    if m < 3:
        return None
    return m / w_abs if netx_keeps(np.rint(weight * (m / w_abs))) else None


def quantize_layer(layer: Layer) -> QLayer:
    n = layer.neuron
    w_abs = float(np.abs(layer.weight).max())
    limits = [W_MAX / w_abs, VTH_MAX / n.threshold]
    if layer.bias is not None and np.any(layer.bias):
        limits.append(BIAS_MAX / float(np.abs(layer.bias).max()))
    s = min(limits)
    problems = []
    if layer.kind == "dense":
        kept = _dense_scale(layer.weight, s, w_abs)
        if kept is None:
            problems.append((layer.name, f"every weight is <= 0 and the strongest quantizes to "
                                         f"{-int(np.rint(w_abs * s))} at weight scale {s:g}: Lava-DL's weight "
                                         "optimiser shifts it to -256, which Lava's synapse clips and truncates, "
                                         "losing these synapses; make the weights larger relative to the threshold "
                                         "and bias"))
        s = s if kept is None else kept
    q = lambda a: np.rint(np.asarray(a, dtype=np.float64) * s).astype(np.int64)  # noqa: E731
    i_decay = DECAY_UNITY if n.alpha is None else int(round((1.0 - n.alpha) * DECAY_UNITY))
    v_decay = int(round((1.0 - n.beta) * DECAY_UNITY))
    vth = int(np.rint(n.threshold * s))
    if i_decay == 0:
        problems.append((layer.name, f"alpha={n.alpha:g} rounds to iDecay 0 (no current decay), which Lava's 12-bit "
                                     "decay register (iDecay - 1) cannot hold; use alpha <= 0.9998"))
    if vth < 1:
        problems.append((layer.name, f"threshold {n.threshold:g} quantizes to 0 at weight scale {s:g}"))
    if not np.any(q(layer.weight)):
        problems.append((layer.name, f"every weight quantizes to 0 at weight scale {s:g} (set by the largest of: "
                                     f"weight {w_abs:g}, threshold {n.threshold:g}"
                                     + (f", bias {float(np.abs(layer.bias).max()):g}" if layer.bias is not None
                                        else "") + "): the layer could never drive its neurons"))
    if problems:
        raise ExportError(problems)
    nonzero, kept = int(np.count_nonzero(layer.weight)), int(np.count_nonzero(q(layer.weight)))
    if nonzero and (nonzero - kept) / nonzero > LOST_WARN:
        warnings.warn(f"layer {layer.name!r}: {nonzero - kept} of its {nonzero} nonzero weights quantize to 0 at "
                      f"weight scale {s:g} (the largest weight, threshold or bias sets the scale)", stacklevel=3)
    return QLayer(layer.name, layer.kind, q(layer.weight), None if layer.bias is None else q(layer.bias),
                  i_decay, v_decay, vth, tuple(layer.in_shape), tuple(layer.out_shape), layer.flatten_before,
                  tuple(layer.stride), tuple(layer.padding), tuple(layer.dilation), int(layer.groups), float(s))


def netx_dense_weights(w: np.ndarray):
    """The integer weights and exponent Lava's fixed-point ``Dense`` ends up using for a NetX dense weight.

    Reproduces ``lava.lib.dl.netx.utils.optimize_weight_bits`` (shift to fill 8 bits, exponent to undo it)
    followed by the ``PyDenseModelBitAcc`` clip/truncate, so the Loihi mode sees the same synapse values.
    The activation is then ``(W @ s) << exp`` (``>> -exp`` for negative ``exp``).
    """
    w = np.asarray(w, dtype=np.int64)
    mx, mn = int(w.max()), int(w.min())
    if (mx > 254 and mn < 0) or (mn < -256 and mx > 0) or mx > 255 or mn < -256:
        raise ValueError(f"dense weights must lie in [-256, 254], got [{mn}, {mx}]")
    if mx < 0:
        signed, scale = 0, -256 / mn
    elif mn >= 0:
        signed, scale = 0, 255 / mx
    else:  # (mixed: with no positive weight lava-dl's 127 / 0 is numpy's inf, so the negative side sets the scale)
        signed, scale = 1, (-128 / mn if mx == 0 else min(127 / mx, -128 / mn))
    shift = int(np.floor(np.log2(scale))) + signed
    n = 8
    while n > 0 and np.any(w % (1 << n)):
        n -= 1
    n -= signed
    num_bits = 8 - shift - n
    w = w << shift if shift >= 0 else w >> -shift
    # PyDenseModelBitAcc: sign mode from the shifted weights, clip to 8 bits (+sign), drop truncated LSBs.
    mode = "exc" if w.min() >= 0 else ("inh" if w.max() <= 0 else "mixed")
    mixed = int(mode == "mixed")
    sign = -1 if mode == "inh" else 1
    w = np.clip(w * sign, -256 * mixed, 255) * sign
    cut = 8 - num_bits + mixed
    w = sign * (((sign * w) >> cut) << cut)
    return w, -shift


def quantize(graph: Graph) -> list:
    """Quantize every layer of a lowered graph (raises :class:`ExportError` listing all failures)."""
    out, problems = [], []
    for layer in graph.layers:
        try:
            out.append(quantize_layer(layer))
        except ExportError as err:
            problems += err.problems
    if problems:
        raise ExportError(problems)
    return out


def _decay(x: torch.Tensor, d: int) -> torch.Tensor:
    """``sign(x*(4096-d)) * (|x*(4096-d)| >> 12)``: Lava's decay, truncating toward zero."""
    p = x * (DECAY_UNITY - d)
    return torch.sign(p) * (p.abs() >> 12)


def refuse_analog_input(model) -> None:
    """A model marked ``analog_input`` (``SpikingMLP.export_stack`` of a model trained with the "direct" encoder)
    cannot run on Loihi: a NetX network's input takes binary spikes."""
    if getattr(model, "analog_input", False):
        raise ExportError([("input", "the model takes analog input currents (trained with the 'direct' encoder), "
                                     "but a NetX network's input takes binary spikes: train with a spike encoder "
                                     "(rate, latency) to deploy on Lava, or export to NIR")])


class LoihiNetwork:
    """Integer simulation of an exported network, bit-exact with Lava's fixed-point CPU models.

    Build with :meth:`from_model` (quantizes a neurosim model) or :meth:`from_netx` (reads a NetX file).
    ``run(x, steps)`` takes binary input spikes ``[T, B, *input_shape]`` and returns the spikes of every
    layer, ``[steps, B, *layer_shape]`` (float 0/1); ``__call__`` returns the last layer's. ``run(...,
    return_voltage=True)`` returns ``(spikes, v)`` with ``v`` ``[B, *out_shape]`` the output layer's membrane after
    the last step, in Lava's integer units (what ``run_lava(..., return_voltage=True)`` reads from Lava): where a
    never-firing readout integrator keeps a model's prediction.
    """

    def __init__(self, layers: list, input_shape: tuple):
        if not layers:
            raise ValueError("layers must hold at least one layer")
        self.layers = list(layers)
        self.input_shape = tuple(input_shape)
        self._dense = {}
        for i, q in enumerate(self.layers):
            if q.kind == "dense":
                w, e = netx_dense_weights(q.weight)
                self._dense[i] = (torch.as_tensor(w, dtype=torch.float64), e)

    @classmethod
    def from_model(cls, model, input_shape=None, allow_reset_change: bool = False,
                   allow_bias_change: bool = False) -> "LoihiNetwork":
        """What :func:`~neurosim.hardware.export_lava` would write (same arguments and refusals), unwritten."""
        refuse_analog_input(model)
        graph = lower(model, input_shape, allow_reset_change=allow_reset_change, allow_bias_change=allow_bias_change)
        return cls(quantize(graph), graph.input_shape)

    @classmethod
    def from_netx(cls, path) -> "LoihiNetwork":
        from .netx import read_netx
        layers, input_shape = read_netx(path)
        return cls(layers, input_shape)

    @property
    def depth(self) -> int:
        return len(self.layers)

    def _synapse(self, i: int, q: QLayer, s: torch.Tensor) -> torch.Tensor:
        b = s.shape[0]
        if q.kind == "dense":
            w, e = self._dense[i]
            a = s.reshape(b, -1).double() @ w.T
            a = torch.round(a).long()
            return a << e if e > 0 else a >> -e
        a = Fn.conv2d(s.double(), torch.as_tensor(q.weight, dtype=torch.float64), stride=q.stride,
                      padding=q.padding, dilation=q.dilation, groups=q.groups)
        a = torch.round(a).long()
        return (a + UV_MAX) % (2 * UV_MAX) - UV_MAX       # PyConvModelFixed: signed 24-bit clamp (wrap)

    def run(self, x: torch.Tensor, steps: Optional[int] = None, return_voltage: bool = False):
        return_voltage = validate.boolean("return_voltage", return_voltage)
        x = torch.as_tensor(x)
        validate.binary("x", x.float())
        shape = tuple(x.shape[2:])
        flat_ok = len(self.input_shape) == 1 and int(np.prod(shape)) == self.input_shape[0]
        if x.dim() < 3 or (shape != self.input_shape and not flat_ok):
            raise ValueError(f"x must have shape [T, B, {', '.join(map(str, self.input_shape))}], got {tuple(x.shape)}")
        t_in, batch = x.shape[:2]
        steps = t_in if steps is None else validate.positive_int("steps", steps)
        if steps < t_in:
            raise ValueError(f"steps must be >= the input length T={t_in}, got {steps}")
        if len(self.input_shape) == 1:
            x = x.reshape(t_in, batch, -1)
        s_in = [x[t].long() if t < t_in else torch.zeros_like(x[0]).long() for t in range(steps)]
        outputs = []
        for i, q in enumerate(self.layers):
            shape = (batch, *q.out_shape)
            u = torch.zeros(shape, dtype=torch.long)
            v = torch.zeros(shape, dtype=torch.long)
            bias = 0
            if q.bias is not None:
                bias = torch.as_tensor(q.bias, dtype=torch.long)
                bias = bias.view(-1, 1, 1) if q.kind == "conv" else bias
                bias = bias << SHIFT
            vth = q.vth << SHIFT
            buf = torch.zeros(shape, dtype=torch.long)
            spikes = []
            for t in range(steps):
                a = buf
                buf = self._synapse(i, q, s_in[t]).reshape(shape)
                u = _decay(u, q.i_decay) + (a << SHIFT)
                u = torch.where(u > UV_MAX, u - 2 * UV_MAX, u)
                u = torch.where(u <= -UV_MAX, u + 2 * UV_MAX, u)
                v = (_decay(v, q.v_decay) + u + bias).clamp(-(UV_MAX - 1), UV_MAX - 1)
                s = v > vth
                v = torch.where(s, torch.zeros_like(v), v)
                spikes.append(s.long())
            s_in = spikes
            outputs.append(torch.stack(spikes).float())
        return (outputs, v.double()) if return_voltage else outputs

    def __call__(self, x: torch.Tensor, steps: Optional[int] = None) -> torch.Tensor:
        return self.run(x, steps)[-1]


def pad_steps(model_or_net, t: int) -> int:
    """Steps to run so the last layer sees all ``t`` input steps: ``t`` plus one step of latency per layer.

    ``model_or_net``: a :class:`LoihiNetwork`, or a model to export (a sequential stack: its ``Linear`` /
    ``Conv2d`` synapses are counted, so no ``input_shape`` or ``allow_*`` flag is needed; :func:`lower` checks
    the rest at export). ``t``: an integer >= 1.
    """
    t = validate.positive_int("t", t)
    if isinstance(model_or_net, LoihiNetwork):
        return t + model_or_net.depth
    items = list(leaves(model_or_net)) if isinstance(model_or_net, torch.nn.Module) else []
    opaque = [name for name, m in items if next(m.children(), None) is not None and not isinstance(m, (LIF, CubaLIF))]
    depth = sum(isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) for _, m in items)
    if opaque or not depth:
        raise ValueError(f"model_or_net must be a LoihiNetwork or a sequential stack of Linear/Conv2d synapses and "
                         f"neurons, got {type(model_or_net).__name__}"
                         + (f" with non-sequential modules {opaque}" if opaque else " without synapses"))
    return t + depth
