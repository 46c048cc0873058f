"""neurosim.energy: counts checked against hand-computed figures and brute-force loops over fixed spikes."""
import io
import itertools
import json
import math
import os
import re
import sys

import pytest
import torch
from torch import nn

import neurosim
from neurosim.energy import Count, EnergyMeter, HardwareProfile, profile, register_counter
from neurosim.layers import Add, MatMul


def spikes(*shape, p=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) < p).float()


def brute_conv_synops(x, conv):
    """Independent reference: loop over every output position and kernel tap, count taps landing on a spike."""
    n, cin, h, w = x.shape
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    ph, pw = conv.padding
    dh, dw = conv.dilation
    g = conv.groups
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    per_group_out = conv.out_channels // g
    total = 0
    for i in range(ho):
        for j in range(wo):
            for a in range(kh):
                for b in range(kw):
                    r, c = i * sh - ph + a * dh, j * sw - pw + b * dw
                    if 0 <= r < h and 0 <= c < w:
                        total += int(x[:, :, r, c].sum()) * per_group_out
    return total


class TB(nn.Module):
    """Apply a per-sample layer to [T, B, ...] by flattening T*B (as the models do)."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        y = self.layer(x.flatten(0, 1))
        return y.reshape(x.shape[:2] + y.shape[1:])


def test_linear_hand_counts_and_masked_input():
    x = torch.tensor([[[1.0, 0, 1, 0]], [[0, 0, 0, 1]]])  # [T=2, B=1, 4]: 3 spikes
    fc = nn.Linear(4, 3)
    r = profile(fc, x).layer("Linear")
    assert (r.synops, r.macs, r.dense) == (3 * 3, 0, 2 * 4 * 3)
    assert r.in_spikes and r.in_rate == pytest.approx(3 / 8)
    # a mask (random spike masking) that removes two of the three spikes: they cost nothing
    mask = torch.tensor([[[0.0, 1, 1, 1]], [[1, 1, 1, 0]]])
    r = profile(fc, x * mask).layer("Linear")
    assert r.synops == 1 * 3 and r.dense == 24
    # silent input: nothing at all
    assert profile(fc, torch.zeros(2, 1, 4)).layer("Linear").synops == 0


def test_real_input_counts_macs():
    x = torch.randn(2, 3, 5)
    r = profile(nn.Linear(5, 4), x).layer("Linear")
    assert (r.macs, r.synops, r.dense, r.in_spikes) == (2 * 3 * 5 * 4, 0, 120, False)
    e = profile(nn.Linear(5, 4), x).totals()["energy_pj"]
    assert e == pytest.approx(120 * 4.6)


def test_conv_padding_stride_hand_counts():
    # 4x4 input, kernel 3, stride 2, padding 1 -> 2x2 output. Windows cover rows {-1,0,1} and {1,2,3}, so
    # row r lies in [1, 2, 1, 1] windows (same for columns): fan-out(r, c) = cnt[r] * cnt[c] * out_channels.
    x = torch.zeros(1, 1, 1, 4, 4)
    for r, c in [(0, 0), (1, 1), (3, 3), (1, 2)]:
        x[0, 0, 0, r, c] = 1
    conv = nn.Conv2d(1, 2, 3, stride=2, padding=1)
    rep = profile(TB(conv), x).layer("layer")
    assert rep.synops == (1 * 1 + 2 * 2 + 1 * 1 + 2 * 1) * 2 == 16
    assert rep.dense == 2 * 2 * 2 * 9  # outputs x taps (padded taps included, the ANN convention)
    assert rep.synops_paper == pytest.approx(4 / 16 * 72)  # the papers' rate x dense overestimates here


@pytest.mark.parametrize("kw", [dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=(2, 3), stride=(1, 2),
                                padding=(0, 2), dilation=(2, 1)), dict(kernel_size=3, padding=1, groups=2)])
def test_conv_matches_brute_force(kw):
    conv = nn.Conv2d(4, 6, **kw)
    x = spikes(2, 3, 4, 7, 6, seed=1)
    rep = profile(TB(conv), x).layer("layer")
    assert rep.synops == brute_conv_synops(x.flatten(0, 1), conv)


def test_conv1d_and_same_padding():
    conv = nn.Conv1d(2, 3, 4, padding="same")
    x = torch.zeros(1, 1, 2, 5)
    x[0, 0, 0, 0] = 1
    x[0, 0, 1, 4] = 1
    rep = profile(TB(conv), x).layer("layer")
    # 'same' with k=4 pads 1 left, 2 right: 5 windows start at s=-1..3 and cover s..s+3;
    # position 0 lies in s=-1,0 (2 windows), position 4 in s=1,2,3 (3 windows); 3 output channels
    assert rep.synops == (2 + 3) * 3


def test_matmul_spike_spike_spike_real_and_real_real():
    a = torch.tensor([[[[1.0, 0], [1, 1]]]])  # [1, 1, 2, 2]
    b = torch.tensor([[[[1.0, 1, 0], [0, 1, 1]]]])  # [1, 1, 2, 3]
    mm = MatMul()
    # spike x spike: products with both operands 1 = sum(a @ b) = 1+1+0+1+2+1
    assert profile(mm, (a, b)).layer("MatMul").synops == 6
    # spike x real: each 1 of a meets the 3 values of its row of b
    r = profile(mm, (a, b + 0.5)).layer("MatMul")
    assert (r.synops, r.macs) == (3 * 3, 0)
    r = profile(MatMul(scale=0.5), (a + 0.5, b + 0.5)).layer("MatMul")
    # + one scale multiply per output, which the same-shape ANN does too (in its dense)
    assert (r.synops, r.macs, r.dense) == (0, 2 * 2 * 3 + 2 * 3, 12 + 2 * 3)


def test_matmul_broadcast_batch():
    a = spikes(2, 3, 4, 5, seed=3)
    b = torch.randn(5, 6)  # broadcast over [2, 3]
    assert profile(MatMul(), (a, b)).layer("MatMul").synops == int(a.sum()) * 6


@pytest.mark.parametrize("dtype,k,scale", [(torch.float32, 24, 1 / 24 ** 0.5), (torch.bfloat16, 100, 0.3),
                                           (torch.bfloat16, 300, 0.3), (torch.float16, 64, 1 / 8),
                                           (torch.float32, 8, 0.0)])
def test_matmul_spike_spike_from_its_output_or_operands(dtype, k, scale):
    """Both binary: the count is recovered from the scaled output when the dtype holds the products exactly
    (bf16 k=300 and scale 0 take the operand sums instead); reference: the float64 product, summed."""
    a = spikes(2, 3, 5, k, p=0.5, seed=4).to(dtype)
    b = spikes(3, k, 7, p=0.5, seed=5).to(dtype)  # broadcast over the leading 2
    expected = int((a.double() @ b.double()).sum())
    assert profile(MatMul(scale=scale), (a, b)).layer("MatMul").synops == expected
    with neurosim.energy.EnergyMeter(MatMul(scale=scale)) as m:  # a consumer reads the output afterwards
        out = m.model(a, b)
        nn.Identity()(out)
    assert m.report().layer("MatMul").synops == expected


def test_add_spike_spike_broadcast_matches_brute_force():
    a, b = spikes(3, 2, 5, seed=6), spikes(2, 5, seed=7)
    assert profile(Add(), (a, b)).layer("Add").acs == int(torch.count_nonzero(a * b))


def test_add_residual_counts():
    s = torch.tensor([[[1.0, 0, 1, 0]]])
    real = torch.tensor([[[0.5, -1, 2, 3]]])
    assert profile(Add(), (s, real)).layer("Add").acs == 2  # only where the spike is 1
    assert profile(Add(), (s, torch.tensor([[[1.0, 1, 0, 0]]]))).layer("Add").acs == 1  # both 1
    assert profile(Add(), (real, real)).layer("Add").acs == 4


class EditedOutputs(nn.Module):
    """Products and sums whose outputs the forward then edits in place, outside any module: a causal mask on the
    spike x spike scores, the spike + spike residual sum zeroed, the real x spike product doubled and a SEW ADD
    zeroed. ``edit``: ``"none"``; ``"before"``, each edit before the tensor's next use by a module (the scores by the
    product with ``v``, the sum by ``fc``); ``"after"``, after it. Takes spikes ``q, k, v`` ``[T, B, N, d]``."""

    def __init__(self, edit="before", d=4):
        super().__init__()
        from neurosim.layers import SEWConnect

        self.qk, self.av, self.add, self.fc, self.sew = MatMul(0.125), MatMul(), Add(), nn.Linear(d, 3), SEWConnect()
        self.edit = edit

    def forward(self, q, k, v):
        before, after = self.edit == "before", self.edit == "after"
        n = q.shape[-2]
        causal = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
        scores = self.qk(q, k.transpose(-1, -2))  # spike x spike
        if before:
            scores.masked_fill_(causal, 0.0)
        y = self.av(scores, v)  # real x spike
        if after:
            scores.masked_fill_(causal, 0.0)
        s = self.add(q, v)  # spike + spike
        if before:
            s.mul_(0)
        z = self.fc(s)
        if after:
            s.mul_(0)
        e = self.sew(k, v)  # spike + spike (SEW ADD)
        if before or after:
            e.zero_()
            y.mul_(2)
        return y, z, e


def edited_reference(q, k, v) -> dict:
    """Hand counts of :class:`EditedOutputs`'s products and sums, from torch's products of the same operands (the
    edits come after they are computed)."""
    return {"qk": int((q @ k.transpose(-1, -2)).sum()),  # product terms whose two spikes are 1
            # product terms whose spike (v) is 1: the scores are real
            "av": int((torch.ones(q.shape[:-1] + q.shape[-2:-1]) @ v).sum()),
            "add": int(torch.count_nonzero(q * v)), "sew": int(torch.count_nonzero(k * v))}  # both spikes 1


def edited_counts(rep) -> dict:
    return {"qk": rep.layer("qk").synops, "av": rep.layer("av").synops, "add": rep.layer("add").acs,
            "sew": rep.layer("sew").acs}


def test_a_product_s_count_is_of_its_values_before_the_caller_masks_them():
    """The audit's case: spike x spike scores masked in place after the product returned. The product's count came
    from its output, read after the forward: 103 SynOps reported, 171 computed (the products q @ k^T, summed)."""
    torch.manual_seed(0)

    class Causal(nn.Module):
        def __init__(self):
            super().__init__()
            self.qk, self.av = MatMul(0.125), MatMul()

        def forward(self, q, k, v):
            sc = self.qk(q, k.transpose(-1, -2))
            sc.masked_fill_(torch.ones(6, 6, dtype=torch.bool).triu(1), 0.0)
            return self.av(sc, v)

    q, k, v = [(torch.rand(2, 2, 6, 4) < 0.5).float() for _ in range(3)]
    rep = profile(Causal(), (q, k, v), reuse=False)
    assert rep.layer("qk").synops == int((q @ k.mT).sum()) == 171
    assert "changed" not in rep.layer("qk").note


@pytest.mark.parametrize("edit", ["before", "after"])
def test_products_and_sums_count_the_values_they_computed_before_an_in_place_edit(edit):
    """Spike x spike products and spike + spike sums are counted from their outputs; an edit in place after the
    layer returned (a mask, a zeroing) changed the count (the sum's ACs beyond its own dense count). A first profile
    (hooked), then profile called again (the kept meter records, then hooks: a forward that edits a tensor after a
    layer used it is not replayed), and several forwards under one meter. The real x spike product counts its
    operands (unchanged by the edit of its output)."""
    import neurosim.models  # noqa: F401  (registers SEWConnect's counter)

    model = EditedOutputs(edit)
    inputs = [[spikes(2, 2, 6, 4, p=0.5, seed=3 * i + j) for j in range(3)] for i in range(3)]
    for q, k, v in inputs:
        rep = profile(model, (q, k, v))
        assert edited_counts(rep) == edited_reference(q, k, v)
        assert rep.layer("add").acs <= rep.layer("add").dense and not any("changed" in r.note for r in rep.layers)
    with torch.no_grad(), EnergyMeter(model) as meter:
        for x in inputs:
            model(*x)
    want = [edited_reference(*x) for x in inputs]
    assert edited_counts(meter.report()) == {n: sum(w[n] for w in want) for n in want[0]}


def brute_transposed_synops(x, conv, out_spatial):
    """Independent reference: every kernel tap of every spike, counted when it lands inside the output."""
    nd = len(conv.kernel_size)
    per_group_out = conv.out_channels // conv.groups
    total = 0
    for pos in torch.nonzero(x.reshape(-1, *x.shape[-nd:]) != 0).tolist():
        for taps in itertools.product(*(range(k) for k in conv.kernel_size)):
            at = [p * s - pad + k * d for p, s, pad, k, d in zip(pos[1:], conv.stride, conv.padding, taps,
                                                                 conv.dilation)]
            if all(0 <= a < o for a, o in zip(at, out_spatial)):
                total += per_group_out
    return total


@pytest.mark.parametrize("nd, kw", [(2, dict(kernel_size=3, stride=2, padding=1, output_padding=1)),
                                    (2, dict(kernel_size=(4, 3), stride=(3, 2), padding=(2, 1), dilation=2,
                                             groups=2)),
                                    (2, dict(kernel_size=2)),
                                    (1, dict(kernel_size=5, stride=2, padding=3, output_padding=1, dilation=1)),
                                    (3, dict(kernel_size=3, stride=2, padding=1))])
@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_conv_transpose_matches_brute_force(nd, kw, device):
    """(On CUDA the fan-weighted count comes from the counting kernel's read.)"""
    layer = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[nd - 1](4, 6, **kw).to(device)
    x = spikes(2, 3, 4, *(5,) * nd, seed=nd).to(device)
    r = profile(TB(layer), x).layer("layer")
    out = layer(x.flatten(0, 1))
    x = x.cpu()
    assert r.synops == brute_transposed_synops(x, layer, out.shape[-nd:]) > 0
    assert r.in_spikes and r.macs == 0
    assert r.dense == x.numel() * 6 // layer.groups * math.prod(layer.kernel_size)  # every tap of every input
    real = profile(TB(layer), x.to(device) + 0.5).layer("layer")  # a real-valued input costs the dense MACs
    assert (real.macs, real.synops) == (r.dense, 0)


def test_conv_transpose_output_size_is_the_layer_s():
    """``output_size`` (a keyword of the call) lengthens the output: taps reaching the extra positions count."""
    class Up(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.ConvTranspose1d(2, 3, 3, stride=2, padding=1)

        def forward(self, x):
            return self.layer(x, output_size=[x.shape[-1] * 2])

    x = spikes(1, 2, 6, seed=3)
    m = Up()
    out = m(x)
    assert out.shape[-1] == 12  # (one more than without output_size)
    assert profile(m, x).layer("layer").synops == brute_transposed_synops(x, m.layer, out.shape[-1:]) > 0


def test_pooling_and_norm():
    x = torch.zeros(1, 1, 1, 4, 4)
    x[0, 0, 0, 0, 0] = x[0, 0, 0, 3, 3] = x[0, 0, 0, 1, 2] = 1
    assert profile(TB(nn.MaxPool2d(2)), x).layer("layer").acs == 3  # each input in exactly one window
    # 3x3 windows, stride 1, no padding on 4x4 -> rows in [1, 2, 2, 1] windows
    assert profile(TB(nn.AvgPool2d(3, stride=1)), x).layer("layer").acs == 1 * 1 + 1 * 1 + 2 * 2
    assert profile(TB(nn.AdaptiveAvgPool2d(1)), x).layer("layer").acs == 3
    # 3-D: a 2x2x2 max pool holds each input in one window; a 3x3x3 average pool, stride 1, on 4x4x4 holds a
    # position in (windows along each dim) = [1, 2, 2, 1] per dim, multiplied
    v = torch.zeros(1, 1, 1, 4, 4, 4)
    v[0, 0, 0, 0, 0, 0] = v[0, 0, 0, 1, 2, 3] = v[0, 0, 0, 2, 2, 1] = 1
    assert profile(TB(nn.MaxPool3d(2)), v).layer("layer").acs == 3
    assert profile(TB(nn.AvgPool3d(3, stride=1)), v).layer("layer").acs == 1 * 1 * 1 + 2 * 2 * 1 + 2 * 2 * 2
    assert profile(TB(nn.AdaptiveMaxPool3d(1)), v).layer("layer").acs == 3
    r = profile(TB(nn.BatchNorm2d(1)), x).layer("layer")
    assert r.macs == r.dense == 16


def test_neurons_not_counted_and_totals():
    class Unknown(nn.Module):  # a layer no counter knows
        def forward(self, x):
            return x / (1 + x.abs())

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 4)
            self.lif = neurosim.LIF(beta=0.5, backend="torch")
            self.act = Unknown()

        def forward(self, x):
            return self.act(self.lif(self.fc(x)))

    x = spikes(3, 2, 6, seed=2)
    rep = profile(Net(), x, hardware="loihi")
    lif = rep.layer("lif")
    assert lif.neuron_updates == 3 * 2 * 4 and lif.type == "LIF"
    assert rep.not_counted == ["act"] and not rep.layer("act").counted
    fc = rep.layer("fc")
    assert fc.synops == int(x.sum()) * 4
    assert rep.totals()["energy_pj"] == pytest.approx(23.6 * fc.synops + 81.0 * lif.neuron_updates)
    assert "not counted" in rep.table().lower() and "act" in rep.table()
    assert rep.batch_size == 2


def test_spiking_neuron_protocol_and_register_counter():
    class MyNeuron(nn.Module):
        is_spiking_neuron = True

        def forward(self, x):
            return (x > 0).float()

    class Odd(nn.Module):
        def forward(self, x):
            return x * 2

    register_counter(Odd, lambda m, args, out: Count(dense=args[0].numel(), macs=args[0].numel()), overwrite=True)
    net = nn.Sequential(MyNeuron(), Odd())
    rep = profile(net, torch.randn(2, 3, 5))
    assert rep.layer("0").neuron_updates == 30
    assert rep.layer("1").macs == 30 and rep.not_counted == []
    with pytest.raises(ValueError, match="already registered"):
        register_counter(Odd, lambda m, a, o: Count())


def test_a_counter_registered_after_a_profile_counts_the_next_one():
    """The meter works out each module type's counter once (counters._lookup); registering one for a type it has
    already seen, or for a base class of it, takes effect in the next profile."""
    class Seen(nn.Module):
        def forward(self, x):
            return x * 3

    class SeenToo(Seen):
        pass

    net = nn.Sequential(Seen(), SeenToo())
    x = torch.randn(2, 3, 4)
    first = profile(net, x)
    assert set(first.not_counted) == {"0", "1"}
    register_counter(Seen, lambda m, args, out: Count(dense=args[0].numel(), macs=args[0].numel()))
    second = profile(net, x)
    assert second.not_counted == [] and second.layer("0").macs == second.layer("1").macs == 24
    register_counter(SeenToo, lambda m, args, out: Count(dense=1, macs=1))  # the more specific class wins
    third = profile(net, x)
    assert third.layer("0").macs == 24 and third.layer("1").macs == 1


def test_nan_and_non_binary_errors_name_the_layer():
    net = nn.Sequential(nn.Linear(4, 4), neurosim.LIF(backend="torch"), nn.Linear(4, 2))
    x = spikes(2, 1, 4)
    x[0, 0, 1] = float("nan")
    with pytest.raises(ValueError, match=r"layer '0' \(Linear\).*NaN"):
        profile(net, x)
    with pytest.raises(ValueError, match=r"layer '0' \(Linear\) requires binary spikes"):
        profile(net, torch.randn(2, 1, 4), require_spikes=["0", "2"])
    profile(net, torch.randn(2, 1, 4), require_spikes="2")  # LIF output feeds layer 2: spikes, fine
    with pytest.raises(ValueError, match="require_spikes"):
        profile(net, x, require_spikes=3)


def _nan_input(*shape):
    x = torch.rand(*shape) * 3
    x[0, 0, 0] = float("nan")
    return x


def test_a_nan_checked_by_a_neurosim_neuron_names_it_where_it_was_first_seen():
    """neurosim's neurons check their input themselves (validate.finite, a deferred check naming the layer
    running): hooked, replayed, with defer_checks=False. Two cases named no layer or the wrong one under
    rates="needed": a neuron the meter does not wrap (not a registered child) ran outside every counted layer,
    and its error named nothing; a residual addition that reads the NaN input after the neuron was named instead of
    the neuron (the meter's reads were preferred to the deferred checks), where rates="all" names the neuron."""
    from neurosim.layers import Add

    x = _nan_input(3, 2, 4)
    lif = nn.Sequential(neurosim.LIF(backend="torch"), nn.Linear(4, 3))
    for _ in range(3):  # hooked, recorded, replayed
        with pytest.raises(ValueError, match=r"^layer '0' \(LIF\): x contains NaN"):
            profile(lif, x)
    with pytest.raises(ValueError, match=r"^layer '0' \(LIF\) failed: x contains 1 NaN"):
        with torch.no_grad(), EnergyMeter(lif, defer_checks=False):
            lif(x)

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.lif, self.add = neurosim.LIF(backend="torch"), Add()

        def forward(self, x):
            return self.add(self.lif(x), x)

    for rates in ("needed", "all"):
        with pytest.raises(ValueError, match=r"^layer 'lif' \(LIF\): (x|its input) contains NaN"):
            profile(Residual(), x, rates=rates, reuse=False)

    class Unwrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.__dict__["neurons"] = [neurosim.LIF(backend="torch")]  # (not a child module: never wrapped)

        def forward(self, x):
            return self.fc(self.neurons[0](x))

    with pytest.raises(ValueError, match=r"^model 'Unwrapped': x contains NaN"):
        profile(Unwrapped(), x, reuse=False)


def test_a_nan_reaching_the_model_output_is_named():
    """A NaN that meets no layer whose input the meter reads and no neuron on its way out (a norm, softmax or mean
    last; a NaN weight in the head) was reported by nobody, under either rates. The meter checks the model's output
    tensors (one float64 sum a forward, a deferred check): hooked, replayed, in profile_batches, per output of a
    tuple or dict."""
    from neurosim.energy import profile_batches
    from neurosim.layers import Mean

    head = nn.Linear(4, 3)
    with torch.no_grad():
        head.weight[0, 0] = float("nan")
    net = nn.Sequential(neurosim.LIF(backend="torch"), head)
    x = torch.rand(3, 2, 4)
    for rates in ("needed", "all"):
        with pytest.raises(ValueError, match=r"^model 'Sequential': output contains NaN"):
            profile(net, x, rates=rates, reuse=False)
    bad = _nan_input(3, 2, 4)
    # (Mean reads its input, to count spikes or elements as average pooling does: the NaN is named there first)
    for last, seen in ((nn.LayerNorm(4), r"^model 'Sequential': output contains NaN"),
                       (nn.Softmax(-1), r"^model 'Sequential': output contains NaN"),
                       (Mean(0), r"^layer '0' \(Mean\): its input contains NaN")):
        net = nn.Sequential(last)
        for _ in range(3):  # hooked, recorded, replayed
            with pytest.raises(ValueError, match=seen):
                profile(net, bad)
        with pytest.raises(ValueError, match=seen):
            profile_batches(net, [x, x, bad], progress=False)

    class Two(nn.Module):
        def __init__(self, as_dict):
            super().__init__()
            self.norm, self.as_dict = nn.LayerNorm(4), as_dict

        def forward(self, x):
            y = (x.shape[0], self.norm(x))  # (a number too: not checked)
            return {"steps": y[0], "logits": y[1]} if self.as_dict else y

    with pytest.raises(ValueError, match=r"^model 'Two': output\[1\] contains NaN"):
        profile(Two(False), bad, reuse=False)
    with pytest.raises(ValueError, match=r"^model 'Two': output\['logits'\] contains NaN"):
        profile(Two(True), bad, reuse=False)
    assert profile(Two(True), x, reuse=False).layer("norm").calls == 1


@pytest.mark.parametrize("op", ["LayerNorm", "BatchNorm1d", "ReLU", "Softmax", "Mean"])
@pytest.mark.parametrize("then", ["Linear", "LIF", "LIFNode", "output"])
def test_a_nan_through_layers_whose_input_is_not_read_is_named_where_first_seen(op, then):
    """The audit's cases: a NaN into a norm, an eval BatchNorm, ReLU or softmax (layers whose counts do not read their
    input; a Mean does, and is named itself) is named, under rates="needed", by the first place that sees it: a Linear after it (its input
    read for its count), a neurosim LIF (its own check), a SpikingJelly neuron (its input read by the meter, where
    the NaN vanishes) or, with nothing after it, the model's output (which nobody checked)."""
    from spikingjelly.activation_based import neuron as sj_neuron

    from neurosim.layers import Mean

    first = {"LayerNorm": lambda: nn.LayerNorm(4), "BatchNorm1d": lambda: nn.BatchNorm1d(2).eval(),
             "ReLU": nn.ReLU, "Softmax": lambda: nn.Softmax(-1), "Mean": lambda: Mean(0, keepdim=True)}[op]()
    layers = [first] + {"Linear": [nn.Linear(4, 3)], "LIF": [neurosim.LIF(backend="torch"), nn.Linear(4, 3)],
                        "LIFNode": [sj_neuron.LIFNode(step_mode="m"), nn.Linear(4, 3)], "output": []}[then]
    where = {"Linear": r"layer '1' \(Linear\): its input", "LIF": r"layer '1' \(LIF\): x",
             "LIFNode": r"layer '1' \(LIFNode\): its input", "output": r"model 'Sequential': output"}[then]
    if op == "Mean":  # (Mean reads its input, to count spikes or elements as average pooling does)
        where = r"layer '0' \(Mean\): its input"
    with pytest.raises(ValueError, match=rf"^{where} contains NaN"):
        profile(nn.Sequential(*layers), _nan_input(3, 2, 4), reuse=False)


def test_a_two_operand_layer_is_event_driven_when_either_operand_is_spikes():
    """Real x spike products and sums are counted as SynOps / ACs (the spikes pick what is done), so
    require_spikes and the report's binary-input flag accept spikes in either operand: require_spikes=True failed on a
    spiking self-attention's scores x V product, and its row was starred as counted like an ANN's."""
    from neurosim.layers import SpikingSelfAttention

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.mm, self.add = MatMul(), Add()

        def forward(self, a, b):
            return self.mm(a, b), self.add(a, b)

    s, real = spikes(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    ones = int(s.sum())
    for args in ((s, real), (real, s)):
        r = profile(Two(), args, reuse=False, require_spikes=True)
        # hand counts: each spike meets one row (left operand) or column (right) of 4 values; each is one addition
        assert r.layer("mm").synops == ones * 4 and r.layer("mm").macs == 0 and r.layer("add").acs == ones
        assert r.layer("mm").in_spikes and r.layer("add").in_spikes
    with pytest.raises(ValueError, match=r"layer 'mm' \(MatMul\) requires binary spikes .* \(nor were its second "
                                         r"operand's\)"):
        profile(Two(), (real, real), reuse=False, require_spikes=True)
    torch.manual_seed(0)
    ssa = SpikingSelfAttention(16, heads=2).eval()
    with torch.no_grad():
        for p in ssa.parameters():
            p.mul_(3)  # (real attention scores, not spikes)
    r = profile(ssa, spikes(2, 2, 5, 16), reuse=False, require_spikes=True)
    assert r.layer("av_matmul").synops > 0 and r.layer("av_matmul").in_spikes


def test_a_learned_positional_table_is_not_listed_as_uncounted():
    """Its table is read and handed to its child Add (counted); the meter flagged it as parameters used outside
    child modules, unlike the sinusoidal encoding with the same forward. A container that does compute with its own
    parameters is still flagged."""
    from neurosim.layers import LearnedPositionalEncoding

    x = spikes(2, 2, 5, 8)
    r = profile(nn.Sequential(LearnedPositionalEncoding(16, 8, mode="add")), x, reuse=False)
    assert r.not_counted == [] and r.layer("0.add").acs == int(x.sum())

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 8)
            self.gain = nn.Parameter(torch.ones(8))

        def forward(self, x):
            return self.lin(x) * self.gain

    assert profile(Scaled(), x, reuse=False).not_counted == ["Scaled"]


class _Inner(nn.Module):
    """Counted as one layer (its own counter), so the meter never sees the tensor it checks inside."""

    def __init__(self, w):
        super().__init__()
        self.w = w

    def forward(self, x):
        neurosim.validate.finite("current", x * self.w)
        return x


def test_meter_defers_the_layers_own_checks_and_names_the_layer_running():
    register_counter(_Inner, lambda m, a, o: Count(), overwrite=True)
    net = nn.Sequential(nn.Linear(4, 4), _Inner(float("nan")))
    x = spikes(2, 1, 4)
    with pytest.raises(ValueError, match=r"^layer '1' \(_Inner\): current contains NaN/inf"):
        with neurosim.energy.EnergyMeter(net) as meter:
            net(x)  # no error here: the check's verdict stays on the device until the block ends
            assert len(meter._checks.checks) == 2  # (_Inner's and the model's output's)
    with pytest.raises(ValueError, match=r"^layer '1' \(_Inner\): current contains NaN/inf"):
        profile(net, x)
    with pytest.raises(ValueError, match=r"^layer '1' \(_Inner\) failed: current contains 8 NaN/inf"):  # at once
        with neurosim.energy.EnergyMeter(net, defer_checks=False):
            net(x)
    net[1].w = 1.0
    assert profile(net, x).layer("1").calls == 1
    # the first counted layer whose input held NaN is named before any deferred check (here the LIF's)
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), neurosim.LIF(backend="torch"))
    with torch.no_grad():
        net[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"^layer '1' \(Linear\): its input contains NaN"):
        profile(net, torch.ones(2, 1, 4))



