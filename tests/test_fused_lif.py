"""backend="fused": the Triton LIF/CubaLIF kernels against a float64 reference and against snnTorch.

* CPU, in this process: the fused backend's fallback path (no CUDA) against snnTorch and float64.
* CPU, Triton interpreter: the *kernel code itself* run by Triton's interpreter on small shapes (T=1, partial
  time chunks, sizes not divisible by the block, both resets, both neuron kinds, detach_reset=False, learnable
  and per-neuron parameters, initial state, bf16). The interpreter must be switched on before triton is
  imported, so these cases run in one child process (this file run as a script) and report numbers back.
* GPU (skipped without CUDA): the same cases compiled, plus a larger shape and a comparison with snnTorch.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

import neurosim
from neurosim.neurons import functional as F
from neurosim.neurons.surrogate import Surrogate

# (name, settings). Shapes are [T, B, ...]; the interpreter runs the kernels with K=4 time steps a chunk and
# 32 neurons a program, so T=9 ends in a partial chunk and 3*13=39 neurons in a partial block.
CASES = {
    "lif_sub_T1": dict(kind="lif", reset="subtract", shape=(1, 3, 5)),
    "lif_sub_odd": dict(kind="lif", reset="subtract", shape=(9, 3, 13), learn=True, surrogate="arctan"),
    "lif_zero_odd": dict(kind="lif", reset="zero", shape=(9, 3, 13), learn=True, surrogate="sigmoid"),
    "lif_sub_nodetach": dict(kind="lif", reset="subtract", shape=(6, 2, 7), detach=False, learn=True),
    "lif_zero_nodetach": dict(kind="lif", reset="zero", shape=(6, 2, 7), detach=False, learn=True,
                              surrogate="arctan"),
    "lif_state_mem": dict(kind="lif", reset="subtract", shape=(5, 2, 3, 3), state=True, return_mem=True,
                          learn=True),
    "lif_neuron_params": dict(kind="lif", reset="zero", shape=(8, 2, 6), per_neuron=True, learn=True,
                              state=True),
    "cuba_sub_odd": dict(kind="cuba", reset="subtract", shape=(9, 3, 13), learn=True),
    "cuba_zero_odd": dict(kind="cuba", reset="zero", shape=(9, 3, 13), learn=True, surrogate="sigmoid"),
    "cuba_zero_nodetach": dict(kind="cuba", reset="zero", shape=(7, 2, 5), detach=False, learn=True,
                               state=True, return_mem=True),
    "cuba_sub_nodetach_T1": dict(kind="cuba", reset="subtract", shape=(1, 4, 3), detach=False, learn=True,
                                 state=True),
    "cuba_neuron_params": dict(kind="cuba", reset="subtract", shape=(6, 2, 5), per_neuron=True, learn=True),
    "lif_sub_bf16": dict(kind="lif", reset="subtract", shape=(9, 3, 13), learn=True, dtype="bfloat16"),
    "cuba_zero_bf16": dict(kind="cuba", reset="zero", shape=(7, 2, 11), learn=True, dtype="bfloat16",
                           state=True),
}
# On the GPU every case compiles its own kernel variants, so a selection of the CPU cases plus larger shapes
GPU_CASES = dict({k: CASES[k] for k in ("lif_sub_T1", "lif_zero_nodetach", "lif_state_mem", "lif_neuron_params",
                                        "cuba_zero_nodetach", "cuba_sub_nodetach_T1", "cuba_zero_bf16")}, **{
    "lif_sub_big": dict(kind="lif", reset="subtract", shape=(50, 8, 1000), learn=True),
    "cuba_zero_big": dict(kind="cuba", reset="zero", shape=(37, 4, 999), learn=True, detach=False),
    "lif_zero_bf16_big": dict(kind="lif", reset="zero", shape=(40, 8, 1000), learn=True, dtype="bfloat16"),
    # >= 2**20 neurons: the launch config with 2 neurons a thread, ending in a partial chunk and block
    "cuba_sub_wide": dict(kind="cuba", reset="subtract", shape=(19, 1025, 1031), learn=True),
})
GRAD_RTOL = {"float32": 1e-5, "bfloat16": 1e-2}  # ||g - g64|| / ||g64||; bf16: METHOD.md's bf16 band


def _setup(case: dict, device: str):
    """Inputs, parameters, initial state and loss weights of one case (float32 leaves; fresh per case)."""
    g = torch.Generator().manual_seed(zlib.crc32(repr(sorted(case.items())).encode()))
    shape = case["shape"]
    neuron = shape[1:]
    x = torch.randn(shape, generator=g) * 0.8 + 0.5
    dtype = getattr(torch, case.get("dtype", "float32"))
    x = x.to(dtype).float()  # values representable in the kernel's input dtype
    pshape = neuron if case.get("per_neuron") else ()
    params = {
        "beta": torch.rand(pshape, generator=g) * 0.5 + 0.5 if pshape else torch.tensor(0.87),
        "threshold": torch.rand(pshape, generator=g) * 0.5 + 0.75 if pshape else torch.tensor(1.1),
    }
    if case["kind"] == "cuba":
        params["alpha"] = torch.rand(pshape, generator=g) * 0.5 + 0.3 if pshape else torch.tensor(0.6)
    state = None
    if case.get("state"):
        state = [torch.randn(neuron, generator=g) * 0.5 + 0.5]
        if case["kind"] == "cuba":
            state.insert(0, torch.randn(neuron, generator=g) * 0.3)
    weights = [torch.randn(shape, generator=g), torch.randn(shape, generator=g), torch.randn(neuron, generator=g)]
    move = lambda t: t.to(device)  # noqa: E731
    return (move(x), {k: move(v) for k, v in params.items()}, None if state is None else [move(s) for s in state],
            [move(w) for w in weights])


def _run(case, x, params, state, weights, run_fn, dtype):
    """Run ``run_fn(kind, p, x, state)`` and return outputs and gradients (all float64 on the CPU)."""
    kind = case["kind"]
    learn = case.get("learn", False)
    x = x.detach().to(dtype).requires_grad_(True)
    leaves = {k: v.detach().to(torch.float64 if dtype == torch.float64 else torch.float32).requires_grad_(learn)
              for k, v in params.items()}
    sg = Surrogate(case.get("surrogate", "fast_sigmoid"))
    detach = case.get("detach", True)
    if kind == "lif":
        p = F.LIFParameters(leaves["beta"], leaves["threshold"], case["reset"], sg, detach)
    else:
        p = F.CubaLIFParameters(leaves["alpha"], leaves["beta"], leaves["threshold"], case["reset"], sg, detach)
    st = None
    st_leaves = []
    if state is not None:
        st_leaves = [s.detach().to(leaves["beta"].dtype).requires_grad_(True) for s in state]
        st = F.LIFState(*st_leaves) if kind == "lif" else F.CubaLIFState(*st_leaves)
    spikes, mem, final = run_fn(kind, p, x, st)
    loss = (spikes.double() * weights[0].double()).sum() + (final.mem.double() * weights[2].double()).sum()
    if case.get("return_mem"):
        loss = loss + 0.1 * (mem.double() * weights[1].double()).sum()
    if kind == "cuba":
        loss = loss + 0.5 * (final.syn.double() * weights[2].double()).sum()
    wrt = [x] + st_leaves + ([leaves[k] for k in sorted(leaves)] if learn else [])
    grads = torch.autograd.grad(loss, wrt)
    names = ["x"] + [f"state{i}" for i in range(len(st_leaves))] + (sorted(leaves) if learn else [])
    out = {"spikes": spikes.detach().double().cpu(), "final": final.mem.detach().double().cpu(),
           "spikes_dtype": str(spikes.dtype)}
    if mem is not None:
        out["mem"] = mem.detach().double().cpu()
    out.update({f"grad_{n}": g.detach().double().cpu() for n, g in zip(names, grads)})
    return out


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def compare_case(name: str, device: str, interpret=None) -> dict:
    """The fused backend on one case against float64 (and snnTorch in float32): a dict of numbers."""
    from neurosim.kernels.lif import BACKEND

    case = {**CASES, **GPU_CASES}[name]
    x, params, state, weights = _setup(case, device)
    dtype = getattr(torch, case.get("dtype", "float32"))
    need_mem = bool(case.get("return_mem"))
    fused = _run(case, x, params, state, weights,
                 lambda k, p, xx, s: BACKEND.run(k, p, xx, s, need_mem=need_mem, interpret=interpret), dtype)
    ref = _run(case, x, params, state, weights, lambda k, p, xx, s: F.run_sequence(k, p, xx, s), torch.float64)
    res = {
        "path": BACKEND.path(x.to(dtype), interpret),
        "spikes_dtype": fused["spikes_dtype"],
        "spike_mismatch": int((fused["spikes"] != ref["spikes"]).sum()),
        "spikes_binary": bool(((fused["spikes"] == 0) | (fused["spikes"] == 1)).all()),
        "final_rel": _rel(fused["final"], ref["final"]),
        "grads": {k[5:]: _rel(fused[k], ref[k]) for k in ref if k.startswith("grad_")},
        "grads_finite": all(bool(torch.isfinite(fused[k]).all()) for k in fused if k.startswith("grad_")),
    }
    if need_mem:
        res["mem_rel"] = _rel(fused["mem"], ref["mem"])
    if dtype == torch.float32:
        # the same loop through torch autograd in float32: how far float32 itself lands from float64 here
        f32 = _run(case, x, params, state, weights, lambda k, p, xx, s: F.run_sequence(k, p, xx, s), dtype)
        res["torch_fp32_grads"] = {k[5:]: _rel(f32[k], ref[k]) for k in ref if k.startswith("grad_")}
    if case.get("detach", True) and dtype == torch.float32 and not case.get("per_neuron"):
        # snnTorch itself (float32): the spikes must be the very same
        from neurosim.neurons.backends import get

        snn = _run(case, x, params, state, weights, lambda k, p, xx, s: get("snntorch").run(k, p, xx, s), dtype)
        res["snntorch_spike_mismatch"] = int((fused["spikes"] != snn["spikes"]).sum())
        res["snntorch_grad_x_rel"] = _rel(fused["grad_x"], snn["grad_x"])
    return res


def _check(name, res):
    case = {**CASES, **GPU_CASES}[name]
    dtype = case.get("dtype", "float32")
    assert res["spikes_binary"], res
    assert res["spikes_dtype"] == f"torch.{dtype}", res
    assert res["spike_mismatch"] == 0, res
    assert res["grads_finite"], res
    assert res["final_rel"] < 1e-6, res
    if "mem_rel" in res:
        assert res["mem_rel"] < 1e-6, res
    expected = {"x"} | ({"beta", "threshold"} | ({"alpha"} if case["kind"] == "cuba" else set())
                        if case.get("learn") else set())
    if case.get("state"):
        expected |= {"state0"} | ({"state1"} if case["kind"] == "cuba" else set())
    assert set(res["grads"]) == expected
    for k, v in res["grads"].items():
        # 1e-5 relative to float64; where the gradient is a sum that cancels (e.g. the threshold gradient
        # without detach_reset), float32 itself cannot reach 1e-5, so twice torch's own float32 error is allowed
        tol = max(GRAD_RTOL[dtype], 2 * res.get("torch_fp32_grads", {}).get(k, 0.0))
        assert v < tol, (k, res)
    if "snntorch_spike_mismatch" in res:
        assert res["snntorch_spike_mismatch"] == 0, res
        assert res["snntorch_grad_x_rel"] < 1e-5, res


# ---------------------------------------------------------------- Triton interpreter (child process)
@pytest.fixture(scope="module")
def interpreter_results():
    import triton  # noqa: F401  (a dev requirement: missing triton must fail here, not skip)

    env = dict(os.environ, NEUROSIM_TRITON_INTERPRET="1", TRITON_DEFAULT_FP_FUSION="0")
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--interpreter", *CASES],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(CASES))
def test_kernel_in_interpreter_matches_float64(interpreter_results, name):
    res = interpreter_results[name]
    assert res["path"] == "interpreter"  # the Triton kernels ran, not the fallback
    _check(name, res)


# ---------------------------------------------------------------- fallback path (this process, CPU)
@pytest.mark.parametrize("name", ["lif_sub_odd", "lif_zero_nodetach", "cuba_zero_nodetach", "cuba_zero_bf16",
                                  "lif_neuron_params"])
def test_fallback_matches_float64(name):
    if torch.cuda.is_available():
        pytest.skip("CPU fallback path")
    res = compare_case(name, "cpu", interpret=False)
    assert res["path"] == "reference"
    _check(name, res)


@pytest.mark.parametrize("cls", [neurosim.LIF, neurosim.CubaLIF])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_module_fused_matches_snntorch(cls, reset):
    """neurosim.LIF/CubaLIF(backend="fused") through the module API equals backend="snntorch"."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(7)
    x0 = (torch.randn(12, 4, 9, generator=g) + 0.5).to(device)
    w = torch.randn(12, 4, 9, generator=g).to(device)
    out = {}
    for backend in ("snntorch", "fused"):
        kw = dict(learn_beta=True, learn_threshold=True, reset=reset, backend=backend)
        if cls is neurosim.CubaLIF:
            kw["learn_alpha"] = True
        m = cls(**kw).to(device)
        x = x0.clone().requires_grad_(True)
        s, mem = m(x, return_mem=True)
        ((s * w).sum() + 0.1 * (mem * w).sum()).backward()
        out[backend] = (s, mem, x.grad, {k: p.grad for k, p in m.named_parameters()})
    (s1, m1, gx1, gp1), (s2, m2, gx2, gp2) = out["snntorch"], out["fused"]
    assert torch.equal(s1, s2)
    torch.testing.assert_close(m2, m1, rtol=1e-6, atol=1e-6)
    assert _rel(gx2.double(), gx1.double()) < 1e-5
    for k in gp1:
        assert _rel(gp2[k].double(), gp1[k].double()) < 1e-5, k


