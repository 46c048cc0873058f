"""neurosim.energy against independent counters: SpikingJelly 2.0's SynOpCounter and the syops package.

Conventions compared:

* SpikingJelly ``SynOpCounter`` (aten level, exact): binary x weight counts ``nnz * fan-out`` with the exact
  per-position fan-out for convolutions (for a transposed one: a transposed convolution of the spikes with
  all-ones weights, summed); spike x spike products count ``sum(a @ b)``. It ignores bias, normalisation and
  additions. neurosim's per-layer ``synops`` of Linear / Conv / ConvTranspose / MatMul must equal it exactly.
* SpikingJelly ``MACCounter``: a real-valued input's multiply-accumulates, without bias; for a transposed
  convolution every kernel tap of every input element, as neurosim's ``dense``.
* syops (module hooks, the papers' estimate): ``rate * (dense MACs + bias adds)``, where the bias adds are
  ``out_channels * outputs`` for a conv but only ``out_features`` once for a Linear (not per row). neurosim's
  ``synops_paper`` is ``rate * dense``; the test converts by adding syops' bias term. For a Linear without
  bias the estimate is exact, so there syops must also equal neurosim's exact ``synops``.
"""
import math
import sys

import numpy as np
import pytest
import torch
from torch import nn

import neurosim
from neurosim.energy import profile
from neurosim.layers import MatMul

from spikingjelly.activation_based.op_counter import DispatchCounterMode, MACCounter, SynOpCounter  # noqa: E402


def _import_syops():
    """syops 0.0.5 imports SpikingJelly's pre-2.0 multi-step neuron names at module level; SpikingJelly 2.0
    dropped them (its neurons take ``step_mode='m'``). Alias them so the package imports; the counting hooks
    used here (Linear / Conv) never touch the neuron classes."""
    import spikingjelly.activation_based.neuron as sjn

    for old, new in (("MultiStepIFNode", "IFNode"), ("MultiStepLIFNode", "LIFNode"),
                     ("MultiStepParametricLIFNode", "ParametricLIFNode")):
        if not hasattr(sjn, old):
            setattr(sjn, old, getattr(sjn, new))
    import syops.ops

    return syops.ops


def spikes(*shape, p=0.25, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) < p).float()


class SpikingMLP(nn.Module):
    def __init__(self, bias=True):
        super().__init__()
        self.fc1 = nn.Linear(20, 32, bias=bias)
        self.lif1 = neurosim.LIF(beta=0.8, threshold=0.5, backend="torch")
        self.fc2 = nn.Linear(32, 16, bias=bias)
        self.lif2 = neurosim.LIF(beta=0.8, threshold=0.5, backend="torch")
        self.fc3 = nn.Linear(16, 4, bias=bias)

    def forward(self, x):
        return self.fc3(self.lif2(self.fc2(self.lif1(self.fc1(x)))))


class SpikingConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 8, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.lif1 = neurosim.LIF(beta=0.7, threshold=0.3, backend="torch")
        self.conv2 = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2)
        self.lif2 = neurosim.LIF(beta=0.7, threshold=0.3, backend="torch")
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(8 * 3 * 3, 5)

    def forward(self, x):
        t, b = x.shape[:2]
        y = self.bn1(self.conv1(x.flatten(0, 1)))
        y = self.lif1(y.reshape(t, b, *y.shape[1:])).flatten(0, 1)
        y = self.lif2(self.conv2(y).reshape(t, b, 8, 6, 6)).flatten(0, 1)
        return self.fc(self.pool(y).flatten(1))


