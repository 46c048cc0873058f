"""The one-read statistics kernel of the energy profiler (neurosim.kernels.stats) and the meter's count buffer.

The Triton kernel runs here in Triton's interpreter, in a child process (TRITON_INTERPRET must be set before
triton is imported); its counts are checked against plain torch counts in float64, and a profile counted by the
kernel against the same profile counted by torch ops.
"""
import json
import os
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from torch import nn

import neurosim
from neurosim.energy import EnergyMeter, profile
from neurosim.energy.device_counts import CountBuffer
from neurosim.layers import MatMul


def _products(dtype, k, scale, seed):
    """A scaled product of binary operands, as attention's q @ k^T makes it, and its exact integer sum."""
    g = torch.Generator().manual_seed(seed)
    a = (torch.rand(2, 3, 9, k, generator=g) < 0.5).to(dtype)
    b = (torch.rand(2, 3, k, 7, generator=g) < 0.5).to(dtype)
    p = a.double() @ b.double()
    return torch.matmul(a, b) * scale, int(p.sum())


def _tensor_cases(device="cpu"):
    """name -> (tensor, fan map or None, inv_scale or None), deterministic; views are taken on ``device``."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(3, 5, 7, 9, generator=g)
    x[x.abs() < 0.6] = 0  # zeros, non-binary values
    x[0, 0, 0, :4] = 1
    x[1, 1, 1, 1] = float("nan")
    x[2, 2, 2, 2] = float("-inf")
    x[2, 3, 4, 5] = float("inf")
    spikes = (torch.rand(10007, generator=g) < 0.3).float()  # > 2 tiles of 4096, ragged end
    conv_in = (torch.rand(6, 3, 11, 13, generator=g) < 0.25).float()
    wide = (torch.rand(3, 4100, generator=g) < 0.4).float()  # fan map wider than a tile
    fan_sp = torch.randint(1, 10, (11, 13), generator=g).double()
    # attention's q, k, v: slices of a permuted [T, B, N, 3, H, dh] spike tensor (strided views, read in place)
    qkv = (torch.rand(2, 3, 10, 3, 4, 6, generator=g) < 0.3).float().to(device).permute(3, 0, 1, 4, 2, 5)
    # 6 dims in logical order (copied for a fan map), one run of storage in storage order (read in place)
    deep = torch.randn(2, 3, 4, 5, 6, 7, generator=g).to(device).permute(5, 3, 1, 4, 2, 0)[..., 1:]
    sliced = (torch.rand(4, 5, 6, 7, 8, generator=g) < 0.4).float().to(device)[::2, ::2, ::2, ::2, ::3]  # 5 dims in any order: copied
    expanded = (torch.rand(3, 1, 5, generator=g) < 0.5).float().to(device).expand(3, 4, 5)  # a stride-0 dim
    conv_t = conv_in.to(device)
    return {
        "f32_nan_inf_nonbinary": (x, None, None),
        "f32_nan_inf_sum": (x * 3.7, None, 1 / 3.7),
        "f32_fan": (x, torch.randint(0, 5, (7, 9), generator=g).double(), None),
        "bf16": (x.bfloat16(), None, None),
        "f16_fan": (x.half(), torch.randint(1, 4, (9,), generator=g).double(), None),
        "bool": (x > 0, torch.randint(1, 4, (7, 9), generator=g).double(), None),
        "spikes_10007": (spikes, None, None),
        "spikes_fan_35": (spikes[:35 * 285].reshape(285, 35), torch.arange(35).double() % 6, None),
        "conv_input_fan": (conv_in, fan_sp, None),
        "wide_fan_4100": (wide, torch.randint(1, 3, (4100,), generator=g).double(), None),  # fan[i % C] a lane
        # maps repeated to a multiple of the kernel's block (one modulus a block), the tensors spanning several
        "long_fan_6": (spikes[:6 * 1500].reshape(1500, 6), torch.randint(1, 9, (6,), generator=g).double(), None),
        "long_fan_4096": (spikes[:8192].reshape(2, 64, 64), torch.randint(0, 5, (64, 64), generator=g).double(), None),
        "transposed": (conv_t.transpose(1, 3), None, None),
        "transposed_fan": (conv_t.transpose(2, 3), fan_sp.t().contiguous(), None),
        "q_slice": (qkv[0], None, None),
        "k_transposed": (qkv[1].transpose(-1, -2), torch.arange(10).double() % 3, None),
        "k_transposed_nofan": (qkv[1].transpose(-1, -2), None, None),
        "v_slice_sum": (qkv[2] * 0.25, None, 4.0),
        "deep_view": (deep, None, None),
        "deep_view_fan": (deep, torch.arange(6).double() % 4, None),
        "sliced": (sliced, None, None),
        "sliced_4": (sliced[0], None, None),  # 4 collapsed dims
        "every_other": (spikes[1::2], None, None),  # 1 dim of stride 2
        "expanded": (expanded, None, None),
        "expanded_fan": (expanded, torch.arange(20).double() % 3, None),
        "products_f32": (_products(torch.float32, 33, 1 / 33 ** 0.5, 1)[0], None, 33 ** 0.5),
        "products_bf16": (_products(torch.bfloat16, 120, 0.3, 2)[0], None, 1 / 0.3),
        "products_f16": (_products(torch.float16, 200, 1 / 7, 3)[0], None, 7.0),
        "empty": (torch.zeros(0, 4), None, None),
    }


def reference(x, fan, inv_scale=None):
    """Plain torch counts in float64: [nonzeros, ones, non-finite, fan-weighted nonzeros, rounded scaled sum]."""
    d = x.double()
    nz = (d != 0).double()
    fanw = 0 if fan is None else int((nz.reshape(-1, fan.numel()) * fan.reshape(-1)).sum())
    isum = 0
    if inv_scale is not None:  # float32 products, as documented
        v = torch.floor(x.float() * torch.tensor(inv_scale, dtype=torch.float32) + 0.5).double()
        isum = int(v[torch.isfinite(d)].sum())
    return [int(nz.sum()), int((d == 1).sum()), int((~torch.isfinite(d)).sum()), fanw, isum]


def buffer_counts(backend, batching=False, device="cpu"):
    buf = CountBuffer(backend)
    buf.batching = batching
    rows = {name: buf.stats(x.to(device), None if fan is None else fan.to(device), inv_scale=inv)
            for name, (x, fan, inv) in _tensor_cases(device).items()}
    host = buf.host()
    return {name: host[st.dev][st.row] for name, st in rows.items()}, sorted(buf.paths)


class ConvNet(nn.Module):
    def __init__(self, backend="torch"):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.lif1 = neurosim.LIF(beta=0.8, threshold=0.4, backend=backend)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1, groups=2)
        self.lif2 = neurosim.LIF(beta=0.8, threshold=0.4, backend=backend)
        self.pool = nn.AvgPool2d(3, stride=2, ceil_mode=True)
        self.fc = nn.Linear(8 * 2 * 2, 4)

    def forward(self, x):
        t, b = x.shape[:2]
        y = self.bn1(self.conv1(x.flatten(0, 1)))
        y = self.lif1(y.reshape(t, b, *y.shape[1:])).flatten(0, 1)
        y = self.conv2(y)
        y = self.lif2(y.reshape(t, b, *y.shape[1:])).flatten(0, 1)
        return self.fc(self.pool(y).flatten(1))


def conv_case():
    torch.manual_seed(3)
    net = ConvNet().eval()
    x = (torch.rand(3, 2, 2, 10, 10) < 0.3).float()
    return net, x


# ---------------------------------------------------------------- Triton interpreter (child process)
@pytest.fixture(scope="module")
def interpreter_results(tmp_path_factory):
    import triton  # noqa: F401  (a dev requirement: missing triton must fail here, not skip)

    path = tmp_path_factory.mktemp("kernel") / "conv.pt"
    net, x = conv_case()
    torch.save({"state": net.state_dict(), "x": x}, path)
    env = dict(os.environ, NEUROSIM_TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--interpreter", str(path)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_kernel_counts_match_float64_reference(interpreter_results):
    counts = interpreter_results["counts"]
    assert interpreter_results["paths"] == ["interpreter"]  # the kernel ran, not the torch path
    cases = _tensor_cases()
    assert set(counts) == set(cases)
    for name, (x, fan, inv) in cases.items():
        assert counts[name] == reference(x, fan, inv), name
    assert interpreter_results["counts64"] == counts  # 64-bit index arithmetic gives the same counts
    # the cases exercise what they claim to
    assert counts["f32_nan_inf_nonbinary"][2] == 3 and counts["bf16"][2] == 3
    assert counts["f32_nan_inf_nonbinary"][0] > counts["f32_nan_inf_nonbinary"][1] > 0
    assert counts["wide_fan_4100"][3] > counts["wide_fan_4100"][0] > 0
    assert not cases["q_slice"][0].is_contiguous() and not cases["deep_view"][0].is_contiguous()
    # the integer products behind each scaled product, from float64 operands (within the documented dtype limits)
    for name, (dtype, k, scale, seed) in {"products_f32": (torch.float32, 33, 1 / 33 ** 0.5, 1),
                                          "products_bf16": (torch.bfloat16, 120, 0.3, 2),
                                          "products_f16": (torch.float16, 200, 1 / 7, 3)}.items():
        assert counts[name][4] == _products(dtype, k, scale, seed)[1], name


def test_strided_views_are_read_in_place():
    from neurosim.kernels.stats import MAX_DIMS, collapse

    cases = _tensor_cases()
    q, kt, deep = cases["q_slice"][0], cases["k_transposed"][0], cases["deep_view"][0]
    assert len(collapse(q)) <= MAX_DIMS and len(collapse(kt)) <= MAX_DIMS
    assert collapse(torch.zeros(3, 4, 5)) == [(60, 1)] and collapse(torch.zeros(3, 1, 5).transpose(0, 2)) == [(5, 1), (3, 5)]
    # without a fan map the dims are taken in storage order: the slices of a [T, B, N, 3, H, dh] tensor become rows
    # of one token's H * dh features (k transposed as k), a permuted run of storage one run
    k = kt.transpose(-1, -2)
    assert collapse(q, any_order=True) == collapse(kt, any_order=True) == collapse(k, any_order=True) == [(60, 72), (24, 1)]
    assert len(collapse(deep)) > MAX_DIMS and collapse(deep, any_order=True) == [(deep.numel(), 1)]
    assert len(collapse(cases["sliced"][0], any_order=True)) > MAX_DIMS  # counted from a contiguous copy
    assert collapse(cases["expanded"][0], any_order=True) == [(15, 1), (4, 0)]
    assert len(collapse(cases["sliced_4"][0], any_order=True)) == MAX_DIMS
    assert collapse(cases["every_other"][0], any_order=True) == [(5003, 2)]


def test_batched_reads_give_the_same_counts(interpreter_results):
    """Rows read several a launch (CountBuffer.batching: a CUDA graph's forward) equal the same rows read one a
    launch; a tensor changed in place while its read waited is noted, and read at once from the next forward."""
    check_batched_counts(interpreter_results["batched"], interpreter_results["counts"])


def test_replayed_forwards_run_their_planned_reads(interpreter_results):
    """Replayed forwards of fused-neuron models, counted by the kernel (the interpreter here): the hooks' report."""
    check_replayed_counts(interpreter_results["replayed"])


def test_torch_path_gives_the_kernel_numbers(interpreter_results):
    counts, paths = buffer_counts("torch")
    assert paths == ["torch"]
    assert counts == interpreter_results["counts"]


def test_profile_kernel_equals_torch_path(interpreter_results):
    net, x = conv_case()
    rep = profile(net, x, counting="torch")
    assert rep.counting == "torch"
    assert interpreter_results["counting"] == "interpreter"
    assert interpreter_results["report"] == json.loads(rep.to_json())
    assert rep.layer("conv2").synops > 0 and rep.layer("pool").acs > 0  # fan-weighted counts were used


def test_fused_lif_kernel_counts_its_spikes(interpreter_results):
    """The fused LIF kernel's own spike count (neurosim.spike_tally) equals the spikes it wrote, and a profile
    that uses these counts equals the profile that reads every spike tensor, with fewer reads."""
    check_fused_counts(interpreter_results["fused"])


def check_fused_counts(fused):
    for row, total, nonzero in fused["direct"]:
        assert total == nonzero > 0
        assert sum(row) == total and min(row) >= 0  # the programs' counts, spread over the row's slots
    for name in ("conv", "spikformer"):
        own, read = fused[f"{name}_True"], fused[f"{name}_False"]
        assert own["counting"] == "kernel+neuron kernel" and read["counting"] == "kernel"
        assert own["report"] == read["report"], name
        lifs = [r for r in own["report"]["layers"] if r["type"] == "LIF"]
        assert lifs and all(r["out_rate"] is not None for r in lifs)
        # the Spikformer's LIF outputs feed Linear layers and products: one read fewer per LIF layer; the conv
        # net's feed a conv and a pool, whose fan-weighted counts need the spike positions (a read either way)
        assert read["reads"] - own["reads"] == (len(lifs) if name == "spikformer" else 0), name
    own, read = fused["conv_thrice_True"], fused["conv_thrice_False"]
    assert own["report"] == read["report"]
    assert [t for t, _ in own["per_forward"]] == [2, 0, 0]  # both LIFs tallied in the first forward only
    assert [t for t, _ in read["per_forward"]] == [0, 0, 0]
    # the same reads as with no tally at all (the second forward reuses the first one's row of the same input x)
    assert [r for _, r in own["per_forward"]] == [r for _, r in read["per_forward"]]


# ---------------------------------------------------------------- meter behaviour (this process, torch path)
def test_tally_rows_span_rows_and_survive_growth():
    """A kernel's tally region (32 slots over 7 rows) is reserved whole, also across a buffer growth, and the
    rows before and after it keep their counts."""
    from neurosim import spike_tally

    buf = CountBuffer("torch", capacity=3)
    x = torch.tensor([0.0, 1.0, 1.0, 2.0])
    first = buf.stats(x)
    tally, region = buf.tally_row(x, spike_tally.SLOTS)  # grows the buffer: 1 + 7 rows > 3
    assert region.numel() == spike_tally.SLOTS
    region += torch.arange(spike_tally.SLOTS)  # what the kernel's programs would add, slot by slot
    last = buf.stats(x * 0)
    total = sum(range(spike_tally.SLOTS))
    assert (int(first.nnz), int(first.ones)) == (3, 2)
    assert (int(tally.nnz), int(tally.ones), int(tally.bad)) == (total, total, 0)
    assert (int(last.nnz), buf.bufs[x.device][1]) == (0, 1 + 7 + 1)


def test_fold_moves_each_tally_into_one_element_per_replay():
    """The read-back folds a tally region (the programs' partial counts) into its first element; on the per-replay
    rows of a captured graph (``[replays, rows, COLS]`` from a base row) each replay is folded on its own, and the
    rows around the regions are left as they were."""
    import numpy as np

    from neurosim import spike_tally
    from neurosim.energy.device_counts import COLS

    slots = spike_tally.SLOTS
    buf = CountBuffer("torch")
    x = torch.ones(5)
    before = buf.stats(x)  # a row taken before the "capture": outside the replayed rows
    base = buf.used(x.device)
    mid = buf.stats(x * 0)
    t1, _ = buf.tally_row(x, slots)
    t2, _ = buf.tally_row(x, slots)
    n_rows = buf.used(x.device) - base
    g = np.random.default_rng(0)
    replays = g.integers(0, 50, size=(3, n_rows, COLS))
    raw = replays.copy()
    flat = raw.reshape(3, -1)
    want = [[int(flat[k, (t.row - base) * COLS:(t.row - base) * COLS + slots].sum()) for t in (t1, t2)]
            for k in range(3)]
    folded = buf.fold(x.device, replays, base)
    ff = folded.reshape(3, -1)
    for k in range(3):
        for t, total in zip((t1, t2), want[k]):
            start = (t.row - base) * COLS
            assert ff[k, start] == total and not ff[k, start + 1:start + slots].any()
        assert (folded[k, mid.row - base] == raw[k, mid.row - base]).all()  # an ordinary row: untouched
    assert np.array_equal(buf.fold(x.device, folded.copy(), base), folded)  # idempotent
    assert before.row < base


def _reads(net, x, record=lambda t, fan: (tuple(t.shape), fan is not None), **kw):
    """``profile(net, x, **kw)`` and ``record(tensor, fan map)`` of each tensor it counted."""
    counted = []
    orig = CountBuffer._count

    def spy(self, st, t, fan):
        counted.append(record(t, fan))
        return orig(self, st, t, fan)

    CountBuffer._count = spy
    try:
        rep = profile(net, x, **kw)
    finally:
        CountBuffer._count = orig
    return rep, counted


def test_conv_input_read_once():
    """Each tensor is counted once; lif1's / lif2's outputs by conv2's / the pool's counter, in the same read as
    their fan-weighted counts. rates="needed" (default) reads only what a count needs, with the same counts."""
    net, x = conv_case()
    full, counted = _reads(net, x, rates="all")
    # input, conv1 out, bn1 out, lif1 out, conv2 out, lif2 out, pool out, fc out
    assert len(counted) == 8
    # with a fan map: the input (conv1), lif1's output [T, B, ...] (conv2 reads a view of it), lif2's (pool)
    fan_reads = [(6, 2, 10, 10), (3, 2, 6, 10, 10), (3, 2, 8, 5, 5)]
    assert [s for s, f in counted if f] == fan_reads
    assert full.layer("conv2").synops > 0
    lean, counted = _reads(net, x)
    # the three fan-map reads (conv1's input, lif1's and lif2's spikes) and the pool's output (fc's input)
    assert counted == [(s, True) for s in fan_reads] + [((6, 8, 2, 2), False)]
    ops = ("dense", "dense_other", "macs", "synops", "acs", "neuron_updates", "synops_paper", "energy_pj", "in_spikes")
    for a, b in zip(full.layers, lean.layers):
        assert [getattr(a, k) for k in ops] == [getattr(b, k) for k in ops], a.name
        for k in ("in_rate", "out_rate"):  # a rate is measured or None, never a different value
            assert getattr(b, k) is None or getattr(b, k) == getattr(a, k), (a.name, k)
    # the neurons' firing rates are always measured; the currents between conv, bn and lif are not read
    assert lean.layer("lif1").out_rate == full.layer("lif1").out_rate > 0
    assert lean.layer("bn1").in_rate is None and lean.layer("bn1").out_rate is None
    assert lean.totals() == full.totals()
    assert "-" in lean.table() and lean.to_csv().count(",,") >= 1


class PermutedConv(nn.Module):
    """A LIF whose spikes reach a conv (fan-weighted count) through an H/W transpose, and a product through a
    transposed view: views of one storage span, read once where the order does not matter."""

    def __init__(self, copy=False):
        super().__init__()
        self.copy = copy
        self.lif = neurosim.LIF(beta=0.5, threshold=0.3, backend="torch")
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)
        self.prod = MatMul()

    def forward(self, x):  # [T, B, C, H, W]
        s = self.lif(x)
        v = s.transpose(-1, -2)  # [T, B, C, W, H]: not contiguous, one storage span
        if self.copy:
            v = v.contiguous()
        y = self.conv(v.flatten(0, 1))
        return y, self.prod(s, v)


