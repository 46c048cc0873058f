"""STC-LIF: reduces to neurosim.LIF (snnTorch backend) without modulation; circuits match a loop reference."""
import math

import pytest
import torch

import neurosim
from neurosim.neurons.stc_lif import STCLIF, modulated_beta


def _x(shape, seed=0, offset=0.6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) + offset


@pytest.mark.parametrize("shape,spatial_dims", [((9, 3, 4), 0), ((6, 2, 4, 5), 1), ((5, 2, 4, 3, 3), 2)])
@pytest.mark.parametrize("enabled", [False, True])
def test_equals_lif_without_modulation(shape, spatial_dims, enabled):
    # disabled paths, or enabled paths at their zero initialisation, are plain LIF with subtract reset
    x = _x(shape).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    stc = STCLIF(shape[2], spatial_dims=spatial_dims, groups=2 if shape[2] % 2 == 0 else 1, temporal=enabled,
                 spatial=enabled, beta=0.8, threshold=0.9, learn_beta=True)
    lif = neurosim.LIF(beta=0.8, threshold=0.9, reset="subtract", backend="snntorch", learn_beta=True)
    s, m = stc(x, return_mem=True)
    s_ref, m_ref = lif(x_ref, return_mem=True)
    assert s_ref.sum() > 0 and s_ref.sum() < s_ref.numel()
    assert torch.equal(s, s_ref)
    assert torch.equal(m, m_ref)
    w = _x(shape, seed=1)
    ((s * w).sum() + 0.1 * (m * w).sum()).backward()
    ((s_ref * w).sum() + 0.1 * (m_ref * w).sum()).backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(stc.beta.grad, lif.beta.grad, rtol=1e-5, atol=1e-6)


def test_is_spiking_neuron_flag_and_state_continuation():
    stc = STCLIF(4, temporal=True, spatial=True)
    assert STCLIF.is_spiking_neuron is True
    _perturb(stc, seed=3)
    x = _x((8, 2, 4), seed=5)
    full = stc(x)
    a, st = stc(x[:3], return_state=True)
    b = stc(x[3:], state=st)
    assert torch.equal(torch.cat([a, b]), full)


def test_an_input_without_time_steps_gives_empty_outputs_and_the_initial_state():
    """T = 0 failed with an IndexError (B = 0 worked); now it gives what neurosim.LIF gives, and empty modulations."""
    from neurosim.neurons.functional import LIFState

    stc = STCLIF(4, groups=2)
    _perturb(stc, seed=2)
    x = _x((6, 3, 4), seed=4)
    spikes, mem, final, (betas, gammas) = stc(x[:0], return_mem=True, return_state=True, return_modulation=True)
    assert spikes.shape == mem.shape == betas.shape == gammas.shape == (0, 3, 4)
    assert torch.equal(final.mem, torch.zeros(3, 4))
    mem0 = torch.tensor([0.1, 0.9, 0.5, 0.95])
    assert torch.equal(stc(x[:0], state=LIFState(mem0), return_state=True)[1].mem, mem0.expand(3, 4))
    first, state = stc(x[:2], return_state=True)
    _, state = stc(x[:0], state=state, return_state=True)
    assert torch.equal(torch.cat([first, stc(x[2:], state=state)]), stc(x))
    betas, gammas = STCLIF(4, temporal=False)(x[:0], return_modulation=True)[1]
    assert betas is None and gammas.shape == (0, 3, 4)


def _perturb(stc, seed, scale=1.5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for conv in (stc.temporal_circuit, stc.spatial_circuit):
            if conv is not None:
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * scale)
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=g) * 0.3)


