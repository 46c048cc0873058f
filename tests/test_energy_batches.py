"""neurosim.energy.profile_batches and the CUDA-graph meter: a report over many batches equals the sum of the
batches' own reports; a graph's replays are weighed like the eager forwards they stand for."""
import pytest
import torch
from torch import nn

import neurosim
from neurosim.energy import Count, EnergyMeter, profile, profile_batches, register_counter
from neurosim.energy import counters as C
from neurosim.energy.graph import ReplayHistory, Slots
from neurosim.layers import Add, MatMul


def spikes(*shape, p=0.3, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) < p).float().to(device)


class Tap(nn.Module):
    """Passes its input through; its counter returns 0-d tensor counts and a tensor info value (as user
    counters may), which a captured graph must add up over its replays."""

    def forward(self, x):
        return x


def count_tap(module, args, output):
    nz = torch.count_nonzero(args[0])
    # macs: a count with a constant part (the meter's nonzeros plus a number), which weighs per run
    return Count(dense=args[0].numel(), acs=nz * 2, macs=C.stats(args[0]).nnz + args[0].numel(),
                 info={"nz": nz, "tag": "tap"})


def summarize_tap(row, infos):
    return {"calls": len(infos), "nz": sum(i["nz"] for i in infos)}, f"tap {row.name}: {len(infos)} calls"


register_counter(Tap, count_tap, overwrite=True, summary=summarize_tap)


class Net(nn.Module):
    """Conv (fan-out map) + BatchNorm + LIF + pooling + Linear + spike x spike product + residual addition +
    a counter with tensor counts: every kind of count the report weighs."""

    def __init__(self, backend="torch"):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4)
        self.lif1 = neurosim.LIF(beta=0.9, threshold=0.4, backend=backend)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(16, 8)
        self.lif2 = neurosim.LIF(beta=0.8, threshold=0.3, backend=backend)
        self.qk = MatMul(scale=0.5)
        self.add = Add()
        self.tap = Tap()
        self.out = nn.Linear(8, 3)

    def forward(self, x):  # [T, B, 2, 8, 8] spikes
        t, b = x.shape[:2]
        y = self.bn(self.conv(x.flatten(0, 1)))
        s = self.lif1(y.reshape(t, b, *y.shape[1:])).flatten(0, 1)
        h = self.lif2(self.fc(self.pool(s).flatten(1)).reshape(t, b, 8))
        a = self.qk(h.transpose(0, 1), h.transpose(0, 1).transpose(1, 2))  # [B, T, T]
        r = self.add(h, self.tap(h))
        return self.out(r).mean(0) + a.sum((1, 2))[:, None]


def simulated_replays(net, xs):
    """What a graph captured on ``xs[0]`` and replayed on each of ``xs`` leaves, without a GPU: one metered forward
    per input, each recorded as a capture records (the calls' weight a ReplayHistory, 0-d counts in slots, the
    layers' checks in slots that add up); the buffer rows and slots each forward took become that replay's entry,
    and only the first forward's calls are kept (a graph's calls are those of its capture)."""
    meter = EnergyMeter(net, counting="torch")
    cpu = torch.device("cpu")
    with torch.no_grad(), meter:
        checks = meter._checks.checks
        check_slots = Slots(cpu, 16)
        history = None
        for k, x in enumerate(xs):
            marks = [len(s.calls) for s in meter._slots]
            base = meter._counts.used(cpu)
            slots = Slots(cpu, 16)
            if history is None:
                history = ReplayHistory(base, slots.index, cpu)
            meter._weight, meter._acc = history, slots
            checks.accumulate = check_slots
            net(x)
            meter._counts.flush()
            slots.finish()  # the capture's last launches: the values taken go to their slots
            check_slots.finish()
            meter._weight, meter._acc = 1, None
            checks.accumulate = None
            meter._cache.clear()
            rows = meter._counts.bufs[cpu][0][base:meter._counts.used(cpu)]
            history.add(rows, slots.buf)
            if k:
                assert rows.shape == history.rows.shape[1:]  # the same forward takes the same rows
                for s, n0 in zip(meter._slots, marks):
                    del s.calls[n0:]
        # the deferred NaN/inf checks (the LIFs' and the model output's) went to the adding slots, the tap's tensors
        # to slots
        items = checks._live
        assert len(items) == 3 * len(xs) and check_slots.used == len(items) and slots.used == 2
        assert all(v.untyped_storage().data_ptr() == check_slots.buf.untyped_storage().data_ptr()
                   for _, _, _, v, _ in items)
    return meter.report(batch_size=sum(x.shape[1] for x in xs))


