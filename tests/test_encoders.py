"""Encoders against snntorch.spikegen (exact for latency/delta, statistical + seeded for rate) and CPG properties."""
import math

import pytest
import torch
from snntorch import spikegen

import neurosim.encoders as E


def _data(shape=(5, 7), seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def test_rate_identical_to_snntorch_for_same_seed():
    x = _data()
    ours = E.rate(x, 12, generator=torch.Generator().manual_seed(42))
    torch.manual_seed(42)
    theirs = spikegen.rate(x, num_steps=12)
    assert ours.shape == (12, 5, 7)
    assert torch.equal(ours, theirs)
    again = E.rate(x, 12, generator=torch.Generator().manual_seed(42))
    assert torch.equal(ours, again)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.77])
def test_rate_probability_within_binomial_bound(p):
    n_steps, n = 200, 500
    spikes = E.rate(torch.full((n,), p), n_steps, generator=torch.Generator().manual_seed(1))
    trials = spikes.numel()
    k = spikes.sum().item()
    # 99.9% two-sided normal approximation to the binomial: z = 3.29
    half_width = 3.29 * math.sqrt(p * (1 - p) / trials)
    assert abs(k / trials - p) <= half_width
    assert set(spikes.unique().tolist()) <= {0.0, 1.0}


def test_rate_gain_offset_and_clamp():
    x = torch.tensor([[0.2, 0.9]])
    with pytest.raises(ValueError, match=r"firing probability\) must be in \[0.0, 1.0\]"):
        E.rate(x, 5, gain=2.0)
    out = E.rate(x, 50, gain=2.0, clamp=True, generator=torch.Generator().manual_seed(0))
    assert out[:, 0, 1].sum() == 50  # p clamped to 1


@pytest.mark.parametrize("linear", [False, True])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("tau", [1.0, 5.0])
def test_latency_exact_match(linear, normalize, clip, tau):
    x = _data((4, 9), seed=3)
    kw = dict(tau=tau, linear=linear, normalize=normalize, clip=clip, threshold=0.05)
    try:
        theirs = spikegen.latency(x, 25, **kw)
    except Exception as e:  # snnTorch refuses spike times beyond num_steps-1: so must we, unless clip removes them
        assert "out of bounds" in str(e)
        if clip and not normalize:  # (snnTorch counts the clipped inputs' steps too: its code with room for them)
            theirs = spikegen.latency(x, 400, **kw)
            if theirs[25:].sum() == 0:
                assert torch.equal(E.latency(x, 25, **kw), theirs[:25])
                return
        with pytest.raises(ValueError, match="num_steps"):
            E.latency(x, 25, **kw)
        return
    ours = E.latency(x, 25, **kw)
    assert torch.equal(ours, theirs)
    assert ours.sum(0).max() <= 1  # at most one spike per input


def test_latency_first_spike_time_match():
    x = _data((3, 4), seed=4)
    ours = E.latency(x, 30, first_spike_time=3, tau=4.0, normalize=True)
    assert torch.equal(ours, spikegen.latency(x, 30, first_spike_time=3, tau=4.0, normalize=True))
    assert ours[:3].sum() == 0


def test_latency_refuses_to_drop_spikes():
    x = torch.tensor([[0.011, 1.0]])
    with pytest.raises(ValueError, match="num_steps"):
        E.latency(x, 3, tau=5.0)


@pytest.mark.parametrize("padding", [False, True])
def test_delta_exact_match(padding):
    g = torch.Generator().manual_seed(7)
    s = torch.randn(30, 3, 4, generator=g).cumsum(0)
    assert torch.equal(E.delta(s, 0.4, padding=padding), spikegen.delta(s, 0.4, padding=padding))
    both = E.delta(s, 0.4, padding=padding, off_spikes=True)
    assert both.shape == (30, 3, 2, 4)
    signed = spikegen.delta(s, 0.4, padding=padding, off_spike=True)
    assert torch.equal(both[:, :, 0] - both[:, :, 1], signed)
    assert both[:, :, 1].sum() > 0 and both[:, :, 0].sum() > 0


