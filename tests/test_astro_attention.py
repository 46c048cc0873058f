"""Astrocyte-modulated attention: shapes, causal mask, rows as distributions, loop reference, MatMul routing."""
import math
import re

import pytest
import torch

from neurosim.layers import MatMul
from neurosim.layers.astro_attention import AstroAttention, AstroMixing


def _layer(seed=0, **kw):
    torch.manual_seed(seed)
    layer = AstroAttention(8, heads=2, max_len=6, **kw).double()
    with torch.no_grad():
        layer.rel_pos.normal_(0, 0.5)
        layer.astro_scale.normal_(0, 1)
    return layer


def _reference(layer, x):
    """Explicit float64 loops over batch, head, query and key."""
    B, L, D = x.shape
    H, d = layer.heads, layer.head_dim
    qkv = x @ layer.qkv.weight.T + layer.qkv.bias
    q, k, v = qkv[..., :D], qkv[..., D:2 * D], qkv[..., 2 * D:]
    rate = lambda u: u + 1 if u > 0 else math.exp(u)  # elu(u) + 1
    out = torch.zeros(B, L, D, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            sl = slice(h * d, (h + 1) * d)
            m = math.log1p(math.exp(float(layer.astro_scale[h])))
            for i in range(L):
                drive = []
                for j in range(L):
                    if layer.causal and j > i:
                        drive.append(0.0)
                        continue
                    hn = sum(rate(float(q[b, i, sl][c])) * rate(float(k[b, j, sl][c])) ** layer.alpha for c in range(d)) / d
                    dot = sum(float(q[b, i, sl][c]) * float(k[b, j, sl][c]) for c in range(d)) / math.sqrt(d)
                    ha = m / (1 + math.exp(-dot))
                    w = math.exp(float(layer.rel_pos[h, i - j + layer.max_len - 1]))
                    drive.append(w * (hn + ha))
                total = sum(drive)
                for j in range(L):
                    out[b, i, sl] += drive[j] / total * v[b, j, sl]
    return out @ layer.proj.weight.T + layer.proj.bias


@pytest.mark.parametrize("causal", [False, True])
def test_matches_loop_reference(causal):
    layer = _layer(causal=causal)
    x = torch.randn(2, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _reference(layer, x), rtol=1e-10, atol=1e-10)


def test_default_alpha_and_rows_are_distributions():
    layer = AstroAttention(16, heads=4)
    assert layer.alpha == 0.25
    layer.record = True
    layer(torch.randn(3, 7, 16))
    a = layer.last_attention
    assert a.shape == (3, 4, 7, 7)
    assert float(a.min()) >= 0
    torch.testing.assert_close(a.sum(-1), torch.ones(3, 4, 7))


def test_shapes_both_layouts():
    layer = AstroAttention(16, heads=4, max_len=10)
    assert layer(torch.randn(2, 9, 16)).shape == (2, 9, 16)
    x4 = torch.randn(3, 2, 9, 16)
    y4 = layer(x4)
    assert y4.shape == (3, 2, 9, 16)
    # [T, B, N, D]: each time step is attended independently, equal to running the steps one by one
    torch.testing.assert_close(y4[1], layer(x4[1]), rtol=1e-5, atol=1e-6)


def test_causal_mask_ignores_future_tokens():
    layer = _layer(causal=True)
    x = torch.randn(2, 6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x2 = x.clone()
    x2[:, 4:] += torch.randn(2, 2, 8, dtype=torch.float64)
    y, y2 = layer(x), layer(x2)
    torch.testing.assert_close(y[:, :4], y2[:, :4], rtol=0, atol=1e-12)
    assert not torch.allclose(y[:, 4:], y2[:, 4:])
    layer.record = True
    layer(x)
    assert float(layer.last_attention.triu(1).abs().max()) == 0.0
    # without the mask, the future changes the past outputs
    free = _layer(causal=False)
    assert not torch.allclose(free(x)[:, :4], free(x2)[:, :4])


def test_products_go_through_matmul_and_grads_flow():
    layer = AstroAttention(8, heads=2, max_len=5)
    calls = []
    for m in layer.modules():
        if isinstance(m, MatMul):
            m.register_forward_hook(lambda mod, inp, out: calls.append(out.shape))
    x = torch.randn(2, 5, 8, requires_grad=True)
    layer(x).square().sum().backward()
    assert len(calls) == 3
    assert layer.rel_pos.grad is not None and float(layer.rel_pos.grad.abs().sum()) > 0
    assert float(layer.astro_scale.grad.abs().sum()) > 0


@pytest.mark.parametrize("kwargs,match", [(dict(dim=10, heads=4), "divisible"), (dict(dim=8, alpha=0.0), "alpha"),
                                          (dict(dim=8, alpha=1.5), "alpha")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AstroAttention(**kwargs)


def test_bad_input():
    layer = AstroAttention(8, heads=2, max_len=4)
    with pytest.raises(ValueError, match="max_len"):
        layer(torch.randn(1, 5, 8))
    with pytest.raises(ValueError, match="dim=8"):
        layer(torch.randn(1, 3, 6))
    with pytest.raises(ValueError, match="dimensions"):
        layer(torch.randn(3, 8))


@pytest.mark.parametrize("shape", [(2, 0, 8), (3, 2, 0, 8), (0, 2, 3, 8), (3, 0, 3, 8), (0, 3, 8)])
def test_no_tokens_are_refused_by_name_other_empty_axes_pass(shape):
    """No tokens (dim -2) failed deep inside torch (a reshape of 0 elements): refused, naming x. No time steps or
    no samples give an empty output of the input's shape, as a per-step layer (a neuron) does."""
    layer = AstroAttention(8, heads=2)
    x = torch.rand(shape)
    if shape[-2] == 0:
        with pytest.raises(ValueError, match=re.escape(f"x must hold at least one token (dim -2), got shape {shape}")):
            layer(x)
    else:
        assert layer(x).shape == x.shape


@pytest.mark.parametrize("q_shape,k_shape,v_shape,name", [
    ((2, 4, 6, 16), (2, 4, 6, 16), (2, 4, 6, 16), "q"),   # head_dim 16 for a layer of head_dim 8
    ((2, 1, 6, 8), (2, 1, 6, 8), (2, 1, 6, 8), "q"),      # one head for a layer of 4 (broadcast before)
    ((6, 8), (6, 8), (6, 8), "q"),                        # no heads dimension
    ((2, 4, 6, 8), (2, 4, 5, 8), (2, 4, 6, 8), "k"),      # keys of another sequence length
    ((2, 4, 6, 8), (1, 4, 6, 8), (2, 4, 6, 8), "k"),      # keys broadcast over the batch
    ((2, 4, 6, 8), (2, 4, 6, 8), (2, 4, 6, 16), "v"),
    ((2, 4, 6, 8), (2, 4, 6, 8), (2, 1, 6, 8), "v"),
])
def test_mixing_refuses_q_k_v_of_other_heads_or_widths(q_shape, k_shape, v_shape, name):
    mix = AstroMixing(heads=4, head_dim=8)
    q, k, v = torch.randn(q_shape), torch.randn(k_shape), torch.randn(v_shape)
    with pytest.raises(ValueError, match=rf"^{name} must have .*\[\.\.\., heads, n, head_dim\] with heads=4, head_dim=8"):
        mix(q, k, v)
    if name != "v":
        with pytest.raises(ValueError, match=rf"^{name} must have"):
            mix.attention(q, k)
    # the layout it asks for runs (and any leading dimensions)
    assert mix(*(torch.randn(3, 2, 4, 6, 8) for _ in range(3))).shape == (3, 2, 4, 6, 8)


def _mixing_reference(mix, q, k, v):
    """The module docstring's equations in float64 (vectorised; phi(u) = u + 1 for u > 0, exp(u) below, as
    elu(u) + 1 is): weights ``A`` and output ``A v``, from ``q, k, v`` and the layer's parameters as stored."""
    q, k, v = q.double(), k.double(), v.double()
    d, n = q.shape[-1], q.shape[-2]
    phi = lambda u: torch.where(u > 0, u + 1, torch.exp(torch.clamp(u, max=0)))
    hn = phi(q) @ phi(k).pow(mix.alpha).transpose(-1, -2) / d
    m = torch.log1p(torch.exp(mix.astro_scale.detach().double()))[:, None, None]
    ha = m * torch.sigmoid(q @ k.transpose(-1, -2) / math.sqrt(d))
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    w = torch.exp(mix.rel_pos.detach().double()[:, i - j + mix.max_len - 1])
    drive = w * (hn + ha)
    if mix.causal:
        drive = drive * (j <= i)
    a = drive / drive.sum(-1, keepdim=True)
    return a, a @ v


def _mixing(dtype, causal=False, seed=0):
    torch.manual_seed(seed)
    mix = AstroMixing(heads=2, head_dim=4, max_len=6, causal=causal)
    with torch.no_grad():
        mix.rel_pos.normal_(0, 0.5)
        mix.astro_scale.normal_(0, 1)
    return mix.to(dtype)


# weights and outputs of 16-bit input: the input's rounding (float32 weights, rounded once to the dtype)
_TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 2 ** -8, torch.float16: 2 ** -10}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("spread", [2.0, 8.0])
def test_mixing_matches_float64_equations_in_every_dtype(dtype, causal, spread):
    mix = _mixing(dtype, causal)
    g = torch.Generator().manual_seed(3)
    q, k, v = ((torch.randn(3, 2, 6, 4, generator=g) * spread).to(dtype) for _ in range(3))
    a_ref, out_ref = _mixing_reference(mix, q, k, v)
    with torch.no_grad():
        a, out = mix.attention(q, k), mix(q, k, v)
    assert a.dtype == out.dtype == dtype
    tol = _TOL[dtype]
    torch.testing.assert_close(a.double(), a_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(out.double(), out_ref, rtol=4 * tol, atol=4 * tol * float(v.abs().max()))


def test_float16_drive_beyond_float16_range_is_computed_in_float32():
    # phi(q) . phi(k)^alpha summed over 4 channels reaches 4 * 301 * 301^0.25 ~ 5e3 x 1.2 (> 65504 with d=64; here
    # the product of q . k / sqrt(d) = 4 * 300^2 / 2 = 1.8e5 overflows float16): NaN before, the equations now
    mix = AstroMixing(heads=1, head_dim=64, max_len=4).half()
    g = torch.Generator().manual_seed(4)
    q = (300 + torch.rand(2, 1, 4, 64, generator=g)).half()
    k = (300 + torch.rand(2, 1, 4, 64, generator=g)).half()
    v = torch.randn(2, 1, 4, 64, generator=g).half()
    a_ref, out_ref = _mixing_reference(mix, q, k, v)
    with torch.no_grad():
        out = mix(q, k, v)
    assert bool(torch.isfinite(out).all())
    torch.testing.assert_close(out.double(), out_ref, rtol=4e-3, atol=4e-3)


def _extreme_queries(mix, seed, row0, row1):
    """q, v and keys k > 1 drawn with ``seed``, the query rows [0, 1, 2] and [1, 0, 0] set to ``row0`` / ``row1``:
    the layer's weights and output, then the float64 equations' (``_mixing_reference``)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 2, 6, 4, generator=g)
    k = 1 + torch.rand(2, 2, 6, 4, generator=g)
    v = torch.randn(2, 2, 6, 4, generator=g)
    q[0, 1, 2], q[1, 0, 0] = row0, row1
    a_ref, out_ref = _mixing_reference(mix, q, k, v)
    with torch.no_grad():
        return mix.attention(q, k), mix(q, k, v), a_ref, out_ref


@pytest.mark.parametrize("causal", [False, True])
def test_rows_whose_drive_underflows_are_zero_not_nan(causal):
    """A query row of -110 (float32): phi(q) = e^-110 and sigma(q . k / sqrt d) = sigma(-220) are below float32's
    smallest number, so the row's every drive is 0 (its true weights are not representable): weights and output
    of that row are 0 (the documented guard), every other row as the float64 equations give it."""
    a, out, a_ref, out_ref = _extreme_queries(_mixing(torch.float32, causal), 5, -110.0, -110.0)  # q . k < -440
    guarded = torch.zeros(2, 2, 6, dtype=torch.bool)
    guarded[0, 1, 2] = guarded[1, 0, 0] = True
    assert bool(torch.isfinite(a).all()) and bool(torch.isfinite(out).all())
    assert float(a[guarded].abs().max()) == 0.0 and float(out[guarded].abs().max()) == 0.0
    torch.testing.assert_close(a[~guarded].double(), a_ref[~guarded], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[~guarded].double(), out_ref[~guarded], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype,q0,k0", [(torch.float32, -30.0, 30.0), (torch.float16, -20.0, 3.0),
                                         (torch.bfloat16, -30.0, 30.0), (torch.float64, -800.0, 800.0)])
def test_extreme_finite_input_gives_finite_output(dtype, q0, k0):
    mix = AstroMixing(heads=1, head_dim=4).to(dtype)
    q, k = torch.full((1, 1, 3, 4), q0, dtype=dtype), torch.full((1, 1, 3, 4), k0, dtype=dtype)
    with torch.no_grad():
        out = mix(q, k, torch.randn(1, 1, 3, 4).to(dtype))
    assert bool(torch.isfinite(out).all()), out


def test_presynaptic_plasticity_of_very_negative_keys_matches_float64_with_finite_gradients():
    """p = phi(k)^alpha for keys in [-100, -17] (phi = e^k, so p = e^(alpha k) down to 1.4e-11 at alpha=0.25, in
    float32's range): elu(k) + 1 rounded phi to 0 there, so p to 0 (its true value near 0.016 at k=-17) and its
    gradient to inf. Weights, output and gradients against float64 autograd of the docstring's equations."""
    mix = _mixing(torch.float32)
    g = torch.Generator().manual_seed(6)
    q = torch.randn(2, 2, 6, 4, generator=g)
    k = -17 - 83 * torch.rand(2, 2, 6, 4, generator=g)
    k[:, :, :2] = torch.randn(2, 2, 4, generator=g)[:, :, None]            # and some ordinary keys
    v = torch.randn(2, 2, 6, 4, generator=g)
    qr, kr = q.double().requires_grad_(), k.double().requires_grad_()
    a_ref, out_ref = _mixing_reference(mix, qr, kr, v)
    out_ref.square().sum().backward()
    q32, k32 = q.clone().requires_grad_(), k.clone().requires_grad_()
    out = mix(q32, k32, v)
    out.square().sum().backward()
    torch.testing.assert_close(mix.attention(q, k).detach().double(), a_ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.detach().double(), out_ref.detach(), rtol=1e-5, atol=1e-5)
    assert bool(torch.isfinite(k32.grad).all()) and bool(torch.isfinite(q32.grad).all())
    torch.testing.assert_close(k32.grad.double(), kr.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(q32.grad.double(), qr.grad, rtol=1e-4, atol=1e-6)


def test_very_negative_queries_keep_their_weights():
    """phi(q) = elu(q) + 1 rounded to 0 below q = -16.6 in float32, so a row of queries near -30 lost its neuron
    term (and then its weights, to the zero-row guard, or to sigma's subnormals): phi is now e^q there. Weights and
    output against float64 evaluation of the docstring's equations."""
    from neurosim.layers.astro_attention import presynaptic_rate

    u = torch.linspace(-85, 10, 500)
    exact = [ui + 1 if ui > 0 else math.exp(ui) for ui in u.double().tolist()]  # elu(u) + 1, exactly
    torch.testing.assert_close(presynaptic_rate(u).double(), torch.tensor(exact, dtype=torch.float64), rtol=2e-7,
                               atol=0)
    a, out, a_ref, out_ref = _extreme_queries(_mixing(torch.float32), 8, -30.0, -60.0)
    assert float(a[0, 1, 2].sum()) == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(a.double(), a_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.double(), out_ref, rtol=1e-5, atol=1e-5)


def test_large_queries_give_finite_gradients():
    """phi(u) took exp(u) of every u: above 88.7 in float32 (709 in float64) it overflowed to inf, and the backward
    of the branch not taken turned that into NaN, while the forward stayed finite."""
    from neurosim.layers.astro_attention import presynaptic_rate

    for dtype, big in ((torch.float32, 100.0), (torch.float64, 800.0)):
        u = torch.tensor([1.0, 50.0, big, -30.0], dtype=dtype, requires_grad=True)
        presynaptic_rate(u).sum().backward()
        want = torch.tensor([1.0, 1.0, 1.0, math.exp(-30.0)], dtype=dtype)
        assert torch.allclose(u.grad, want, rtol=1e-6), dtype