class SpikingAttention(nn.Module):
    """Spike-driven attention core: spike Q, K, V from LIF; Q K^T (spike x spike), (QK^T) V (real x spike)."""

    def __init__(self, d=16, heads=2):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.lif = neurosim.LIF(beta=0.5, threshold=0.4, backend="torch")
        self.qk = MatMul(scale=0.25)
        self.av = MatMul()

    def forward(self, x):  # [T, B, N, D]
        t, b, n, d = x.shape
        s = self.lif(self.qkv(x))  # [T, B, N, 3D] spikes
        q, k, v = s.reshape(t, b, n, 3, self.heads, d // self.heads).permute(3, 0, 1, 4, 2, 5)
        a = self.qk(q, k.transpose(-1, -2))
        return self.av(a, v)


class SpikingDecoder(nn.Module):
    """Transposed convolutions upsampling spike maps (a segmentation or reconstruction head)."""

    def __init__(self):
        super().__init__()
        self.up1 = nn.ConvTranspose2d(2, 8, 3, stride=2, padding=1, output_padding=1)
        self.lif1 = neurosim.LIF(beta=0.7, threshold=0.3, backend="torch")
        self.up2 = nn.ConvTranspose2d(8, 4, (4, 3), stride=(2, 3), padding=(2, 1), dilation=(1, 2), groups=2)

    def forward(self, x):  # [T, B, 2, H, W] spikes
        t, b = x.shape[:2]
        y = self.lif1(self.up1(x.flatten(0, 1)).reshape(t, b, 8, 2 * x.shape[-2], 2 * x.shape[-1]))
        return self.up2(y.flatten(0, 1))


def sj_synops(model, x, counter_type=SynOpCounter):
    counter = counter_type()
    with torch.no_grad(), DispatchCounterMode([counter]):
        model(x)
    counts = counter.get_counts()
    prefix = type(model).__name__
    return {scope[len(prefix) + 1:]: sum(v.values()) for scope, v in counts.items() if scope.startswith(prefix + ".")}


@pytest.mark.parametrize("make, shape", [(SpikingMLP, (6, 4, 20)), (SpikingConvNet, (4, 3, 2, 11, 11)),
                                          (SpikingAttention, (3, 2, 8, 16)), (SpikingDecoder, (3, 2, 2, 5, 6))])
def test_synops_equal_spikingjelly(make, shape):
    torch.manual_seed(0)
    model = make().eval()
    x = spikes(*shape, seed=1)
    rep = profile(model, x)
    ref = sj_synops(model, x)
    compared = 0
    for row in rep.layers:
        if row.type in ("Linear", "Conv2d", "ConvTranspose2d", "MatMul"):
            assert row.synops == ref.get(row.name, 0), row.name
            compared += row.synops > 0
    assert compared >= 2  # the comparison is not vacuous: several layers were spike driven
    # every layer SpikingJelly counted is one of ours
    assert set(k for k, v in ref.items() if v) <= {r.name for r in rep.layers}


def test_conv_transpose_dense_macs_equal_spikingjelly():
    """A real-valued input: neurosim's MACs of each transposed convolution are SpikingJelly's MACCounter's."""
    torch.manual_seed(0)
    model = SpikingDecoder().eval()
    x = torch.rand(2, 2, 2, 5, 6) + 0.1
    rep = profile(model, x)
    ref = sj_synops(model, x, MACCounter)
    assert rep.layer("up1").macs == ref["up1"] == rep.layer("up1").dense > 0
    row = rep.layer("up2")
    if row.in_spikes:  # (LIF spikes in: SynOps; SpikingJelly then counts no MAC for it)
        assert ref.get("up2", 0) == 0 and row.macs == 0
    else:
        assert row.macs == ref["up2"]


def _syops_run(model, x, ops):
    hooks = []
    for m in model.modules():
        fn = {nn.Linear: ops.linear_syops_counter_hook, nn.Conv2d: ops.conv_syops_counter_hook}.get(type(m))
        if fn is not None:
            m.__syops__ = np.zeros(4)
            hooks.append(m.register_forward_hook(fn))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return {n: m.__syops__.copy() for n, m in model.named_modules() if hasattr(m, "__syops__")}


@pytest.mark.parametrize("make, shape", [(SpikingMLP, (6, 4, 20)), (SpikingConvNet, (4, 3, 2, 11, 11))])
def test_paper_estimate_equals_syops(make, shape):
    ops = _import_syops()
    torch.manual_seed(0)
    model = make().eval()
    x = spikes(*shape, seed=2)
    rep = profile(model, x)
    ref = _syops_run(model, x, ops)
    spiking = 0
    for name, counts in ref.items():
        row = rep.layer(name)
        m = dict(model.named_modules())[name]
        if isinstance(m, nn.Linear):
            bias_ops = m.out_features if m.bias is not None else 0  # syops: once, not per row
        else:
            # one add per output element (dense = outputs x MACs per output)
            outputs = row.dense // (m.in_channels // m.groups * math.prod(m.kernel_size))
            bias_ops = outputs if m.bias is not None else 0
        if row.in_spikes:  # syops' counts[1]: spike-driven ops = rate * (dense + bias)
            assert counts[2] == 0 and counts[1] > 0
            assert counts[1] == pytest.approx(row.synops_paper + row.in_rate * bias_ops, rel=1e-6), name
            spiking += 1
        else:  # real-valued input (after average pooling): counts[2] = dense MACs + bias
            assert counts[1] == 0 and row.synops == 0
            assert counts[2] == row.macs + bias_ops, name
    assert spiking >= 2


def test_syops_linear_without_bias_is_exact():
    ops = _import_syops()
    torch.manual_seed(0)
    model = SpikingMLP(bias=False).eval()
    with torch.no_grad():  # without biases the deeper layers barely fire at the default init: scale up
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.mul_(4)
    x = spikes(5, 3, 20, seed=4)
    rep = profile(model, x)
    ref = _syops_run(model, x, ops)
    for name, counts in ref.items():
        assert rep.layer(name).synops == pytest.approx(counts[1], rel=1e-6)
    assert all(rep.layer(name).synops > 0 for name in ref)