def test_permuted_views_reuse_counts_and_fan_maps_follow_their_order():
    torch.manual_seed(4)
    x = torch.rand(2, 3, 3, 5, 8) * 0.8
    views, copied = PermutedConv(), PermutedConv(copy=True)
    copied.load_state_dict(views.state_dict())
    rep, reads = _reads(views, x)
    ref, ref_reads = _reads(copied, x)
    for name in ("conv", "prod"):
        a, b = rep.layer(name), ref.layer(name)
        assert (a.synops, a.macs, a.dense, a.in_spikes) == (b.synops, b.macs, b.dense, b.in_spikes), name
    assert rep.layer("conv").synops > 0
    # the spikes' own read (the product's two operands, one a transposed view, reuse it), the conv's fan-weighted
    # read of the view in its own order, the product's output; the contiguous copy costs the same reads
    assert sorted(reads) == sorted([((6, 3, 8, 5), True), ((2, 3, 3, 5, 8), False), ((2, 3, 3, 5, 5), False)])
    assert sorted(ref_reads) == sorted(reads)


def test_in_place_change_after_output_is_noted():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lif = neurosim.LIF(beta=0.5, threshold=0.1, backend="torch")
            self.fc = nn.Linear(5, 3)

        def forward(self, x):
            s = self.lif(x)
            s.mul_(0)  # outside any counted module: the deferred counts see the changed tensor
            return self.fc(s)

    rep = profile(Net(), torch.rand(4, 2, 5) + 0.5)
    assert rep.layer("fc").synops == 0  # the consumer counts what it actually received
    assert "changed in place" in rep.layer("lif").note


