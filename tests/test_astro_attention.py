"""Astrocyte-modulated attention: shapes, causal mask, rows as distributions, loop reference, MatMul routing."""
import math

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
