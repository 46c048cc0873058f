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


class _PeerLoop(nn.Module):
    """A Linear layer and a peer neuron: single-step ones called once a time step (their spikes kept as the
    loop collects them, the reference), sequence ones called once on ``[T, B, N]``."""

    def __init__(self, kind):
        super().__init__()
        import norse.torch as norse
        from spikingjelly.activation_based import neuron as sj

        torch.manual_seed(1)
        self.kind, self.fc = kind, nn.Linear(5, 7)
        self.neuron = {"snntorch": lambda: snntorch.Leaky(beta=0.8, threshold=0.5),
                       "norse_cell": lambda: norse.LIFCell(), "norse_sequence": lambda: norse.LIF(),
                       "spikingjelly_s": lambda: sj.LIFNode(tau=2.0, v_threshold=0.5, step_mode="s"),
                       "spikingjelly_m": lambda: sj.LIFNode(tau=2.0, v_threshold=0.5, step_mode="m")}[kind]()
        self.collected = []

    def forward(self, x):
        c = self.fc(x) * 4
        if self.kind in ("norse_sequence", "spikingjelly_m"):
            out = self.neuron(c)
            out = out[0] if isinstance(out, tuple) else out
            self.collected = [out]
            return out
        if self.kind.startswith("spikingjelly"):
            self.neuron.reset()
        state, steps = (torch.zeros_like(c[0]) if self.kind == "snntorch" else None), []
        for t in range(c.shape[0]):
            if self.kind == "spikingjelly_s":
                s = self.neuron(c[t])
            else:
                s, state = self.neuron(c[t], state)
            steps.append(s)
        self.collected = steps
        return torch.stack(steps)


@pytest.mark.parametrize("kind", ["snntorch", "norse_cell", "norse_sequence", "spikingjelly_s", "spikingjelly_m"])
def test_peer_neurons_are_recorded_time_first(kind):
    """snnTorch's, Norse's and SpikingJelly's neurons are recorded too: one call a time step stacks into
    ``[T, B, N]`` (a sequence call is ``[T, B, N]`` already), equal to the spikes the model's own loop collected;
    their rates are the energy report's."""
    net = _PeerLoop(kind)
    x = torch.rand(9, 3, 5)
    assert list(spiking_neurons(net)) == ["neuron"]
    rec = record_spikes(net, x)
    want = torch.stack(net.collected) if len(net.collected) > 1 else net.collected[0]
    assert rec["neuron"].shape == (9, 3, 7) and torch.equal(rec["neuron"], want.detach())
    assert 0 < rec["neuron"].sum() < rec["neuron"].numel()  # (spikes and silences)
    report = profile(net, x)
    assert firing_rates(rec)["neuron"] == pytest.approx(report.layer("neuron").out_rate)
