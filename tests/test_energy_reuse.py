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


# ---------------------------------------------------------------- cases found by trying to break a kept meter
def _lin(i, o):
    layer = nn.Linear(i, o)
    layer.weight.data *= 6  # (the LIF fires: with the default init it stays silent and every count is 0)
    return layer


def _lif():
    import neurosim

    return neurosim.LIF(beta=0.5, backend="torch")


def _spikes(*shape):
    return (torch.rand(*shape) < 0.2).float()


def _again(model, xs, call=lambda m, x: m(x)):
    """``profile`` on each input in turn (a kept meter: recorded, then replayed) against a fresh hooked meter."""
    got, want = [], []
    for x in xs:
        first = x[0] if isinstance(x, tuple) else x
        got.append(as_dict(profile(model, x)))
        with torch.no_grad(), EnergyMeter(model, replay=False) as meter:
            call(model, x)
        want.append(json.loads(meter.report(batch_size=first.shape[1]).to_json()))
    return got, want


def test_layers_are_listed_in_the_order_of_the_calls_after_a_reset():
    """A layer that first runs in a later call, or replaces another, is listed where the hooks list it."""
    class Optional(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.lif = _lin(16, 16), _lin(16, 16), _lif()

        def forward(self, x):
            if x[0, 0, 0] > 0:  # (a pre-layer taken from the second call on)
                x = self.lif(self.b(x))
            return self.lif(self.a(x))

    xs = [_spikes(4, 3, 16) for _ in range(3)]
    for i, x in enumerate(xs):
        x[0, 0, 0] = float(i >= 1)
    got, want = _again(Optional(), xs, call=lambda m, x: m(x))
    assert got == want and [r["name"] for r in got[-1]["layers"]] == ["b", "lif", "a"]
    seq = nn.Sequential(_lin(16, 16), _lif(), _lin(16, 16), _lif())
    got, want = _again(seq, [_spikes(4, 3, 16) for _ in range(2)])
    seq[2] = _lin(16, 16)
    got2, want2 = _again(seq, [_spikes(4, 3, 16)])
    assert got + got2 == want + want2 and [r["name"] for r in got2[0]["layers"]] == ["0", "1", "2", "3"]


def test_a_kept_meter_holds_its_layers_weakly():
    """Between calls a kept meter neither keeps replaced layers alive nor the model, even when a layer refers back
    to the model (a bound-method hook)."""
    seq = nn.Sequential(_lin(16, 16), _lif(), _lin(16, 16), _lif())
    old = []
    for _ in range(4):
        old.append(weakref.ref(seq[2]))
        seq[2] = _lin(16, 16)
        got, want = _again(seq, [_spikes(4, 3, 16)])
        assert got == want
    gc.collect()
    assert [r() is None for r in old] == [True] * 4

    class Recorded(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.lif, self.rates = _lin(16, 16), _lif(), []
            self.lif.register_forward_hook(self.record)  # (the LIF refers back to the model)

        def record(self, module, args, out):
            self.rates.append(float(out.mean()))

        def forward(self, x):
            return self.lif(self.fc(x))

    model = Recorded()
    got, want = _again(model, [_spikes(4, 3, 16) for _ in range(3)])
    assert got == want
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None


def test_nested_input_tensors_are_keyed_by_shape_and_not_kept():
    """An (h, c) state in the inputs: one recording for all calls (shapes, not identities), replayed, and the
    inputs of earlier calls are not kept alive by the meter."""
    class Stateful(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.lif = _lin(16, 16), _lif()

        def forward(self, x, state):
            h, c = state
            return self.lif(self.fc(x) + h) + c

    model, states = Stateful(), []
    for _ in range(5):
        h = torch.randn(4, 3, 16)
        states.append(weakref.ref(h))
        got, want = _again(model, [(_spikes(4, 3, 16), (h, torch.zeros(4, 3, 16)))], call=lambda m, x: m(*x))
        assert got == want
        del h
    gc.collect()
    meter = M._KEPT[model][1]
    assert (len(meter._templates), meter.replayed) == (1, 1) and not any(r() is not None for r in states)


def test_attention_switching_between_self_and_cross_attention_is_not_replayed_as_the_other():
    """nn.MultiheadAttention is counted by whether key/value are the query itself: a replay checks which of a
    call's tensors are the same tensor."""
    class Attend(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.lif, self.mha = _lin(16, 32), _lif(), nn.MultiheadAttention(32, 4)

        def forward(self, x, ctx):
            q = self.lif(self.fc(x))
            kv = q if ctx.sum() == 0 else ctx
            return self.mha(q, kv, kv, need_weights=False)[0]

    xs = [(_spikes(4, 3, 16), _spikes(4, 3, 32) if i < 3 else torch.zeros(4, 3, 32)) for i in range(4)]
    got, want = _again(Attend().eval(), xs, call=lambda m, x: m(*x))
    assert got == want and got[3]["layers"][2]["synops"] != got[2]["layers"][2]["synops"]


def test_counters_that_read_counts_back_are_not_replayed():
    """A count a counter turned into a Python number would stand for every replay: EmbeddingBag (registered with
    replay=False) and a user counter taking int() of a stats count are hooked on every call."""
    from neurosim.energy import Count, register_counter, stats

    class Bags(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.fc, self.lif = nn.EmbeddingBag(50, 16, mode="sum", padding_idx=0), _lin(16, 16), _lif()

        def forward(self, idx):
            return self.lif(self.fc(self.emb(idx).unsqueeze(0)))

    idxs = []
    for i in range(4):
        idx = torch.randint(1, 50, (3, 8))
        idx[:, 2 * i:] = 0  # (bags of other lengths each call)
        idxs.append(idx)
    got, want = [], []
    model = Bags()
    for idx in idxs:
        got.append(profile(model, idx).layers[0].acs)
        with torch.no_grad(), EnergyMeter(model, replay=False) as meter:
            model(idx)
        want.append(meter.report().layers[0].acs)
    assert got == want and len(set(want)) == 4

    class Gate(nn.Module):
        def forward(self, x):
            return x * 2

    register_counter(Gate, lambda m, a, o: Count(dense=a[0].numel(), dense_is_mac=False, acs=int(stats(a[0]).nnz)),
                     overwrite=True)
    got, want = _again(nn.Sequential(_lin(16, 16), _lif(), Gate()), [_spikes(4, 3, 16) for _ in range(4)])
    assert got == want and M._KEPT  # (the kept meter hooked them: "a counter read a count back")


def test_a_list_valued_setting_changed_between_calls_is_recorded_anew():
    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.lif = nn.Conv2d(2, 4, 3, padding=1), _lif()
            self.conv.weight.data *= 8
            self.pool = nn.MaxPool2d([2, 2], [2, 2], [0, 0])  # (lists, as a YAML config gives them)

        def forward(self, x):
            y = self.lif(self.conv(x.flatten(0, 1)).unflatten(0, x.shape[:2]))
            return self.pool(y.flatten(0, 1))

    model = Pooled()
    got, want = _again(model, [_spikes(2, 3, 2, 8, 8) for _ in range(3)])
    model.pool.kernel_size, model.pool.padding = [3, 3], [1, 1]  # (same output shape, other windows)
    got2, want2 = _again(model, [_spikes(2, 3, 2, 8, 8)])
    model.pool.kernel_size[0] = 2  # (changed in place: the meter compared a copy)
    model.pool.kernel_size[1], model.pool.padding = 2, [0, 0]
    got3, want3 = _again(model, [_spikes(2, 3, 2, 8, 8)])
    assert got + got2 + got3 == want + want2 + want3
    # inside one block: the list changed in place between forwards (the check before each forward sees it)
    xs, sizes, want = [_spikes(2, 3, 2, 8, 8) for _ in range(4)], [2, 2, 3, 3], []
    for x, k in zip(xs, sizes):
        model.pool.kernel_size[:], model.pool.padding[:] = [k, k], [k - 2, k - 2]
        want.append(hooked(model, x))
    meter = EnergyMeter(model)
    with torch.no_grad(), meter:
        for x, k in zip(xs, sizes):
            model.pool.kernel_size[:], model.pool.padding[:] = [k, k], [k - 2, k - 2]
            model(x)
    got = as_dict(meter.report(batch_size=3))
    assert got["totals"]["acs"] == sum(w["totals"]["acs"] for w in want) and meter.replayed == 2
    # changed after the block started, before its first forward: that forward's recording is not taken for one of
    # the settings the block started with (the next block, entered with those, records anew)
    meter, (x1, x2) = EnergyMeter(model), (_spikes(2, 3, 2, 8, 8), _spikes(2, 3, 2, 8, 8))
    with torch.no_grad(), meter:
        model.pool.kernel_size[:], model.pool.padding[:] = [2, 2], [0, 0]
        model(x1)
    meter.reset()
    model.pool.kernel_size[:], model.pool.padding[:] = [3, 3], [1, 1]
    with torch.no_grad(), meter:
        model(x2)
    assert as_dict(meter.report(batch_size=3)) == hooked(model, x2)


def test_one_model_profiled_from_two_threads_and_run_by_a_third():
    """Two threads profiling one model at once: the second waits for the first's block (its meter would wrap the
    same forwards); a forward of another thread meanwhile is not the meter's. Each report is the one it gives
    alone, and the model is left unwrapped."""
    import threading
    import time

    entered, go = threading.Event(), threading.Event()

    class Gate(nn.Module):
        def forward(self, x):
            if threading.current_thread().name == "A":
                entered.set()
                go.wait(30)
            return x

    model = nn.Sequential(_lin(16, 16), _lif(), Gate(), nn.Linear(16, 4))
    xa, xb = _spikes(4, 3, 16), _spikes(4, 3, 16)
    want = {"A": hooked(model, xa), "B": hooked(model, xb)}
    out = {}
    threads = [threading.Thread(target=lambda k=k, x=x: out.__setitem__(k, as_dict(profile(model, x))), name=k)
               for k, x in (("A", xa), ("B", xb))]
    threads[0].start()
    assert entered.wait(30)
    threads[1].start()
    with torch.no_grad():
        model(xb)  # (this thread's plain forward, while A's meter wraps the model)
    time.sleep(0.2)
    assert "B" not in out  # (B waits for A)
    go.set()
    for t in threads:
        t.join(30)
    assert out == want
    assert not any("forward" in m.__dict__ for m in model.modules())
    assert as_dict(profile(model, xa)) == want["A"]


def test_a_replayed_forward_that_changes_a_used_tensor_in_place_says_so():
    """A replay reads its tensors when the forward ends; one changed in place after its layer used it is counted
    changed, with a warning and a note, and the next forwards are hooked (exact again)."""
    class Late(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.lif, self.fc2 = _lin(16, 16), _lif(), _lin(16, 16)

        def forward(self, x):
            a = self.lif(self.fc1(x))
            y = self.fc2(a)
            if x[0, 0, 0] > 0:
                a.zero_()  # (after fc2 used it)
            return y

    xs = [_spikes(4, 3, 16) for _ in range(5)]
    for i, x in enumerate(xs):
        x[0, 0, 0] = float(i >= 3)
    model = Late()
    got, want = _again(model, xs[:3])
    assert got == want
    with pytest.warns(RuntimeWarning, match=r"changed tensors in place after layer\(s\) 'lif', 'fc2' used them"):
        rep = profile(model, xs[3])
    assert "changed in place" in rep.layer("fc2").note
    got, want = _again(model, xs[4:])
    assert got == want


def test_settings_that_are_numpy_scalars_or_change_inside_a_block_are_compared():
    """A scale swept with numpy (np.float64, a float subclass) between calls, and train/eval plus a scale changed
    between two forwards of one block: the recordings are made anew, as the hooks count."""
    import numpy as np

    class Attend(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.lif = _lin(16, 32), _lif()
            self.norm = nn.InstanceNorm1d(32, track_running_stats=True)  # (more MACs in training)
            self.mm = MatMul(scale=0.5)

        def forward(self, x):
            h = self.lif(self.fc(x))
            return self.mm(h, h.transpose(-1, -2)), self.norm(h.transpose(1, 2))

    model = Attend().eval()
    for scale in np.linspace(0.25, 1.0, 4):
        model.mm.scale = scale
        got, want = _again(model, [_spikes(4, 3, 16)])
        assert got == want, scale
    xs = [_spikes(4, 3, 16) for _ in range(4)]
    want, meter = [], EnergyMeter(model)
    for i, x in enumerate(xs):  # (one block: training forwards, then evaluation ones with another scale)
        model.train(i < 2)
        model.mm.scale = 0.5 if i < 2 else 1.0
        want.append(hooked(model, x))
    with torch.no_grad(), meter:
        for i, x in enumerate(xs):
            model.train(i < 2)
            model.mm.scale = 0.5 if i < 2 else 1.0
            model(x)
    got = as_dict(meter.report(batch_size=3))
    for key in ("synops", "macs", "acs"):
        assert got["totals"][key] == sum(w["totals"][key] for w in want), key


def test_a_caught_layer_error_is_not_blamed_for_a_later_one_and_failed_forwards_count_alike():
    """A counted layer whose error the model catches: a later, unrelated error is not reported as that layer's;
    a forward that raises counts the layers it ran, replayed or hooked."""
    from neurosim.energy import profile_batches

    class Fallback(nn.Module):
        def __init__(self):
            super().__init__()
            self.wide, self.fc, self.lif = nn.Linear(32, 8), nn.Linear(16, 8), _lif()

        def forward(self, x):
            try:
                y = self.wide(x)  # (raises: x has 16 features)
            except RuntimeError:
                y = self.fc(x)
            return self.lif(y)

    def batches():
        for _ in range(3):
            yield _spikes(4, 3, 16)
        raise ValueError("corrupt record")

    with pytest.raises(ValueError, match="^corrupt record$"):
        profile_batches(Fallback(), batches(), progress=False)

    class Fails(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.lif, self.fc2, self.fail = _lin(16, 32), _lif(), nn.Linear(32, 8), False

        def forward(self, x):
            h = self.lif(self.fc1(x))
            if self.fail:
                raise RuntimeError("bad batch")
            return self.fc2(h)

    model, calls = Fails().eval(), []
    xs = [_spikes(4, 3, 16) for _ in range(4)]
    for replay in (False, True):
        meter = EnergyMeter(model, replay=replay)
        with torch.no_grad(), meter:
            for i, x in enumerate(xs):
                model.fail = i == 2
                try:
                    model(x)
                except RuntimeError:
                    pass
        calls.append({r.name: (r.calls, r.synops) for r in meter.report().layers})
    assert calls[0] == calls[1] and calls[0]["fc1"][0] == 4 and calls[0]["fc2"][0] == 3


def test_blocks_of_one_thread_ending_out_of_order_leave_the_model_unwrapped():
    """Two meters entered on one model and ended first-in first-out (as interleaved coroutines can): the first is
    taken out from under the second, and neither counts after its block."""
    model = nn.Sequential(_lin(16, 32), _lif(), nn.Linear(32, 8))
    a, b = EnergyMeter(model), EnergyMeter(model)
    a.__enter__()
    b.__enter__()
    with torch.no_grad():
        model(_spikes(4, 3, 16))  # (both count it)
    a.__exit__(None, None, None)
    with torch.no_grad():
        model(_spikes(4, 3, 16))  # (b's alone)
    b.__exit__(None, None, None)
    assert not any("forward" in m.__dict__ for m in model.modules())
    with torch.no_grad():
        model(_spikes(4, 3, 16))  # (nobody's)
    assert [r.calls for r in a.report().layers] == [1, 1, 1] and [r.calls for r in b.report().layers] == [2, 2, 2]
    # the meters' context (deferred NaN checks, the spike tally's sink) is as it was before them, not a's
    from neurosim import spike_tally, validate

    assert validate.active_checks() is None and spike_tally.row(torch.zeros(1)) is None
    with pytest.raises(ValueError, match="NaN"):
        validate.finite("x", torch.tensor([float("nan")]))


def test_a_count_cannot_be_compared_before_it_is_known():
    """Inside a meter stats() gives DeviceCounts: a counter comparing them (nnz == ones) gets a TypeError saying
    why, not a silent False."""
    from neurosim.energy import Count, register_counter, stats

    class Gate(nn.Module):
        def forward(self, x):
            return x * 2

    def count(module, args, output):
        s = stats(args[0])
        return Count(dense=args[0].numel(), acs=s.nnz if bool(s.nnz == s.ones) else args[0].numel())

    register_counter(Gate, count, overwrite=True)
    x = _spikes(4, 3, 16)
    assert int(count(Gate(), (x,), x).acs) == int(x.count_nonzero())  # (outside a meter: tensors, which compare)
    gate = Gate()
    with pytest.raises(TypeError, match="known only after the forward"):
        with torch.no_grad(), EnergyMeter(gate, replay=False):
            gate(x)
