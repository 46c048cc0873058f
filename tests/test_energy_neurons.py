"""Energy counts of neurons: the synapses inside a neuron (STC-LIF's circuits, snnTorch's RLeaky) and the neurons of
snnTorch, SpikingJelly and Norse used directly in a model, against hand counts from the recorded spikes. The three
libraries are test dependencies (scripts/env.sh installs them): imported, not skipped."""

import norse.torch as norse
import pytest
import snntorch as snn
import torch
from spikingjelly.activation_based import neuron as sj_neuron
from torch import nn
from torch.nn import functional as F

from neurosim.energy import profile
from neurosim.models import FramePredictor, moving_digits


def recorded_inputs(module):
    seen = []
    return seen, module.register_forward_hook(lambda m, args, out: seen.append(args[0].detach().clone()))


def conv_synops(conv, x):
    """Spikes x their fan-out, from first principles: every (output, weight tap) pair whose input is 1 is one
    accumulate, i.e. the sum of the convolution of the spikes with all-one weights (padding, stride, groups)."""
    ones = torch.ones_like(conv.weight)
    conv_fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[ones.dim() - 2]
    return int(conv_fn(x, ones, None, conv.stride, conv.padding, conv.dilation, conv.groups).sum())


def test_stc_lif_circuits_are_counted_as_synapses_of_the_previous_spikes():
    torch.manual_seed(0)
    model = FramePredictor(neuron="stc_lif", channels=4).eval()
    frames = moving_digits(2, 5, 16)
    circuits = [model.lif1.temporal_circuit, model.lif1.spatial_circuit]
    drive, h = recorded_inputs(model.lif1)
    hooks, seen = [h], []
    for c in circuits:
        s, h = recorded_inputs(c)
        seen.append(s)
        hooks.append(h)
    try:
        rep = profile(model, frames, audit=True)
    finally:
        for h in hooks:
            h.remove()
    assert rep.not_counted == []
    for name, conv, xs in zip(("lif1.temporal_circuit", "lif1.spatial_circuit"), circuits, seen):
        row = rep.layer(name)
        assert all(bool(((x == 0) | (x == 1)).all()) for x in xs) and sum(int(x.sum()) for x in xs) > 0
        assert row.calls == len(xs) == drive[0].shape[0]       # one call a time step
        assert row.synops == sum(conv_synops(conv, x) for x in xs) > 0 and row.macs == 0
    assert rep.layer("lif1").neuron_updates == drive[0].numel()


class Loop(nn.Module):
    """An snnTorch-style model: one neuron call per time step in the model's own loop."""

    def __init__(self, neuron, n_in=6, n_hidden=5, n_out=3):
        super().__init__()
        self.fc1, self.lif, self.fc2 = nn.Linear(n_in, n_hidden), neuron, nn.Linear(n_hidden, n_out)

    def forward(self, x):
        mem = self.lif.init_leaky() if hasattr(self.lif, "init_leaky") else None
        spk = torch.zeros(x.shape[1], self.fc1.out_features)   # RLeaky takes the previous step's spikes
        out = []
        for x_t in x:
            if isinstance(self.lif, snn.RLeaky):
                spk, mem = self.lif(self.fc1(x_t), spk, mem)
            else:
                spk, mem = self.lif(self.fc1(x_t), mem)
            out.append(self.fc2(spk))
        return torch.stack(out)


@pytest.mark.parametrize("kind", ["leaky", "rleaky"])
def test_snntorch_neurons_in_a_time_loop(kind):
    torch.manual_seed(1)
    neuron = snn.Leaky(beta=0.8, threshold=0.5) if kind == "leaky" else \
        snn.RLeaky(beta=0.8, threshold=0.5, linear_features=5, all_to_all=True)
    model = Loop(neuron).eval()
    x = (torch.rand(6, 4, 6) < 0.5).float()
    spikes, h = recorded_inputs(model.fc2)
    rec = None
    if kind == "rleaky":
        rec, h2 = recorded_inputs(neuron.recurrent)
    try:
        rep = profile(model, x, audit=True)
    finally:
        h.remove()
        if rec is not None:
            h2.remove()
    assert rep.not_counted == []
    lif = rep.layer("lif")
    assert (lif.calls, lif.neuron_updates) == (6, 6 * 4 * 5) and lif.type == type(neuron).__name__
    assert rep.layer("fc2").synops == sum(int(s.sum()) for s in spikes) * 3 > 0
    if kind == "rleaky":   # the recurrent synapses: each previous spike reaches the 5 neurons
        assert rep.layer("lif.recurrent").synops == sum(int(s.sum()) for s in rec) * 5 > 0


