"""Energy counts of element-wise layers (activations, softmax, the astrocyte terms, the BTSP rule, position
embeddings) against the aten ops torch actually runs (tests/aten_ops.py) or hand counts; the functional
audit (arithmetic outside every counted layer); no layer or functional operation of a research model left
"not counted"."""

import pytest
import torch
from torch import nn

import neurosim
from aten_ops import own_elementwise_ops
from neurosim.energy import EnergyMeter, profile
from neurosim.layers import AstroAttention, AstroMixing
from neurosim.models import BTSPFormer, EnhancedSpikingTransformer, FramePredictor, SpikingBTSPFormer, moving_digits
from neurosim.models import BTSPPlasticity, ESTConfig, ablation_configs


def own_row(model, x, name):
    rep = profile(model, x)
    assert rep.not_counted == [], rep.not_counted
    return rep, rep.layer(name)


@pytest.mark.parametrize("causal", [False, True])
def test_astro_mixing_counts_the_elementwise_ops_it_runs(causal):
    torch.manual_seed(0)
    mix = AstroMixing(heads=2, head_dim=3, alpha=0.5, max_len=8, causal=causal).eval()
    q, k, v = (torch.randn(4, 2, 5, 3) for _ in range(3))
    truth, per_op = own_elementwise_ops(mix, q, k, v)
    # phi(q): q + 1 or exp(q) (2 a query element), phi(k)^alpha (3 a key element); sigmoid, x m, +, x w, / per
    # weight; the row sums
    assert set(per_op) == {"exp", "add", "pow", "sigmoid", "mul", "div", "sum"}, per_op
    weights, rows = 4 * 2 * 5 * 5, 4 * 2 * 5
    assert truth == 2 * q.numel() + 3 * k.numel() + 5 * weights + rows * 4
    rep, row = own_row(mix, (q, k, v), "AstroMixing")
    assert (row.macs, row.dense, row.synops, row.acs) == (truth, truth, 0, 0)
    # its three products are still hooked and counted by the MatMul counter (all real operands: MACs)
    assert rep.layer("neuron_mm").macs == weights * 3 + weights          # + one scale multiply an output
    assert rep.layer("value_mm").macs == 4 * 2 * 5 * 3 * 5


def test_astro_attention_counts_its_astrocyte_terms_from_the_tokens():
    torch.manual_seed(1)
    att = AstroAttention(dim=8, heads=2, max_len=8).eval()
    x = torch.randn(3, 6, 8)
    truth, _ = own_elementwise_ops(att, x)   # its projections and products are child modules
    _, row = own_row(att, x, "AstroAttention")
    assert row.macs == truth == 2 * x.numel() + 3 * x.numel() + 5 * 3 * 2 * 6 * 6 + 3 * 2 * 6 * 5
    # spike Q/K/V in the EST's astro attention: the astrocyte terms of that call, measured on its own q, k, v
    torch.manual_seed(3)
    cfg = ablation_configs(ESTConfig(2, 2, dim=16, depth=1, heads=2, max_len=16, pe_dim=8, num_steps=3,
                                     kernel_sizes=(2, 3)))["astro attention"]
    model = EnhancedSpikingTransformer(cfg).train()
    astro = model.layers[0].attn.block.astro
    seen = {}
    hook = astro.register_forward_hook(lambda m, args, out: seen.update(qkv=[a.detach() for a in args]))
    try:
        rep = profile(model, torch.rand(3, 3, 9, 2))
    finally:
        hook.remove()
    truth, _ = own_elementwise_ops(astro, *seen["qkv"])
    assert rep.layer("layers.0.attn.block.astro").macs == truth > 0 and rep.not_counted == []


@pytest.mark.parametrize("renormalize", [True, False])
def test_btsp_rule_counts_the_elementwise_ops_it_runs(renormalize):
    torch.manual_seed(2)
    rule = BTSPPlasticity(dim=6, heads=2)
    attn = torch.softmax(torch.randn(3, 2, 5, 5), -1)
    x = torch.randn(3, 5, 6)
    truth, per_op = own_elementwise_ops(rule, attn, x, renormalize=renormalize)
    assert {"sigmoid", "mul", "add"} <= set(per_op) and ("div" in per_op) == renormalize
    weights = attn.numel()
    assert truth == 2 * 3 * 5 * 2 + 7 * weights + (3 * 2 * 5 * 4 + weights if renormalize else 0)

    class Wrap(nn.Module):  # passes renormalize as a keyword, as SpikingBTSPAttention does
        def __init__(self):
            super().__init__()
            self.rule = rule

        def forward(self, a, t):
            return self.rule(a, t, renormalize=renormalize)

    rep, row = own_row(Wrap(), (attn, x), "rule")
    assert row.macs == truth
    assert rep.layer("rule.outer").synops + rep.layer("rule.outer").macs == 3 * 2 * 5 * 5   # outer product
    rule.enabled = False
    _, row = own_row(Wrap(), (attn, x), "rule")
    assert (row.macs, row.dense) == (0, 0) and own_elementwise_ops(rule, attn, x)[0] == 0