def test_long_metered_loops_keep_their_checks_bounded_and_name_a_late_nan(monkeypatch):
    """Over many replayed forwards the meter's deferred checks are compacted (validate.COMPACT_EVERY): it holds
    fewer queued values than that, and a NaN in the 31st of 40 forwards still names the layer that checked it."""
    monkeypatch.setattr(neurosim.validate, "COMPACT_EVERY", 8)
    register_counter(_Inner, lambda m, a, o: Count(), overwrite=True)
    net = nn.Sequential(nn.Linear(4, 4), neurosim.LIF(backend="torch"), _Inner(1.0))
    x = spikes(2, 1, 4)
    held = []
    with torch.no_grad(), neurosim.energy.EnergyMeter(net) as meter:
        for _ in range(40):
            net(x)
            held.append(len(meter._checks.checks._items))
        # (the LIF's check, _Inner's and the model's output's)
        assert len(meter._checks.checks) == 120 and meter.replayed == 39
    assert max(held) < 8
    assert meter.report().layer("2").calls == 40
    with pytest.raises(ValueError, match=r"^layer '2' \(_Inner\): current contains NaN/inf"):
        with torch.no_grad(), neurosim.energy.EnergyMeter(net):
            for i in range(40):
                net[2].w = float("nan") if i == 30 else 1.0
                net(x)