def test_kernel_counting_of_cpu_tensors_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("NEUROSIM_TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="counting backend 'kernel' cannot count a cpu tensor"):
        profile(nn.Linear(3, 2), torch.zeros(1, 1, 3), counting="kernel")
    with pytest.raises(ValueError, match="counting backend"):
        profile(nn.Linear(3, 2), torch.zeros(1, 1, 3), counting="fast")


def test_import_and_profile_without_triton():
    code = ("import sys; sys.modules['triton'] = None\n"
            "import torch, neurosim.energy\nfrom torch import nn\n"
            "r = neurosim.energy.profile(nn.Linear(3, 2), torch.ones(2, 1, 3))\n"
            "assert r.counting == 'torch' and r.layer('Linear').synops == 12, r\nprint('ok')")
    env = {k: v for k, v in os.environ.items() if k not in ("NEUROSIM_TRITON_INTERPRET", "TRITON_INTERPRET")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]



def test_launchers_make_the_device_of_their_tensors_current(monkeypatch):
    """Triton launches on the current CUDA device: each launcher switches to its tensors' device first (only when it
    is another one). Run here with a stand-in tensor on cuda:1 while cuda:0 is current; on two GPUs,
    test_gpu_kernels_launch_on_the_device_of_their_tensors runs the real thing."""
    from neurosim.kernels import runtime, stats, triton_lif

    switched = []

    class Device:  # torch.cuda.device, noting what it makes current
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            switched.append(self.device)

        def __exit__(self, *exc):
            switched.append("back")

    class OnCuda1:  # what the guard asks of a tensor
        is_cuda, device = True, "cuda:1"

        def get_device(self):
            return 1

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", Device)
    seen = []

    @runtime.on_device_of(1, "out")
    def launcher(x, out, interpret=False):
        seen.append(list(switched))
        return x

    assert launcher("x", OnCuda1()) == "x" and seen[-1] == ["cuda:1"] and switched == ["cuda:1", "back"]
    switched.clear()
    assert launcher("x", out=OnCuda1(), interpret=True) == "x" and seen[-1] == ["cuda:1"]
    switched.clear()
    OnCuda1.get_device = lambda self: 0  # already current: no switch
    launcher("x", OnCuda1())
    launcher("x", torch.zeros(1))  # a CPU tensor (the interpreter): no switch
    assert switched == []
    for fn in (stats.launch, stats.launch_plan, triton_lif.launch_forward, triton_lif.launch_backward):
        assert fn.__wrapped__ is not None, fn.__name__  # (decorated)

# ---------------------------------------------------------------- GPU (compiled kernel)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the compiled kernel (the CPU tests "
                          "run the same kernel code in Triton's interpreter)")


