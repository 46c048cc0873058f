"""Spiking transformer layers: binary outputs, causality (perturb the future), RSM statistics, references."""
import math
import re

import pytest
import torch

from neurosim.encoders import cpg_code
from neurosim.layers import (AstroSpikingAttention, CausalConv1d, LearnedPositionalEncoding, NeuronSpec, RandomSpikeMask, SEWConnect,
                             SinusoidalPositionalEncoding, SpikeBatchNorm, SpikeResidual, SpikingMLP,
                             SpikingSelfAttention, TemporalProcessingUnit, positional_encoding, random_spike_mask)

T, B, N, D = 5, 2, 7, 8


def spikes(*shape, p=0.4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g) < p).float()


def is_binary(x):
    return bool(((x == 0) | (x == 1)).all())


# ---------------------------------------------------------------- binary outputs
@pytest.mark.parametrize("make", [
    lambda: SpikingSelfAttention(D, heads=2, qk="linear"),
    lambda: SpikingSelfAttention(D, heads=2, qk="conv", kernel_size=3, causal=True),
    lambda: AstroSpikingAttention(D, heads=2, causal=True, max_len=N),
    lambda: AstroSpikingAttention(D, heads=2, qk="conv", causal=False, max_len=N),
    lambda: SpikingMLP(D, 16),
    lambda: TemporalProcessingUnit(D, kernel_size=3),
    lambda: SpikeResidual(SpikingMLP(D), "sew_and"),
    lambda: SpikeResidual(SpikingMLP(D), "sew_iand"),
])
def test_spiking_layer_outputs_are_binary_and_fire(make):
    torch.manual_seed(0)
    layer = make()
    out = layer(spikes(T, B, N, D))
    assert out.shape == (T, B, N, D)
    assert is_binary(out)
    assert 0 < out.mean() < 1  # the check is not vacuous: some neurons fire, some do not


def test_attention_map_is_spikes_and_scores_are_coincidence_counts():
    torch.manual_seed(1)
    attn = SpikingSelfAttention(D, heads=2, qk="linear")
    s = spikes(T, B, N, D, seed=3)
    assert is_binary(attn.attention_map(s))
    # independent reference for the score/value products: integer spike coincidences, no softmax
    q = attn.sn_q(attn.bn_q(attn.w_q(s)))
    k = attn.sn_k(attn.bn_k(attn.w_k(s)))
    v = attn.sn_v(attn.bn_v(attn.w_v(s)))
    h, dh = 2, D // 2
    ref = torch.zeros(T, B, N, D)
    for t in range(T):
        for b in range(B):
            for head in range(h):
                sl = slice(head * dh, (head + 1) * dh)
                for i in range(N):
                    for j in range(N):
                        score = sum(float(q[t, b, i, c].detach() * k[t, b, j, c].detach()) for c in range(sl.start, sl.stop))
                        ref[t, b, i, sl] += 0.125 * score * v[t, b, j, sl]
    out = attn.av_matmul(attn.qk_matmul(attn._heads(q), attn._heads(k).transpose(-1, -2)), attn._heads(v))
    torch.testing.assert_close(out.transpose(2, 3).reshape(T, B, N, D), ref)


# ---------------------------------------------------------------- causality
def calibrated(layer, x, passes=30):
    """Fill BatchNorm running statistics with a few training passes, then switch to eval (causal) mode."""
    with torch.no_grad():
        layer.train()
        for _ in range(passes):
            layer(x)
    return layer.eval()


def _future_unchanged(f, x, axis, i, ref_changes=True):
    """Perturb ``x`` after index ``i`` on ``axis``; outputs up to ``i`` must not move (and later ones must)."""
    y0 = f(x)
    x2 = x.clone()
    idx = [slice(None)] * x.dim()
    idx[axis] = slice(i + 1, None)
    x2[tuple(idx)] = 1 - x2[tuple(idx)]  # flip all future spikes
    y1 = f(x2)
    keep = [slice(None)] * y0.dim()
    keep[axis] = slice(0, i + 1)
    torch.testing.assert_close(y1[tuple(keep)], y0[tuple(keep)], rtol=0, atol=0)
    if ref_changes:
        assert not torch.equal(y0, y1), "perturbing the future changed nothing at all: test would be vacuous"


