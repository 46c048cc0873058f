"""A meter's recordings kept between ``with`` blocks, ``EnergyMeter.reset`` and ``profile`` called again on a model.

The reference is a new meter with ``replay=False`` for each forward (the hook path, checked against hand counts and
SpikingJelly / syops in the other energy tests). Each forward gets a new random input, so counts carried over from
an earlier call, or a recording replayed under changed layer settings, give other numbers.
"""
from __future__ import annotations

import gc
import json
import weakref

import pytest
import torch
from torch import nn

from neurosim.energy import EnergyMeter, profile
from neurosim.energy import meter as M
from neurosim.layers import MatMul

from test_energy_replay import DEVICES, models, spikes


def hooked(model, x, **kw):
    """The reference: a fresh meter, hooks only, one forward (reported as ``profile`` does, per sample of dim 1)."""
    with torch.no_grad(), EnergyMeter(model, replay=False, **kw) as meter:
        model(x)
    return json.loads(meter.report(batch_size=x.shape[1]).to_json())


def as_dict(report):
    return json.loads(report.to_json())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", range(5))
def test_a_meter_reset_between_blocks_reports_each_batch_and_replays(case, device):
    """Entered and reset once a batch, one meter reports each batch as a fresh meter does; from the second block on
    the forwards are replayed from the first block's recording."""
    name, model, shape = models()[case]
    model = model.to(device).eval()
    xs = spikes(shape, 4, device)
    meter = EnergyMeter(model)
    got, replayed = [], []
    for x in xs:
        with torch.no_grad(), meter:
            model(x)
        got.append(as_dict(meter.report(batch_size=x.shape[1])))
        replayed.append(meter.replayed)
        meter.reset()
    assert got == [hooked(model, x) for x in xs], name
    assert replayed == [0, 1, 1, 1], name
    assert len({r["totals"]["synops"] for r in got}) > 1, name  # (the batches differ: a stale count would show)


def test_reset_keeps_the_count_buffer_from_growing():
    """Rows after the recordings are taken again after a reset (zeroed: the counts are added into them)."""
    name, model, shape = models()[3]
    model.eval()
    meter = EnergyMeter(model)
    used, kept, size = [], [], []
    cpu = torch.device("cpu")
    for x in spikes(shape, 5):
        with torch.no_grad(), meter:
            model(x)
        meter.report()
        used.append(meter._counts.used(cpu))
        meter.reset()
        kept.append(meter._counts.used(cpu))
        size.append(meter._counts.bufs[cpu][0].shape[0])
    assert kept == [used[0]] * 5  # the recording's rows stay
    assert used[1:] == [2 * used[0]] * 4  # a replay's block after them, taken again after each reset
    assert len(set(size)) == 1


def test_reset_refuses_inside_a_block():
    model = models()[0][1]
    meter = EnergyMeter(model)
    with meter, pytest.raises(RuntimeError, match="between with blocks"):
        meter.reset()