def _reference(x, beta, thr, wb, bb, wg, bg, groups, k):
    """float64 loop over time, batch, channel and position with explicit neighbour sums (1 spatial dim)."""
    T, B, C, L = x.shape
    cg = C // groups
    mem = [[[0.0] * L for _ in range(C)] for _ in range(B)]
    spikes = torch.zeros(x.shape, dtype=torch.float64)
    mems = torch.zeros(x.shape, dtype=torch.float64)

    def circuit(w, b, prev, bi, c, pos):
        g0 = (c // cg) * cg
        z = float(b[c].detach())
        for ci in range(cg):
            for kk in range(k):
                q = pos + kk - k // 2
                if 0 <= q < L:
                    z += float(w[c, ci, kk].detach()) * prev[bi][g0 + ci][q]
        return z

    for t in range(T):
        prev = [[[1.0 if mem[bi][c][q] > thr else 0.0 for q in range(L)] for c in range(C)] for bi in range(B)]
        new = [[[0.0] * L for _ in range(C)] for _ in range(B)]
        for bi in range(B):
            for c in range(C):
                for q in range(L):
                    tb = math.tanh(circuit(wb, bb, prev, bi, c, q))
                    bt = beta + max(tb, 0.0) * (1 - beta) + min(tb, 0.0) * beta
                    gt = 1 + math.tanh(circuit(wg, bg, prev, bi, c, q))
                    m = bt * mem[bi][c][q] + gt * float(x[t, bi, c, q]) - prev[bi][c][q] * thr
                    new[bi][c][q] = m
                    mems[t, bi, c, q] = m
                    spikes[t, bi, c, q] = 1.0 if m > thr else 0.0
        mem = new
    return spikes, mems


def test_modulated_dynamics_match_loop_reference():
    T, B, C, L, groups, k = 7, 2, 4, 5, 2, 3
    stc = STCLIF(C, spatial_dims=1, groups=groups, kernel_size=k, beta=0.85, threshold=0.8).double()
    _perturb(stc, seed=11)
    x = _x((T, B, C, L), seed=2).double()
    s, m = stc(x, return_mem=True)
    ref_s, ref_m = _reference(x, float(stc.beta), float(stc.threshold), stc.temporal_circuit.weight, stc.temporal_circuit.bias,
                              stc.spatial_circuit.weight, stc.spatial_circuit.bias, groups, k)
    assert torch.equal(s, ref_s)
    torch.testing.assert_close(m, ref_m, rtol=1e-12, atol=1e-12)
    # the modulation really changes the neuron: plain LIF on the same input differs
    lif_s = neurosim.LIF(beta=0.85, threshold=0.8, backend="torch").double()(x)
    assert not torch.equal(lif_s, s)


def test_modulation_ranges_and_gradients_reach_circuits():
    stc = STCLIF(4, spatial_dims=2, groups=2)
    _perturb(stc, seed=4, scale=3.0)
    x = _x((6, 2, 4, 5, 5), seed=9)
    s, (betas, gammas) = stc(x, return_modulation=True)
    assert betas.shape == gammas.shape == x.shape
    assert float(betas.min()) >= 0.0 and float(betas.max()) <= 1.0
    assert float(gammas.min()) >= 0.0 and float(gammas.max()) <= 2.0  # (0, 2) up to float32 saturation
    assert float(betas.std()) > 0  # beta[t] varies with the spike history
    s.sum().backward()
    for conv in (stc.temporal_circuit, stc.spatial_circuit):
        assert conv.weight.grad is not None and float(conv.weight.grad.abs().sum()) > 0


def test_modulated_beta_limits():
    beta = torch.tensor(0.7)
    z = torch.tensor([-50.0, 0.0, 50.0])
    torch.testing.assert_close(modulated_beta(beta, z), torch.tensor([0.0, 0.7, 1.0]))


@pytest.mark.parametrize("kwargs,match", [
    (dict(channels=4, groups=3), "groups"),
    (dict(channels=4, kernel_size=2, spatial_dims=1), "kernel_size"),
    (dict(channels=4, spatial_dims=3), "spatial_dims"),
    (dict(channels=4, beta=1.5), "beta"),
    (dict(channels=0), "channels"),
    (dict(channels=4, spatial_dims=1.7), "spatial_dims must be an integer"),
    (dict(channels=4, temporal="no"), "temporal must be True or False"),
    (dict(channels=4, spatial="no"), "spatial must be True or False"),
    (dict(channels=4, learn_beta="no"), "learn_beta must be True or False"),
    (dict(channels=4, learn_threshold=1), "learn_threshold must be True or False"),
    (dict(channels=4, detach_reset="no"), "detach_reset must be True or False"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        STCLIF(**kwargs)


def test_bad_input():
    stc = STCLIF(4)
    with pytest.raises(ValueError, match="channels"):
        stc(torch.zeros(3, 2, 5))
    with pytest.raises(ValueError, match="dimensions"):
        stc(torch.zeros(3, 2, 4, 4))
    with pytest.raises(ValueError, match="NaN"):
        stc(torch.full((3, 2, 4), float("nan")))


def test_a_given_state_is_checked_like_the_lif_layers():
    """A NaN state ran on silently (all-NaN membrane, no spikes), a CubaLIFState lost its current, a tensor or a
    wrong shape failed inside the circuits; a broadcast state is expanded as for neurosim.LIF."""
    from neurosim.neurons.functional import CubaLIFState, LIFState

    stc = STCLIF(4, groups=2)
    _perturb(stc, seed=3)
    x = _x((5, 3, 4), seed=1)
    with pytest.raises(ValueError, match="state.mem contains 12 NaN"):
        stc(x, state=LIFState(torch.full((3, 4), float("nan"))))
    for bad in (CubaLIFState(torch.zeros(3, 4), torch.zeros(3, 4)), torch.zeros(3, 4)):
        with pytest.raises(ValueError, match="state must be a LIFState"):
            stc(x, state=bad)
    with pytest.raises(ValueError, match=r"state.mem of shape \(2, 4\) must broadcast to x.shape\[1:\] = \(3, 4\)"):
        stc(x, state=LIFState(torch.zeros(2, 4)))
    mem0 = torch.tensor([0.1, 0.9, 0.5, 0.95])
    assert torch.equal(stc(x, state=LIFState(mem0)), stc(x, state=LIFState(mem0.expand(3, 4).clone())))
    with pytest.raises(ValueError, match=r"beta of shape \(4,\) must be a scalar or broadcastable to the neuron shape "
                                         r"x.shape\[1:\] = \(2, 4, 5, 6\)"):
        STCLIF(4, spatial_dims=2, beta=torch.full((4,), 0.5))(torch.zeros(3, 2, 4, 5, 6))
    with pytest.raises(ValueError, match=r"threshold of shape \(1, 1, 1\) must be a scalar or broadcastable"):
        STCLIF(4, threshold=torch.ones(1, 1, 1))(x)  # (one element, but a 3-D output for 2-D neurons)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_the_lif_layers_precision_rule(dtype):
    """16-bit input runs with a float32 state (as neurosim.LIF on every backend), float64 with a float64 one; spikes
    come back in the input's dtype. Before, both failed inside the float32 circuits with torch's dtype error."""
    stc = STCLIF(4, spatial_dims=1, groups=2)
    _perturb(stc, seed=5)
    x = _x((6, 2, 4, 5), seed=7).to(dtype)
    s, m, final = stc(x, return_mem=True, return_state=True)
    work = torch.float64 if dtype == torch.float64 else torch.float32
    assert s.dtype == dtype and m.dtype == work and final.mem.dtype == work
    ref_s, ref_m = stc(x.to(work), return_mem=True)
    assert torch.equal(s.to(work), ref_s) and torch.equal(m, ref_m)