TORCH = NeuronSpec(backend="torch")  # the reference time loop (fast on CPU); the layers take any backend
CAUSAL_ATTENTIONS = {
    "linear": lambda: SpikingSelfAttention(D, heads=2, qk="linear", causal=True),
    "conv": lambda: SpikingSelfAttention(D, heads=2, qk="conv", kernel_size=5, causal=True),
    "astro": lambda: AstroSpikingAttention(D, heads=2, causal=True, max_len=N, neuron=TORCH),
}


@pytest.mark.parametrize("kind", list(CAUSAL_ATTENTIONS))
def test_causal_attention_ignores_future_tokens(kind):
    torch.manual_seed(2)
    attn = calibrated(CAUSAL_ATTENTIONS[kind](), spikes(T, B, N, D))
    for i in (0, 3, N - 2):
        _future_unchanged(attn.pre, spikes(T, B, N, D, seed=i), axis=2, i=i)
        _future_unchanged(attn, spikes(T, B, N, D, seed=i), axis=2, i=i, ref_changes=False)


@pytest.mark.parametrize("make", [lambda: SpikingSelfAttention(D, heads=2, qk="linear", causal=False),
                                  lambda: AstroSpikingAttention(D, heads=2, causal=False, max_len=N, neuron=TORCH)])
def test_non_causal_attention_does_see_future_tokens(make):
    torch.manual_seed(2)
    attn = calibrated(make(), spikes(T, B, N, D))
    with pytest.raises(AssertionError):
        _future_unchanged(attn.pre, spikes(T, B, N, D), axis=2, i=2, ref_changes=False)


def test_astro_spiking_attention_is_causal_in_time():
    """Even with every token mixed (causal=False), timestep t never sees later timesteps."""
    torch.manual_seed(4)
    attn = calibrated(AstroSpikingAttention(D, heads=2, causal=False, max_len=N, neuron=TORCH), spikes(T, B, N, D))
    for t in (0, 2):
        _future_unchanged(attn.pre, spikes(T, B, N, D, seed=10 + t), axis=0, i=t)
        _future_unchanged(attn, spikes(T, B, N, D, seed=10 + t), axis=0, i=t, ref_changes=False)