@pytest.mark.parametrize("n_osc", [3, 6, 8])
def test_cpg_binary_periodic_and_distinct(n_osc):
    max_len = 2**n_osc
    code = E.cpg_code(max_len, n_osc)
    assert code.shape == (max_len, 2 * n_osc)
    assert set(code.unique().tolist()) <= {0.0, 1.0}
    assert torch.unique(code, dim=0).shape[0] == max_len  # distinct for every position
    periods = E.default_periods(n_osc)
    long = E.cpg_code(3 * max(periods), n_osc, check_distinct=False)
    for i, p in enumerate(periods):
        cells = long[:, 2 * i:2 * i + 2]
        assert torch.equal(cells[p:], cells[:-p]), f"oscillator {i} not periodic with period {p}"
        for q in range(1, p):  # and no shorter period
            if p % q == 0:
                assert not torch.equal(cells[q:], cells[:-q])
        # the two cells of a pair never fire together (anti-phase half-centre)
        assert (cells[:, 0] * cells[:, 1]).sum() == 0
    batch = E.cpg(max_len, batch_size=3, num_oscillators=n_osc)
    assert batch.shape == (max_len, 3, 2 * n_osc) and torch.equal(batch[:, 1], code)


def test_cpg_threshold_sparsifies_and_errors():
    dense = E.cpg_code(64, 6)
    sparse = E.cpg_code(64, 6, threshold=0.5, check_distinct=False)
    assert sparse.sum() < dense.sum() and (sparse <= dense).all()
    with pytest.raises(ValueError, match="not distinct"):
        E.cpg_code(2**4 + 1, 4)
    with pytest.raises(ValueError, match="periods must have"):
        E.cpg_code(8, 2, periods=[4])