@cuda
def test_gpu_fused_lif_kernel_counts_its_spikes():
    check_fused_counts(json.loads(json.dumps(fused_kernel_counts("cuda"))))


@cuda
def test_gpu_batched_reads_give_the_same_counts():
    check_batched_counts(json.loads(json.dumps(batched_counts("cuda"))),
                         {name: reference(x.cpu(), fan, inv) for name, (x, fan, inv) in _tensor_cases().items()})


@cuda
def test_gpu_kernel_counts_and_profile_equal_torch_path():
    buf = CountBuffer("auto")
    cases = _tensor_cases("cuda")
    assert not cases["q_slice"][0].is_contiguous() and cases["q_slice"][0].is_cuda
    rows = {name: buf.stats(x.cuda(), None if fan is None else fan.cuda(), inv_scale=inv)
            for name, (x, fan, inv) in cases.items()}
    host = buf.host()
    assert buf.paths == {"kernel"}
    for name, (x, fan, inv) in cases.items():
        st = rows[name]
        assert host[st.dev][st.row] == reference(x.cpu(), fan, inv), name
    torch.backends.cudnn.deterministic = True
    net, x = conv_case()
    net, x = net.cuda(), x.cuda()
    kernel, ref = profile(net, x), profile(net, x, counting="torch")
    assert (kernel.counting, ref.counting) == ("kernel", "torch")
    assert kernel.to_json() == ref.to_json()


