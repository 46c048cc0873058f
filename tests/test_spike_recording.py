"""record_spikes / firing_rates: the spikes recorded by hooks equal an snnTorch reference run step by step."""
import pytest
import snntorch
import torch
from torch import nn

import neurosim
from neurosim.energy import profile
from neurosim.neurons import firing_rates, record_spikes, spiking_neurons


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), neurosim.LIF(beta=0.8, backend="torch"),
                         nn.Linear(7, 3), neurosim.LIF(beta=0.6, threshold=0.5, backend="torch"))


def _snntorch_reference(net, x):
    out, cur = [], x
    for lin, beta, thr in ((net[0], 0.8, 1.0), (net[2], 0.6, 0.5)):
        leaky = snntorch.Leaky(beta=beta, threshold=thr, reset_mechanism="subtract")
        c = lin(cur)
        mem = torch.zeros_like(c[0])
        spikes = []
        for t in range(c.shape[0]):
            s, mem = leaky(c[t], mem)
            spikes.append(s)
        cur = torch.stack(spikes)
        out.append(cur)
    return out


def test_recorded_spikes_equal_snntorch_reference():
    net = _net()
    x = torch.rand(12, 4, 5) * 2
    rec = record_spikes(net, x)
    with torch.no_grad():
        ref = _snntorch_reference(net, x)
    assert list(rec) == ["1", "3"]
    for got, want in zip(rec.values(), ref):
        assert got.shape == (12, 4, want.shape[-1]) and not got.requires_grad
        assert torch.equal(got, want)
    assert rec["1"].sum() > 0 and rec["3"].sum() > 0       # the comparison is not between empty rasters
    rates = firing_rates(rec)
    for name, r in zip(rec, ref):
        assert rates[name] == pytest.approx(float(r.sum()) / r.numel())
    # the same rates as neurosim.energy's report of the neurons' outputs
    report = profile(net, x)
    for name in rec:
        assert rates[name] == pytest.approx(report.layer(name).out_rate)
    assert not any(m._forward_hooks for m in net.modules())  # hooks removed


def test_name_patterns_repeated_calls_and_errors():
    net = _net()
    x = torch.rand(6, 2, 5)
    assert list(record_spikes(net, x, names="3")) == ["3"]
    assert list(spiking_neurons(net)) == ["1", "3"]
    lif = neurosim.LIF(beta=0.9, backend="torch")

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lif = lif

        def forward(self, a):
            return self.lif(self.lif(a))

    a = torch.rand(4, 2, 3) * 3
    rec = record_spikes(Twice(), a)
    first = lif(a)
    assert torch.equal(rec["lif"], torch.cat([first, lif(first)]))
    with pytest.raises(ValueError, match="names"):
        record_spikes(net, x, names="nope*")
    with pytest.raises(ValueError, match="no spiking neurons"):
        record_spikes(nn.Linear(2, 2), torch.rand(1, 1, 2))
    with pytest.raises(ValueError, match="model must be"):
        spiking_neurons("not a model")
    with pytest.raises(RuntimeError):
        record_spikes(net, torch.rand(3, 2, 4))            # wrong width: the hooks must still be removed
    assert not any(m._forward_hooks for m in net.modules())