@pytest.mark.parametrize("call,match", [
    (lambda: E.rate(torch.tensor([0.5, float("nan")]), 4), "NaN/inf"),
    (lambda: E.rate(torch.tensor([0.5, 1.2]), 4), r"must be in \[0.0, 1.0\]"),
    (lambda: E.rate(torch.tensor([0.5]), 0), "num_steps must be an integer >= 1"),
    (lambda: E.rate(torch.tensor(0.5), 3), r"at least 1 dimensions \[B, ...\]"),
    (lambda: E.latency(torch.tensor([0.5, -0.1]), 4), r"data must be in \[0.0, 1.0\]"),
    (lambda: E.latency(torch.tensor([0.5]), 4, threshold=1.5), r"threshold must be in \(0.0, 1.0\)"),
    (lambda: E.latency(torch.tensor([[0.5, float("inf")]]), 4), "NaN/inf"),
    (lambda: E.delta(torch.ones(5), 0.1), r"at least 2 dimensions \[T, B, ...\]"),
    (lambda: E.delta(torch.ones(5, 2), 0.0), "threshold must be a finite number > 0"),
    (lambda: E.cpg(0), "num_steps must be an integer >= 1"),
    (lambda: E.rate(torch.tensor([0.0]), 3, gain=float("nan")), "gain must be a finite number, got nan"),
    (lambda: E.rate(torch.tensor([0.0]), 3, offset=float("inf"), clamp=True), "offset must be a finite number"),
    (lambda: E.rate(torch.tensor([0.5]), 3, clamp="no"), "clamp must be True or False"),
    (lambda: E.latency(torch.tensor([0.5]), 4, linear="False"), "linear must be True or False"),
    (lambda: E.latency(torch.tensor([0.5]), 4, normalize="no"), "normalize must be True or False"),
    (lambda: E.latency(torch.tensor([0.5]), 4, clip="no"), "clip must be True or False"),
    (lambda: E.spike_times(torch.tensor([2.0]), 4), r"data must be in \[0.0, 1.0\]"),
    (lambda: E.spike_times(torch.tensor([float("nan")]), 4), "NaN/inf"),
    (lambda: E.spike_times(torch.tensor([0.5]), 4, tau=-1.0), "tau must be a finite number > 0"),
    (lambda: E.spike_times(torch.tensor([0.5]), -5, normalize=True), "num_steps must be an integer >= 1"),
    (lambda: E.delta(torch.ones(5, 2), 0.1, off_spikes="no"), "off_spikes must be True or False"),
    (lambda: E.delta(torch.ones(5, 2), 0.1, padding="False"), "padding must be True or False"),
    (lambda: E.cpg_code(8, 3, check_distinct="no"), "check_distinct must be True or False"),
    (lambda: E.cpg_code(8, 3, form="sincos"), "form must be one of 'halfcentre', 'lv2024'"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_delta_keeps_float64_differences():
    from neurosim.encoders import delta

    x = (1e8 + torch.arange(6, dtype=torch.float64)).reshape(6, 1)  # (steps of 1 on 1e8: lost in float32)
    assert delta(x, 0.5, padding=True).flatten().tolist() == [0, 1, 1, 1, 1, 1]
    assert delta(torch.tensor([[0.3], [0.4]], dtype=torch.float64), 0.1, padding=True).flatten().tolist() == [0, 1]


def test_latency_epsilon_and_cpg_periods_are_checked():
    from neurosim.encoders import latency
    from neurosim.encoders.cpg import cpg_code

    with pytest.raises(ValueError, match="epsilon must be a finite number > 0, got 0"):
        latency(torch.rand(2, 3), 5, epsilon=0)  # (an index error deep inside before)
    with pytest.raises(ValueError, match=r"periods must be integers >= 2, got \[4.9, 8.9\]"):
        cpg_code(4, 2, periods=[4.9, 8.9])  # (taken as [4, 8] before)
    assert torch.equal(cpg_code(4, 2, periods=[4.0, 8]), cpg_code(4, 2, periods=[4, 8]))


def test_rate_and_latency_keep_float64_as_snntorch_does():
    x = _data((7, 50), seed=5).double()
    ours = E.rate(x, 8, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(1)
    theirs = spikegen.rate(x, 8)
    assert ours.dtype == torch.float64 and torch.equal(ours, theirs)
    # a time just past a rounding edge in float64 (14.509 -> step 15), lost in float32 (step 14 before)
    x = torch.tensor([[0.2000001]], dtype=torch.float64)
    assert torch.equal(E.latency(x, 20, threshold=0.2), spikegen.latency(x, 20, threshold=0.2))
    assert int(E.latency(x, 20, threshold=0.2).argmax(0)) == 15


def test_rate_spikes_carry_no_gradient():
    x = torch.full((2, 3), 0.5, requires_grad=True)
    assert not E.rate(x, 4).requires_grad


def test_latency_clip_needs_steps_only_for_the_inputs_it_keeps():
    x = torch.tensor([[0.0, 0.5, 1.0]])
    out = E.latency(x, 10, clip=True)  # (the zero input's time, about 11.5, needed 13 steps before)
    assert out[:, 0, 0].sum() == 0 and out[:, 0, 1:].sum(0).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="num_steps"):
        E.latency(x, 10)  # without clip the zero input fires, late
    assert E.latency(torch.zeros(0, 3), 5, normalize=True).shape == (5, 0, 3)


def test_cpg_pairs_are_mirror_images_at_any_threshold():
    for p in (12, 24, 36, 96):  # sin(pi/6) = 0.5 rounded differently at mirrored phases before
        for b in (0.5, 0.3, 0.8660254037844386):
            cells = E.cpg_code(2 * p, 1, periods=[p], threshold=b, check_distinct=False)
            assert torch.equal(cells[:p, 1], torch.roll(cells[:p, 0], p // 2))  # off cell = on cell half a cycle on
            on = cells[:p, 0].nonzero().flatten()
            assert torch.equal(on, (p // 2 - on).flip(0))  # symmetric about the quarter cycle


def test_cpg_lv2024_form_is_the_papers_quadrature_code():
    n, length = 8, 64
    code = E.cpg_code(length, n, form="lv2024")
    t = torch.arange(length, dtype=torch.float64)[:, None]
    omega = 10000.0 ** (-torch.arange(n, dtype=torch.float64) / n)
    step = lambda v: torch.heaviside(v, torch.tensor(1.0, dtype=torch.float64))  # noqa: E731  (H(0) = 1)
    assert torch.equal(code[:, 0::2], step(torch.sin(t * omega) - 0.8).float())
    assert torch.equal(code[:, 1::2], step(torch.cos(t * omega) - 0.8).float())
    assert code[0, 1] == 1 and code[0, 0] == 0  # cos 0 = 1 fires, sin 0 = 0 does not
    assert torch.unique(code, dim=0).shape[0] < length  # not distinct, hence no check by default
    with pytest.raises(ValueError, match="not distinct"):
        E.cpg_code(length, n, form="lv2024", check_distinct=True)
    with pytest.raises(ValueError, match="periods apply to form='halfcentre' only"):
        E.cpg_code(length, n, periods=E.default_periods(n), form="lv2024")


def test_cpg_periods_as_arrays_or_generators():
    import numpy as np

    ref = E.cpg_code(4, 2, periods=[4, 8])
    for periods in (np.array([4, 8]), torch.tensor([4, 8]), (p for p in (4, 8)), [np.int64(4), np.int64(8)]):
        assert torch.equal(E.cpg_code(4, 2, periods=periods), ref)


def test_cpg_positional_encoding_names_dim_when_too_short():
    from neurosim.layers import positional_encoding

    with pytest.raises(ValueError, match=r"kind='cpg' with dim=4 \(2 oscillators\) tells at most 4 positions apart, "
                                         r"max_len=5; raise dim \(pe_dim of an ESTConfig\) to at least 6"):
        positional_encoding("cpg", 5, dim=4)
    assert positional_encoding("cpg", 4, dim=4).dim == 4
    lv = positional_encoding("cpg_lv2024", 64, dim=16)
    assert torch.equal(lv.code, E.cpg_code(64, 8, form="lv2024"))


def test_rate_takes_per_feature_gains_as_tensors():
    import numpy as np

    x = torch.full((2, 3), 0.5)
    gain = torch.tensor([0.0, 1.0, 2.0])
    out = E.rate(x, 40, gain=gain, generator=torch.Generator().manual_seed(0), clamp=np.True_)
    assert out[:, :, 0].sum() == 0 and out[:, :, 2].sum() == 80  # p = 0 and p = 1
    with pytest.raises(ValueError, match="gain contains 1 NaN/inf"):
        E.rate(x, 4, gain=torch.tensor([1.0, float("nan"), 1.0]))


@pytest.mark.parametrize("bad", [5, "0", 0.5, torch.tensor(3), torch.Generator().manual_seed(0).get_state()])
def test_rate_generator_must_be_a_torch_generator(bad):
    # (torch.bernoulli raised its own TypeError, listing its overloads, for anything but a Generator)
    with pytest.raises(ValueError, match=rf"^generator must be a torch\.Generator or None; got {type(bad).__name__} "):
        E.rate(_data(), 4, generator=bad)
    assert E.rate(_data(), 4, generator=None).shape == (4, 5, 7)


def test_generator_check_names_a_device_mismatch():
    from neurosim import validate

    g = torch.Generator()
    assert validate.generator("generator", g, torch.device("cpu")) is g
    assert validate.generator("generator", None, "cuda") is None
    # (no CUDA here: the device of the draws is given, and a CPU generator cannot draw on it)
    with pytest.raises(ValueError, match=r"^generator is a generator on 'cpu' but the draws are on 'cuda'; pass "
                                         r"torch\.Generator\(device='cuda'\)"):
        validate.generator("generator", g, "cuda:0")