def _spy_on_triton(monkeypatch, K, which: int) -> list:
    """Count the launches that go through Triton's launcher for kernel ``which`` of ``K.kernels()`` (0: one tensor,
    1: several): the grid of each, in the list returned."""
    kernels = list(K.kernels())
    real, through_triton = kernels[which], []

    class Spy:
        def __getitem__(self, grid):
            through_triton.append(grid)
            return real[grid]

    kernels[which] = Spy()
    monkeypatch.setattr(K, "kernels", lambda interpret=False: tuple(kernels))
    return through_triton


def _moved(x, shift, seed):
    """``x``'s layout (shape, strides, storage offset + ``shift``) on a CUDA storage of its own, values shuffled."""
    g = torch.Generator().manual_seed(seed)
    n = x.untyped_storage().nbytes() // x.element_size()
    y = torch.zeros(n + shift, dtype=x.dtype, device="cuda").as_strided(x.shape, x.stride(), x.storage_offset() + shift)
    y.copy_(x.reshape(-1)[torch.randperm(x.numel(), generator=g).cuda()].reshape(x.shape))
    return y


class _NotBinding:
    """A compiled kernel of a Triton that takes its arguments otherwise: the call raises before launching."""

    def __getitem__(self, grid):
        def launch(*args):
            raise TypeError("function takes 9 positional arguments")
        return launch


@cuda
def test_gpu_planned_launch_reuses_its_compiled_kernel_while_pointer_alignment_holds(monkeypatch):
    """``launch_plan``: a plan's first launch goes through Triton, later ones launch the kernel it compiled directly
    while every pointer keeps its 16-byte alignment (what Triton specialises pointers on); tensors of the planned
    layout at pointers of another alignment go through Triton again. Every launch: the float64 reference."""
    from neurosim.energy.device_counts import COLS
    from neurosim.kernels import stats as K

    cases = _tensor_cases("cuda")
    names = ["spikes_10007", "f32_nan_inf_sum", "q_slice", "products_bf16", "every_other", "k_transposed_nofan"]
    planned = [cases[name][0].cuda() for name in names]  # (q and k: views of a CUDA tensor, read in place)
    planned[names.index("every_other")] = cases["spikes_10007"][0].cuda()[1::2]  # (stride 2, offset 1)
    through_triton = _spy_on_triton(monkeypatch, K, which=1)

    def moved(shift, seed):
        return [_moved(x, shift, seed) for x in planned]

    out = torch.zeros(len(names), COLS, dtype=torch.int64, device="cuda")
    invs = [cases[name][2] for name in names]
    plan = K.plan_many(planned, out, list(range(len(names))), invs)
    launches = [(planned, 1), (moved(0, 1), 1), (moved(0, 2), 1),
                (moved(1, 3), 2), (moved(0, 4), 3)]
    for xs, triton_launches in launches:
        out.zero_()
        K.launch_plan(plan, xs, out)
        assert out.cpu().tolist() == [reference(x.cpu(), None, inv) for x, inv in zip(xs, invs)]
        assert len(through_triton) == triton_launches
    assert any(x.data_ptr() % 16 for x in launches[3][0])  # (the shifted tensors: another alignment)
    # a Triton whose compiled kernels take their arguments otherwise: the call does not bind, nothing is launched,
    # and the reads go through Triton's launcher from then on, with a warning
    monkeypatch.setattr(K, "_DIRECT", True)
    plan.compiled[0] = _NotBinding()
    for xs, triton_launches in [(moved(0, 5), 4), (moved(0, 6), 5)]:
        out.zero_()
        with pytest.warns(RuntimeWarning, match="go through Triton") if triton_launches == 4 else nullcontext():
            K.launch_plan(plan, xs, out)
        assert out.cpu().tolist() == [reference(x.cpu(), None, inv) for x, inv in zip(xs, invs)]
        assert len(through_triton) == triton_launches
    assert K._DIRECT is False