@pytest.mark.parametrize("act,per_element", [(nn.GELU(), 1), (nn.SiLU(), 1), (nn.Tanh(), 1), (nn.Sigmoid(), 1),
                                             (nn.ELU(), 1), (nn.LeakyReLU(0.1), 1), (nn.ReLU(), 0)])
def test_activations(act, per_element):
    x = torch.randn(4, 3, 5)
    _, row = own_row(act, x, type(act).__name__)
    assert (row.macs, row.dense) == (per_element * x.numel(),) * 2
    assert own_elementwise_ops(act, x)[0] == x.numel()   # torch runs one pointwise op either way
    assert row.counted and ("comparison" in row.note) == (per_element == 0)


@pytest.mark.parametrize("act, per_element, torch_ops", [
    (nn.Softsign(), 1, {"abs": 60, "add": 60, "div": 60}), (nn.Tanhshrink(), 1, {"tanh": 60, "sub": 60}),
    (nn.Softshrink(), 1, {"softshrink": 60}), (nn.RReLU().eval(), 1, {}), (nn.Hardshrink(), 0, {"hardshrink": 60}),
    (nn.Threshold(0.1, 0.0), 0, {"threshold": 60})])
def test_more_activations(act, per_element, torch_ops):
    """One MAC per evaluation of a smooth function, a lower bound where torch runs several pointwise ops (softsign's
    abs, add and div); none for compare-and-select. ``torch_ops``: the pointwise aten ops torch runs (RReLU at
    inference runs one op that is not tagged pointwise: a fixed slope, as LeakyReLU's)."""
    x = torch.randn(4, 3, 5)
    _, row = own_row(act, x, type(act).__name__)
    assert (row.macs, row.dense) == (per_element * x.numel(),) * 2
    assert own_elementwise_ops(act, x)[1] == torch_ops


def test_glu_softmin_softmax2d():
    x = torch.randn(2, 3, 4, 6)
    _, row = own_row(nn.GLU(-1), x, "GLU")
    assert row.macs == row.dense == 2 * x.numel() // 2  # a sigmoid and a product per output (half the input)
    _, softmin = own_row(nn.Softmin(1), x, "Softmin")
    _, softmax = own_row(nn.Softmax(1), x, "Softmax")
    assert softmin.macs == softmax.macs == 2 * x.numel() + x.numel() // 3 * 2  # rows of 3 channels: 2 adds each
    _, over_channels = own_row(nn.Softmax2d(), x, "Softmax2d")
    assert over_channels.macs == softmax.macs  # (dim -3 of a 4-D input is dim 1)


@pytest.mark.parametrize("dim", [-1, 1, 0])
def test_softmax_hand_count(dim):
    x = torch.randn(2, 3, 4)
    length = x.shape[dim]
    rows = x.numel() // length
    _, row = own_row(nn.Softmax(dim=dim), x, "Softmax")
    assert row.macs == 2 * x.numel() + rows * (length - 1)   # exp and division an element, L - 1 adds a row
    _, row = own_row(nn.LogSoftmax(dim=dim), x, "LogSoftmax")
    assert row.macs == 2 * x.numel() + rows * (length - 1) + rows


@pytest.mark.parametrize("mode, per_output", [("nearest", 0), ("bilinear", 4), ("bicubic", 16)])
def test_upsample_hand_count(mode, per_output):
    x = torch.randn(2, 3, 4, 5)
    up = nn.Upsample(scale_factor=2, mode=mode)
    _, row = own_row(up, x, "Upsample")
    assert (row.macs, row.dense) == (per_output * 2 * 3 * 8 * 10,) * 2 and row.counted and mode in row.note
    _, row = own_row(nn.Upsample(size=(7,), mode="linear"), torch.randn(2, 3, 4), "Upsample")
    assert row.macs == 2 * 2 * 3 * 7  # two input values weighed a linear output


def test_embedding_lookup_is_counted_without_arithmetic():
    _, row = own_row(nn.Embedding(10, 4), torch.tensor([[1, 2, 3], [4, 5, 9]]), "Embedding")
    assert row.counted and row.calls == 1 and (row.macs, row.dense, row.synops, row.acs) == (0, 0, 0, 0)
    assert "lookup" in row.note