@pytest.mark.parametrize("causal", [False, True])
def test_astro_spiking_attention_mixes_spike_qkv_as_the_equations_say(causal):
    """Loop reference (float64) of the astro mixing of spike Q/K/V: for a spike u, phi(u) = elu(u) + 1 = 1 + u."""
    torch.manual_seed(5)
    attn = AstroSpikingAttention(D, heads=2, causal=causal, max_len=N).double()
    with torch.no_grad():
        attn.astro.rel_pos.normal_(0, 0.5)
        attn.astro.astro_scale.normal_(0, 1)
    q, k, v = (attn._heads(spikes(2, 1, N, D, p=0.5, seed=s).double()) for s in (1, 2, 3))
    got = attn.mix(q, k, v)
    assert got.shape == (2, 1, 2, N, D // 2)
    H, d, alpha = 2, D // 2, attn.astro.alpha
    ref = torch.zeros_like(got)
    for t in range(2):
        for h in range(H):
            m = math.log1p(math.exp(attn.astro.astro_scale[h].item()))
            for i in range(N):
                drive = []
                for j in range(N):
                    if causal and j > i:
                        drive.append(0.0)
                        continue
                    qi, kj = q[t, 0, h, i].tolist(), k[t, 0, h, j].tolist()
                    hn = sum((1 + a) * (1 + b) ** alpha for a, b in zip(qi, kj)) / d
                    ha = m / (1 + math.exp(-sum(a * b for a, b in zip(qi, kj)) / math.sqrt(d)))
                    drive.append(math.exp(attn.astro.rel_pos[h, i - j + N - 1].item()) * (hn + ha))
                for j in range(N):
                    ref[t, 0, h, i] += drive[j] / sum(drive) * v[t, 0, h, j]
    torch.testing.assert_close(got, ref.detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("axis_name,axis", [("tokens", 2), ("time", 0)])
def test_causal_conv_matches_loop_reference_and_is_causal(axis_name, axis):
    torch.manual_seed(3)
    conv = CausalConv1d(D, 3, kernel_size=4, axis=axis_name, dilation=1)
    x = torch.randn(T, B, N, D)
    y = conv(x)
    w, bias = conv.conv.weight, conv.conv.bias  # [out, in, K]
    ref = torch.zeros(T, B, N, 3)
    L = x.shape[axis]
    for pos in range(L):
        acc = bias.clone().expand(*([T, B] if axis == 2 else [B, N]), 3).clone()
        for k in range(4):
            src = pos - (3 - k)
            if src < 0:
                continue
            xs = x[:, :, src] if axis == 2 else x[src]
            acc = acc + xs @ w[:, :, k].T
        if axis == 2:
            ref[:, :, pos] = acc
        else:
            ref[pos] = acc
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    _future_unchanged(conv, x, axis=axis, i=2)


@pytest.mark.parametrize("dilation,bias", [(1, True), (2, False), (3, True)])
def test_conv1d_gemm_matches_float64_sum(dilation, bias):
    """The matrix-product convolution (strict-fp32 CUDA path of the layers' Conv1d) against the defining sum."""
    from neurosim.layers.conv import conv1d_gemm

    g = torch.Generator().manual_seed(dilation)
    x = torch.randn(3, 5, 17, generator=g, dtype=torch.float64)
    w = torch.randn(4, 5, 3, generator=g, dtype=torch.float64)
    b = torch.randn(4, generator=g, dtype=torch.float64) if bias else None
    got = conv1d_gemm(x, w, b, dilation)
    L = 17 - dilation * 2
    ref = torch.zeros(3, 4, L, dtype=torch.float64)
    for bb in range(3):
        for o in range(4):
            for i in range(L):
                ref[bb, o, i] = sum(float(w[o, c, j]) * float(x[bb, c, i + j * dilation])
                                    for c in range(5) for j in range(3)) + (float(b[o]) if bias else 0.0)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_strict_fp32_causal_conv_matches_float64():
    """With TF32 off the layer's Conv1d takes the matrix-product path on CUDA: same numbers as float64 on CPU."""
    torch.manual_seed(0)
    conv = CausalConv1d(64, kernel_size=3, axis="tokens", bias=False)
    x = torch.randn(2, 4, 32, 64)
    ref = conv.double()(x.double())
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        got = conv.float().cuda()(x.cuda())
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old
    torch.testing.assert_close(got.cpu().double(), ref, rtol=1e-5, atol=1e-5)


def test_tpu_is_causal_in_time_and_mixes_timesteps():
    torch.manual_seed(4)
    s = spikes(T, B, N, D)
    tpu = calibrated(TemporalProcessingUnit(D, kernel_size=3), s)
    _future_unchanged(tpu.pre, s, axis=0, i=1)
    # cross-timestep: with the neuron removed from the picture, step t's pre-activation depends on s[t-1]
    s2 = s.clone()
    s2[1] = 1 - s2[1]
    assert not torch.equal(tpu.pre(s)[2], tpu.pre(s2)[2])


@pytest.mark.parametrize("mode", ["membrane", "sew_add", "sew_iand"])
def test_residual_blocks_causal_in_time(mode):
    torch.manual_seed(5)
    s = spikes(T, B, N, D)
    blk = calibrated(SpikeResidual(SpikingMLP(D), mode), s)
    _future_unchanged(blk, s, axis=0, i=2)


def test_batchnorm_causal_only_in_eval():
    torch.manual_seed(6)
    bn = SpikeBatchNorm(D)
    x = torch.randn(T, B, N, D)
    with pytest.raises(AssertionError):  # training statistics pool all timesteps
        _future_unchanged(bn, x, axis=0, i=1)
    _future_unchanged(bn.eval(), x, axis=0, i=1)


def test_spike_batchnorm_matches_hand_statistics():
    bn = SpikeBatchNorm(D)
    x = torch.randn(T, B, N, D) * 3 + 1
    y = bn(x)
    flat = x.reshape(-1, D).double()
    ref = (flat - flat.mean(0)) / torch.sqrt(flat.var(0, unbiased=False) + 1e-5)
    torch.testing.assert_close(y.reshape(-1, D).double(), ref, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- random spike masking
def test_rsm_ratio_zero_is_identity():
    x = spikes(T, B, N, D)
    m = RandomSpikeMask(0.0, mode="always", seed=0)
    assert m(x) is x
    assert random_spike_mask(x, 0.0) is x


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.75, 0.9])
def test_rsm_removes_fraction_within_binomial_bound(ratio):
    x = spikes(20, 8, 16, 32, p=0.5, seed=1)
    out = RandomSpikeMask(ratio, mode="train", seed=123).train()(x)
    assert is_binary(out)
    assert bool((out <= x).all())  # only removes, never adds spikes
    n = int(x.sum())
    removed = n - int(out.sum())
    bound = 5 * math.sqrt(n * ratio * (1 - ratio))  # 5 sigma of Binomial(n, ratio)
    assert abs(removed - n * ratio) <= bound, (removed, n * ratio, bound)


def test_rsm_modes_seeding_and_validation():
    x = spikes(T, B, N, D)
    train_only = RandomSpikeMask(0.5, mode="train", seed=7)
    assert train_only.eval()(x) is x
    always = RandomSpikeMask(0.5, mode="always", seed=7).eval()
    a = always(x)
    assert not torch.equal(a, x)
    always.reseed()
    torch.testing.assert_close(always(x), a)  # same seed, same mask
    assert not torch.equal(RandomSpikeMask(0.5, "always", seed=8).eval()(x), a)
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="ratio"):
            RandomSpikeMask(bad)
    with pytest.raises(ValueError, match="mode"):
        RandomSpikeMask(0.5, mode="inference")