def test_hardware_profiles():
    with pytest.raises(ValueError, match="hardware"):
        profile(nn.Linear(2, 2), torch.zeros(1, 1, 2), hardware="tpu")
    with pytest.raises(ValueError, match="e_ac_pj"):
        HardwareProfile("bad", 1.0, -1.0)
    x = torch.randn(1, 2, 3)
    rep = profile(nn.Linear(3, 2), x, hardware=dict(name="mine", e_mac_pj=2.0, e_ac_pj=0.5))
    assert rep.totals()["energy_pj"] == pytest.approx(2.0 * 12)
    rep = profile(nn.Linear(3, 2), x, hardware="loihi")
    assert rep.totals()["energy_pj"] == 0 and "not priced" in " ".join(rep.notes)


def test_outputs_csv_json_png(tmp_path):
    import csv

    net = nn.Sequential(nn.Linear(5, 4), neurosim.LIF(backend="torch"), nn.Linear(4, 3))
    rep = profile(net, spikes(4, 2, 5))
    rep.to_csv(tmp_path / "e.csv")
    rep.to_json(tmp_path / "e.json")
    rep.plot(tmp_path / "e.png")
    rows = list(csv.DictReader(open(tmp_path / "e.csv")))
    assert [r["name"] for r in rows] == ["0", "1", "2", "TOTAL"] and int(rows[0]["synops"]) == rep.layer("0").synops
    data = json.loads((tmp_path / "e.json").read_text())
    assert data["totals"]["synops"] == rep.totals()["synops"] and data["hardware"]["name"] == "cmos45nm"
    assert (tmp_path / "e.png").read_bytes()[:4] == b"\x89PNG"