def models_and_inputs():
    torch.manual_seed(4)
    yield "BTSPFormer", BTSPFormer(seq_len=8, model_dim=16, heads=2, layers=1), torch.randn(3, 8)
    yield "BTSPFormer (astro)", BTSPFormer(seq_len=8, model_dim=16, heads=2, layers=1, attention="astro",
                                           position="sinusoidal"), torch.randn(3, 8)
    yield "SpikingBTSPFormer", SpikingBTSPFormer(seq_len=8, model_dim=16, heads=2, layers=1), torch.randn(3, 8)
    yield "FramePredictor (STC-LIF)", FramePredictor(neuron="stc_lif", channels=4), moving_digits(2, 4, 16)
    for name, cfg in ablation_configs(ESTConfig(2, 2, dim=16, depth=1, heads=2, max_len=16, pe_dim=8,
                                                num_steps=3, kernel_sizes=(2, 3))).items():
        yield f"EST {name}", EnhancedSpikingTransformer(cfg), torch.randn(3, 9, 2)


def test_no_layer_of_a_research_model_is_left_uncounted():
    for name, model, x in models_and_inputs():
        rep = profile(model.eval(), x)
        assert rep.not_counted == [], (name, rep.not_counted)


def test_btspformer_rows_position_softmax_gelu():
    torch.manual_seed(5)
    model = BTSPFormer(seq_len=8, model_dim=16, heads=2, layers=1).eval()
    x = torch.randn(3, 8)
    rep = profile(model, x)
    tokens = 3 * 8 * 16
    pos = rep.layer("pos")   # x + (sinusoid + envelope x direction): the bracket is parameters alone
    assert (pos.acs, pos.dense, pos.dense_is_mac, pos.macs) == (tokens, tokens, False, 0)
    assert rep.layer("blocks.0.attn.softmax").macs == 2 * 3 * 2 * 8 * 8 + 3 * 2 * 8 * 7
    assert rep.layer("blocks.0.ffn.1").macs == 3 * 8 * 64   # GELU on the 4D hidden layer
    plastic = rep.layer("blocks.0.attn.plasticity")
    assert plastic.macs == 2 * 3 * 8 * 2 + 7 * 3 * 2 * 8 * 8 + 3 * 2 * 8 * 7 + 3 * 2 * 8 * 8


class Functional(nn.Module):
    """Arithmetic in plain torch calls: in its own forward and in a child container's."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 4)
        self.inner = nn.Sequential(nn.Linear(4, 4))
        self.lif = neurosim.LIF(beta=0.5, backend="torch")

    def forward(self, x):
        h = self.fc(x) * 2.0 + 1.0                 # two functional operations in this forward
        h = self.inner(h)
        return self.lif(h).mean(0)                 # a functional readout


def test_audit_lists_functional_arithmetic_and_changes_no_count():
    torch.manual_seed(6)
    x = (torch.rand(3, 2, 6) < 0.4).float()
    net = Functional()
    plain = profile(net, x)
    assert plain.not_counted == []            # hooks alone cannot see the three torch calls
    rep = profile(net, x, audit=True)
    assert rep.not_counted == ["Functional (functional)"]
    row = rep.layer("Functional (functional)")
    assert not row.counted and row.type == "functional"
    assert "mul x1 (24 elements)" in row.note and "add x1 (24 elements)" in row.note
    assert "mean x1 (8 elements)" in row.note and "addmm" not in row.note and "linear" not in row.note
    assert "not counted" in rep.table().lower() and "Functional (functional)" in rep.table()
    assert "no counter counts" in row.note
    for a, b in zip(plain.layers, rep.layers):   # the counted rows are the same
        assert (a.name, a.dense, a.macs, a.synops, a.acs, a.neuron_updates) == \
               (b.name, b.dense, b.macs, b.synops, b.acs, b.neuron_updates)

    class Outer(nn.Module):            # arithmetic in a child container is listed under that child's name
        def __init__(self):
            super().__init__()
            self.block = Functional()

        def forward(self, x):
            return self.block(x)

    assert profile(Outer(), x, audit=True).not_counted == ["block (functional)"]


def test_audit_is_clean_for_every_research_model():
    # nothing the research models compute escapes the counters: no functional arithmetic outside counted layers
    # (the meter's own reads and neurosim's input checks are not the model's arithmetic and are not listed)
    for name, model, x in models_and_inputs():
        rep = profile(model.eval(), x, audit=True)
        assert rep.not_counted == [], (name, [rep.layer(n).note for n in rep.not_counted])


def test_audit_refuses_a_cuda_graph():
    with EnergyMeter(nn.Linear(2, 2), audit=True) as meter:
        with pytest.raises(ValueError, match="audit"):
            meter.graphed(torch.zeros(1, 2))


def _ops(row):
    return (row.acs, row.macs, row.synops, row.ann_acs, row.ann_macs, round(row.energy_pj, 6), row.in_spikes)


def test_mean_readout_hand_count():
    """Mean counts as average pooling does (one AC per input element, the division a folded constant scale); its
    readouts in an EST: every element of the head's output, then of the time average."""
    from neurosim.layers import Mean

    x = torch.randn(4, 3, 5)
    r = profile(Mean(0), x).layer("Mean")
    assert (r.acs, r.macs, r.dense, r.dense_is_mac, r.dense_other) == (4 * 3 * 5, 0, 4 * 3 * 5, False, 0)
    cfg = ESTConfig(2, 3, dim=16, depth=1, heads=2, max_len=16, pe_dim=8, num_steps=3, kernel_sizes=(2, 3),
                    readout="pool")
    rep = profile(EnhancedSpikingTransformer(cfg).eval(), torch.randn(2, 9, 2))
    assert (rep.layer("time_mean").acs, rep.layer("time_mean").macs) == (3 * 2 * 9 * 3, 0)  # head output [T,B,N,3]
    assert (rep.layer("token_mean").acs, rep.layer("token_mean").macs) == (2 * 9 * 3, 0)


