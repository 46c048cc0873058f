"""Replayed eager forwards (neurosim.energy.replay): the same report as metering every forward with the hooks.

The reference is the meter with ``replay=False`` over the same forwards (the hook path, itself checked against
hand counts and against SpikingJelly / syops in the other energy tests). Each forward gets a new random input, so a
replay that reused an earlier forward's rows, or read the wrong tensors, gives other counts.
"""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import neurosim
from neurosim.energy import EnergyMeter, profile_batches
from neurosim.energy.replay import Template
from neurosim.layers import Add, MatMul, NeuronSpec
from neurosim.models import EnhancedSpikingTransformer, ESTConfig, spikformer

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def lif(backend="torch"):
    return neurosim.LIF(beta=0.5, threshold=0.5, backend=backend)


class ConvNet(nn.Module):
    def __init__(self, backend="torch"):
        super().__init__()
        self.conv1, self.bn1, self.lif1 = nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8), lif(backend)
        self.conv2, self.lif2 = nn.Conv2d(8, 8, 3, stride=2, padding=1), lif(backend)
        self.pool, self.fc = nn.MaxPool2d(2), nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):  # [T, B, 2, 16, 16]
        t, b = x.shape[:2]
        y = self.lif1(self.bn1(self.conv1(x.flatten(0, 1))).reshape(t, b, 8, 16, 16))
        y = self.lif2(self.conv2(y.flatten(0, 1)).reshape(t, b, 8, 8, 8))
        return self.fc(self.pool(y.flatten(0, 1)).flatten(1)).reshape(t, b, 5)