# ---------------------------------------------------------------- residual connect functions
def test_sew_connect_truth_tables():
    a = torch.tensor([0.0, 0.0, 1.0, 1.0])
    s = torch.tensor([0.0, 1.0, 0.0, 1.0])
    assert SEWConnect("add")(a, s).tolist() == [0, 1, 1, 2]
    assert SEWConnect("and")(a, s).tolist() == [0, 0, 0, 1]
    assert SEWConnect("iand")(a, s).tolist() == [0, 1, 0, 0]
    with pytest.raises(ValueError, match="fn"):
        SEWConnect("or")


def test_sew_and_iand_pass_the_papers_gradient_to_the_block():
    """SEW-ResNet's AND = A S and IAND = (1 - A) S: d/dA is S and -S, d/dS is A and 1 - A. Written as selections they
    had no gradient for A, so a sew_and / sew_iand network trained only its head."""
    from neurosim.layers import sew_connect

    a = torch.tensor([0.0, 0.0, 1.0, 1.0], requires_grad=True)
    s = torch.tensor([0.0, 1.0, 0.0, 1.0], requires_grad=True)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    for fn, da, ds in (("and", [0.0, 2.0, 0.0, 4.0], [0.0, 0.0, 3.0, 4.0]),
                       ("iand", [0.0, -2.0, 0.0, -4.0], [1.0, 2.0, 0.0, 0.0])):
        a.grad = s.grad = None
        (sew_connect(a, s, fn) * w).sum().backward()
        assert a.grad.tolist() == da and s.grad.tolist() == ds, fn
    for mode in ("sew_and", "sew_iand"):
        torch.manual_seed(0)
        block = SpikeResidual(SpikingMLP(8, neuron=NeuronSpec(threshold=0.2)), mode)
        x = (torch.rand(4, 2, 5, 8) < 0.5).float()
        block(x).sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters()), mode


@pytest.mark.parametrize("mode", ["sew_add", "sew_and", "sew_iand", "membrane"])
def test_a_residual_refuses_a_block_that_changes_the_shape(mode):
    """A block narrowing the width broadcast against the shortcut: a [.., 8] input gave a [.., 8] output from a
    [.., 1] block, silently."""
    x = (torch.rand(T, B, N, D) < 0.3).float()
    with pytest.raises(ValueError, match=rf"block output must have its input's shape \({T}, {B}, {N}, {D}\); got "
                                         rf"\({T}, {B}, {N}, 1\)"):
        SpikeResidual(SpikingMLP(D, out_dim=1), mode)(x)
    assert SpikeResidual(SpikingMLP(D), mode)(x).shape == x.shape