@cuda
def test_gpu_single_reads_reuse_their_compiled_kernel_while_the_layout_holds(monkeypatch):
    """``launch``: the first read of a layout goes through Triton, later reads of that layout (shape, strides,
    dtype, fan map, scaled sum or not, pointer alignment) call the kernel it compiled directly; a pointer of
    another 16-byte alignment, or another fan map, goes through Triton again. Every read: the float64 reference."""
    from neurosim.energy.device_counts import COLS, _fan_maps
    from neurosim.kernels import stats as K

    cases = _tensor_cases("cuda")
    names = ["spikes_10007", "f32_nan_inf_sum", "f32_fan", "bool", "q_slice", "k_transposed", "every_other",
             "long_fan_4096", "v_slice_sum"]
    through_triton = _spy_on_triton(monkeypatch, K, which=0)
    monkeypatch.setattr(K, "_SINGLES", {})

    def aligned(t):
        return t.data_ptr() % 16 == 0

    out = torch.zeros(3, COLS, dtype=torch.int64, device="cuda")
    realigned = 0
    for name in names:
        x, fan, inv = cases[name]
        x = x.cuda()
        fan32 = None if fan is None else _fan_maps(fan.cuda())[1]
        before = len(through_triton)
        shifted = _moved(x, 1, 3)
        new_key = aligned(shifted) != aligned(x)
        realigned += new_key
        # (first read; the same layout, other values, twice; shifted by one element: through Triton when that
        # changes its alignment; the fan map given as another tensor of the same values: through Triton)
        reads = [(x, fan32, 1), (_moved(x, 0, 1), fan32, 1), (_moved(x, 0, 2), fan32, 1),
                 (shifted, fan32, 1 + new_key)]
        if fan32 is not None:
            reads.append((_moved(x, 0, 4), fan32.clone(), 2 + new_key))
        for j, (y, f, triton_reads) in enumerate(reads):
            out.zero_()
            K.launch(y, out, f, inv, row=j % 3)
            assert out[j % 3].tolist() == reference(y.cpu(), fan, inv), (name, j)
            assert len(through_triton) - before == triton_reads, (name, j)
    assert realigned >= 5  # (the shifts did change the alignment of most cases)
    # a Triton whose compiled kernels take their arguments otherwise: nothing is launched, a warning, and reads go
    # through Triton's launcher from then on
    x, fan, inv = cases["spikes_10007"]
    x = x.cuda()
    (key, entry), = [(k, v) for k, v in K._SINGLES.items() if k[0] == x.shape and k[5] == id(None) and k[7]]
    K._SINGLES[key] = entry._replace(compiled=_NotBinding())
    monkeypatch.setattr(K, "_DIRECT", True)
    before = len(through_triton)
    out.zero_()
    with pytest.warns(RuntimeWarning, match="go through Triton"):
        K.launch(_moved(x, 0, 7), out, None, None)
    assert out[0].tolist() == reference(x.cpu(), None, None) and len(through_triton) == before + 1
    K.launch(_moved(x, 0, 8), out, None, None, row=1)
    assert len(through_triton) == before + 2 and K._DIRECT is False


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_gpu_kernels_launch_on_the_device_of_their_tensors():
    """Models on cuda:1 while cuda:0 is current: the LIF and counting kernels run on cuda:1 (in a child process: a
    kernel launched on the wrong device can leave an illegal address that breaks every later CUDA call)."""
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--second-device"], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["current"] == 0
    check_replayed_counts(got["replayed"])
    for name in ("conv", "spikformer"):
        assert got[f"{name}_forward"], name
        kernel, ref = got[f"{name}_profiles"]
        assert kernel == ref and kernel["totals"]["synops"] > 0, name



def fused_models(device="cpu"):
    """Models whose neurons use backend="fused" (in the child process: the LIF kernel run by the interpreter)."""
    from neurosim.layers import NeuronSpec
    from neurosim.models import spikformer

    torch.manual_seed(5)
    conv = ConvNet("fused").eval()
    sf = spikformer(12, 3, dim=16, depth=1, heads=2, num_steps=3, max_len=5, readout="pool",
                    neuron=NeuronSpec(backend="fused", threshold=0.5)).eval()
    g = torch.Generator().manual_seed(6)
    return {"conv": (conv.to(device), (torch.rand(3, 2, 2, 10, 10, generator=g) < 0.3).float().to(device)),
            "spikformer": (sf.to(device), (torch.rand(2, 5, 12, generator=g) < 0.4).float().to(device))}