def test_changed_layer_settings_between_blocks_are_recorded_again():
    """A product's scale and a norm's train/eval mode change its counts without changing a shape: the recording of an
    earlier block is not replayed then (it would price the old settings)."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.qk = MatMul(scale=0.25)
            self.norm = nn.InstanceNorm1d(6, track_running_stats=True)

        def forward(self, x):  # [T, B, 6, 6] spikes
            return self.norm(self.qk(x, x.transpose(-1, -2)).flatten(0, 1))

    model = Net().eval()
    xs = spikes((2, 3, 6, 6), 4)
    meter = EnergyMeter(model)
    for i, x in enumerate(xs):
        if i == 2:
            model.qk.scale = 1.0
        if i == 3:
            model.norm.train()
        with torch.no_grad(), meter:
            model(x)
        assert as_dict(meter.report(batch_size=x.shape[1])) == hooked(model, x), i
        assert meter.replayed == (i == 1), i
        meter.reset()


def test_a_transformer_layers_activation_function_changed_between_calls_is_recorded_again():
    """``nn.TransformerEncoderLayer`` keeps its activation as a plain function: relu and gelu cost differently with
    the same shapes, so a kept recording must not price the old one."""
    import torch.nn.functional as F

    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0)
    model = nn.Sequential(layer).eval()  # (a model that is itself a counted layer is not kept)
    xs = [torch.randn(5, 3, 8, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    for i, x in enumerate(xs):
        if i == 2:
            layer.activation = F.gelu
        assert as_dict(profile(model, x)) == hooked(model, x), i
    assert M._KEPT[model][1].replayed == 1  # (the fourth call, after the third recorded the change)


@pytest.mark.parametrize("case", range(5))
def test_profile_called_again_replays_and_reports_the_same_as_a_first_call(case):
    """``profile`` keeps its meter for the model: the second call records, later ones replay; every report is that
    of a fresh one-shot call (``reuse=False``) on the same input."""
    name, model, shape = models()[case]
    model.eval()
    xs = spikes(shape, 4)
    got = [as_dict(profile(model, x, hardware="loihi" if i == 3 else "cmos45nm")) for i, x in enumerate(xs)]
    kept = M._KEPT[model][1]
    assert kept.replayed == 1 and kept.model is None, name
    want = [as_dict(profile(model, x, reuse=False, hardware="loihi" if i == 3 else "cmos45nm"))
            for i, x in enumerate(xs)]
    assert got == want, name
    assert got[0] == hooked(model, xs[0]), name


def test_profile_after_a_layer_is_replaced_counts_the_new_layer():
    model = nn.Sequential(nn.Linear(12, 20), models()[0][1][1], nn.Linear(20, 4))
    xs = spikes((3, 4, 12), 4)
    for x in xs[:3]:
        profile(model, x)
    model[2] = nn.Linear(20, 7)
    assert as_dict(profile(model, xs[3])) == hooked(model, xs[3])


def test_profile_with_other_settings_makes_another_meter():
    name, model, shape = models()[3]
    model.eval()
    x = spikes(shape, 1)[0]
    profile(model, x)
    first = M._KEPT[model][1]
    assert as_dict(profile(model, x, rates="all")) == hooked(model, x, rates="all")
    assert M._KEPT[model][1] is not first


def test_profile_keeps_no_model_alive():
    """The kept meter goes with its model; a model that is itself a counted layer is not kept at all."""
    name, model, shape = models()[3]
    x = spikes(shape, 1)[0]
    for _ in range(3):
        profile(model.eval(), x)
    assert model in M._KEPT
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None
    leaf = nn.Linear(5, 3)
    profile(leaf, torch.rand(2, 3, 5))
    assert leaf not in M._KEPT
    ref = weakref.ref(leaf)
    del leaf
    gc.collect()
    assert ref() is None


def test_a_failed_profile_call_leaves_the_kept_meter_usable():
    name, model, shape = models()[0]
    xs = spikes(shape, 3)
    profile(model, xs[0])
    profile(model, xs[1])
    bad = xs[2].clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        profile(model, bad)
    assert as_dict(profile(model, xs[2])) == hooked(model, xs[2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused LIF kernel and the counting kernel need CUDA")
@pytest.mark.parametrize("case", range(5))
def test_profile_called_again_with_fused_neurons_gpu(case):
    """Fused LIF kernels tally their spikes into rows the recording gave them: after a reset those rows are taken
    again, and each report is a fresh one-shot call's."""
    name, model, shape = models("fused")[case]
    model = model.cuda().eval()
    xs = spikes(shape, 4, "cuda")
    got = [as_dict(profile(model, x)) for x in xs]
    assert M._KEPT[model][1].replayed == 1, name
    assert got == [as_dict(profile(model, x, reuse=False)) for x in xs], name


def test_profile_of_an_unhashable_model_is_not_kept():
    """A module class that defines ``__eq__`` without ``__hash__`` cannot key the kept meters: each call is a first
    call, with the same counts."""
    class Unhashable(nn.Sequential):
        def __eq__(self, other):
            return self is other

    name, base, shape = models()[0]
    model = Unhashable(*base)
    xs = spikes(shape, 3)
    assert [as_dict(profile(model, x)) for x in xs] == [hooked(model, x) for x in xs]