def test_same_shape_ann_operations_by_kind(tmp_path):
    """The same-shape ANN's multiplies and additions are kept apart in the rows, the totals, the table and the CSV
    (a residual Add's additions are not the Linear's MACs), and priced by kind."""
    import csv

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 4, bias=False)
            self.add = Add()

        def forward(self, x):
            y = self.fc(x)
            return self.add(y, y)

    rep = profile(Net(), spikes(3, 2, 5, seed=4))
    fc, add = rep.layer("fc"), rep.layer("add")
    assert (fc.ann_macs, fc.ann_acs) == (3 * 2 * 4 * 5, 0)  # every input times every weight
    assert (add.ann_macs, add.ann_acs) == (0, 3 * 2 * 4)  # an addition an output element
    t = rep.totals()
    assert (t["ann_macs"], t["ann_acs"]) == (120, 24)
    assert t["ann_energy_pj"] == pytest.approx(120 * 4.6 + 24 * 0.9)
    lines = rep.table().split("\n")
    total = next(ln for ln in lines if ln.startswith("TOTAL"))
    assert lines[0].split()[2:6] == ["ANN", "MACs", "ANN", "ACs"] and total.split()[1:3] == ["120", "24"]
    rows = list(csv.DictReader(io.StringIO(rep.to_csv())))
    assert [(r["ann_macs"], r["ann_acs"], r["row"]) for r in rows] == [("120", "0", "layer"), ("0", "24", "layer"),
                                                                      ("120", "24", "total")]


class Uncounted(nn.Module):
    """A leaf no counter knows (listed as "not counted")."""

    def forward(self, x):
        return x * 2


