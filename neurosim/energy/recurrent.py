"""The counters of torch's recurrent layers (``nn.RNN``, ``nn.GRU``, ``nn.LSTM`` and their cells): the ANN baselines
of temporal tasks are counted like the spiking models they are compared with.

Per time step of a sample, per layer and direction, with ``G`` gate blocks (1 for an RNN, 3 for a GRU, 4 for an
LSTM), ``H`` hidden units, ``P`` the LSTM's projection size (``H`` without one) and ``I`` the layer's input width
(the input size for the first layer, ``P`` times the directions for the next):

* the gate products ``W_ih x`` and ``W_hh h``: ``G H (I + P)`` MACs, one dot product of length ``I + P`` per gate
  unit; adding the two products (and the biases) is that dot product's accumulation and is not counted, as a
  Linear's bias is not; an LSTM's projection ``W_hr h``: ``P H`` MACs;
* the gate functions, one MAC per element (the convention of :mod:`neurosim.energy.elementwise`): an RNN's tanh
  (``H``; ReLU compares: nothing), a GRU's two sigmoids and tanh (``3 H``), an LSTM's three sigmoids, the tanh of
  its cell input and the tanh of its cell state (``5 H``);
* the gates' element-wise arithmetic, one MAC per product, an addition that follows a product being its
  accumulation: a GRU's ``r * (W_hn h + b_hn)`` added to the input term, ``h - n`` and ``z * (h - n) + n``
  (``3 H``, torch's form of ``(1 - z) n + z h``); an LSTM's ``f * c + i * g`` and ``o * tanh(c)`` (``3 H``).

A spike input (binary, first layer) is projected with SynOps: each spike times ``G H`` per direction. Everything
else works on real-valued hidden states: MACs, which the ANN of the same shape does too (the layer's ``dense``).
The time steps are the input's (a ``PackedSequence``: the sum of its lengths); the initial states cost nothing.
Dropout between layers is not counted. ``tests/test_energy_recurrent.py`` checks every figure against the aten
operations torch runs (and against the syops package's estimate, converted).
"""
from __future__ import annotations

from torch import nn
from torch.nn.utils.rnn import PackedSequence

from .counters import Count, register_counter, stats

_MODES = {"RNN_TANH": 1, "RNN_RELU": 1, "GRU": 3, "LSTM": 4}  # gate blocks G of an nn.RNNBase, by its mode
_CELLS = {nn.RNNCell: 1, nn.GRUCell: 3, nn.LSTMCell: 4}
_ELEMENTWISE = {1: 0, 3: 6, 4: 8}  # gate functions and gate arithmetic a hidden unit, by G (an RNN: its tanh, below)


def _gates(module) -> tuple:
    """``(G, whether its hidden state goes through tanh)``."""
    if isinstance(module, nn.RNNBase):
        return _MODES[module.mode], module.mode != "RNN_RELU"
    for t in type(module).__mro__:
        if t in _CELLS:
            return _CELLS[t], getattr(module, "nonlinearity", "tanh") == "tanh"
    raise TypeError(f"{type(module).__name__} is not one of torch's recurrent layers")


def count_recurrent(module: nn.RNNBase | nn.RNNCellBase, args, output) -> Count:
    """See the module docstring. ``args[0]``: the input (a tensor whose last dimension is the input size, or a
    ``PackedSequence``)."""
    x = args[0]
    data = x.data if isinstance(x, PackedSequence) else x
    (g, tanh), h, width = _gates(module), module.hidden_size, module.input_size
    steps = data.numel() // width  # time steps of all samples (torch has checked the input's width)
    if isinstance(module, nn.RNNBase):
        layers, dirs, p = module.num_layers, 2 if module.bidirectional else 1, module.proj_size or h
    else:
        layers, dirs, p = 1, 1, h
    per_unit = _ELEMENTWISE[g] or int(tanh)
    fixed = 0
    for layer in range(layers):
        fixed += g * h * ((p * dirs if layer else 0) + p) + (p * h if p != h else 0) + per_unit * h
    fixed *= steps * dirs
    first = steps * dirs * g * h * width  # the first layer's input projection: SynOps when the input is spikes
    s = stats(data)
    kind = "RNN" if g == 1 else ("GRU" if g == 3 else "LSTM")
    return Count(dense=first, spike_input=s, spike_count=s.nnz * (dirs * g * h), spike_kind="synops", macs=fixed,
                 dense_also=fixed, note=f"{kind}: gate products, gate functions and element-wise gate arithmetic "
                                        f"(MACs; biases not counted)")


for _t in (nn.RNNBase, *_CELLS):  # (nn.RNN, GRU and LSTM are RNNBase, which also runs by its mode alone)
    register_counter(_t, count_recurrent)
