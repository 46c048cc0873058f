"""BTSP plastic attention and the BTSPFormer models: the rule's defining properties and the model wiring."""
import math

import pytest
import torch

from neurosim.models import (BTSPFormer, BTSPPlasticity, SpikingBTSPFormer, asymmetric_envelope, asymmetric_kernel,
                             btsp_update)
from neurosim.models.btspformer import SoftmaxAttention


def test_update_potentiates_weak_and_depresses_strong():
    k_plus, k_minus = torch.tensor(0.1), torch.tensor(0.3)
    eq = float(k_plus / (k_plus + k_minus))                               # 0.25
    a = torch.tensor([0.0, 0.05, 0.2, eq, 0.4, 0.9, 1.0])
    c = torch.full_like(a, 0.7)
    d = btsp_update(a, c, k_plus, k_minus)
    assert (d[a < eq] > 0).all() and (d[a > eq] < 0).all()
    assert abs(float(d[3])) < 1e-7
    # hand-computed: 0.7 * (0.1 * 0.95 - 0.3 * 0.05) = 0.056
    assert math.isclose(float(d[1]), 0.7 * (0.1 * 0.95 - 0.3 * 0.05), rel_tol=1e-6)
    # no overlap of eligibility trace and instructive signal: no change
    assert torch.equal(btsp_update(a, torch.zeros_like(a), k_plus, k_minus), torch.zeros_like(a))
    # largest rates and overlap keep the weight inside [0, 1]
    new = a + btsp_update(a, torch.ones_like(a), torch.tensor(0.5), torch.tensor(0.5))
    assert float(new.min()) >= 0 and float(new.max()) <= 1


def test_kernel_is_time_asymmetric():
    k = asymmetric_kernel(9, torch.tensor(6.0), torch.tensor(1.5), lead=0.0)   # lead 0: the peak at j = i
    i = 4
    for d in (1, 2, 3, 4):
        before, after = float(k[i, i - d]), float(k[i, i + d])
        assert math.isclose(before, math.exp(-d / 6.0), rel_tol=1e-6)
        assert math.isclose(after, math.exp(-d / 1.5), rel_tol=1e-6)
        assert before > after          # input before the plateau changes more than one after it
    assert float(k[i, i]) == 1.0


def test_kernel_peaks_slightly_before_the_plateau():
    # default lead 1 step, tau_ET 8, tau_IS 2; row i = 4 (the plateau), keys j = 0..8, d = i - j = 4..-4:
    # d >= 1: exp(-(d - 1)/8); d < 1: exp(-(1 - d)/2)
    k = asymmetric_kernel(9, torch.tensor(8.0), torch.tensor(2.0))
    hand = [math.exp(-3 / 8), math.exp(-2 / 8), math.exp(-1 / 8), 1.0, math.exp(-1 / 2), math.exp(-2 / 2),
            math.exp(-3 / 2), math.exp(-4 / 2), math.exp(-5 / 2)]
    assert k[4].tolist() == pytest.approx(hand, rel=1e-6)
    # the largest value of every row is the key one step before the query (row 0 has no earlier key)
    assert k.argmax(-1).tolist() == [0, 0, 1, 2, 3, 4, 5, 6, 7]
    # a lead of 2.5 steps: d = 2 gives exp(-0.5/2) = 0.78, d = 3 gives exp(-0.5/8) = 0.94: the peak is 3 back
    k = asymmetric_kernel(9, torch.tensor(8.0), torch.tensor(2.0), lead=2.5)
    assert int(k[8].argmax()) == 5
    assert float(k[8, 5]) == pytest.approx(math.exp(-0.5 / 8)) and float(k[8, 6]) == pytest.approx(math.exp(-0.25))
    for bad in (-1.0, float("nan"), float("inf"), "1"):
        with pytest.raises(ValueError, match=r"lead must be a finite number >= 0"):
            asymmetric_kernel(9, torch.tensor(8.0), torch.tensor(2.0), lead=bad)
    with pytest.raises(ValueError, match=r"lead must be a finite number >= 0"):
        BTSPFormer(8, 8, 2, 1, lead=-1.0)
    with pytest.raises(ValueError, match=r"lead must be a finite number >= 0"):
        SpikingBTSPFormer(8, 8, 2, 1, lead=float("nan"))


def test_plastic_change_is_largest_one_step_before_the_plateau():
    # constant signals (tag = plateau = sigmoid(3)), rates k+ = k- = 1/4 (rho = 0), weights 0.05:
    # delta a = s^2 K(d) (0.25 * 0.95 - 0.25 * 0.05) = 0.225 s^2 K(d), K from tau_ET 8, tau_IS 2, lead 1
    p = _plasticity(tau_et=8.0, tau_is=2.0)
    n = 6
    delta = p(torch.full((1, 2, n, n), 0.05), torch.zeros(1, n, 4), renormalize=False) - 0.05
    s2 = (1 / (1 + math.exp(-3))) ** 2
    row = delta[0, 0, 3]                                           # plateau at i = 3, keys j = 0..5, d = 3..-2
    K = [math.exp(-2 / 8), math.exp(-1 / 8), 1.0, math.exp(-1 / 2), math.exp(-1), math.exp(-3 / 2)]
    assert row.tolist() == pytest.approx([0.225 * s2 * k for k in K], rel=1e-5)
    assert int(row.argmax()) == 2                                   # j = i - 1