def test_residual_and_mask_arguments_are_checked_when_made():
    with pytest.raises(ValueError, match="mode='membrane' needs a block with a pre"):
        SpikeResidual(torch.nn.Identity(), "membrane")
    with pytest.raises(ValueError, match=r"rsm must be a RandomSpikeMask or None; got float"):
        SpikeResidual(SpikingMLP(D), "sew_add", rsm=0.5)
    with pytest.raises(ValueError, match="ratio must be a number in \\[0, 1\\), not a tensor"):
        RandomSpikeMask(torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="ratio must be a number in \\[0, 1\\), not a tensor"):
        random_spike_mask(torch.ones(3), torch.tensor([0.1, 0.2]))
    for bad in ("1", 1.5, -1, True):
        with pytest.raises(ValueError, match="seed must be an integer >= 0 or None"):
            RandomSpikeMask(0.5, seed=bad)


def test_a_masks_generator_state_continues_its_sequence():
    """generator_states / set_generator_states: what the trainer's checkpoint keeps of a seeded mask."""
    a = RandomSpikeMask(0.5, seed=4)
    x = torch.ones(4, 64)
    a(x)
    saved = a.generator_states()
    expected = a(x)
    b = RandomSpikeMask(0.5, seed=4)
    assert not torch.equal(b(x), expected)  # (a fresh one starts over)
    b.set_generator_states(saved)
    assert torch.equal(b(x), expected)


@pytest.mark.parametrize("fn", ["and", "iand"])
def test_sew_and_iand_refuse_graded_input(fn):
    """AND/IAND are logic on spikes: a graded shortcut passed through them unchanged, silently (ADD takes counts)."""
    from neurosim import validate

    a = torch.tensor([0.0, 1.0, 1.0])
    graded = torch.tensor([0.0, 0.5, 2.0])
    for bad in ("a", "s"):
        args = (graded, a) if bad == "a" else (a, graded)
        with pytest.raises(ValueError, match=rf"^{bad} must be a binary spike tensor \(values 0 or 1\); found values "
                                             r"such as \[0.0, 0.5, 2.0\]"):
            SEWConnect(fn)(*args)
        with pytest.raises(ValueError, match=rf"^block 1: {bad} must be a binary spike tensor"):
            with validate.deferred_checks(lambda: "block 1"):
                SEWConnect(fn)(*args)
    assert SEWConnect("add")(a, graded).tolist() == [0.0, 1.5, 3.0]


def test_membrane_shortcut_adds_pre_activation_to_stream():
    torch.manual_seed(8)
    blk = SpikeResidual(SpikingMLP(D), "membrane").eval()
    x = torch.randn(T, B, N, D)
    torch.testing.assert_close(blk(x), x + blk.block.pre(blk.sn_pre(x)))
    assert is_binary(blk.sn_pre(x))  # the block reads spikes


# ---------------------------------------------------------------- positional encodings
def test_cpg_encoding_is_spike_code_and_concatenates():
    pe = positional_encoding("cpg", max_len=16, dim=8)
    table = pe.table()
    assert is_binary(table) and table.shape == (16, 8)
    torch.testing.assert_close(table, cpg_code(16, 4))
    assert torch.unique(table, dim=0).shape[0] == 16
    x = torch.randn(T, B, 10, 3)
    y = pe(x)
    assert y.shape == (T, B, 10, 11)
    torch.testing.assert_close(y[..., 3:], table[:10].expand(T, B, 10, 8))
    with pytest.raises(ValueError, match="max_len"):
        pe(torch.randn(T, B, 17, 3))


def test_sinusoidal_and_learned_encodings():
    pe = SinusoidalPositionalEncoding(32, dim=6)
    i, k = 5, 2  # column 2k = sin(i / 10000^(2k/d))
    assert abs(float(pe.table()[i, 2 * k]) - math.sin(i / 10000 ** (2 * k / 6))) < 1e-6
    assert abs(float(pe.table()[i, 2 * k + 1]) - math.cos(i / 10000 ** (2 * k / 6))) < 1e-6
    add = SinusoidalPositionalEncoding(32, dim=4, mode="add")
    x = torch.randn(T, B, 6, 4)
    torch.testing.assert_close(add(x), x + add.table()[:6])
    learned = LearnedPositionalEncoding(32, dim=4)
    assert learned.pe.requires_grad
    learned(x).sum().backward()
    assert learned.pe.grad[:6].abs().sum() > 0 and learned.pe.grad[6:].abs().sum() == 0