def test_slots_add_values_of_any_dtype_to_their_own_slot():
    """Slots groups the values a capture takes by dtype (consecutive slots, two launches a dtype at finish; dtypes
    past Slots.REGIONS - 1 share the last region) and finish adds each value to its own slot (what a replay adds
    to the count of the replays before it), exactly, an int64 past 2**40 included."""
    big = 2 ** 40 + 3
    vals = [torch.tensor(1.5, dtype=torch.float64), torch.tensor([1], dtype=torch.int32), torch.tensor(big),
            torch.tensor(2.25), torch.tensor(True), torch.tensor(-0.5, dtype=torch.float16),
            torch.tensor([0], dtype=torch.int32), torch.tensor(7, dtype=torch.int16)]
    slots = Slots(torch.device("cpu"), 4)
    views = [slots(v) for v in vals]
    assert not slots.buf.any()  # nothing added before finish
    slots.buf += 10  # what earlier replays left
    slots.finish()
    assert slots.used == len(vals) and len({slots.index[id(v)] for v in views}) == len(vals)
    assert [float(v) for v in views] == [10 + float(x) for x in vals]
    assert int(views[2]) == 10 + big
    slots.finish()  # nothing new taken: nothing added again
    assert [float(v) for v in views] == [10 + float(x) for x in vals]
    with pytest.raises(RuntimeError, match="count slots for torch.int32 values"):
        for _ in range(3):  # 2 of the 4 int32 slots are free
            slots(torch.tensor([1], dtype=torch.int32))


def same_report(a, b):
    """Equal reports: every count exactly, the float figures (sums taken in another order) to 1e-12."""
    da, db = a.to_dict(), b.to_dict()
    assert _close(da, db), (da, db)


def _close(x, y):
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(_close(x[k], y[k]) for k in x)
    if isinstance(x, list):
        return isinstance(y, list) and len(x) == len(y) and all(_close(a, b) for a, b in zip(x, y))
    if isinstance(x, float) and not isinstance(y, bool):
        return y == pytest.approx(x, rel=1e-12, abs=1e-12)
    return x == y


def test_replays_are_counted_like_eager_batches():
    torch.manual_seed(0)
    net = Net().eval()
    x = spikes(3, 2, 2, 8, 8, seed=1)
    # the same input three times: three times one batch
    eager = profile_batches(net, [x] * 3, cuda_graph=False, progress=False)
    same_report(simulated_replays(net, [x] * 3), eager)
    one = profile(net, x)
    for r, r1 in zip(eager.layers, one.layers):
        assert r.calls == 3 * r1.calls
        assert (r.synops, r.macs, r.acs, r.dense, r.neuron_updates) == \
            (3 * r1.synops, 3 * r1.macs, 3 * r1.acs, 3 * r1.dense, 3 * r1.neuron_updates)
    assert eager.layer("tap").info == {"calls": 3, "nz": 3 * one.layer("tap").info["nz"]}
    assert eager.layer("qk").synops > 0 and eager.layer("add").acs > 0 and eager.layer("conv").synops > 0
    # different batches, one of them real-valued: the conv does SynOps in two batches and MACs in the third,
    # decided per replay as per eager call
    xs = [spikes(3, 2, 2, 8, 8, seed=2), torch.rand(3, 2, 2, 8, 8), spikes(3, 2, 2, 8, 8, seed=3)]
    eager = profile_batches(net, xs, cuda_graph=False, progress=False)
    same_report(simulated_replays(net, xs), eager)
    conv = eager.layer("conv")
    assert conv.macs == profile(net, xs[1]).layer("conv").macs > 0 and conv.synops > 0 and not conv.in_spikes