def _plasticity(heads=2, dim=4, tau_et=6.0, tau_is=1.5):
    p = BTSPPlasticity(dim, heads, tau_et, tau_is)
    with torch.no_grad():   # constant signals: tag and plateau sigmoid(3) for every token
        for gate in (p.et_gate, p.is_gate):
            gate.weight.zero_()
            gate.bias.fill_(3.0)
    return p


def test_plastic_change_is_larger_for_inputs_before_the_plateau():
    p = _plasticity()
    n = 9
    attn = torch.full((1, 2, n, n), 0.05)                       # weak, uniform weights: all potentiated
    new = p(attn, torch.zeros(1, n, 4), renormalize=False)
    delta = new - attn
    assert (delta > 0).all()
    i = 4
    for d in (1, 2, 3):
        assert (delta[0, :, i, i - d] > delta[0, :, i, i + d]).all()
    # strong weights are depressed by the same signals
    strong = p(torch.full((1, 2, n, n), 0.95), torch.zeros(1, n, 4), renormalize=False)
    assert (strong < 0.95).all()


def test_renormalised_rows_and_disable():
    p = _plasticity()
    attn = torch.softmax(torch.randn(3, 2, 7, 7), -1)
    x = torch.randn(3, 7, 4)
    new = p(attn, x)
    torch.testing.assert_close(new.sum(-1), torch.ones(3, 2, 7))
    assert not torch.allclose(new, attn)
    p.enabled = False
    assert p(attn, x) is attn


def test_position_envelope_peaks_before_target_and_is_asymmetric():
    L = 50
    env = asymmetric_envelope(L, peak_offset=2.0, width_past=L / 4, width_future=1.0)
    # d = L - t steps before the target step L; the peak is at d = 2, i.e. t = L - 2
    assert int(env.argmax()) == L - 2
    assert math.isclose(float(env.max()), 1.0, rel_tol=1e-6)
    peak = L - 2
    # one step towards the target falls much faster than one step into the past
    assert float(env[peak + 1]) < float(env[peak - 1])
    assert math.isclose(float(env[peak + 1]), math.exp(-0.5), rel_tol=1e-5)
    assert math.isclose(float(env[peak - 1]), math.exp(-0.5 * (1 / (L / 4)) ** 2), rel_tol=1e-5)


def _record(model, on=True):
    for m in model.modules():
        if hasattr(m, "last_attention_pre"):
            m.record = on
    for p in model.plasticity_modules():
        p.record = on


def test_btspformer_plasticity_changes_attention_and_output():
    torch.manual_seed(0)
    model = BTSPFormer(20, model_dim=16, heads=2, layers=2).eval()
    _record(model)
    x = torch.randn(4, 20)
    y = model(x)
    assert y.shape == (4, 1)
    attn = [m for m in model.modules() if isinstance(m, SoftmaxAttention)]
    assert len(attn) == 2
    for m in attn:
        change = 0.5 * (m.last_attention - m.last_attention_pre).abs().sum(-1).mean()
        assert float(change) > 1e-3
    stats = model.plasticity_modules()[0].last_stats
    assert stats.mean_row_tv > 1e-3 and stats.potentiated + stats.depressed > 0
    model.set_plasticity(False)
    y_off = model(x)
    for m in attn:
        assert torch.equal(m.last_attention, m.last_attention_pre)
    assert not torch.allclose(y, y_off)


def test_btspformer_gradients_reach_plasticity_and_accepts_column_input():
    torch.manual_seed(0)
    model = BTSPFormer(12, model_dim=16, heads=4, layers=2)  # layer 1 reads later keys too
    out = model(torch.randn(5, 12, 1))
    out.square().mean().backward()
    p = model.plasticity_modules()[0]
    for name in ("raw_tau_et", "raw_tau_is", "rho_plus", "rho_minus"):
        assert float(getattr(p, name).grad.abs().sum()) > 0, name
    assert float(p.et_gate.weight.grad.abs().sum()) > 0


def test_vanilla_and_astro_have_the_same_size_class():
    counts = {kind: sum(q.numel() for q in BTSPFormer(50, attention=kind, position="sinusoidal").parameters())
              for kind in ("btsp", "softmax", "astro")}
    assert abs(counts["btsp"] - counts["softmax"]) / counts["softmax"] < 0.02
    assert abs(counts["astro"] - counts["softmax"]) / counts["softmax"] < 0.02
    assert not BTSPFormer(50, attention="softmax").plasticity_modules()