def test_fused_without_mem_trace_and_bad_shapes():
    from neurosim.kernels.lif import BACKEND

    x = torch.randn(4, 2, 3)
    p = F.LIFParameters(torch.tensor(0.9), torch.tensor(1.0))
    spikes, mem, final = BACKEND.run("lif", p, x, None, need_mem=False)
    assert mem is None and spikes.shape == x.shape and final.mem.shape == (2, 3)
    bad = F.LIFParameters(torch.full((5,), 0.9), torch.tensor(1.0))  # not broadcastable to the neurons (2, 3)
    with pytest.raises(ValueError, match="beta"):
        BACKEND.run("lif", bad, x)
    with pytest.raises(ValueError, match="state.mem"):
        BACKEND.run("lif", p, x, F.LIFState(torch.zeros(2, 4)))
    # parameters or state on another device than x: named, whatever path would run (meta stands in for a GPU)
    meta = torch.device("meta")
    with pytest.raises(ValueError, match=r"threshold is on meta but the input x is on cpu"):
        BACKEND.run("lif", F.LIFParameters(torch.tensor(0.9), torch.tensor(1.0, device=meta)), x)
    with pytest.raises(ValueError, match=r"state.mem is on meta"):
        BACKEND.run("lif", p, x, F.LIFState(torch.zeros(2, 3, device=meta)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_fused_layer_left_on_cpu_names_its_parameter():
    """A fused LIF whose buffers stayed on the CPU, fed a CUDA tensor: a clear error, not one from inside Triton."""
    lif = neurosim.LIF(beta=0.9, threshold=1.0, backend="fused")
    with pytest.raises(ValueError, match=r"beta is on cpu but the input x is on cuda:0"):
        lif(torch.rand(4, 2, 8, device="cuda"))
    assert lif.to("cuda")(torch.rand(4, 2, 8, device="cuda")).is_cuda


# ---------------------------------------------------------------- GPU (compiled kernels)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the issue allows GPU-only tests)")


@cuda
@pytest.mark.parametrize("name", list(GPU_CASES))
def test_kernel_on_gpu_matches_float64(name):
    res = compare_case(name, "cuda")
    assert res["path"] == "triton"
    _check(name, res)


@cuda
def test_gpu_kernel_writes_every_output():
    """Poisoned outputs: every spike / trace element must be written (METHOD.md)."""
    from neurosim.kernels import triton_lif as K

    T, N = 37, 4099
    poison = torch.full((4 * T * N,), float("nan"), device="cuda")
    del poison  # the caching allocator hands this NaN-filled block to the outputs below
    x = torch.randn(T, N, device="cuda") + 0.5
    b, th = torch.tensor([0.9], device="cuda"), torch.tensor([1.0], device="cuda")
    s, tr, mT, _, ck, _ = K.launch_forward(x, None, None, b, th, None, cuba=False, zero=False, write_trace=True,
                                           write_ck=True)
    assert torch.isfinite(tr).all() and ((s == 0) | (s == 1)).all()
    p = F.LIFParameters(b[0], th[0])
    ref_s, ref_m, _ = F.run_sequence("lif", p, x)
    assert torch.equal(s, ref_s) and torch.equal(tr, ref_m)


# ---------------------------------------------------------------- NaN/inf inputs: the kernel's own check
def nonfinite_messages(device: str, interpret=None) -> dict:
    """What the fused backend says for inputs holding NaN/inf (the kernel flags them as it reads ``x``): the
    ValueError's message, or "ok" when it accepted the input. Bad values sit in a partial chunk and a partial
    block (T=9, 39 neurons), in both kinds and in bf16; finite extremes must pass."""
    from neurosim.kernels.lif import BACKEND

    out = {}
    for label, kind, dtype, where, value in [
        ("nan_last_step", "lif", torch.float32, (8, 2, 12), float("nan")),
        ("inf_first", "cuba", torch.float32, (0, 0, 0), float("inf")),
        ("neg_inf_bf16", "lif", torch.bfloat16, (4, 1, 7), float("-inf")),
        ("finite_extremes", "lif", torch.float32, (3, 1, 1), 3.4e38),
    ]:
        x = torch.zeros(9, 3, 13)
        x[where] = value
        x[5, 0, 3] = -3.4e38 if label == "finite_extremes" else 0.5
        t = lambda v: torch.tensor(v, device=device)  # noqa: E731
        p = F.CubaLIFParameters(t(0.9), t(0.8), t(1.0)) if kind == "cuba" else F.LIFParameters(t(0.9), t(1.0))
        try:
            BACKEND.run(kind, p, x.to(device=device, dtype=dtype), need_mem=False, interpret=interpret)
            out[label] = "ok"
        except ValueError as e:
            out[label] = str(e)
    return out


EXPECTED_NONFINITE = {"nan_last_step": "x contains 1 NaN/inf value(s)", "inf_first": "x contains 1 NaN/inf value(s)",
                      "neg_inf_bf16": "x contains 1 NaN/inf value(s)", "finite_extremes": "ok"}


def test_kernel_in_interpreter_flags_nonfinite_input():
    env = dict(os.environ, NEUROSIM_TRITON_INTERPRET="1", TRITON_DEFAULT_FP_FUSION="0")
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--interpreter-nonfinite"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for label, want in EXPECTED_NONFINITE.items():
        assert got[label].startswith(want), (label, got[label])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_kernel_flags_nonfinite_input():
    got = nonfinite_messages("cuda")
    for label, want in EXPECTED_NONFINITE.items():
        assert got[label].startswith(want), (label, got[label])


# ---------------------------------------------------------------- a NaN decay stays NaN, as in torch's clamp
def nan_decay_results(device: str, interpret=None) -> dict:
    """The fused backend with a NaN beta (LIF) or a NaN beta and alpha in other neurons (CubaLIF), a fixed one (so no
    layer refuses it first), against the reference loop: spikes equal, membrane NaN in the same places. The kernel's
    clamp into [0, 1] took a NaN as 0 (Triton's default min/max return the other operand), torch's keeps it."""
    from neurosim.kernels.lif import BACKEND

    g = torch.Generator().manual_seed(11)
    x = (torch.rand(6, 2, 3, generator=g) * 1.5).to(device)
    nan = float("nan")
    out = {}
    for kind in ("lif", "cuba"):
        t = lambda v: torch.tensor(v, device=device)  # noqa: E731
        if kind == "lif":
            p = F.LIFParameters(t([0.9, nan, 0.8]), t(1.0), "zero")
        else:
            p = F.CubaLIFParameters(t([nan, 0.7, 0.6]), t([0.9, 0.85, nan]), t(1.0))
        s, m, _ = BACKEND.run(kind, p, x, interpret=interpret)
        rs, rm, _ = F.run_sequence(kind, p, x)
        out[kind] = {"path": BACKEND.path(x, interpret), "spikes_equal": torch.equal(s.cpu(), rs.cpu()),
                     "nan_where_reference": torch.equal(m.isnan().cpu(), rm.isnan().cpu()),
                     "reference_nan": int(rm.isnan().sum()),
                     "finite_equal": torch.equal(m.nan_to_num().cpu(), rm.nan_to_num().cpu())}
    return out


def _check_nan_decay(got, path):
    for kind, res in got.items():
        assert res["path"] == path, (kind, res)
        assert res["reference_nan"] > 0 and res["nan_where_reference"] and res["spikes_equal"], (kind, res)
        assert res["finite_equal"], (kind, res)


def test_kernel_in_interpreter_keeps_a_nan_decay_nan():
    env = dict(os.environ, NEUROSIM_TRITON_INTERPRET="1", TRITON_DEFAULT_FP_FUSION="0")
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--interpreter-nan-decay"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    _check_nan_decay(json.loads(proc.stdout.strip().splitlines()[-1]), "interpreter")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_kernel_keeps_a_nan_decay_nan():
    _check_nan_decay(nan_decay_results("cuda"), "triton")


# ---------------------------------------------------------------- child process entry point
if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--interpreter":
    results = {name: compare_case(name, "cpu", interpret=True) for name in sys.argv[2:]}
    print(json.dumps(results))
if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--interpreter-nonfinite":
    print(json.dumps(nonfinite_messages("cpu", interpret=True)))
if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--interpreter-nan-decay":
    print(json.dumps(nan_decay_results("cpu", interpret=True)))
