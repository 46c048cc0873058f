"""torch's multi-head attention under neurosim.energy: counted by hand-computed figures and against the same
attention written out of the layers neurosim counts one by one (Linear, MatMul, Softmax); torch's fused
transformer fast paths do not hide a layer from the meter."""
import pytest
import torch
from torch import nn

from neurosim.energy import EnergyMeter, profile
from neurosim.layers import MatMul


def spikes(*shape, p=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) < p).float()


class Written(nn.Module):
    """``mha`` (batch_first=False, self-attention, no dropout) written out of countable layers, same weights."""

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        e, self.heads = mha.embed_dim, mha.num_heads
        self.q, self.k, self.v = (nn.Linear(e, e) for _ in range(3))
        with torch.no_grad():
            for i, lin in enumerate((self.q, self.k, self.v)):
                lin.weight.copy_(mha.in_proj_weight[i * e:(i + 1) * e])
                lin.bias.copy_(mha.in_proj_bias[i * e:(i + 1) * e])
        self.scores, self.soft, self.mix = MatMul(scale=(e // self.heads) ** -0.5), nn.Softmax(-1), MatMul()
        self.out = nn.Linear(e, e)
        self.out.load_state_dict(mha.out_proj.state_dict())

    def forward(self, x):  # [L, N, E]
        n_tok, n, e = x.shape

        def heads(t):  # [L, N, E] -> [N, H, L, E / H]
            return t.reshape(n_tok, n, self.heads, e // self.heads).permute(1, 2, 0, 3)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        y = self.mix(self.soft(self.scores(q, k.transpose(-1, -2))), v)
        return self.out(y.permute(2, 0, 1, 3).reshape(n_tok, n, e))


class SelfAttention(nn.Module):
    def __init__(self, mha):
        super().__init__()
        self.mha = mha

    def forward(self, x):
        return self.mha(x, x, x, need_weights=False)[0]


@pytest.mark.parametrize("binary", [True, False])
def test_multihead_attention_equals_its_written_out_layers(binary):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4).eval()
    written = Written(mha).eval()
    x = spikes(6, 3, 16) if binary else torch.randn(6, 3, 16)
    with torch.no_grad():
        assert torch.allclose(written(x), SelfAttention(mha)(x), atol=1e-5)  # the same computation
    got = profile(SelfAttention(mha), x).layer("mha")
    parts = profile(written, x).layers
    assert got.synops == sum(r.synops for r in parts) and (got.synops > 0) == binary
    assert got.macs == sum(r.macs for r in parts)
    # every step is in the ANN figure; a MatMul's scale is outside its own dense (one multiply per score)
    scores = profile(written, x).layer("scores")
    assert got.dense == sum(r.dense for r in parts) + (scores.macs - scores.dense)
    assert got.in_spikes == binary


def test_multihead_attention_hand_counts():
    """Cross-attention (other key and value widths, batch first) and the averaged weights, by hand."""
    torch.manual_seed(0)
    n, length, keys, e, h, kdim, vdim = 2, 3, 5, 8, 2, 6, 4
    mha = nn.MultiheadAttention(e, h, kdim=kdim, vdim=vdim, batch_first=True).eval()

    class Cross(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = mha

        def forward(self, q, k, v):
            return self.mha(q, k, v)[0]  # need_weights=True: the weights averaged over the heads

    q = spikes(n, length, e, seed=1)
    k, v = torch.randn(n, keys, kdim), torch.randn(n, keys, vdim)
    r = profile(Cross(), (q, k, v)).layer("mha")
    softmax = 2 * n * h * length * keys + n * h * length * (keys - 1)
    fixed = (n * keys * kdim * e + n * keys * vdim * e  # key and value projections (not the query tensor)
             + 2 * n * length * keys * e + n * h * length * keys + softmax  # scores, weighted values, scale
             + n * length * e * e  # output projection
             + n * length * keys * h)  # averaging the weights over the heads
    assert r.synops == int(q.sum()) * e  # the binary query's projection
    assert r.macs == fixed
    assert r.dense == n * length * e * e + fixed
    assert r.acs == 0


@pytest.mark.parametrize("extra_keys", [0, 1, 2])
def test_multihead_attention_masks_and_extra_keys(extra_keys):
    """A mask given to the call adds one addition per score (ACs); add_bias_kv and add_zero_attn each append a
    key, which every product, the scaling and the softmax then cover."""
    torch.manual_seed(0)
    n, length, e, h = 2, 4, 8, 2
    mha = nn.MultiheadAttention(e, h, add_bias_kv=extra_keys >= 1, add_zero_attn=extra_keys == 2).eval()

    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = mha

        def forward(self, x, mask=None):
            return self.mha(x, x, x, attn_mask=mask, need_weights=False)[0]

    x = torch.randn(length, n, e)
    with torch.no_grad():  # the keys the scores cover, as torch reports them: [N, H, L, keys]
        keys = mha(x, x, x, average_attn_weights=False)[1].shape[-1]
    assert keys == length + extra_keys
    mask = torch.zeros(length, length)  # (given for the keys passed; torch pads it for the appended ones)
    mask[:, -1] = float("-inf")
    softmax = 2 * n * h * length * keys + n * h * length * (keys - 1)
    fixed = 2 * n * length * keys * e + n * h * length * keys + softmax + n * length * e * e
    plain = profile(Masked(), x).layer("mha")
    masked = profile(Masked(), (x, mask)).layer("mha")
    assert (plain.macs, plain.acs) == (3 * n * length * e * e + fixed, 0)
    assert (masked.macs, masked.acs) == (plain.macs, n * h * length * keys)
    # the ANN adds the mask too: its additions are the row's dense_other (its dense holds MACs)
    assert (masked.dense, masked.dense_other, plain.dense_other) == (plain.dense, masked.acs, 0)
    assert "mask" in masked.note and "mask" not in plain.note


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_fast_path_does_not_hide_layers(batch_first, device):
    """In inference, torch runs nn.TransformerEncoderLayer as one fused op without calling its modules: the meter
    turns that fast path off while it runs, and back as it was after."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=batch_first).eval().to(device)
    x = torch.randn(3, 5, 16, device=device)
    assert torch.backends.mha.get_fastpath_enabled()
    rep = profile(layer, x)
    assert {"self_attn", "linear1", "linear2", "norm1", "norm2"} <= {r.name for r in rep.layers if r.calls == 1}
    assert torch.backends.mha.get_fastpath_enabled()
    with pytest.raises(RuntimeError, match="stop"):
        with torch.no_grad(), EnergyMeter(layer):
            assert not torch.backends.mha.get_fastpath_enabled()
            layer(x)
            raise RuntimeError("stop")  # an error inside the block
    assert torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        profile(layer, x)
        assert not torch.backends.mha.get_fastpath_enabled()  # (a switch the user turned off stays off)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)


@pytest.mark.parametrize("kind, activation", [("encoder", "gelu"), ("encoder", "relu"), ("decoder", "relu"),
                                              ("encoder", nn.SiLU())])
def test_transformer_layer_residuals_and_activation_equal_the_aten_ops_it_runs(kind, activation):
    """A transformer layer's own arithmetic (outside its modules): the residual additions and a functional
    activation, against the element-wise aten ops torch runs; with those counted, the audit finds nothing left."""
    from aten_ops import own_elementwise_ops

    torch.manual_seed(0)
    make = nn.TransformerEncoderLayer if kind == "encoder" else nn.TransformerDecoderLayer
    layer = make(16, 2, 32, dropout=0.0, activation=activation).eval()
    args = (torch.randn(5, 3, 16),) if kind == "encoder" else (torch.randn(5, 3, 16), torch.randn(7, 3, 16))
    torch.backends.mha.set_fastpath_enabled(False)  # (the reference runs the modules too)
    try:
        _, per_op = own_elementwise_ops(layer, *args)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    rep = profile(layer, args if len(args) > 1 else args[0], audit=True)
    assert rep.not_counted == []  # nothing left outside a counter
    row = rep.layer(make.__name__)
    assert row.acs == row.dense == per_op.pop("add")  # one addition per element, per residual connection
    assert row.macs == row.dense_other == per_op.pop("gelu", 0)  # (an activation module counts itself)
    # the same-shape ANN's energy prices all of it: each row's additions as ACs and its MACs as MACs
    hw = rep.hardware
    assert rep.totals()["ann_energy_pj"] == pytest.approx(sum(
        r.dense * (hw.e_mac_pj if r.dense_is_mac else hw.e_ac_pj) + r.dense_other * (
            hw.e_ac_pj if r.dense_is_mac else hw.e_mac_pj) for r in rep.layers))
    assert rep.totals()["dense_other"] == row.dense_other + rep.layer("self_attn").dense_other
    # ReLU: torch runs one pointwise op an element, counted as a comparison (no arithmetic), as nn.ReLU is
    assert per_op.pop("relu", 0) == (5 * 3 * 32 if activation == "relu" else 0)
    assert per_op == {}  # no other element-wise arithmetic of its own
    if isinstance(activation, nn.Module):
        assert rep.layer("activation").macs == 5 * 3 * 32  # (SiLU: one MAC a hidden element, its own row)


def test_profile_takes_the_batch_size_of_another_layout():
    """A batch-first ANN baseline: ``batch_size`` sets the per-sample energy (dim 1 would be the tokens)."""
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True).eval()
    x = torch.randn(3, 5, 16)  # [N, L, E]
    rep = profile(layer, x, batch_size=3)
    assert rep.batch_size == 3 and profile(layer, x).batch_size == 5
    assert rep.totals()["energy_per_sample_pj"] == pytest.approx(rep.totals()["energy_pj"] / 3)
    for bad in (0, -2, 2.5, "3"):
        with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
            profile(layer, x, batch_size=bad)


def test_profile_batches_counts_samples_along_batch_dim():
    """profile_batches of a batch-first ANN baseline: the samples are dim 0 of each batch (a smaller last batch
    too); the counts are the sums of each batch's profile."""
    from neurosim.energy import profile_batches

    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True).eval()
    batches = [torch.randn(4, 5, 16), torch.randn(4, 5, 16), torch.randn(2, 5, 16)]
    rep = profile_batches(layer, batches, batch_dim=0, progress=False)
    assert rep.batch_size == 10
    assert rep.totals()["macs"] == sum(profile(layer, x).totals()["macs"] for x in batches)
    assert profile_batches(layer, batches, progress=False).batch_size == 15  # (dim 1: the tokens)
    with pytest.raises(ValueError, match="batch_dim must be an integer >= 0"):
        profile_batches(layer, batches, batch_dim=-1, progress=False)


def test_multihead_attention_called_with_keywords_in_any_order():
    """Arguments given by keyword reach the counter in the order of the module's signature: cross-attention called
    as ``mha(value=m, key=m, query=x)``, or with a mask given by keyword, counts as the positional call does."""
    torch.manual_seed(0)
    n, length, mem, e, h = 2, 4, 6, 8, 2
    mha = nn.MultiheadAttention(e, h).eval()
    x, m = spikes(length, n, e), torch.randn(mem, n, e)
    pad = torch.zeros(n, mem, dtype=torch.bool)
    pad[:, -1] = True

    class Call(nn.Module):
        def __init__(self, how):
            super().__init__()
            self.mha, self.how = mha, how

        def forward(self, x, m):
            if self.how == "positional":
                return self.mha(x, m, m, pad, False)[0]
            return self.mha(need_weights=False, value=m, key_padding_mask=pad, key=m, query=x)[0]

    want = profile(Call("positional"), (x, m)).layer("mha")
    got = profile(Call("keywords"), (x, m)).layer("mha")
    keys_macs = 2 * n * mem * e * e  # key and value projected from the memory (MACs)
    assert want.synops == x.sum().item() * e  # the binary query's projection
    assert want.macs >= keys_macs and want.acs == n * h * length * mem  # the padding mask added to the scores
    assert (got.synops, got.macs, got.acs, got.dense) == (want.synops, want.macs, want.acs, want.dense)
    model = Call("keywords")  # replayed forwards (the keyword call recorded once) count the same
    with EnergyMeter(model) as meter, torch.no_grad():
        for _ in range(3):
            model(x, m)
    again = meter.report().layer("mha")
    assert (again.synops, again.macs, again.acs) == (3 * want.synops, 3 * want.macs, 3 * want.acs)