def test_spiking_btspformer_runs_on_spikes():
    torch.manual_seed(0)
    model = SpikingBTSPFormer(10, model_dim=16, heads=2, layers=1, num_steps=3)
    seen = []
    model.attn[0].qkv_lif.register_forward_hook(lambda m, i, o: seen.append(o))
    _record(model)
    out = model(torch.randn(4, 10))
    assert out.shape == (4, 1)
    spikes = seen[0].detach()
    assert spikes.shape == (3, 4, 10, 48)
    assert bool(((spikes == 0) | (spikes == 1)).all()) and 0 < float(spikes.mean()) < 1
    a = model.attn[0]
    assert float(a.last_attention_pre.min()) >= 0 and float(a.last_attention_pre.max()) <= 1
    assert float((a.last_attention - a.last_attention_pre).abs().max()) > 0
    out.sum().backward()
    assert float(a.plasticity.rho_plus.grad.abs().sum()) > 0


@pytest.mark.parametrize("kwargs,match", [(dict(seq_len=10, model_dim=10, heads=4), "divisible"),
                                          (dict(seq_len=10, attention="linear"), "attention"),
                                          (dict(seq_len=0), "seq_len")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BTSPFormer(**kwargs)


def test_bad_input():
    model = BTSPFormer(10, model_dim=8, heads=2, layers=1)
    with pytest.raises(ValueError, match="seq_len"):
        model(torch.randn(2, 11))
    with pytest.raises(ValueError, match="dimensions"):
        model(torch.randn(2, 10, 3))


@pytest.mark.parametrize("make,match", [
    (lambda: BTSPFormer(8, 8, 2, 1, peak_offset=float("nan")), r"peak_offset must be a finite number >= 0"),
    (lambda: BTSPFormer(8, 8, 2, 1, peak_offset=-5.0), r"peak_offset must be a finite number >= 0"),
    (lambda: BTSPFormer(8, 8, 2, 1, position="sinusoidal", peak_offset=float("inf")), r"peak_offset .* >= 0"),
    (lambda: SpikingBTSPFormer(8, 8, 2, 1, peak_offset=float("nan")), r"peak_offset must be a finite number >= 0"),
    (lambda: SpikingBTSPFormer(8, 8, 2, 1, dropout=1.0), r"dropout must be in \[0.0, 1.0\)"),
    (lambda: SpikingBTSPFormer(8, 8, 2, 1, dropout=-0.1), r"dropout must be in \[0.0, 1.0\)"),
    (lambda: asymmetric_envelope(8, width_past=0), r"width_past must be a finite number > 0"),
    (lambda: asymmetric_envelope(8, width_future=float("nan")), r"width_future must be a finite number > 0"),
    (lambda: asymmetric_envelope(0), r"seq_len must be an integer >= 1"),
])
def test_bad_settings_are_refused_by_name(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("model_cls", [BTSPFormer, SpikingBTSPFormer])
def test_empty_window_is_refused_and_short_windows_read_the_envelope_tail(model_cls):
    model = model_cls(8, model_dim=8, heads=2, layers=1)
    for x in (torch.zeros(2, 0), torch.zeros(2, 0, 1)):
        with pytest.raises(ValueError, match=r"x has 0 steps; .*1 <= L <= seq_len=8"):
            model(x)
    assert model(torch.zeros(0, 8)).shape == (0, 1)          # an empty batch is fine
    pos = model.pos
    with pytest.raises(ValueError, match="1 to seq_len=8"):
        pos(torch.zeros(1, 0, 8))
    # a 3-step window gets the envelope of the last 3 input steps t = 5, 6, 7, i.e. d = L - t = 3, 2, 1 steps
    # before the target; peak_offset 2, past width L/4 = 2, future width 1: exp(-1/8), 1, exp(-1/2)
    with torch.no_grad():
        pos.direction.fill_(1.0)
    x = torch.zeros(1, 3, 8)
    added = pos(x) - pos.table[:3]
    hand = torch.tensor([math.exp(-0.125), 1.0, math.exp(-0.5)])
    torch.testing.assert_close(added, hand[None, :, None].expand(1, 3, 8))


def test_the_time_kernel_in_bfloat16_is_the_float32_kernel_rounded_beyond_256_positions():
    """The kernel built its positions in tau's dtype: bfloat16 holds whole numbers only up to 256, so for longer
    windows i - j was wrong and the peak moved away from ``lead`` (K[290, 289] was 0.88 instead of 1)."""
    tau_et, tau_is = torch.tensor(2.0), torch.tensor(1.0)
    ref = asymmetric_kernel(300, tau_et, tau_is, lead=1.0)
    got = asymmetric_kernel(300, tau_et.bfloat16(), tau_is.bfloat16(), lead=1.0)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, ref.bfloat16())
    assert float(got[290, 289]) == 1.0