def fused_kernel_counts(device="cpu"):
    """In the interpreter: the spike counts the fused LIF kernel reports (neurosim.spike_tally) against the spikes
    it returned, and profiles of fused-neuron models with those counts against the same profiles with every
    spike tensor read by the counting kernel instead (the sink refuses the kernel's offer)."""
    from neurosim import spike_tally

    class Sink:
        def __init__(self):
            self.rows = []

        def row(self, x):
            self.rows.append([torch.zeros(spike_tally.SLOTS, dtype=torch.int64, device=device), None])
            return self.rows[-1][0]

        def counted(self, row, spikes):
            assert row is self.rows[-1][0]
            self.rows[-1][1] = spikes

    direct = []
    g = torch.Generator().manual_seed(7)
    # the last: more programs than the row has slots (the interpreter runs 32 neurons a program)
    for kind, shape, dtype in (("lif", (9, 3, 13), torch.float32), ("cuba", (5, 2, 3, 7), torch.bfloat16),
                               ("lif", (3, 2, 1100), torch.float32)):
        layer = (neurosim.LIF if kind == "lif" else neurosim.CubaLIF)(beta=0.7, threshold=0.3, backend="fused")
        layer = layer.to(device)
        sink = Sink()
        with spike_tally.collecting(sink):
            layer(torch.rand(shape, generator=g).to(device, dtype))
        (row, spikes), = sink.rows
        direct.append([row.tolist(), int(spikes.double().sum()), int((spikes != 0).sum())])
    out = {"direct": direct}
    orig_row, orig_count, orig_tally = spike_tally.row, CountBuffer._count, CountBuffer.tally_row
    reads = []

    def spy(self, st, t, fan):
        reads.append(tuple(t.shape))
        return orig_count(self, st, t, fan)

    CountBuffer._count = spy
    try:
        for name, (model, x) in fused_models(device).items():
            with torch.no_grad():
                for offered in (True, False):
                    spike_tally.row = orig_row if offered else (lambda x: None)
                    reads.clear()
                    rep = profile(model, x, counting="kernel")
                    counting = rep.counting.replace("interpreter", "kernel")  # the same code, run either way
                    out[f"{name}_{offered}"] = {"report": json.loads(rep.to_json()), "reads": len(reads),
                                                "counting": counting}
        # the conv net's LIF outputs feed a conv and a pool, whose fan-weighted reads count the spikes anyway:
        # after the first forward the meter stops asking the kernel to count them (same report, same reads)
        model, x = fused_models(device)["conv"]
        tallies, orig_tally = [], CountBuffer.tally_row

        def spy_tally(self, t, slots):
            tallies.append(tuple(t.shape))
            return orig_tally(self, t, slots)

        CountBuffer.tally_row = spy_tally
        for offered in (True, False):
            spike_tally.row = orig_row if offered else (lambda x: None)
            per_forward = []
            with torch.no_grad(), EnergyMeter(model, counting="kernel", replay=False) as meter:
                for _ in range(3):
                    tallies.clear()
                    reads.clear()
                    model(x)
                    meter._counts.flush()
                    per_forward.append([len(tallies), len(reads)])
            out[f"conv_thrice_{offered}"] = {"report": json.loads(meter.report().to_json()),
                                             "per_forward": per_forward}
    finally:
        spike_tally.row, CountBuffer._count, CountBuffer.tally_row = orig_row, orig_count, orig_tally
    return out


def replayed_counts(device="cpu"):
    """In the interpreter: reports of fused-neuron models over four forwards (new spikes each) under a meter that
    replays them (the recording's reads run from their plans, the LIF kernels tally into the replay's block) and
    under one that hooks every forward, with the number of forwards replayed."""
    out = {}
    for name, (model, x) in fused_models(device).items():
        g = torch.Generator().manual_seed(11)
        xs = [(torch.rand(x.shape, generator=g) < 0.3).float().to(device) for _ in range(4)]
        for replay in (True, False):
            with torch.no_grad(), EnergyMeter(model, counting="kernel", replay=replay) as meter:
                for xi in xs:
                    model(xi)
            out[f"{name}_{replay}"] = {"report": json.loads(meter.report().to_json()), "replayed": meter.replayed,
                                       "counting": meter.report().counting.replace("interpreter", "kernel")}
    # products and sums recorded unedited, then edited in place after they return (test_energy.EditedOutputs): the
    # replays read their outputs as they return (the kernel launched from the read's own plan)
    import neurosim.models  # noqa: F401  (registers SEWConnect's counter)
    from test_energy import EditedOutputs, edited_reference

    g = torch.Generator().manual_seed(12)
    xs = [tuple((torch.rand(2, 2, 6, 4, generator=g) < 0.5).float().to(device) for _ in range(3)) for _ in range(4)]
    for edit in ("before", "after"):
        model = EditedOutputs("none").to(device)
        with torch.no_grad(), EnergyMeter(model, counting="kernel") as meter:
            for i, x in enumerate(xs):
                model.edit = edit if i >= 2 else "none"
                model(*x)
        want = [edited_reference(*(t.cpu() for t in x)) for x in xs]
        out[f"edited_{edit}"] = {"report": json.loads(meter.report().to_json()), "replayed": meter.replayed,
                                 "want": {n: sum(w[n] for w in want) for n in want[0]}}
    return out


def check_replayed_counts(got):
    for name in ("conv", "spikformer"):
        replayed, hooked = got[f"{name}_True"], got[f"{name}_False"]
        # the conv net's first forward stops its LIF tallies (fan-weighted reads count those spikes): the second
        # is recorded, the last two replayed
        assert replayed["replayed"] == (2 if name == "conv" else 3) and hooked["replayed"] == 0, name
        assert replayed["counting"] == hooked["counting"] == "kernel+neuron kernel", name
        assert replayed["report"] == hooked["report"], name
        assert replayed["report"]["totals"]["synops"] > 0, name
    for edit in ("before", "after"):
        got_edit = got[f"edited_{edit}"]
        layer = {r["name"]: r for r in got_edit["report"]["layers"]}
        assert {n: layer[n]["synops"] + layer[n]["acs"] for n in got_edit["want"]} == got_edit["want"], edit
        assert got_edit["replayed"] == (3 if edit == "after" else 1), edit
        assert not any("changed" in r["note"] for r in layer.values()), edit


def second_device_results():
    """On cuda:1 while cuda:0 is the current device (Triton launches on the current one): the fused models' outputs
    against cuda:0's, their replayed and hooked reports (:func:`replayed_counts`), and their profiles counted by the
    kernel and by torch ops."""
    out = {"current": torch.cuda.current_device(), "replayed": replayed_counts("cuda:1")}
    for name, (model, x) in fused_models("cuda:1").items():
        with torch.no_grad():
            y1 = model(x).cpu()
            y0 = model.to("cuda:0")(x.to("cuda:0")).cpu()
        model.to("cuda:1")
        out[f"{name}_forward"] = torch.equal(y0, y1)
        out[f"{name}_profiles"] = [json.loads(profile(model, x, counting=c).to_json()) for c in ("kernel", "torch")]
    return out


class LateInPlace(nn.Module):
    """A LIF's spikes read by fc1, then zeroed in place (outside any module) before fc2 reads them: a read that
    waits in a batch past the change would count the zeros for the LIF and fc1 too."""

    def __init__(self):
        super().__init__()
        self.lif = neurosim.LIF(beta=0.5, threshold=0.2, backend="torch")
        self.fc1, self.fc2 = nn.Linear(6, 4), nn.Linear(6, 4)

    def forward(self, x):
        s = self.lif(x)
        y = self.fc1(s)
        s.mul_(0)
        return y + self.fc2(s)