class InlineResidual(nn.Module):
    """A user model with an inline residual: ``x + self.lif(self.fc(x))`` runs outside every module."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 5)
        self.lif = neurosim.LIF(backend="torch", threshold=0.5)
        self.out = nn.Linear(5, 3)

    def forward(self, x):
        return self.out(x + self.lif(self.fc(x)))


def test_csv_names_its_hardware_and_ends_with_a_marked_totals_row(tmp_path):
    """Every CSV row names the hardware profile its energy is priced on, and one last row (``row`` "total", name
    "TOTAL") holds the totals: the sums of the layer rows, equal to the JSON's totals and the terminal's TOTAL row.
    A plain CSV reader reads it as it is (every row the header's fields)."""
    import csv

    net = nn.Sequential(nn.Linear(5, 4), neurosim.LIF(backend="torch"), nn.Linear(4, 3))
    rep = profile(net, spikes(4, 2, 5), hardware="loihi")
    rep.to_csv(tmp_path / "e.csv")
    rep.to_json(tmp_path / "e.json")
    text = (tmp_path / "e.csv").read_text()
    assert {len(r) for r in csv.reader(io.StringIO(text))} == {len(text.splitlines()[0].split(","))}
    rows = list(csv.DictReader(io.StringIO(text)))
    assert {r["hardware"] for r in rows} == {"loihi"}
    assert [r["row"] for r in rows] == ["layer"] * 3 + ["total"] and rows[-1]["name"] == "TOTAL"
    layers, total = rows[:-1], rows[-1]
    data = json.loads((tmp_path / "e.json").read_text())
    for key in ("ann_macs", "ann_acs", "macs", "synops", "acs", "neuron_updates", "energy_pj", "energy_paper_pj"):
        assert float(total[key]) == pytest.approx(sum(float(r[key]) for r in layers)), key
        assert float(total[key]) == pytest.approx(data["totals"][key]), key
    extra = json.loads(total["info"])
    assert extra["batch_size"] == 2 and extra["energy_per_sample_pj"] == pytest.approx(
        data["totals"]["energy_per_sample_pj"])
    assert total["counted"] == "True" and data["hardware"]["name"] == "loihi"
    table_total = next(ln for ln in rep.table().splitlines() if ln.startswith("TOTAL")).split()
    assert table_total[-5:-2] == [f"{int(total[k]):,}" for k in ("synops", "acs", "neuron_updates")]
    # a layer missing from the totals: the totals row says so
    rep = profile(nn.Sequential(nn.Linear(5, 4), Uncounted()), spikes(4, 2, 5))
    total = list(csv.DictReader(io.StringIO(rep.to_csv())))[-1]
    assert total["counted"] == "False" and "NOT COUNTED (no counter; missing from totals): 1" in total["note"]
    assert json.loads(total["info"])["not_counted"] == ["1"] and total["hardware"] == "cmos45nm"


class UncountedWithInlineMean(nn.Module):
    """A leaf no counter knows, and a time mean in a plain torch call (the audit's "(functional)" row)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 4)
        self.odd = Uncounted()

    def forward(self, x):
        return self.odd(self.fc(x)).mean(0)


def test_terminal_table_gives_each_not_counted_rows_reason():
    """A not-counted row read only "not counted" in the terminal table; why (no counter for its type, or the
    operations the audit found in plain torch calls) was only in the CSV and JSON. The row now says it, compactly (the
    operations without their element counts, which the CSV and JSON keep), spanning the empty count columns without
    widening them."""
    rep = profile(UncountedWithInlineMean(), spikes(4, 2, 5), audit=True)
    assert rep.not_counted == ["odd", "UncountedWithInlineMean (functional)"]
    lines = rep.table().splitlines()
    row = {ln.split()[0]: ln for ln in lines}
    assert row["odd"].split(None, 2)[2] == "not counted: no counter registered for this module type"
    assert row["UncountedWithInlineMean"].split(None, 3)[3] == "not counted: mean x1 in plain torch calls"
    assert "mean x1 (8 elements)" in rep.layer("UncountedWithInlineMean (functional)").note   # (the JSON's full note)
    rule = lines[1]
    assert set(rule) == {"-"} and len(row["fc"]) == len(row["TOTAL"]) == len(rule) == len(lines[0])
    assert lines[0].index("ANN MACs") == len("UncountedWithInlineMean (functional)  functional  ")


def test_footer_of_a_hardware_profile_without_a_source_says_so():
    """A profile without a ``source`` (a user's JSON file) made the footer read "hardware: mychip ()"."""
    net = nn.Sequential(nn.Linear(5, 4), neurosim.LIF(backend="torch"))
    lines = profile(net, spikes(3, 2, 5), hardware={"name": "mychip", "e_mac_pj": 1.0, "e_ac_pj": 0.1}).table()
    assert "hardware: mychip (source not given)" in lines.splitlines() and "()" not in lines
    cited = profile(net, spikes(3, 2, 5), hardware={"name": "c", "e_mac_pj": 1.0, "e_ac_pj": 0.1, "source": "me"})
    assert "hardware: c (me)" in cited.table().splitlines()


def test_figure_shows_neuron_updates_and_marks_layers_not_counted(tmp_path, monkeypatch):
    """The figure ``plot`` saves: the operations panel has a neuron-updates series (the LIF's bar is its updates); a
    layer no counter knows keeps its place with empty bars, a grey band and the label "not counted" in both panels.
    ``report.figure()`` is that figure."""
    import matplotlib.figure

    net = nn.Sequential(nn.Linear(5, 4), neurosim.LIF(backend="torch"), Uncounted(), nn.Linear(4, 3))
    rep = profile(net, spikes(4, 2, 5))
    saved, savefig = [], matplotlib.figure.Figure.savefig

    def keep(fig, *args, **kwargs):
        saved.append(fig)
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    assert rep.plot(tmp_path / "e.png").read_bytes()[:4] == b"\x89PNG"
    (fig,) = saved
    ops, energy = fig.axes
    bars = {c.get_label(): [p.get_height() for p in c] for c in ops.containers}
    assert list(bars) == ["ANN MACs", "ANN ACs", "MACs", "SynOps", "ACs", "neuron updates"]
    assert bars["neuron updates"] == [0, rep.layer("1").neuron_updates, 0, 0] and rep.layer("1").neuron_updates == 32
    assert bars["SynOps"] == [rep.layer("0").synops, 0, 0, rep.layer("3").synops]
    assert [t.get_text() for t in energy.get_xticklabels()] == ["0", "1", "2 (not counted)", "3"]
    assert all(heights[2] == 0 for heights in bars.values())
    assert all(any(t.get_text() == "not counted" for t in ax.texts) for ax in (ops, energy))
    assert [c.get_label() for c in energy.containers] == ["MAC", "SynOp/AC", "neuron update"]
    again = rep.figure()
    assert [t.get_text() for t in again.axes[1].get_xticklabels()] == [t.get_text() for t in energy.get_xticklabels()]


def test_sparsity_is_the_complement_of_the_in_rate_which_the_table_says():
    """The terminal table has no sparsity column: sparsity is 1 - in rate exactly (CSV, JSON), and the table's footer
    says so."""
    import csv

    rep = profile(nn.Sequential(nn.Linear(5, 4), neurosim.LIF(backend="torch")), spikes(4, 2, 5), rates="all")
    assert "in rate: nonzero fraction of the input (of a product's or sum's spike operand); sparsity = 1 - in rate" \
        in rep.table().splitlines()
    rows = [r for r in csv.DictReader(io.StringIO(rep.to_csv())) if r["in_rate"]]
    assert len(rows) == 2
    for r in rows:
        assert float(r["sparsity"]) == pytest.approx(1 - float(r["in_rate"]))
    for r in json.loads(rep.to_json())["layers"]:
        assert r["sparsity"] == pytest.approx(1 - r["in_rate"])


def test_a_products_in_rate_is_its_spike_operands_firing_rate():
    """Real scores x spike V: the row is event-driven (SynOps) and its in rate is V's firing rate, not the scores'
    nonzero fraction; with the spike operand first, or both, the first's; real x real, the first's (marked *)."""
    from neurosim.layers import SpikingSelfAttention

    g = torch.Generator().manual_seed(0)
    scores = torch.relu(torch.randn(4, 2, 6, 6, generator=g)) * (torch.rand(4, 2, 6, 6, generator=g) < 0.1)
    v = spikes(4, 2, 6, 8, p=0.3, seed=1)
    a = spikes(4, 2, 6, 6, p=0.1, seed=2)
    nz = lambda t: float((t != 0).float().mean())  # noqa: E731
    assert abs(nz(scores) - nz(v)) > 0.1
    cases = [((scores, v), nz(v), True), ((v.transpose(-1, -2), scores), nz(v), True), ((a, v), nz(a), True),
             ((scores, scores), nz(scores), False)]
    for args, rate, binary in cases:
        rep = profile(MatMul(), args)
        r = rep.layer("MatMul")
        assert (r.in_rate, r.in_spikes) == (pytest.approx(rate), binary)
        assert r.sparsity == pytest.approx(1 - rate) and json.loads(rep.to_json())["layers"][0]["in_rate"] == r.in_rate
        row = rep.table().splitlines()[2].split()
        assert row[-4] == f"{rate:.3f}" + ("" if binary else "*")
    # per call, and per replayed forward: a call whose scores are all zero (binary too) rates its first operand
    class Mix(nn.Module):
        def __init__(self):
            super().__init__()
            self.mm = MatMul()

        def forward(self, a, b):
            return self.mm(a, b)

    mix, calls = Mix(), [(scores, v), (torch.zeros_like(scores), v)] * 2
    want = 2 * int(v.count_nonzero()) / (2 * v.numel() + 2 * scores.numel())
    for replay in (False, True):
        with torch.no_grad(), EnergyMeter(mix, replay=replay) as meter:
            for args in calls:
                mix(*args)
        assert meter.replayed == (3 if replay else 0)
        assert meter.report().layer("mm").in_rate == pytest.approx(want)
    torch.manual_seed(0)
    block = SpikingSelfAttention(16, heads=2).train()  # (training-mode BatchNorm: the neurons fire)
    rep = profile(block, spikes(4, 2, 6, 16, p=0.3, seed=3), rates="all")
    av, sn_v = rep.layer("av_matmul"), rep.layer("sn_v")
    assert av.in_spikes and sn_v.out_rate > 0.02 and av.in_rate == pytest.approx(sn_v.out_rate)


def test_report_says_when_the_functional_audit_did_not_run(tmp_path):
    """profile's default skips the audit: its table, CSV and JSON say that arithmetic in plain torch calls outside
    modules was not checked and how to check it; with audit=True the inline residual is listed as not counted and the
    report says the audit ran."""
    import csv

    x = spikes(3, 2, 5, seed=2)
    torch.manual_seed(0)
    net = InlineResidual()
    rep = profile(net, x)
    assert rep.audited is False and rep.not_counted == []
    line = rep.audit_note
    assert line.startswith("NOT CHECKED: arithmetic in plain torch calls outside modules") and "audit=True" in line
    assert line in rep.table().splitlines()
    data = json.loads(rep.to_json())
    assert data["audited"] is False and data["audit_note"] == line
    total = list(csv.DictReader(io.StringIO(rep.to_csv())))[-1]
    assert line in total["note"] and json.loads(total["info"])["audited"] is False
    rep = profile(net, x, audit=True)
    assert rep.audited is True and rep.not_counted == ["InlineResidual (functional)"]
    assert rep.audit_note == ("audit on: arithmetic in plain torch calls outside counted layers was checked: found "
                              "in 1 module(s), the '(functional)' rows not counted")
    assert rep.audit_note in rep.table().splitlines() and json.loads(rep.to_json())["audited"] is True
    rep = profile(nn.Sequential(nn.Linear(5, 4), neurosim.LIF(backend="torch")), x, audit=True)
    assert rep.audit_note.endswith("was checked: none found")


def test_cli_main_on_checkpoint(tmp_path, monkeypatch, capsys):
    (tmp_path / "energy_cli_model.py").write_text(
        "import torch.nn as nn, neurosim\n"
        "def build(hidden=4):\n"
        "    return nn.Sequential(nn.Linear(5, hidden), neurosim.LIF(backend='torch'), nn.Linear(hidden, 2))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("energy_cli_model", None)
    import energy_cli_model

    torch.save({"model": energy_cli_model.build(6).state_dict(), "epoch": 3}, tmp_path / "ck.pt")
    rep = neurosim.energy.cli_main([str(tmp_path / "ck.pt"), "--model", "energy_cli_model:build", "--model-kwargs",
                                    '{"hidden": 6}', "--input-shape", "3,2,5", "--plain", "--json",
                                    str(tmp_path / "o.json"), "--csv", str(tmp_path / "o.csv")])
    out = capsys.readouterr().out
    assert "TOTAL" in out and "SynOps" in out and (tmp_path / "o.csv").exists()
    assert json.loads((tmp_path / "o.json").read_text())["totals"]["synops"] == rep.totals()["synops"]
    with pytest.raises(ValueError, match="input-shape"):
        neurosim.energy.cli_main([str(tmp_path / "ck.pt"), "--model", "energy_cli_model:build",
                                  "--model-kwargs", '{"hidden": 6}', "--input-shape", "3,x"])


@pytest.mark.parametrize("argv, message", [
    (["--model", "energy_cli_model:build", "--model-kwargs", '{"hidden": 6}', "--input", "missing.pt"],
     "--input 'missing.pt' does not exist"),
    (["--model", "energy_cli_model:build", "--model-kwargs", '{"hidden": 6}', "--input", "junk.pt"],
     "--input 'junk.pt' cannot be read as a torch file"),
    (["--model", "energy_cli_model:build", "--input-shape", "3,2,5"], "does not fit the network --model"),
    (["--model", "energy_cli_model:build", "--model-kwargs", '{"nope": 1}', "--input-shape", "3,2,5"],
     "rejected --model-kwargs"),
    (["--model", "energy_cli_model:build", "--model-kwargs", "{bad", "--input-shape", "3,2,5"],
     "--model-kwargs: not valid JSON"),
    (["--model", "no_such_module_xyz:build", "--input-shape", "3,2,5"], "cannot import 'no_such_module_xyz'"),
    (["--model", "energy_cli_model:nope", "--input-shape", "3,2,5"], "has no 'nope'"),
    (["--model", "energy_cli_model:not_a_module", "--input-shape", "3,2,5"], "must return a torch.nn.Module"),
    (["--model", "energy_cli_model:build", "--model-kwargs", '{"hidden": 6}', "--input-shape", "3,2,5",
      "--device", "gpu0"], "--device must be 'cpu', 'cuda' or 'cuda:N'"),
    (["--model", "energy_cli_model:build", "--model-kwargs", '{"hidden": 6}', "--input-shape", "3,2,5",
      "--hardware", "hw.json"], "--hardware hw.json: hardware: a profile dict takes the fields"),
    (["--model", "energy_cli_model:build", "--model-kwargs", '{"hidden": 6}', "--input-shape", "3,2,5",
      "--csv", "."], "--csv '.': it is a directory"),
    (["--model", "energy_cli_model:build", "--model-kwargs", '{"hidden": 6}', "--input-shape", "3,2,5",
      "--json", "ck.pt/o.json"], "ck.pt' is a file, not a directory"),
    (["--model", "energy_cli_model:build", "--model-kwargs", '{"hidden": 6}', "--input-shape", "3,2,5",
      "--samples", "8"], "--samples picks a trainer checkpoint's validation samples"),
    (["--model", "energy_cli_model:build", "--model-kwargs", '{"hidden": 6}', "--input", "junk.pt",
      "--input-rate", "0.5"], "--input-rate 0.5 is the firing probability of the random input of --input-shape, "
                              "which was not given"),
    (["--model", "energy_cli_model:build", "--model-kwargs", '{"hidden": 6}', "--input", "junk.pt",
      "--input-shape", "3,2,5"], "--input and --input-shape both give the input ('junk.pt', '3,2,5'): give one"),
    (["--model", "energy_cli_model:build", "--model-kwargs", '{"hidden": 6}', "--input-shape", "3,2,5",
      "--seed", "-1"], "--seed must be an integer >= 0, got -1"),
    (["--model", "energy_cli_model:build", "--model-kwargs", '{"hidden": 6}', "--input-shape", "3,2,5",
      "--seed", str(2 ** 64)], "--seed must be an integer in [0, 2**64 - 1]"),
])
def test_cli_errors_name_the_option(argv, message, tmp_path, monkeypatch):
    """Every bad option or file of ``neurosim energy`` (state-dict path) is a ValueError naming it (the command
    line turns those into a usage error), found before the model runs where it can be."""
    (tmp_path / "energy_cli_model.py").write_text(
        "import torch.nn as nn, neurosim\n"
        "def build(hidden=4):\n"
        "    return nn.Sequential(nn.Linear(5, hidden), neurosim.LIF(backend='torch'), nn.Linear(hidden, 2))\n"
        "def not_a_module():\n"
        "    return 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    sys.modules.pop("energy_cli_model", None)
    import energy_cli_model

    torch.save({"model": energy_cli_model.build(6).state_dict()}, tmp_path / "ck.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    (tmp_path / "hw.json").write_text('{"name": "h", "e_mac_pj": 1.0}')
    with pytest.raises(ValueError, match=re.escape(message)):
        neurosim.energy.cli_main(["ck.pt", *argv])


def test_report_files_follow_their_suffix_and_name_the_path_they_cannot_write(tmp_path):
    import stat

    rep = profile(nn.Sequential(nn.Linear(5, 4), neurosim.LIF(backend="torch")), spikes(3, 2, 5))
    for name, magic in (("e.pdf", b"%PDF"), ("e.svg", b"<?xml"), ("e.png", b"\x89PNG")):
        assert rep.plot(tmp_path / name).read_bytes().startswith(magic)
    with pytest.raises(ValueError, match=r"cannot plot to a 'xyz' file; the suffix must be one of .*\.pdf"):
        rep.plot(tmp_path / "e.xyz")
    rep.to_csv(tmp_path / "e.csv")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "e.csv").stat().st_mode) == 0o666 & ~umask  # (not the temporary's 0600)
    with pytest.raises(OSError, match=re.escape(f"cannot write {str(tmp_path)!r}: it is a directory")):
        rep.to_json(tmp_path)
    with pytest.raises(OSError, match="is a file, not a directory"):
        rep.to_csv(tmp_path / "e.csv" / "x.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.csv", "e.pdf", "e.png", "e.svg"]  # no temporaries


def test_bad_arguments_name_themselves():
    net = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), neurosim.LIF(backend="torch"), nn.Linear(4, 2))
    x = spikes(2, 3, 4)
    with pytest.raises(ValueError, match=r"hardware: a profile dict .*missing \['e_ac_pj'\]"):
        profile(net, x, hardware={"name": "h", "e_mac_pj": 1.0})
    with pytest.raises(ValueError, match=r"unknown \['foo'\]"):
        profile(net, x, hardware={"name": "h", "e_mac_pj": 1.0, "e_ac_pj": 1.0, "foo": 2})
    with pytest.raises(ValueError, match="or a dict of its fields; got 'nope'"):
        profile(net, x, hardware="nope")
    with pytest.raises(ValueError, match=r"require_spikes: 'fc' matches no layer of the model .*'0', '1', '2', '3'"):
        profile(net, x, require_spikes=["0", "fc"])
    with pytest.raises(ValueError, match="got a dict"):
        profile(net, x, require_spikes={"0": 1})
    for name in ("grad", "audit", "reuse"):
        with pytest.raises(ValueError, match=f"{name} must be True or False; got 'no'"):
            profile(net, x, **{name: "no"})
    # True: every synaptic layer's input must be spikes, not the LayerNorm's or the LIF's (real-valued currents)
    assert profile(net, x, require_spikes=True).layer("3").synops > 0
    with pytest.raises(ValueError, match=r"layer '0' \(Linear\) requires binary spikes"):
        profile(net, torch.rand(2, 3, 4), require_spikes=True)


def test_profile_inside_inference_mode_counts_as_outside():
    """torch.inference_mode() tensors keep no version counter: profile runs its forward outside that mode (on a
    clone of an inference-tensor input); an EnergyMeter asked to count in it says why it cannot."""
    net = nn.Sequential(nn.Linear(4, 4), neurosim.LIF(backend="torch"), nn.Linear(4, 2)).eval()
    x = spikes(3, 2, 4)
    want = profile(net, x, reuse=False).to_dict()
    with torch.inference_mode():
        xi = x.clone()
        assert [profile(net, xi).to_dict() for _ in range(3)] == [want] * 3  # (kept meter: recorded, replayed)
    assert profile(net, xi).to_dict() == want
    with pytest.raises(RuntimeError, match=r"cannot count under torch.inference_mode\(\)"):
        with torch.inference_mode(), EnergyMeter(net):
            pass
    with pytest.raises(ValueError, match="input 0 is an inference tensor"):
        with EnergyMeter(net):
            net(xi)
    assert not any("forward" in m.__dict__ for m in net.modules())

    # (inputs given as a namedtuple, with or without inference tensors: passed as they are, or rebuilt as one)
    import collections

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.add, self.fc = Add(), nn.Linear(4, 2)

        def forward(self, x, y):
            return self.fc(self.add(x, y))

    pair = collections.namedtuple("Pair", "x y")
    two = Two()
    want = profile(two, pair(x, x), reuse=False).to_dict()
    assert profile(two, pair(x, x)).to_dict() == want and profile(two, pair(xi, xi)).to_dict() == want


def test_a_layer_reachable_through_two_parents_is_counted_once():
    """A module registered under two containers is one layer (under its first name), wrapped once: its calls are
    counted once each, in the hooked and the replayed path."""
    shared, neuron = nn.Linear(16, 16), neurosim.LIF(beta=0.5, backend="torch")
    shared.weight.data *= 6

    class Block(nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.layer = layer

        def forward(self, x):
            return self.layer(x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.b1, self.b2, self.lif = Block(shared), Block(shared), neuron

        def forward(self, x):
            return self.lif(self.b2(self.lif(self.b1(x))))

    net = Net()
    for _ in range(3):  # (first call, recorded, replayed)
        x = spikes(4, 3, 16, seed=9)
        with torch.no_grad():
            hidden = neuron(shared(x))
        rep = profile(net, x)
        assert [(r.name, r.calls) for r in rep.layers] == [("b1.layer", 2), ("lif", 2)]
        assert rep.totals()["synops"] == (int(x.sum()) + int(hidden.sum())) * 16


def test_torchscript_modules_are_listed_as_not_counted():
    """A scripted or traced module runs its submodules without Python: it is one "not counted" row saying so, not
    missing from the report."""
    x = spikes(3, 2, 16)
    inner = nn.Sequential(nn.Linear(16, 16), nn.GELU())
    for compiled in (torch.jit.script(inner), torch.jit.trace(inner, x)):
        net = nn.Sequential(nn.Linear(16, 16), neurosim.LIF(backend="torch"), compiled, nn.Linear(16, 4))
        rep = profile(net, x, reuse=False)
        assert [r.name for r in rep.layers] == ["0", "1", "2", "3"] and rep.not_counted == ["2"]
        assert "TorchScript" in rep.layer("2").note
    whole = profile(torch.jit.script(inner), x, reuse=False)
    assert whole.not_counted == ["RecursiveScriptModule"]


def test_stats_flags_every_non_spike_value():
    from neurosim.energy import stats

    s = stats(torch.tensor([0.0, 1.0, 1.0, 2.0, -1.0, 0.5, float("nan"), float("inf")]))
    assert (int(s.nnz), int(s.ones)) == (7, 2) and not torch.isfinite(s.total)  # nnz != ones: not spikes
    s = stats(torch.tensor([0.0, 1.0, 1.0]))
    assert int(s.nnz) == int(s.ones) == 2 and float(s.total) == 2.0
    s = stats(torch.tensor([True, False]))
    assert int(s.nnz) == int(s.ones) == 1


def test_add_broadcast_spikes():
    s = torch.tensor([[[1.0, 0, 1, 1]]])  # [1, 1, 4] broadcast over T=2
    real = torch.randn(2, 1, 4)
    assert profile(Add(), (real, s)).layer("Add").acs == 3 * 2


def test_counter_summary_adds_layer_info_and_a_report_note():
    from neurosim.energy import Count, register_counter

    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.open = True

        def forward(self, x):
            return x if self.open else torch.zeros_like(x)

    def count_gate(module, args, output):
        return Count(dense=0, info={"open": module.open, "passed": torch.count_nonzero(output)})

    def summary(row, infos):
        passed = sum(i["passed"] for i in infos)
        return {"open_calls": sum(i["open"] for i in infos), "passed": passed}, f"gate {row.name}: {passed:g} passed"

    register_counter(Gate, count_gate, summary=summary)
    net = nn.Sequential(Gate(), nn.Linear(4, 2))
    x = spikes(3, 2, 4, seed=5)
    rep = profile(net, x)
    assert rep.layer("0").info == {"open_calls": 1, "passed": float(x.sum())}
    assert f"gate 0: {x.sum().item():g} passed" in rep.notes and rep.notes[-1] in rep.table()
    net[0].open = False
    rep = profile(net, x)
    assert rep.layer("0").info["open_calls"] == 0 and "gate 0: 0 passed" in rep.notes
    register_counter(Gate, count_gate, overwrite=True)  # re-registered without a summary: no note any more
    assert not profile(net, x).notes
    with pytest.raises(ValueError, match="summary"):
        register_counter(Gate, count_gate, overwrite=True, summary="not callable")


_CORE_ONLY = """
import json, sys, torch
from neurosim.energy import profile
from neurosim.layers import RandomSpikeMask, SpikeResidual, SpikingMLP

torch.manual_seed(0)
x = (torch.rand(4, 2, 6) < 0.4).float()
out = {}
for mode in ("sew_add", "sew_and"):
    torch.manual_seed(1)
    net = SpikeResidual(SpikingMLP(6), mode, rsm=RandomSpikeMask(0.5, "always", seed=3)).eval()
    rep = profile(net, x, audit=True)
    rows = {r.name: r for r in rep.layers}
    rsm, connect = rows.get("rsm"), rows.get("connect")
    out[mode] = {"not_counted": rep.not_counted, "rows": sorted(rows),
                 "rsm": rsm and [rsm.counted, rsm.info, rsm.in_nnz, rsm.out_nnz],
                 "connect": connect and [connect.type, connect.counted, connect.ann_acs, connect.acs, connect.note],
                 "notes": rep.notes, "totals": [rep.totals()[k] for k in ("synops", "acs", "macs", "energy_pj")]}
try:
    profile(SpikeResidual(SpikingMLP(6), "sew_and").eval(), torch.rand(4, 2, 6))
    out["error"] = None
except ValueError as err:
    out["error"] = str(err)
# every other kind of core layer, audited: nothing needs neurosim.models to be counted
import neurosim.layers as L
from torch import nn
x4 = (torch.rand(3, 2, 5, 8) < 0.4).float()
layers = {"attention": L.SpikeResidual(L.SpikingSelfAttention(8, heads=2, qk="conv"), "membrane",
                                       rsm=L.RandomSpikeMask(0.3, "always")),
          "astro": L.SpikeResidual(L.AstroSpikingAttention(8, heads=2), "sew_iand"),
          "tpu": L.SpikeResidual(L.TemporalProcessingUnit(8), "sew_add"), "astro_attention": L.AstroAttention(8, 2),
          "time_distributed": L.TimeDistributed(nn.Linear(8, 8)), "causal_conv": L.CausalConv1d(8),
          "batchnorm": L.SpikeBatchNorm(8), "cpg": L.CPGPositionalEncoding(16, num_oscillators=4),
          "sinusoidal": L.SinusoidalPositionalEncoding(16, dim=8, mode="add"),
          "learned": L.LearnedPositionalEncoding(16, dim=8, mode="add"), "mean": L.Mean(0)}
out["others"] = {name: profile(m.eval(), x4, audit=True).not_counted for name, m in layers.items()}
out["models_imported"] = "neurosim.models" in sys.modules
print(json.dumps(out))
"""


def test_core_layers_are_counted_without_importing_models():
    """The counters of core layers (RandomSpikeMask, SEWConnect) are registered by the core: in a fresh process that
    never imports neurosim.models, a mask is counted with its summary line, a SEW connect is one counted row, nothing
    is listed as "not counted" (audit on), and a bad SEW AND input's error names the layer. The counts equal this
    process's (where other tests may have imported neurosim.models). Every other kind of neurosim.layers layer is
    counted there too (audited)."""
    import subprocess

    root = os.path.dirname(os.path.dirname(neurosim.__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", _CORE_ONLY], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["models_imported"] is False
    for mode in ("sew_add", "sew_and"):
        got = out[mode]
        assert got["not_counted"] == [] and got["rsm"] and got["connect"], (mode, got)
        counted, info, in_nnz, out_nnz = got["rsm"]
        assert counted and info["rsm_ratio"] == 0.5 and info["rsm_mode"] == "always" and 0 < out_nnz < in_nnz
        assert any(n.startswith("RSM rsm: ratio 0.5, mode 'always' -> masked") for n in got["notes"]), got["notes"]
        assert got["connect"][:2] == ["SEWConnect", True]
    assert out["sew_add"]["connect"][2] == 4 * 2 * 6  # an addition an element in the same-shape ANN
    assert out["sew_and"]["connect"][2:4] == [0, 0] and "SEW AND: logic on spikes" in out["sew_and"]["connect"][4]
    assert out["error"].startswith("layer 'connect' (SEWConnect): s must be a binary spike tensor"), out["error"]
    assert len(out["others"]) == 11 and all(v == [] for v in out["others"].values()), out["others"]
    # the same counts in this process
    from neurosim.layers import RandomSpikeMask, SpikeResidual, SpikingMLP

    torch.manual_seed(0)
    x = (torch.rand(4, 2, 6) < 0.4).float()
    for mode in ("sew_add", "sew_and"):
        torch.manual_seed(1)
        net = SpikeResidual(SpikingMLP(6), mode, rsm=RandomSpikeMask(0.5, "always", seed=3)).eval()
        t = profile(net, x, audit=True).totals()
        assert [t[k] for k in ("synops", "acs", "macs")] == out[mode]["totals"][:3]
        assert t["energy_pj"] == pytest.approx(out[mode]["totals"][3])


def test_norms_hand_counts():
    """Statistics computed per sample: 3 MACs per element (mean, variance, normalise+affine); running statistics at
    inference fold into 1 (SyncBatchNorm as BatchNorm; InstanceNorm with track_running_stats); RMSNorm: 2."""
    x = torch.randn(2, 3, 4, 5)
    n = x.numel()

    def macs(layer, *, train=False):
        return profile(layer.train(train), x).layers[0].macs

    assert macs(nn.SyncBatchNorm(3)) == macs(nn.BatchNorm2d(3)) == n
    assert macs(nn.InstanceNorm2d(3)) == macs(nn.GroupNorm(3, 3)) == macs(nn.LayerNorm(5)) == 3 * n
    assert macs(nn.InstanceNorm2d(3, track_running_stats=True)) == n
    assert macs(nn.InstanceNorm2d(3, track_running_stats=True), train=True) == 3 * n
    assert macs(nn.RMSNorm(5)) == 2 * n


def test_padding_and_shuffles_cost_nothing_and_keep_synops_exact():
    """Padding, pixel and channel shuffles and max-unpooling move values: counted as zero, not listed as not
    counted; zero padding before a convolution gives its spikes the fan-out of the same conv padded itself."""
    x = spikes(2, 2, 6, 7, seed=4)
    conv = nn.Conv2d(2, 4, 3)
    padded = profile(nn.Sequential(nn.ZeroPad2d(1), conv), x)
    same = nn.Conv2d(2, 4, 3, padding=1)
    same.load_state_dict(conv.state_dict())
    assert padded.not_counted == [] and padded.layer("0").dense == 0
    assert padded.layer("1").synops == profile(same, x).layers[0].synops > 0
    for layer, shape in [(nn.ReflectionPad1d(2), (2, 3, 5)), (nn.ReplicationPad2d(1), (1, 2, 3, 3)),
                         (nn.CircularPad1d(1), (2, 3, 4)), (nn.ConstantPad3d(1, 0.5), (1, 1, 2, 2, 2)),
                         (nn.PixelShuffle(2), (1, 8, 2, 2)), (nn.PixelUnshuffle(2), (1, 2, 4, 4)),
                         (nn.ChannelShuffle(2), (1, 4, 2, 2)), (nn.FeatureAlphaDropout(0.5).eval(), (2, 3, 4)),
                         (nn.Unfold(2, padding=1), (1, 2, 3, 3))]:
        rep = profile(layer, torch.randn(shape))
        row = rep.layers[0]
        assert rep.not_counted == [] and (row.dense, row.macs, row.acs, row.synops) == (0, 0, 0, 0), layer


    class Unpool(nn.Module):
        def __init__(self):
            super().__init__()
            self.pool, self.unpool = nn.MaxPool2d(2, return_indices=True), nn.MaxUnpool2d(2)

        def forward(self, x):
            return self.unpool(*self.pool(x))

    rep = profile(Unpool(), torch.randn(1, 2, 4, 4))
    assert rep.not_counted == [] and rep.layer("unpool").dense == 0 and rep.layer("pool").acs > 0


def test_a_compiled_model_reports_what_the_eager_one_does():
    """torch.compile (dynamo; the eager backend needs no compiler) keeps calling the forwards the meter wraps: the
    same layers, under the eager model's names, with the same counts, in a first and a later profile."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), neurosim.LIF(beta=0.5, threshold=0.5, backend="torch"), nn.Linear(16, 4))
    model.eval()
    x = spikes(3, 2, 8, seed=5)
    eager = json.loads(profile(model, x).to_json())
    compiled = torch.compile(model, backend="eager")
    with torch.no_grad():
        compiled(x)
    for _ in range(2):
        assert json.loads(profile(compiled, x).to_json()) == eager
    assert eager["layers"][0]["synops"] > 0


class _Block(nn.Module):
    """A conv, attention-style products and a residual: the counters that make the most records."""

    def __init__(self):
        super().__init__()
        self.conv = TB(nn.Conv2d(2, 4, 3, padding=1))
        self.lif = neurosim.LIF(backend="torch")
        self.q = nn.Linear(8, 8)
        self.k = nn.Linear(8, 8)
        self.lq, self.lk = neurosim.LIF(backend="torch"), neurosim.LIF(backend="torch")
        self.mm, self.add = MatMul(), Add()

    def forward(self, x):  # [T, B, 2, 8, 8]
        s = self.lif(self.conv(x)).flatten(3)[:, :, :, :8]  # [T, B, 4, 8]
        q, k = self.lq(self.q(s)), self.lk(self.k(s))
        return self.add(self.mm(q, k.transpose(-1, -2)), self.mm(s, s.transpose(-1, -2)))


def _cyclic_garbage(fn):
    """Objects that only the cyclic garbage collector can free, left by ``fn()`` (the collector paused meanwhile)."""
    import collections
    import gc

    for _ in range(10):  # (what earlier tests left, until a pass finds nothing)
        if not gc.collect():
            break
    was = gc.isenabled()
    gc.disable()
    try:
        fn()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        found = collections.Counter(type(o).__name__ for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was:
            gc.enable()
    return found


def test_profile_leaves_no_work_to_the_garbage_collector():
    """A meter's records hold no reference cycle once its block ends, so they are freed by reference counting, and
    profile() pauses the cyclic collector for its call (restored however it ends, as the caller had it). BENCHMARKS
    energy run 18: in a transformer those records set off the collector, whose full passes walk every object of
    the process."""
    import gc

    from neurosim.energy import EnergyMeter, profile_batches

    net = _Block().eval()
    x = spikes(3, 2, 2, 8, 8)
    rep = profile(net, x)
    assert rep.layer("mm").calls == 2 and rep.totals()["synops"] > 0  # (the model counts what this test is about)
    assert _cyclic_garbage(lambda: profile(net, x)) == {}
    assert _cyclic_garbage(lambda: profile_batches(net, [x, x], progress=False)) == {}

    def metered(replay):
        meter = EnergyMeter(net, replay=replay)
        for _ in range(2):  # (entered again: its layers' hooks are made anew)
            with meter, torch.no_grad():
                for _ in range(3):
                    net(x)
        assert meter.report().layer("mm").calls == 12
        assert replay == (meter.replayed > 0)

    assert _cyclic_garbage(lambda: metered(True)) == {}
    assert _cyclic_garbage(lambda: metered(False)) == {}
    # the same figures with the collector on or off: it only changes when memory is freed
    gc.disable()
    try:
        off = profile(net, x)
        assert not gc.isenabled()  # left as the caller had it
    finally:
        gc.enable()
    assert [(r.name, r.synops, r.macs, r.acs) for r in off.layers] == [(r.name, r.synops, r.macs, r.acs)
                                                                       for r in rep.layers]
    assert gc.isenabled()
    bad = x.clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        profile(net, bad)
    assert gc.isenabled()  # (restored after an error too)


class _Slow(nn.Module):
    """A layer whose counter gives up the interpreter before reading its input (as a slow user counter may)."""

    def __init__(self, width):
        super().__init__()
        self.lin = nn.Linear(width, 3)

    def forward(self, x):
        return self.lin(x)


def _count_slow(module, args, output):
    import time

    from neurosim.energy import stats

    time.sleep(0.002)  # (another thread's meter runs meanwhile)
    s = stats(args[0])
    return Count(dense=args[0].numel() * 3, spike_input=s, spike_count=s.nnz * 3)


def test_meters_in_two_threads_count_their_own_tensors():
    """The meter a counter's stats() belongs to is the one of the counter's own thread (a context variable, as
    the deferred checks and the spike tally are): two threads profiling at once give the reports they give alone,
    and leave torch's fast-path switch as they found it."""
    import threading

    register_counter(_Slow, _count_slow, overwrite=True)
    nets = {w: nn.Sequential(_Slow(w), neurosim.LIF(backend="torch"), _Slow(3)).eval() for w in (4, 6)}
    xs = {w: spikes(3, 2, w, p=0.2 + 0.1 * w / 2, seed=w) for w in nets}
    alone = {w: [(r.name, r.synops, r.macs) for r in profile(nets[w], xs[w]).layers] for w in nets}
    got, errors = {w: [] for w in nets}, []

    def run(w):
        try:
            for _ in range(5):
                got[w].append([(r.name, r.synops, r.macs) for r in profile(nets[w], xs[w]).layers])
        except Exception as exc:  # (reported by the main thread)
            errors.append(exc)

    fastpath = torch.backends.mha.get_fastpath_enabled()
    threads = [threading.Thread(target=run, args=(w,)) for w in nets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for w in nets:
        assert got[w] == [alone[w]] * 5
    # torch's transformer fast-path switch, off while any meter runs, is set back once the last one ends (two
    # blocks that each set back what they found left it off)
    assert torch.backends.mha.get_fastpath_enabled() == fastpath


def test_a_meter_that_fails_to_start_leaves_the_model_as_it_was(monkeypatch):
    """An __enter__ that fails part-way (here the deferred checks) unwraps the forwards it wrapped and sets torch's
    fast-path switch back: the model runs as before and another meter counts it."""
    from neurosim import validate
    from neurosim.energy import EnergyMeter

    net = nn.Sequential(nn.Linear(4, 3), neurosim.LIF(backend="torch"), nn.Linear(3, 2)).eval()
    x = spikes(2, 3, 4)
    before = [(r.name, r.synops) for r in profile(net, x).layers]
    fastpath = torch.backends.mha.get_fastpath_enabled()

    class Broken:
        def __init__(self, **kw):
            pass

        def __enter__(self):
            raise RuntimeError("deferred checks unavailable")

    with monkeypatch.context() as m:
        m.setattr(validate, "deferred_checks", Broken)
        with pytest.raises(RuntimeError, match="deferred checks unavailable"):
            with EnergyMeter(net):
                net(x)
    assert not any("forward" in mod.__dict__ for mod in net.modules())
    assert torch.backends.mha.get_fastpath_enabled() == fastpath
    assert [(r.name, r.synops) for r in profile(net, x).layers] == before