class Attention(nn.Module):
    def __init__(self, d=16, heads=2, backend="torch"):
        super().__init__()
        self.heads = heads
        self.qkv, self.lif_qkv = nn.Linear(d, 3 * d, bias=False), lif(backend)
        self.qk, self.av, self.lif_attn = MatMul(scale=0.25), MatMul(), lif(backend)
        self.proj, self.add, self.norm = nn.Linear(d, d), Add(), nn.LayerNorm(d)

    def forward(self, x):  # [T, B, N, D] spikes
        t, b, n, d = x.shape
        s = self.lif_qkv(self.qkv(x))
        q, k, v = s.reshape(t, b, n, 3, self.heads, d // self.heads).permute(3, 0, 1, 4, 2, 5)
        y = self.lif_attn(self.av(self.qk(q, k.transpose(-1, -2)), v).transpose(2, 3).reshape(t, b, n, d))
        return self.norm(self.add(x, self.proj(y)))


def models(backend="torch"):
    """(name, model, input shape) of each kind of counter: Linear, conv and pooling (fan-out maps), products
    (exact scaled sums), additions, norms, and two whole transformers."""
    torch.manual_seed(0)
    neuron = NeuronSpec(backend=backend, threshold=0.5)
    kw = dict(dim=16, depth=2, heads=2, num_steps=2, max_len=6, readout="pool", neuron=neuron)
    mlp = nn.Sequential(nn.Linear(12, 20), lif(backend), nn.Linear(20, 20), lif(backend), nn.Linear(20, 4))
    return [("mlp", mlp, (3, 4, 12)), ("conv", ConvNet(backend), (2, 3, 2, 16, 16)),
            ("attention", Attention(backend=backend), (2, 3, 6, 16)),
            ("spikformer", spikformer(8, 5, **kw), (3, 6, 8)),
            ("est", EnhancedSpikingTransformer(ESTConfig(8, 5, **kw)), (3, 6, 8))]


def metered(model, inputs, replay, **kw):
    with torch.no_grad(), EnergyMeter(model, replay=replay, **kw) as meter:
        for x in inputs:
            model(x)
        replayed = meter.replayed
    return json.loads(meter.report().to_json()), replayed


def spikes(shape, n, device="cpu", seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(shape, generator=g) < 0.3).float().to(device) for _ in range(n)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", range(5))
def test_replayed_forwards_report_what_the_hooks_report(case, device):
    name, model, shape = models()[case]
    model = model.to(device).eval()
    xs = spikes(shape, 4, device)
    replayed, n = metered(model, xs, True)
    hooked, n0 = metered(model, xs, False)
    assert (n, n0) == (3, 0), name  # the first forward recorded, the other three replayed
    assert replayed == hooked, name
    assert replayed["totals"]["synops"] > 0 and all(r["calls"] == 4 for r in replayed["layers"]), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused LIF kernel and the counting kernel need CUDA")
@pytest.mark.parametrize("case", range(5))
def test_replayed_fused_forwards_gpu(case):
    """Fused LIF kernels count their own spikes into the rows the recording gave them; reads batched a launch."""
    name, model, shape = models("fused")[case]
    model = model.cuda().eval()
    xs = spikes(shape, 4, "cuda")
    replayed, n = metered(model, xs, True, counting="kernel")
    hooked, _ = metered(model, xs, False, counting="kernel")
    assert replayed == hooked, name
    # the conv net's spikes feed convolutions and pooling, whose fan-weighted reads count them anyway: its first
    # forward tells the LIF kernels to stop tallying, so the second forward is the one recorded
    assert n == (2 if name == "conv" else 3), name


class Branchy(nn.Module):
    """A forward whose calls depend on Python state: ``skip`` leaves out the middle layer, ``tail`` the last,
    ``narrow`` gives the middle layer a part of the batch only (the same calls, another shape)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.lif1, self.fc2, self.lif2, self.fc3 = (nn.Linear(8, 8), lif(), nn.Linear(8, 8), lif(),
                                                              nn.Linear(8, 3))
        self.skip, self.tail, self.narrow = False, True, False

    def forward(self, x):
        y = self.lif1(self.fc1(x))
        if self.narrow:
            y = y[:, :2]
        if not self.skip:
            y = self.lif2(self.fc2(y))
        return self.fc3(y) if self.tail else y


@pytest.mark.parametrize("change", ["skip", "tail", "narrow"])
def test_a_forward_that_differs_from_the_recording_is_counted_by_the_hooks(change):
    """Another branch mid-forward (``skip``), fewer calls at the end (``tail``) or the same calls with another
    shape mid-forward (``narrow``): the calls matched so far go to the hooks, the rest run hooked, and the report
    equals the all-hooked one."""
    torch.manual_seed(0)
    model = Branchy()
    xs = spikes((2, 3, 8), 5)
    plan = [False, False, True, False, False]  # the third forward differs

    def run(replay):
        with torch.no_grad(), EnergyMeter(model, replay=replay) as meter:
            for x, differ in zip(xs, plan):
                setattr(model, change, not differ if change == "tail" else differ)
                model(x)
            replayed = meter.replayed
        return json.loads(meter.report().to_json()), replayed

    replayed, n = run(True)
    hooked, _ = run(False)
    assert replayed == hooked
    assert n == 2  # forwards 2 and 5 (the 4th records again after the 3rd gave up)
    calls = {r["name"]: r["calls"] for r in replayed["layers"]}
    assert calls["fc3"] == (4 if change == "tail" else 5) and calls["fc2"] == (4 if change == "skip" else 5)


class LateInPlace(nn.Module):
    """A LIF's spikes read by fc1, then zeroed in place (outside any module) before fc2 reads them."""

    def __init__(self, zero=True):
        super().__init__()
        self.lif, self.fc1, self.fc2 = lif(), nn.Linear(6, 4), nn.Linear(6, 4)
        self.zero = zero

    def forward(self, x):
        s = self.lif(x)
        y = self.fc1(s)
        if self.zero:
            s.mul_(0)
        return y + self.fc2(s)


def test_in_place_changes_are_not_replayed():
    """A recording whose tensors changed in place after a call saw them is not used; a replayed forward in which
    one changes (unlike the recording) is flagged in the report and not replayed again."""
    torch.manual_seed(0)
    model = LateInPlace()
    xs = [torch.rand(3, 2, 6) for _ in range(3)]
    with torch.no_grad(), EnergyMeter(model) as meter:
        for x in xs:
            model(x)
        (why,) = meter._templates.values()
        assert meter.replayed == 0 and isinstance(why, str) and "changed in place" in why
    with torch.no_grad(), EnergyMeter(model, replay=False) as hooked:
        for x in xs:
            model(x)
    assert json.loads(meter.report().to_json()) == json.loads(hooked.report().to_json())

    model.zero = False
    with torch.no_grad(), EnergyMeter(model) as meter:
        model(xs[0])  # recorded without the change
        assert isinstance(next(iter(meter._templates.values())), Template)
        model.zero = True
        model(xs[1])  # the spikes change after the LIF returned them: fc2's input differs from the recording's
        assert meter.replayed == 0 and not meter._templates  # the replay gave up (and is recorded again)
    notes = {r["name"]: r["note"] for r in json.loads(meter.report().to_json())["layers"]}
    # the hooks then read the LIF's spikes (fc1's input) zeroed: said so in the report
    assert all("changed in place before the replayed forward read it" in notes[n] for n in ("lif", "fc1"))
    assert "changed in place" not in notes["fc2"]


@pytest.mark.parametrize("edit", ["before", "after"])
def test_replayed_products_and_sums_count_their_values_before_an_in_place_edit(edit):
    """Recorded without edits, then forwards that edit the outputs of spike x spike and real x spike products and of
    spike + spike sums in place (test_energy.EditedOutputs). A replay read those outputs when the forward ended,
    edited. Now it reads them as their calls return: ``"after"`` (each edit after the tensor's last use by a module)
    replays every forward, with no warning or note; ``"before"`` gives the replay up at the next module given the
    edited tensor, and the hooks count the calls it matched from the rows read as they returned. Hand counts, as
    hooked forwards give; ``profile_batches`` (eager on CPU: replayed) too."""
    import warnings

    import neurosim.models  # noqa: F401  (registers SEWConnect's counter)
    from test_energy import EditedOutputs, edited_counts, edited_reference

    model = EditedOutputs("none")
    inputs = [[spikes((2, 2, 6, 4), 1, seed=10 * i + j)[0] for j in range(3)] for i in range(5)]
    want = [edited_reference(*x) for x in inputs]
    total = {n: sum(w[n] for w in want) for n in want[0]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (no "changed tensors in place" warning)
        with torch.no_grad(), EnergyMeter(model) as meter:
            for i, x in enumerate(inputs):
                model.edit = edit if i >= 2 else "none"
                model(*x)
        # "before": the 2nd forward replayed, the 3rd gives up, the 4th records again (not used: it edits), the 5th
        # is hooked
        assert meter.replayed == (4 if edit == "after" else 1)
        rep = meter.report()
    assert edited_counts(rep) == total
    assert not any("changed" in r.note for r in rep.layers)
    model.edit = edit
    batches = profile_batches(model, inputs, progress=False)
    assert edited_counts(batches) == total and not any("changed" in r.note for r in batches.layers)


def test_each_input_signature_has_its_recording_and_profile_batches_replays():
    """A smaller last batch is recorded apart; profile_batches on CPU replays every batch after the first of a
    shape, and its report equals the hooked one."""
    name, model, shape = models()[3]
    model.eval()
    batches = spikes(shape, 3) + spikes((shape[0], 2) + shape[2:], 2, seed=5)
    with torch.no_grad(), EnergyMeter(model) as meter:
        for x in batches:
            model(x)
        assert meter.replayed == 3 and len(meter._templates) == 2
    rep = profile_batches(model, batches, progress=False)
    with torch.no_grad(), EnergyMeter(model, replay=False) as hooked:
        for x in batches:
            model(x)
    assert json.loads(rep.to_json())["layers"] == json.loads(hooked.report(batch_size=16).to_json())["layers"]


def test_wrapped_forwards_are_restored():
    """The meter wraps ``forward`` of each counted module (no hooks) and puts back what was there."""
    model = nn.Sequential(nn.Linear(4, 4), lif())
    own = model[0].forward  # an instance attribute set before the meter: kept
    model[0].forward = own
    with EnergyMeter(model):
        assert "forward" in model.__dict__ and model[1].__dict__["forward"] is not None
        assert model[0].__dict__["forward"] is not own
        model(torch.rand(2, 1, 4))
    assert "forward" not in model.__dict__ and "forward" not in model[1].__dict__
    assert model[0].__dict__["forward"] is own
    assert not model[0]._forward_hooks and not model[0]._forward_pre_hooks


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", [0, 4])
def test_a_meter_entered_again_adds_to_its_layers(case, device):
    """Forwards metered in two ``with`` blocks of one meter report each layer once, with the calls of both (as one
    block over the same inputs). A report between the blocks gives the first forward's counts, the one after both
    blocks all of them (the rows read back for the first are not reused); so do reports inside a block after each
    forward."""
    name, model, shape = models()[case]
    model = model.to(device).eval()
    xs = spikes(shape, 3, device)
    one, _ = metered(model, xs[:1], True)
    two, _ = metered(model, xs[:2], True)
    meter = EnergyMeter(model)
    with torch.no_grad(), meter:
        model(xs[0])
    first = json.loads(meter.report().to_json())
    with torch.no_grad(), meter:
        model(xs[1])
    assert first == one, name
    assert json.loads(meter.report().to_json()) == two, name
    with torch.no_grad(), EnergyMeter(model) as meter:
        model(xs[0])
        inside = [json.loads(meter.report().to_json())]
        model(xs[1])
        inside.append(json.loads(meter.report().to_json()))
    assert inside == [one, two], name
    assert two["totals"]["synops"] > one["totals"]["synops"] > 0, name



class Gain(nn.Module):
    """A layer of the user's with a counter of their own (below)."""

    def forward(self, x):
        return 2 * x


def count_gain(module, args, output):
    from neurosim.energy import stats  # (bound by name: the meter still supplies its reads)

    s = stats(args[0])
    return neurosim.energy.Count(dense=s.numel, spike_input=s, spike_count=s.nnz, spike_kind="acs")


class Baselines(nn.Module):
    """torch's attention and LSTM, and a user-counted layer: counters in modules that import ``stats`` by name."""

    def __init__(self):
        super().__init__()
        self.gain, self.mha, self.lstm = Gain(), nn.MultiheadAttention(8, 2), nn.LSTM(8, 6, num_layers=2)

    def forward(self, x):  # [T, B, 8] spikes
        y = self.gain(x)
        return self.lstm(self.mha(x, x, y, need_weights=False)[0])[0]


@pytest.mark.parametrize("device", DEVICES)
def test_counters_that_import_stats_by_name_share_the_meters_reads_and_replay(device):
    """``from neurosim.energy import stats`` in a counter gets the meter's stats while it runs (as counters.py's own
    do): one read per tensor, and forwards replayed with the report of the hooks."""
    from neurosim.energy import register_counter

    register_counter(Gain, count_gain, overwrite=True)
    torch.manual_seed(0)
    model = Baselines().to(device).eval()
    xs = spikes((5, 3, 8), 4, device)
    replayed, n = metered(model, xs, True)
    hooked, n0 = metered(model, xs, False)
    assert (n, n0) == (3, 0)
    assert replayed == hooked
    rows = {r["name"]: r for r in replayed["layers"]}
    assert rows["gain"]["acs"] == sum(x.sum().item() for x in xs) and rows["mha"]["synops"] > 0
