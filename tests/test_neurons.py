"""LIF/CubaLIF backend equivalence against snnTorch (the reference semantics) and Norse."""
import zlib

import pytest
import snntorch
import torch

import neurosim
from neurosim.neurons import Surrogate

SHAPES = [(1, 3, 4), (7, 2, 5), (16, 4, 3, 2)]


def _run(module, x, weights):
    x = x.clone().requires_grad_(True)
    spikes, mem = module(x, return_mem=True)
    # a loss that touches both outputs, so gradients flow through spikes (surrogate) and membranes
    loss = (spikes * weights).sum() + 0.1 * (mem * weights).sum()
    loss.backward()
    grads = {"x": x.grad}
    for name, p in module.named_parameters():
        grads[name] = p.grad
    return spikes.detach(), mem.detach(), grads


def _close_rel(a, b, rtol=1e-5):
    torch.testing.assert_close(a, b, rtol=rtol, atol=1e-9)


def _inputs(shape, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) + 0.6
    w = torch.randn(shape, generator=g)
    return x, w


def _build(cls, backend, learn, **kw):
    extra = {"learn_beta": learn, "learn_threshold": learn}
    if cls is neurosim.CubaLIF:
        extra["learn_alpha"] = learn
    return cls(backend=backend, **extra, **kw)


CASES = [
    # (class, reset, surrogate, other backend that must match snntorch)
    (neurosim.LIF, "subtract", s, "torch") for s in ("fast_sigmoid", "arctan", "sigmoid")
] + [
    (neurosim.LIF, "zero", s, "torch") for s in ("fast_sigmoid", "arctan", "sigmoid")
] + [
    (neurosim.CubaLIF, r, "fast_sigmoid", "torch") for r in ("subtract", "zero")
] + [
    (neurosim.LIF, "zero", s, "norse") for s in ("fast_sigmoid", "sigmoid")
]