def test_profile_batches_is_the_sum_of_the_batches_reports():
    torch.manual_seed(1)
    net = Net().eval()
    xs = [spikes(3, 2, 2, 8, 8, seed=s) for s in range(3)] + [spikes(3, 1, 2, 8, 8, seed=9)]  # a smaller last batch
    rep = profile_batches(net, iter(xs), progress=False)
    each = [profile(net, x) for x in xs]
    assert rep.batch_size == 7
    for row in rep.layers:
        for key in ("calls", "synops", "macs", "acs", "dense", "dense_other", "neuron_updates", "in_nnz", "out_nnz",
                    "in_numel"):
            assert getattr(row, key) == sum(getattr(r.layer(row.name), key) for r in each), (row.name, key)
    assert rep.totals()["energy_pj"] == pytest.approx(sum(r.totals()["energy_pj"] for r in each))
    # keyword and positional inputs
    lin = nn.Linear(4, 2)
    a = profile_batches(lin, [{"input": spikes(2, 3, 4)}], progress=False)
    b = profile_batches(lin, [(spikes(2, 3, 4),)], progress=False)
    assert a.layer("Linear").synops == b.layer("Linear").synops == profile(lin, spikes(2, 3, 4)).layer("Linear").synops


def test_profile_batches_bad_arguments():
    lin = nn.Linear(4, 2)
    with pytest.raises(ValueError, match="cuda_graph must be one of"):
        profile_batches(lin, [spikes(2, 3, 4)], cuda_graph="yes")
    with pytest.raises(ValueError, match="batches: got no batch"):
        profile_batches(lin, [], progress=False)
    with pytest.raises(ValueError, match="batch 1 holds no tensor"):
        profile_batches(lin, [spikes(2, 3, 4), (1, 2)], progress=False)
    with EnergyMeter(lin) as m:
        with pytest.raises(ValueError, match="inputs: a CUDA graph needs every input tensor on a CUDA device"):
            m.graphed(spikes(2, 3, 4))
    with pytest.raises(RuntimeError, match="inside `with EnergyMeter"):
        EnergyMeter(lin).graphed(spikes(2, 3, 4))


def test_profile_batches_refuses_no_batch_before_drawing_its_progress_bar(capsys):
    """``profile_batches(net, [])`` drew an empty "energy: 0batch" progress bar, then raised."""
    lin = nn.Linear(4, 2)
    for empty in ([], (x for x in [])):
        with pytest.raises(ValueError, match="batches: got no batch; pass an iterable of at least one input"):
            profile_batches(lin, empty, progress=True)
        assert capsys.readouterr().err == ""
    one = iter([spikes(2, 3, 4)])                # (a one-shot iterator: its first batch, peeked, is still profiled)
    assert profile_batches(lin, one, progress=False).batch_size == 3


# ---------------------------------------------------------------- GPU (CUDA graphs)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: CUDA graphs (the CPU tests check the "
                          "replay weighting with a simulated capture)")