def test_layers_validate_arguments():
    with pytest.raises(ValueError, match="heads"):
        SpikingSelfAttention(10, heads=3)
    with pytest.raises(ValueError, match="qk"):
        SpikingSelfAttention(8, qk="softmax")
    with pytest.raises(ValueError, match="axis"):
        CausalConv1d(4, axis="space")
    with pytest.raises(ValueError, match="backend"):
        NeuronSpec(backend="loihi")
    with pytest.raises(ValueError, match="s must have"):
        SpikingSelfAttention(8)(torch.zeros(2, 3, 8))



# ---------------------------------------------------------------- argument and input checks (attention, PE, conv)
from neurosim.layers import AstroAttention, AstroMixing  # noqa: E402  (kept with the tests that use them)


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -1.0, 0.0, "0.125", None, True])
def test_spiking_self_attention_refuses_a_scale_that_is_not_positive_and_finite(scale):
    with pytest.raises(ValueError, match=r"^scale must be a finite number > 0"):
        SpikingSelfAttention(D, heads=2, scale=scale)


def test_spiking_self_attention_scale_multiplies_the_coincidence_counts():
    # an accepted scale is the one used: scale * Q K^T V, by hand from the layer's own spike Q, K, V
    layer = SpikingSelfAttention(D, heads=2, scale=0.5).eval()
    q, k, v = layer.qkv(spikes(T, B, N, D, seed=8))
    torch.testing.assert_close(layer.mix(q, k, v), 0.5 * (q @ k.transpose(-1, -2)) @ v)