@pytest.mark.parametrize("cls,reset,surrogate,other", CASES)
@pytest.mark.parametrize("learn", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_backends_match_snntorch(cls, reset, surrogate, other, learn, shape):
    x, w = _inputs(shape, seed=zlib.crc32(repr((reset, surrogate, shape)).encode()))
    kw = dict(beta=0.85, threshold=0.9, reset=reset, surrogate=surrogate)
    if cls is neurosim.CubaLIF:
        kw["alpha"] = 0.7
    # float32 (the working precision): identical spikes, membranes within 1e-6
    ref = _run(_build(cls, "snntorch", learn, **kw), x, w)
    got = _run(_build(cls, other, learn, **kw), x, w)
    assert ref[0].sum() > 0, "test input must make the neurons fire"
    assert torch.equal(got[0], ref[0]), "spikes differ"
    torch.testing.assert_close(got[1], ref[1], rtol=0, atol=1e-6)
    # gradients within 1e-5 relative, compared in float64 so that the reductions behind parameter
    # gradients (sums of terms that cancel) do not drown the comparison in float32 rounding
    ref = _run(_build(cls, "snntorch", learn, **kw).double(), x.double(), w.double())
    got = _run(_build(cls, other, learn, **kw).double(), x.double(), w.double())
    assert torch.equal(got[0], ref[0]), "spikes differ (float64)"
    assert got[2].keys() == ref[2].keys()
    for name in ref[2]:
        _close_rel(got[2][name], ref[2][name])


@pytest.mark.parametrize("surrogate", ["fast_sigmoid", "sigmoid"])
def test_norse_backend_spikes_as_snntorch_on_a_membrane_exactly_at_the_threshold(surrogate):
    """Norse's Euler step v + a (x / a - v) (on a membrane scaled by the slope for fast_sigmoid) rounds otherwise than
    snnTorch's beta m + x: with inputs that bring snnTorch's membrane exactly onto the threshold (no spike: strict >),
    Norse fired in 392 (fast_sigmoid) and 137 (sigmoid) of 4096 neurons. Now the values are snnTorch's to the bit."""
    g = torch.Generator().manual_seed(0)
    n = 4096
    x1 = torch.rand(1, 1, n, generator=g) * 0.9
    x = torch.cat([x1, 1.0 - 0.9 * x1, torch.rand(6, 1, n, generator=g) * 0.8])  # m_1 = 0.9 m_0 + x_1 == 1.0
    kw = dict(beta=0.9, threshold=1.0, reset="zero", surrogate=surrogate)
    ref_s, ref_m = neurosim.LIF(backend="snntorch", **kw)(x, return_mem=True)
    assert int((ref_m[1] == 1.0).sum()) > n // 2 and ref_s[1].sum() == 0 and ref_s[2:].sum() > 0
    s, m = neurosim.LIF(backend="norse", **kw)(x, return_mem=True)
    assert torch.equal(s, ref_s) and torch.equal(m, ref_m)


@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_snntorch_backend_is_snntorch_leaky(reset):
    """The backend must be a faithful driver of snntorch.Leaky: compare with a hand-written Leaky loop."""
    x, _ = _inputs((9, 3, 6), seed=5)
    leaky = snntorch.Leaky(beta=0.8, threshold=1.1, reset_mechanism=reset,
                           spike_grad=snntorch.surrogate.atan(3.0))
    mem = leaky.init_leaky()
    ref_s, ref_m = [], []
    for x_t in x:
        s, mem = leaky(x_t, mem)
        ref_s.append(s)
        ref_m.append(mem)
    s, m = neurosim.LIF(beta=0.8, threshold=1.1, reset=reset, surrogate="arctan", slope=3.0)(x, return_mem=True)
    assert torch.equal(s, torch.stack(ref_s))
    assert torch.equal(m, torch.stack(ref_m))


def test_cuba_snntorch_backend_is_snntorch_synaptic():
    x, _ = _inputs((9, 3, 6), seed=6)
    syn_n = snntorch.Synaptic(alpha=0.6, beta=0.9, threshold=1.0, reset_mechanism="zero")
    syn, mem = syn_n.init_synaptic()
    ref = []
    for x_t in x:
        s, syn, mem = syn_n(x_t, syn, mem)
        ref.append(s)
    s = neurosim.CubaLIF(alpha=0.6, beta=0.9, reset="zero")(x)
    assert torch.equal(s, torch.stack(ref))


def test_reference_definition_by_hand():
    """Spot-check the documented equations on a sequence worked out by hand (beta=0.5, thr=1, subtract)."""
    x = torch.tensor([1.5, 0.0, 0.8, 0.0]).view(4, 1, 1)
    s, m = neurosim.LIF(beta=0.5, threshold=1.0, reset="subtract")(x, return_mem=True)
    # m0 = 1.5 (spike); m1 = 0.75 - 1 = -0.25; m2 = -0.125 + 0.8 = 0.675; m3 = 0.3375
    assert s.flatten().tolist() == [1.0, 0.0, 0.0, 0.0]
    torch.testing.assert_close(m.flatten(), torch.tensor([1.5, -0.25, 0.675, 0.3375]))
    # strict threshold: exactly at threshold does not fire
    assert neurosim.LIF(beta=0.5, threshold=1.0)(torch.ones(1, 1, 1)).item() == 0.0


@pytest.mark.parametrize("name,factory", [
    ("fast_sigmoid", lambda k: snntorch.surrogate.fast_sigmoid(k)),
    ("arctan", lambda k: snntorch.surrogate.atan(k)),
    ("sigmoid", lambda k: snntorch.surrogate.sigmoid(k)),
])
@pytest.mark.parametrize("slope", [1.0, 5.0, 25.0])
def test_surrogate_gradients_match_snntorch(name, factory, slope):
    u = torch.linspace(-1.5, 1.5, 301)
    a = u.clone().requires_grad_(True)
    Surrogate(name, slope)(a).sum().backward()
    b = u.clone().requires_grad_(True)
    factory(slope)(b).sum().backward()
    finite = torch.isfinite(b.grad)  # snnTorch's sigmoid overflows to NaN for large slope*|u|
    assert finite.float().mean() > 0.5
    torch.testing.assert_close(a.grad[finite], b.grad[finite], rtol=1e-5, atol=1e-7)
    assert torch.isfinite(a.grad).all()


def test_learnable_parameters_are_trained_on_every_backend():
    x, w = _inputs((6, 2, 4), seed=9)
    for backend in ("snntorch", "norse", "torch"):
        m = neurosim.LIF(beta=0.7, reset="zero", learn_beta=True, learn_threshold=True, backend=backend)
        assert {n for n, _ in m.named_parameters()} == {"beta", "threshold"}
        (m(x) * w).sum().backward()
        assert m.beta.grad is not None and m.threshold.grad is not None and m.threshold.grad != 0


def test_state_continues_a_stream():
    x, _ = _inputs((10, 2, 3), seed=2)
    for backend in ("snntorch", "torch"):
        m = neurosim.CubaLIF(backend=backend)
        whole = m(x)
        a, st = m(x[:4], return_state=True)
        b = m(x[4:], state=st)
        assert torch.equal(torch.cat([a, b]), whole)


def test_backend_can_be_switched_and_state_dict_is_shared():
    m = neurosim.LIF(beta=0.6, reset="zero", learn_beta=True)
    sd = m.state_dict()
    m.backend = "norse"
    assert m.state_dict().keys() == sd.keys()
    with pytest.raises(ValueError, match="reset='zero' only"):
        neurosim.LIF(reset="subtract", backend="norse")


@pytest.mark.parametrize("kwargs,match", [
    (dict(backend="loihi"), "backend must be one of"),
    (dict(beta=1.5), r"beta must be in \[0.0, 1.0\]"),
    (dict(beta=-0.1), r"beta must be in \[0.0, 1.0\]"),
    (dict(threshold=0.0), r"threshold must be in \(0.0, inf\]"),
    (dict(reset="none"), "reset must be one of"),
    (dict(surrogate="relu"), "surrogate must be one of"),
    (dict(slope=-1.0), "slope must be a finite number > 0"),
    (dict(reset="zero", surrogate="arctan", backend="norse"), "no arctan"),
    (dict(reset="zero", backend="norse", beta=1.0), "beta < 1"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        neurosim.LIF(**kwargs)


@pytest.mark.parametrize("cls,flag", [("LIF", f) for f in ("learn_beta", "learn_threshold", "detach_reset")]
                         + [("CubaLIF", f) for f in ("learn_alpha", "learn_beta", "learn_threshold", "detach_reset")])
@pytest.mark.parametrize("value", ["no", "False", 0])
def test_flags_must_be_booleans(cls, flag, value):
    """A config file's "no" or "False" was taken as true (learn_beta="no" made beta trainable); STC-LIF refused them."""
    with pytest.raises(ValueError, match=f"{flag} must be True or False; got {value!r}"):
        getattr(neurosim, cls)(backend="torch", **{flag: value})


@pytest.mark.parametrize("cls", ["LIF", "CubaLIF"])
def test_a_tensor_argument_is_copied_as_the_initial_value(cls):
    """A tensor that requires grad (an nn.Parameter shared with another layer) was kept as a non-leaf copy: gradients
    reached the caller's tensor, an optimiser moved it while the layer ran on with the old value, and the layer could
    not be deep-copied. Now the layer holds a detached copy; learn_beta etc. train that copy."""
    import copy

    shared = torch.nn.Parameter(torch.tensor(0.9))
    kw = dict(beta=shared, threshold=shared + 0.1) | ({"alpha": shared} if cls == "CubaLIF" else {})
    x = torch.rand(6, 2, 3) * 2
    fixed = getattr(neurosim, cls)(backend="torch", **kw)
    names = ["beta", "threshold"] + (["alpha"] if cls == "CubaLIF" else [])
    for name in names:
        t = getattr(fixed, name)
        assert t.is_leaf and not t.requires_grad and name in dict(fixed.named_buffers()), name
    want = getattr(neurosim, cls)(backend="torch", **{k: float(v.detach()) for k, v in kw.items()})(x)
    assert torch.equal(fixed(x), want)
    with torch.no_grad():
        shared.fill_(0.3)  # the caller's tensor changing later leaves the layer as it was made
    assert torch.equal(fixed(x), want) and torch.equal(copy.deepcopy(fixed)(x), want)
    learned = getattr(neurosim, cls)(backend="torch", learn_beta=True, **kw)
    assert learned.beta is not shared and learned.beta.is_leaf and float(learned.beta.detach()) == pytest.approx(0.3)
    learned(x, return_mem=True)[1].sum().backward()
    assert learned.beta.grad is not None and shared.grad is None
    copy.deepcopy(learned)


def test_cuba_not_on_norse_and_detach_reset_needs_reference():
    with pytest.raises(ValueError, match="does not provide CubaLIF"):
        neurosim.CubaLIF(reset="zero", backend="norse")
    with pytest.raises(ValueError, match="detach_reset=False"):
        neurosim.LIF(detach_reset=False, backend="snntorch")
    neurosim.LIF(detach_reset=False, backend="torch")


@pytest.mark.parametrize("x,match", [
    (torch.tensor([1.0, float("nan")]).view(2, 1, 1), "NaN/inf"),
    (torch.tensor([1.0, float("inf")]).view(2, 1), "NaN/inf"),
    (torch.ones(5), r"at least 2 dimensions \[T, B, ...\]"),
])
def test_bad_input(x, match):
    with pytest.raises(ValueError, match=match):
        neurosim.LIF()(x)


@pytest.mark.parametrize("cls", ["LIF", "CubaLIF"])
def test_a_broadcast_initial_state_is_the_same_on_every_backend(cls):
    """A per-neuron initial state (broadcast over the batch): snnTorch's neurons replace a state whose shape is not
    the input's by zeros, so the snnTorch backend expands it first; gradients reach it on every backend."""
    from neurosim.neurons.functional import CubaLIFState, LIFState

    x = torch.full((3, 2, 5), 0.1)
    out = {}
    for backend in ("torch", "snntorch", "fused") + (("norse",) if cls == "LIF" else ()):
        mem0 = torch.full((5,), 0.95, requires_grad=True)
        state = LIFState(mem0) if cls == "LIF" else CubaLIFState(torch.full((5,), 0.5), mem0)
        layer = getattr(neurosim, cls)(beta=0.99, threshold=1.0, backend=backend, reset="zero")  # (norse's reset)
        spikes, mem = layer(x, state=state, return_mem=True)
        mem.sum().backward()
        out[backend] = (spikes, mem.detach(), mem0.grad)
    ref = out["torch"]
    assert ref[0].sum() > 0
    for backend, (spikes, mem, grad) in out.items():
        assert torch.equal(spikes, ref[0]), backend
        torch.testing.assert_close(mem, ref[1]) and torch.testing.assert_close(grad, ref[2])


@pytest.mark.parametrize("backend", ["torch", "snntorch", "norse", "fused"])
def test_parameters_and_state_of_another_shape_or_nan_are_refused_on_every_backend(backend):
    from neurosim.neurons.functional import LIFState

    x = torch.randn(4, 2, 5)
    # (the first would broadcast x to 4-D, the second not at all; one element with more dims than the neurons gave
    # a 4-D output on the torch backends and a 3-D one from the fused kernel)
    for shape in [(1, 2, 5), (3,), (1, 1, 1)]:
        with pytest.raises(ValueError, match=r"beta of shape .* must be a scalar or broadcastable to the neuron shape"):
            neurosim.LIF(beta=torch.full(shape, 0.5), reset="zero", backend=backend)(x)
    with pytest.raises(ValueError, match=r"threshold of shape \(1, 1, 1, 1\) .* \(at most 2 dimensions"):
        neurosim.LIF(threshold=torch.ones(1, 1, 1, 1), reset="zero", backend=backend)(x)
    if backend != "norse":
        with pytest.raises(ValueError, match=r"alpha of shape \(1, 1, 1\) must be a scalar or broadcastable"):
            neurosim.CubaLIF(alpha=torch.full((1, 1, 1), 0.5), reset="zero", backend=backend)(x)
    lif = neurosim.LIF(reset="zero", backend=backend)
    with pytest.raises(ValueError, match=r"state.mem of shape \(3, 5\) must broadcast to x.shape\[1:\] = \(2, 5\)"):
        lif(x, state=LIFState(torch.zeros(3, 5)))
    with pytest.raises(ValueError, match="state.mem.*NaN"):
        lif(x, state=LIFState(torch.full((2, 5), float("nan"))))
    with pytest.raises(ValueError, match="state must be a LIFState"):
        lif(x, state=(torch.zeros(2, 5),))


@pytest.mark.parametrize("cls", ["LIF", "CubaLIF"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_an_input_without_time_steps_gives_empty_outputs_and_the_initial_state(cls, dtype):
    """T = 0 failed with an IndexError from inside every backend (B = 0 worked). Now: spikes and membrane trace
    [0, B, ...] in the precision rule's dtypes, the final state zeros or the given one (broadcast to the neurons), so
    a stream continued through an empty chunk equals the whole."""
    from neurosim.neurons.functional import CubaLIFState, LIFState

    x = torch.rand(5, 2, 3).to(dtype) * 2
    empty = x[:0]
    given = torch.tensor([0.2, 0.5, 0.9])
    given = LIFState(given) if cls == "LIF" else CubaLIFState(given * 0.5, given)
    for backend in ("torch", "snntorch", "fused") + (("norse",) if cls == "LIF" else ()):
        layer = getattr(neurosim, cls)(reset="zero", backend=backend)
        spikes, mem, final = layer(empty, return_mem=True, return_state=True)
        assert spikes.shape == mem.shape == (0, 2, 3) and spikes.dtype == dtype and mem.dtype == torch.float32
        assert type(final) is type(given) and all(torch.equal(s, torch.zeros(2, 3)) for s in final), backend
        _, final = layer(empty, state=given, return_state=True)
        assert all(torch.equal(s, g.expand(2, 3)) for s, g in zip(final, given)), backend
        first, state = layer(x[:2], return_state=True)
        _, state = layer(empty, state=state, return_state=True)
        assert torch.equal(torch.cat([first, layer(x[2:], state=state)]), layer(x)), backend


def _concurrently(fns):
    """The results of the callables, run in threads that start together."""
    import threading

    barrier, out = threading.Barrier(len(fns)), [None] * len(fns)

    def work(i):
        barrier.wait()
        out[i] = fns[i]()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


@pytest.mark.parametrize("cls", ["LIF", "CubaLIF"])
def test_the_snntorch_backend_runs_a_layer_in_several_threads_at_once(cls):
    """The snnTorch backend kept one snnTorch neuron in the layer, and a neuron keeps its membrane on itself during
    its forward: a layer called from two threads at once mixed the two runs, and so did nn.DataParallel's replicas
    (one thread per GPU; a replica shares the layer's attributes, each wrote its own parameters onto the one
    neuron). Each run is compared with the same run alone; the replicas stand in for torch.nn.parallel.replicate's
    on the CPU (its _replicate_for_data_parallel, each replica given its own parameter tensors)."""
    g = torch.Generator().manual_seed(3)
    xs = [torch.rand(100, 8, 256, generator=g) * 0.5, torch.rand(100, 8, 256, generator=g) * 0.2 + 0.1]
    make = lambda beta: getattr(neurosim, cls)(beta=beta, backend="snntorch")  # noqa: E731
    layer = make(0.9)
    want = [layer(x) for x in xs]
    for _ in range(2):
        got = _concurrently([lambda x=x: layer(x) for x in xs])
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    replicas = [layer._replicate_for_data_parallel() for _ in xs]
    replicas[1]._buffers["beta"] = torch.tensor(0.6)
    want = [layer(xs[0]), make(0.6)(xs[1])]
    for _ in range(2):
        got = _concurrently([lambda r=r, x=x: r(x) for r, x in zip(replicas, xs)])
        assert all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.parametrize("cls", ["LIF", "CubaLIF"])
def test_the_snntorch_backend_keeps_no_tensor_of_a_finished_run(cls):
    """The snnTorch neuron a backend keeps between runs holds its membrane on itself during a run; the last one
    (with the run's autograd graph behind it) is let go when the run ends. Layers with a learnable and a fixed beta
    take turns on it."""
    import gc
    import weakref

    fixed, learned = (getattr(neurosim, cls)(backend="snntorch", learn_beta=lb) for lb in (False, True))
    for layer in (fixed, learned, fixed):
        x = torch.rand(5, 2, 3, requires_grad=True)
        s, state = layer(x * 2.0, return_state=True)
        final = weakref.ref(state.mem)
        del s, state
        gc.collect()
        assert final() is None
    # and it builds no new snnTorch neuron per run (snnTorch lists every neuron it builds, for good)
    import snntorch

    before = len(snntorch.SpikingNeuron.instances)
    for _ in range(5):
        fixed(x)
        learned(x)
    assert len(snntorch.SpikingNeuron.instances) == before


def test_a_model_is_copied_and_saved_after_a_forward_on_the_snntorch_backend(tmp_path):
    """The snnTorch backend's cached neuron (holding its last step's tensors) is not copied or pickled."""
    import copy

    lif = neurosim.LIF(backend="snntorch")
    x = torch.rand(4, 2, 3, requires_grad=True)
    lif(x)
    twin = copy.deepcopy(lif)
    torch.save(lif, tmp_path / "lif.pt")
    assert torch.equal(twin(x), lif(x))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA (the fused backend's Triton kernel)"))])
@pytest.mark.parametrize("cls", ["LIF", "CubaLIF"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_every_backend_integrates_16_bit_input_in_float32_and_returns_spikes_in_its_dtype(cls, dtype, device):
    """One precision on every backend (the fused kernel's): a 16-bit input is integrated with a float32 state; float64
    with a float64 state. The reference is snnTorch's own neuron stepped over the input converted to that dtype. A
    bf16 membrane (the torch and norse backends before) differed in 148 of 800 spikes on this input."""
    import snntorch

    torch.manual_seed(0)
    x = (torch.randn(200, 2, 2, dtype=torch.float64) * 0.6 + 0.15).to(dtype).to(device)
    work = torch.float64 if dtype == torch.float64 else torch.float32
    if cls == "LIF":
        ref_neuron, state = snntorch.Leaky(beta=0.9, threshold=1.0, reset_mechanism="zero"), ()
    else:
        ref_neuron = snntorch.Synaptic(alpha=0.8, beta=0.9, threshold=1.0, reset_mechanism="zero")
        state = (torch.zeros(2, 2, dtype=work, device=device),)
    mem, ref = torch.zeros(2, 2, dtype=work, device=device), []
    for x_t in x.to(work):
        s, *state, mem = ref_neuron(x_t, *state, mem)
        ref.append(s)
    ref = torch.stack(ref)
    assert 0 < ref.sum() < ref.numel()
    backends = ("torch", "snntorch", "fused") + (("norse",) if cls == "LIF" else ())
    for backend in backends:
        spikes, trace, final = getattr(neurosim, cls)(reset="zero", backend=backend).to(device)(
            x, return_mem=True, return_state=True)
        assert spikes.dtype == dtype and trace.dtype == work and final.mem.dtype == work, backend
        assert torch.equal(spikes.to(work), ref.to(work)), backend
        # a stream continued from the returned state equals the whole; a state given in the input's 16-bit dtype is
        # converted to the state's (it is what a float32 state rounded to 16 bits gives)
        layer = getattr(neurosim, cls)(reset="zero", backend=backend).to(device)
        first, st = layer(x[:100], return_state=True)
        assert torch.equal(torch.cat([first, layer(x[100:], state=st)]), spikes), backend
        rounded = type(st)(*(s.to(dtype) for s in st))
        assert torch.equal(layer(x[100:], state=rounded),
                           layer(x[100:], state=type(st)(*(s.to(work) for s in rounded)))), backend


@pytest.mark.parametrize("cls", ["LIF", "CubaLIF", "STCLIF"])
def test_a_learnable_threshold_trained_to_zero_or_below_is_refused_at_the_next_forward(cls):
    """A threshold <= 0 makes every neuron fire on silence; construction refuses it, and so does the forward after a
    training step took a learnable one there (read at once, or queued inside deferred checks)."""
    from neurosim import validate
    from neurosim.neurons.stc_lif import STCLIF

    layer = STCLIF(3, learn_threshold=True) if cls == "STCLIF" else getattr(neurosim, cls)(
        learn_threshold=True, backend="torch")
    x = torch.rand(4, 2, 3)
    assert layer(x).shape == x.shape
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    layer.threshold.grad = torch.full_like(layer.threshold, 1.5)
    opt.step()  # 1.0 -> -0.5
    with pytest.raises(ValueError, match=r"threshold must be > 0 everywhere.*found values such as \[-0.5\]"):
        layer(x)
    with pytest.raises(ValueError, match=r"^the layer: threshold must be > 0 everywhere"):
        with validate.deferred_checks(lambda: "the layer"):
            layer(x)
    for bad in (float("nan"), float("inf")):  # (an infinite threshold never fires: as refused as at construction)
        with torch.no_grad():
            layer.threshold.fill_(bad)
        with pytest.raises(ValueError, match="threshold must be > 0"):
            layer(x)
    with torch.no_grad():
        layer.threshold.fill_(0.7)
    assert layer(x).shape == x.shape
    # updates that leave the tensor's version counter as it was: a fused optimizer step, a write through .data
    fused = torch.optim.Adam(layer.parameters(), lr=10.0, fused=True)
    layer.threshold.grad = torch.ones_like(layer.threshold)
    fused.step()
    with pytest.raises(ValueError, match="threshold must be > 0 everywhere"):
        layer(x)
    layer.threshold.data.fill_(0.7)
    assert layer(x).shape == x.shape
    layer.threshold.data.mul_(-1)
    with pytest.raises(ValueError, match="threshold must be > 0 everywhere"):
        layer(x)


@pytest.mark.parametrize("cls,name,backend", [("LIF", "beta", b) for b in ("torch", "snntorch", "norse", "fused")]
                         + [("CubaLIF", n, b) for n in ("alpha", "beta") for b in ("torch", "snntorch", "fused")]
                         + [("STCLIF", "beta", None)])
def test_a_learnable_decay_trained_to_nan_is_refused_at_the_next_forward(cls, name, backend):
    """A learnable beta or alpha that training took to NaN ran on: the torch backends gave a NaN membrane and no
    spikes, the fused kernel took NaN as 0. It is refused at the next forward, as a threshold <= 0 is (read at once,
    or queued inside deferred checks); a finite value outside [0, 1] runs clamped into it (snnTorch's rule)."""
    from neurosim import validate
    from neurosim.neurons.stc_lif import STCLIF

    kw = {f"learn_{name}": True}
    make = (lambda: STCLIF(3, **kw)) if cls == "STCLIF" else (
        lambda: getattr(neurosim, cls)(reset="zero", backend=backend, **kw))
    layer = make()
    x = torch.rand(5, 2, 3) * 1.5
    want = layer(x)
    for bad in (float("nan"), float("inf")):
        with torch.no_grad():
            getattr(layer, name).fill_(bad)
        with pytest.raises(ValueError, match=rf"^{name} contains 1 NaN/inf value\(s\); all values must be finite"):
            layer(x)
        # (deferred, Norse's own check of the clamped beta, 1 for inf, can come first)
        also = "|the layer: backend='norse' needs beta < 1" if backend == "norse" else ""
        with pytest.raises(ValueError, match=rf"^the layer: {name} contains NaN/inf{also}"):
            with validate.deferred_checks(lambda: "the layer"):
                layer(x)
    with torch.no_grad():
        getattr(layer, name).fill_(0.7)
    assert layer(x).shape == want.shape
    if backend != "norse":  # (Norse needs beta < 1)
        with torch.no_grad():
            getattr(layer, name).fill_(1.2)
        clamped = make()
        with torch.no_grad():
            getattr(clamped, name).fill_(1.0)
        assert torch.equal(layer(x), clamped(x))


@pytest.mark.parametrize("cls,name", [("LIF", "beta"), ("LIF", "threshold"), ("CubaLIF", "alpha"), ("CubaLIF", "beta"),
                                      ("CubaLIF", "threshold"), ("STCLIF", "beta"), ("STCLIF", "threshold")])
@pytest.mark.parametrize("learn", [False, True])
def test_a_loaded_parameter_is_refused_where_making_or_running_the_layer_refuses_it(cls, name, learn):
    """A NaN fixed beta loaded by load_state_dict ran on silently (a NaN membrane, no spikes), a threshold <= 0 fired
    on silence. Loading refuses, naming the key, the values that making the layer refuses (a fixed parameter: it is
    not checked at every forward) or that its next forward refuses (a learned one: a beta outside [0, 1] runs
    clamped), before the layer holds them; the modules before it are loaded, as the error says."""
    from neurosim.neurons.stc_lif import STCLIF

    def make(**kw):
        kw[f"learn_{name}"] = learn
        return STCLIF(3, **kw) if cls == "STCLIF" else getattr(neurosim, cls)(backend="torch", **kw)

    model = torch.nn.Sequential(torch.nn.Linear(3, 3), make())
    x = torch.rand(4, 2, 3)
    for value in (float("nan"), float("inf"), -float("inf"), -0.5, 0.0, 1.0, 1.5):
        try:  # the reference: making the layer with the value (fixed), or running it with the value (learned)
            ref = make() if learn else make(**{name: value})
            if learn:
                with torch.no_grad():
                    getattr(ref, name).fill_(value)
                ref(x)
            refused = None
        except ValueError as err:
            refused = str(err)
        before = getattr(model[1], name).detach().clone()
        state = {**model.state_dict(), f"1.{name}": torch.tensor(value), "0.bias": torch.randn(3)}
        if refused is None:
            model.load_state_dict(state)
            assert float(getattr(model[1], name).detach()) == value
            continue
        with pytest.raises(ValueError, match=rf"^1\.{name} .*\(refused by load_state_dict: the module '1' keeps its "
                                             r"previous values; the modules before it were loaded\)$") as err:
            model.load_state_dict(state)
        if not learn:
            assert str(err.value).startswith(f"1.{refused} (")
        assert torch.equal(getattr(model[1], name), before) and torch.equal(model[0].bias, state["0.bias"])


def test_a_layer_pickled_before_reset_was_a_property_still_runs():
    """Before, reset was a plain attribute in the layer's __dict__; the property then found no _reset."""
    import pickle

    lif = neurosim.LIF(reset="zero", backend="torch")
    state = lif.__dict__.copy()
    state["reset"] = state.pop("_reset")
    old = neurosim.LIF.__new__(neurosim.LIF)
    old.__setstate__(state)
    x = torch.rand(3, 2, 4) * 2
    assert old.reset == "zero" and torch.equal(old(x), lif(x))
    assert pickle.loads(pickle.dumps(old)).reset == "zero"


def test_reset_is_checked_when_set_after_construction():
    """Any value but 'subtract' ran as a zero reset on the torch backend, silently; an STC-LIF always subtracts,
    and the exporters read its reset."""
    from neurosim.neurons.stc_lif import STCLIF

    lif = neurosim.LIF(backend="torch")
    with pytest.raises(ValueError, match="reset must be one of 'subtract', 'zero'; got 'Zero'"):
        lif.reset = "Zero"
    lif.reset = "zero"
    assert lif.params().reset == "zero"
    stc = STCLIF(3)
    with pytest.raises(ValueError, match="reset of an STCLIF is 'subtract' only"):
        stc.reset = "zero"
    assert stc.reset == "subtract"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (host-device synchronisation)")
@pytest.mark.parametrize("backend", ["snntorch", "torch", "norse", "fused"])
def test_a_cuda_forward_inside_deferred_checks_never_waits_for_the_gpu(backend):
    """Inside deferred checks a LIF forward on CUDA queues its work and returns without a host-device
    synchronisation. (The snnTorch backend copied its spike factor to the GPU at every call, a copy that waits for
    the stream.)"""
    from neurosim import validate

    layer = neurosim.LIF(beta=0.8, threshold=0.5, reset="zero", backend=backend).cuda()  # (Norse: zero reset)
    x = torch.rand(4, 8, 32, device="cuda")
    with validate.deferred_checks(lambda: "the layer"):
        layer(x)  # (warm-up: lazy imports, kernel compilation)
    torch.cuda.synchronize()
    with validate.deferred_checks(lambda: "the layer"):  # (its read-back at the block's end is the one sync)
        torch.cuda.set_sync_debug_mode("error")
        try:
            s = layer(x)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert s.shape == x.shape