@cuda
@pytest.mark.parametrize("backend", ["torch", "fused"])
def test_gpu_graph_replays_equal_eager_batches(backend):
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(2)
    net = Net(backend).eval().cuda()
    xs = [spikes(3, 4, 2, 8, 8, seed=s, device="cuda") for s in range(5)]
    xs[3] = torch.rand(3, 4, 2, 8, 8, device="cuda")  # a real-valued batch: MACs in the conv for this one
    xs.append(spikes(3, 2, 2, 8, 8, seed=7, device="cuda"))  # a smaller last batch: eager
    eager = profile_batches(net, xs, cuda_graph=False, progress=False)
    graphed = profile_batches(net, xs, cuda_graph=True, progress=False)
    same_report(graphed, eager)
    assert graphed.layer("conv").calls == 6 and graphed.batch_size == 22
    assert graphed.layer("conv").macs > 0 and graphed.layer("conv").synops > 0
    with torch.no_grad(), EnergyMeter(net) as m:
        run = m.graphed(xs[0])
        for x in xs[:5]:
            out = run(x)
            assert torch.equal(out, net(x))  # eager forwards under the same meter are counted too
        with pytest.raises(ValueError, match="this graph was captured for"):
            run(xs[5])
    assert run.replays == 5 and m.report().layer("conv").calls == 10


@cuda
def test_gpu_graph_nan_in_a_replayed_batch_names_the_layer():
    net = Net().eval().cuda()
    xs = [spikes(3, 4, 2, 8, 8, seed=s, device="cuda") for s in range(3)]
    xs[2] = xs[2].clone()
    xs[2][0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="layer 'conv'.*NaN"):
        profile_batches(net, xs, cuda_graph=True, progress=False)


@cuda
def test_gpu_graph_capture_failure_raises_or_falls_back():
    class Syncs(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x) * float(x.sum() > 0)  # a host read: not capturable

    net = Syncs().cuda()
    xs = [spikes(2, 3, 4, seed=s, device="cuda") for s in range(3)]
    with pytest.raises(RuntimeError, match="capturing the metered forward in a CUDA graph failed"):
        profile_batches(net, xs, cuda_graph=True, progress=False)
    with pytest.warns(RuntimeWarning, match="running eagerly"):
        rep = profile_batches(net, xs, progress=False)
    assert rep.to_json() == profile_batches(net, xs, cuda_graph=False, progress=False).to_json()


@cuda
def test_gpu_graph_with_a_late_in_place_change_equals_eager_batches():
    """The graph reads its counted tensors in batches; the LIF's spikes, changed in place after fc1 read them
    (test_energy_kernel.LateInPlace), must not wait: the warm-ups learn it, and the replays count what eager
    forwards count, with no note."""
    from test_energy_kernel import LateInPlace

    torch.manual_seed(8)
    net = LateInPlace().cuda()
    xs = [torch.rand(3, 4, 6, generator=torch.Generator().manual_seed(s)).cuda() * 0.6 for s in range(4)]
    eager = profile_batches(net, xs, cuda_graph=False, progress=False)
    graphed = profile_batches(net, xs, cuda_graph=True, progress=False)
    same_report(graphed, eager)
    assert graphed.layer("fc1").synops > 0 and not graphed.layer("lif").note


@cuda
@pytest.mark.parametrize("edit", ["before", "after"])
def test_gpu_graph_counts_products_and_sums_before_an_in_place_edit(edit):
    """Products and sums counted from their outputs, which the forward edits in place after they return
    (test_energy.EditedOutputs): the graph launches their reads as they return (with the batch waiting), so its
    replays count the values computed, as eager batches and the hand counts do, with no note."""
    import neurosim.models  # noqa: F401  (registers SEWConnect's counter)
    from test_energy import EditedOutputs, edited_counts, edited_reference

    net = EditedOutputs(edit).cuda()
    xs = [tuple(spikes(2, 2, 6, 4, p=0.5, seed=3 * i + j, device="cuda") for j in range(3)) for i in range(4)]
    want = [edited_reference(*(t.cpu() for t in x)) for x in xs]
    eager = profile_batches(net, xs, cuda_graph=False, progress=False)
    graphed = profile_batches(net, xs, cuda_graph=True, progress=False)
    same_report(graphed, eager)
    assert edited_counts(graphed) == {n: sum(w[n] for w in want) for n in want[0]}
    assert not any("changed" in r.note for r in graphed.layers)