def test_mean_counts_as_average_pooling_real_and_spike_inputs():
    """The same average (over the last dim of [2, 3, 8]) as Mean(-1), AvgPool1d(8) and AdaptiveAvgPool1d(1): the
    same counts and energy. Real input: 48 ACs (one per element) = 43.2 pJ on cmos45nm, no MAC; spikes: one AC per
    spike (hand count); silent or fully masked input: nothing."""
    from neurosim.layers import Mean, RandomSpikeMask

    g = torch.Generator().manual_seed(7)
    real = torch.randn(2, 3, 8, generator=g)
    spk = (torch.rand(2, 3, 8, generator=g) < 0.3).float()
    layers = {"mean": Mean(-1), "avg": nn.AvgPool1d(8), "adaptive": nn.AdaptiveAvgPool1d(1)}
    for name, layer in layers.items():
        r = profile(layer, real).layers[0]
        assert _ops(r) == (48, 0, 0, 48, 0, 43.2, False), name
        n = int(spk.sum())
        assert 0 < n < 48
        assert _ops(profile(layer, spk).layers[0]) == (n, 0, 0, 48, 0, round(0.9 * n, 6), True), name
        assert _ops(profile(layer, torch.zeros(2, 3, 8)).layers[0]) == (0, 0, 0, 48, 0, 0.0, True), name
    # a mean over time (dim 0) of spikes: each spike once, wherever the dim is
    s = (torch.rand(5, 2, 4, generator=g) < 0.4).float()
    assert profile(Mean(0, keepdim=True), s).layer("Mean").acs == int(s.sum())
    # masked spikes cost nothing: the mean after a mask counts only the spikes that survived it
    net = nn.Sequential(RandomSpikeMask(0.5, "always", seed=1), Mean(-1)).eval()
    rep = profile(net, spk)
    assert rep.layer("1").acs == rep.layer("0").out_nnz < int(spk.sum())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the Triton counting reads and the fused LIF "
                    "(the CPU tests above check the same counters)")
@pytest.mark.parametrize("backend", ["torch", "fused"])
def test_gpu_astro_est_counts_and_audit(backend):
    # on CUDA the meter reads with its Triton kernel (and the fused LIF tallies its spikes): the audit must not
    # mistake those launches, or the deferred NaN checks, for the model's arithmetic; shape-given rows match the CPU
    from neurosim.layers import NeuronSpec

    torch.manual_seed(7)
    cfg = ablation_configs(ESTConfig(2, 3, dim=16, depth=1, heads=2, max_len=16, pe_dim=8, num_steps=3,
                                     kernel_sizes=(2, 3), neuron=NeuronSpec(backend=backend)))["astro attention"]
    model = EnhancedSpikingTransformer(cfg).eval()
    x = torch.randn(4, 9, 2)
    cpu = profile(model, x, audit=True)
    gpu = profile(model.cuda(), x.cuda(), audit=True)
    assert gpu.not_counted == [] == cpu.not_counted and gpu.counting != cpu.counting
    for name in ("layers.0.attn.block.astro", "time_mean"):
        a, b = cpu.layer(name), gpu.layer(name)
        assert (a.macs, a.acs, a.dense) == (b.macs, b.acs, b.dense) and a.macs + a.acs > 0  # (the mean: ACs only)