FLAGGED = {
    "SpikingSelfAttention": (lambda **kw: SpikingSelfAttention(D, heads=2, **kw), ("causal", "attn_norm")),
    "AstroSpikingAttention": (lambda **kw: AstroSpikingAttention(D, heads=2, max_len=N, **kw), ("causal", "attn_norm")),
    "AstroAttention": (lambda **kw: AstroAttention(D, heads=2, **kw), ("causal",)),
    "AstroMixing": (lambda **kw: AstroMixing(2, D // 2, **kw), ("causal",)),
}


@pytest.mark.parametrize("layer,name", [(layer, name) for layer, (_, names) in FLAGGED.items() for name in names])
@pytest.mark.parametrize("value", ["False", "no", 0, 1, None])
def test_attention_flags_must_be_true_or_false(layer, name, value):
    make = FLAGGED[layer][0]
    with pytest.raises(ValueError, match=rf"^{name} must be True or False; got {value!r}"):
        make(**{name: value})
    assert getattr(make(**{name: False}), name, False) is False     # (attn_norm is not kept as an attribute)
    assert make(causal=True).causal is True and make(causal=False).causal is False


@pytest.mark.parametrize("attn_norm,kind", [(True, SpikeBatchNorm), (False, torch.nn.Identity)])
def test_attn_norm_flag_is_what_the_block_does(attn_norm, kind):
    for layer in (SpikingSelfAttention(D, heads=2, attn_norm=attn_norm),
                  AstroSpikingAttention(D, heads=2, max_len=N, attn_norm=attn_norm)):
        assert type(layer.bn_attn) is kind


@pytest.mark.parametrize("p", [-0.1, 1.5, "0.1"])
def test_astro_mixing_refuses_dropout_outside_0_1(p):
    with pytest.raises(ValueError, match=r"^dropout must .*\[0\.0, 1\.0\]"):
        AstroMixing(2, 4, dropout=p)
    with pytest.raises(ValueError, match=r"^dropout must be finite"):
        AstroMixing(2, 4, dropout=float("nan"))


@pytest.mark.parametrize("kind", ["cpg", "sin", "learned"])
@pytest.mark.parametrize("mode", ["concat", "add"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.int64, torch.bool])
def test_positional_encodings_refuse_integer_and_bool_input(kind, mode, dtype):
    pe = positional_encoding(kind, 8, dim=8, mode=mode)
    x = spikes(2, 1, 4, 8, seed=9).to(dtype)
    with pytest.raises(TypeError, match=rf"^x must be a floating-point tensor \(float16, bfloat16, float32 or "
                                        rf"float64\), got {dtype}"):
        pe(x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_sinusoidal_encoding_of_float_spikes_in_every_dtype(dtype):
    # uint8 spikes once gave rows 1-3 of the table as 0; float spikes of any width get sin/cos, by hand
    x = spikes(2, 1, 4, 3, seed=9).to(dtype)
    y = SinusoidalPositionalEncoding(8, dim=4)(x)
    assert y.dtype == dtype and torch.equal(y[..., :3], x)
    hand = torch.tensor([[f(i / 10000 ** (2 * (c // 2) / 4)) for c, f in enumerate((math.sin, math.cos) * 2)]
                         for i in range(4)], dtype=torch.float64)
    tol = {torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float32: 1e-6, torch.float64: 1e-6}[dtype]
    torch.testing.assert_close(y[..., 3:].double(), hand.expand(2, 1, 4, 4), rtol=0, atol=tol)


@pytest.mark.parametrize("shape", [(4, 2, 5, 3, 8), (4, 2, 5, 1, 8), (4, 2, 1, 5, 8), (4, 2, 8)])
def test_token_axis_conv_refuses_x_that_is_not_rank_4(shape):
    # rank 5 was a reshape error, or with a middle dimension of 1 silently lost that dimension
    with pytest.raises(ValueError, match=r"^x must have .*\[T, B, N, C\]"):
        CausalConv1d(8, axis="tokens")(torch.rand(shape))


@pytest.mark.parametrize("axis,dim,what", [("time", 0, "time step"), ("tokens", 2, "token")])
def test_causal_conv_refuses_an_empty_convolved_axis(axis, dim, what):
    # no time steps (axis="time") was a reshape error, no tokens (axis="tokens") a convolution error, inside torch
    conv = CausalConv1d(4, 3, kernel_size=3, axis=axis)
    shape = [3, 2, 5, 4]
    shape[dim] = 0
    with pytest.raises(ValueError, match=re.escape(f"x must hold at least one {what} (dim {dim}), got shape "
                                                   f"{tuple(shape)}")):
        conv(torch.rand(shape))
    # the axis not convolved may be empty: an empty output, as a per-step layer gives
    shape = [3, 2, 5, 4]
    shape[2 - dim] = 0
    assert conv(torch.rand(shape)).shape == (*shape[:3], 3)


def test_time_axis_conv_keeps_any_middle_dimensions():
    # axis="time" still takes [T, B, ..., C]: a rank-5 input against the defining sum in float64, by hand
    torch.manual_seed(4)
    conv = CausalConv1d(3, 2, kernel_size=3, axis="time", dilation=2).double()
    x = torch.randn(6, 2, 4, 1, 3, dtype=torch.float64)
    w, bias = conv.conv.weight, conv.conv.bias  # [out, in, K]
    ref = torch.zeros(6, 2, 4, 1, 2, dtype=torch.float64)
    for t in range(6):
        ref[t] = bias
        for j in range(3):
            src = t - (2 - j) * 2
            if src >= 0:
                ref[t] += x[src] @ w[:, :, j].T
    torch.testing.assert_close(conv(x), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bad", [5, "0", torch.tensor(1), __import__("random").Random(0)])
@pytest.mark.parametrize("ratio", [0.0, 0.5])
def test_random_spike_mask_refuses_a_generator_that_is_not_one_by_name(bad, ratio):
    x = (torch.rand(3, 4) < 0.5).float()
    with pytest.raises(ValueError, match="generator must be a torch.Generator or None"):
        random_spike_mask(x, ratio, generator=bad)
    torch.testing.assert_close(random_spike_mask(x, ratio, generator=torch.Generator().manual_seed(0)),
                               random_spike_mask(x, ratio, generator=torch.Generator().manual_seed(0)))