def test_spikingjelly_and_norse_neurons():
    torch.manual_seed(2)
    x = (torch.rand(5, 4, 6) < 0.5).float()

    class Multi(nn.Module):
        def __init__(self, neuron):
            super().__init__()
            self.fc1, self.sn, self.fc2 = nn.Linear(6, 8), neuron, nn.Linear(8, 2)

        def forward(self, x):
            h = self.sn(4 * self.fc1(x))   # strong drive: both neurons fire
            return self.fc2(h[0] if isinstance(h, tuple) else h)

    for neuron in (sj_neuron.LIFNode(step_mode="m", tau=1.5, v_threshold=0.3), norse.LIF()):
        model = Multi(neuron).eval()
        spikes, h = recorded_inputs(model.fc2)
        try:
            rep = profile(model, x)
        finally:
            h.remove()
        assert rep.not_counted == [], rep.not_counted      # SpikingJelly's surrogate module is the neuron's own
        assert rep.layer("sn").neuron_updates == 5 * 4 * 8
        assert rep.layer("fc2").synops == int(spikes[0].sum()) * 2 > 0
        assert rep.layer("fc2").in_spikes
    # Norse's recurrent cell holds its recurrent weights as plain parameters: not counted, and said so
    rec = nn.Sequential(nn.Linear(6, 4), norse.LIFRecurrent(4, 4))
    assert profile(rec, x).not_counted == ["1"]


def test_audit_lists_a_product_inside_a_neuron():
    class SelfCoupled(nn.Module):
        """A neuron whose recurrent synapse is a plain parameter: its counter counts its updates only."""

        is_spiking_neuron = True

        def __init__(self, n):
            super().__init__()
            self.w = nn.Parameter(torch.full((n, n), 0.1))

        def forward(self, x):
            mem, out = torch.zeros_like(x[0]), []
            for x_t in x:
                spk = (mem > 0.5).float()
                mem = 0.8 * mem + x_t + spk @ self.w      # the product no hook sees
                out.append(spk)
            return torch.stack(out)

    x = (torch.rand(4, 3, 5) < 0.5).float()
    model = nn.Sequential(nn.Linear(5, 5), SelfCoupled(5))
    assert profile(model, x).not_counted == []
    rep = profile(model, x, audit=True)
    assert rep.not_counted == ["1 (functional)"]
    note = rep.layer("1 (functional)").note
    assert "mm x4 (60 elements)" in note and "mul" not in note   # the neuron's element-wise update is its own
    assert rep.layer("1").neuron_updates == 4 * 3 * 5


class NormedLoop(nn.Module):
    """A normalisation (its input is not read for a count; ``norm=False``: none), a neuron of another library, a
    Linear: a NaN reaching the neuron vanishes in its threshold test, so the Linear reads only finite spikes."""

    def __init__(self, neuron, n=6, norm=True):
        super().__init__()
        self.norm, self.lif, self.fc = nn.LayerNorm(n) if norm else nn.Identity(), neuron, nn.Linear(n, 3)

    def forward(self, x):
        if isinstance(self.lif, snn.Leaky):  # one call a time step, the membrane passed along
            mem, out = self.lif.init_leaky(), []
            for x_t in x:
                spk, mem = self.lif(self.norm(x_t), mem)
                out.append(self.fc(spk))
            return torch.stack(out)
        h = self.lif(self.norm(x))
        return self.fc(h[0] if isinstance(h, tuple) else h)


@pytest.mark.parametrize("kind", ["spikingjelly", "snntorch", "norse"])
def test_a_nan_into_another_library_s_neuron_is_named_under_rates_needed(kind):
    """Only rates="all" read such a neuron's input, so under the default a NaN that reached it (through a norm, or
    given to it) vanished without a word: 27 SynOps reported for the audit's SpikingJelly model. The meter now reads
    it, in its usual reads (neurosim's own neurons check their input themselves: not read). Hooked, replayed
    (profile called again) and under profile_batches."""
    from neurosim.energy import EnergyMeter, profile_batches

    def neuron():
        return {"spikingjelly": lambda: sj_neuron.LIFNode(step_mode="m"), "snntorch": lambda: snn.Leaky(beta=0.8),
                "norse": lambda: norse.LIF()}[kind]()

    torch.manual_seed(3)
    x = torch.rand(3, 2, 6) * 3
    bad = x.clone()
    bad[0, 0, 0] = float("nan")
    for norm in (True, False):
        model = NormedLoop(neuron(), norm=norm).eval()
        where = rf"^layer 'lif' \({type(model.lif).__name__}\): its input contains NaN"
        rep = profile(model, x)
        assert rep.layer("lif").in_rate is not None  # (the read gives the neuron's input rate too)
        with pytest.raises(ValueError, match=where):
            profile(model, bad)
        profile(model, x)
        profile(model, x)  # (recorded, then replayed)
        with pytest.raises(ValueError, match=where):
            profile(model, bad)
        with pytest.raises(ValueError, match=where):
            profile_batches(model, [x, x, bad], progress=False)
        with torch.no_grad(), EnergyMeter(model) as meter:
            for xi in (x, x, bad):
                model(xi)
        assert meter.replayed == 2  # (the NaN in a replayed forward)
        with pytest.raises(ValueError, match=where):
            meter.report()
    # neurosim's neurons check their input themselves: under rates="needed" the meter does not read it
    import neurosim

    lif = nn.Sequential(nn.LayerNorm(6), neurosim.LIF(backend="torch"), nn.Linear(6, 3))
    assert profile(lif, x, reuse=False).layer("1").in_rate is None
    with pytest.raises(ValueError, match=r"^layer '1' \(LIF\): x contains NaN"):
        profile(lif, bad, reuse=False)