def _launches():
    """Spies on the counting kernel's launches: returns (log, undo); log entries are tensors read per launch."""
    from neurosim.kernels import stats as K

    log, one, many = [], K.launch, K.launch_many

    def spy_one(x, *a, **k):
        log.append(1)
        return one(x, *a, **k)

    def spy_many(xs, *a, **k):
        log.append(len(xs))
        return many(xs, *a, **k)

    K.launch, K.launch_many = spy_one, spy_many

    def undo():
        K.launch, K.launch_many = one, many
    return log, undo


def _metered(model, x, batching, forwards=1):
    """The report of the last of ``forwards`` metered forwards (a CUDA graph's warm-ups before its capture: the
    earlier ones' calls and notes are dropped) and the launches per forward."""
    per_forward = []
    log, undo = _launches()
    try:
        with torch.no_grad(), EnergyMeter(model, counting="kernel", replay=False) as meter:
            meter._counts.batching = batching
            for i in range(forwards):
                if i:
                    for s in meter._slots:
                        s.calls.clear()
                        s.notes.clear()
                    meter._cache.clear()  # (as before a graph's capture: its rows are made anew, under their keys)
                log.clear()
                model(*x) if isinstance(x, tuple) else model(x)
                meter._counts.flush()
                per_forward.append(list(log))
    finally:
        undo()
    return json.loads(meter.report().to_json()), per_forward


def batched_counts(device="cpu"):
    """Reads batched several tensors a launch (CountBuffer.batching, as a CUDA graph's forward does them) against
    the same reads one launch each: buffer rows, and reports of a fused Spikformer and of LateInPlace."""
    out = {"buffer": buffer_counts("auto", batching=True, device=device)[0]}
    model, x = fused_models(device)["spikformer"]
    out["spikformer"] = {str(b): _metered(model, x, b) for b in (True, False)}
    torch.manual_seed(8)
    late = LateInPlace().to(device)
    x = (torch.rand(3, 2, 6) * 0.6).to(device)
    out["late"] = {"batched_once": _metered(late, x, True), "batched_twice": _metered(late, x, True, forwards=2),
                   "unbatched": _metered(late, x, False)}
    # products and sums counted from their outputs, which the forward then edits in place: their reads are launched
    # as the layers return (with the batch waiting), not left to wait past the edits
    import neurosim.models  # noqa: F401  (registers SEWConnect's counter)
    from test_energy import EditedOutputs, edited_reference

    qkv = tuple((torch.rand(2, 2, 6, 4, generator=torch.Generator().manual_seed(s)) < 0.5).float().to(device)
                for s in (21, 22, 23))
    out["edited"] = {edit: {"batched": _metered(EditedOutputs(edit).to(device), qkv, True),
                            "unbatched": _metered(EditedOutputs(edit).to(device), qkv, False)}
                     for edit in ("before", "after")}
    out["edited"]["want"] = edited_reference(*(t.cpu() for t in qkv))
    return out


def check_batched_counts(got, counts):
    assert got["buffer"] == counts  # every row as read one launch each (the float64 reference)
    (rep, (launches,)), (ref, (ref_launches,)) = got["spikformer"]["True"], got["spikformer"]["False"]
    assert rep == ref
    assert sum(launches) == len(ref_launches) and max(launches) > 1  # the same reads, in fewer launches
    assert len(launches) < len(ref_launches)
    late = got["late"]
    ref, _ = late["unbatched"]
    layer = {r["name"]: r for r in ref["layers"]}
    assert layer["fc1"]["synops"] > 0 and layer["fc2"]["synops"] == 0 and not layer["lif"]["note"]
    # one forward: the LIF's spikes waited in the batch past the change, and the report says so
    once = {r["name"]: r for r in late["batched_once"][0]["layers"]}
    assert once["fc1"]["synops"] == 0 and "changed in place" in once["lif"]["note"]
    # a second forward (what a graph captures after its warm-ups) reads them at once: the unbatched report
    twice, per_forward = late["batched_twice"]
    assert twice == ref
    assert len(per_forward[1]) > len(per_forward[0])
    want = got["edited"]["want"]
    for edit in ("before", "after"):
        (ref, _), (batched, (launches,)) = got["edited"][edit]["unbatched"], got["edited"][edit]["batched"]
        layer = {r["name"]: r for r in ref["layers"]}
        assert {n: layer[n]["synops"] + layer[n]["acs"] for n in want} == want, edit
        # batched from the first forward on (no warm-up to learn from): the same report, in fewer launches
        assert batched == ref and len(launches) < sum(launches), edit
        assert not any("changed" in r["note"] for r in ref["layers"]), edit


# ---------------------------------------------------------------- child process entry point
if __name__ == "__main__" and sys.argv[1:] == ["--second-device"]:
    print(json.dumps(second_device_results()))
if __name__ == "__main__" and len(sys.argv) > 2 and sys.argv[1] == "--interpreter":
    counts, paths = buffer_counts("auto")
    from neurosim.kernels import stats as K

    K.IDX32_LIMIT = 0  # the kernel's 64-bit index path (tensors past 2**31 elements), on the same cases
    counts64, _ = buffer_counts("auto")
    K.IDX32_LIMIT = 2 ** 31
    saved = torch.load(sys.argv[2])
    net, _ = conv_case()
    net.load_state_dict(saved["state"])
    rep = profile(net.eval(), saved["x"], counting="kernel")
    print(json.dumps({"counts": counts, "counts64": counts64, "paths": paths, "report": json.loads(rep.to_json()),
                      "counting": rep.counting, "fused": fused_kernel_counts(), "batched": batched_counts(),
                      "replayed": replayed_counts()}))
