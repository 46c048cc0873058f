"""Time one LIF layer, forward and forward+backward: neurosim's fused Triton kernels against peers.

Rows: neurosim ``backend="fused"``, snnTorch ``Leaky`` stepped over time, Norse ``LIF`` and ``LIFBox``,
SpikingJelly 2.0's multi-step ``LIFNode`` (its own automatically chosen fast path), a plain torch loop and
``torch.compile`` of that loop. Every row: median of CUDA-event timings after warm-up, and its multiple of the
memory floor. Floor = bytes that must move / measured device-to-device copy bandwidth (bytes read + written):
forward 2 passes over ``[T, B, N]`` (read input, write spikes), forward+backward 5 passes (those two, read the
incoming gradient, write the input gradient, plus one pass of saved state), each pass ``T*B*N*itemsize``.

Also: a sweep of the fused kernel's launch configurations, a spike/gradient check of fused against the torch
loop at each shape, and one training step of a 4-layer spiking MLP with ``backend="fused"`` vs ``"snntorch"``.

    python benchmarks/lif_kernels.py --out results_dir        # writes lif_kernels.json and lif_kernels.md
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback

import torch

import neurosim

BETA, THRESHOLD, SLOPE = 0.9, 1.0, 25.0
SHAPES = [  # (T, B, N, dtype)
    (500, 16, 4096, torch.float32),
    (16, 64, 65536, torch.float32),
    (16, 64, 65536, torch.bfloat16),
    (500, 16, 4096, torch.bfloat16),
]
# launch configurations (K, VEC, WARPS[, BWD_VEC, BWD_WARPS]) of the kernels tried by --sweep
SWEEP = [(16, 1, 8), (16, 1, 4), (8, 1, 8), (32, 1, 8), (16, 2, 4), (16, 4, 4), (16, 4, 2), (16, 4, 4, 2, 4),
         (16, 4, 4, 1, 8), (8, 2, 4)]
COMPILE_MAX_T = 64  # torch.compile unrolls the Python loop: a 500-step graph takes too long to compile here


def log(*a):
    print(*a, flush=True)


DEVICE = "cuda"


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def bench(fn, budget_ms=1000.0, min_reps=5, max_reps=100):
    """Median milliseconds of ``fn()`` after two warm-up calls: CUDA events around each call, calls issued back
    to back and one synchronisation at the end (as ``triton.testing.do_bench``), so the host's work for the next
    call overlaps the device's work on this one wherever the device is the slower of the two. ``SYNC_EACH``
    (``--sync-each``): synchronise after every call instead (the host's launch cost is then in every time)."""
    for _ in range(2):
        fn()
    _sync()
    t0 = time.perf_counter()
    fn()
    _sync()
    est = (time.perf_counter() - t0) * 1e3
    reps = int(max(min_reps, min(max_reps, budget_ms / max(est, 1e-3))))
    if DEVICE != "cuda":  # --smoke on a CPU: wall clock
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times), reps
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for a, b in events:
        a.record()
        fn()
        b.record()
        if SYNC_EACH:
            b.synchronize()
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in events), reps


SYNC_EACH = False


def copy_bandwidth():
    """Bytes read + written per second of a large device-to-device copy (median of 20)."""
    n = 1 << 29 if DEVICE == "cuda" else 1 << 20  # 2 GiB of float32
    src = torch.randn(n, device=DEVICE)
    dst = torch.empty_like(src)
    ms, _ = bench(lambda: dst.copy_(src), budget_ms=400, min_reps=20, max_reps=20)
    del src, dst
    _empty_cache()
    return 2 * n * 4 / (ms * 1e-3)


def _empty_cache():
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- implementations
def fast_sigmoid_spike(u):
    """Heaviside forward, fast-sigmoid surrogate backward, in plain torch ops (torch.compile friendly)."""
    f = u / (1 + SLOPE * u.abs())  # d f / d u = 1 / (1 + k|u|)^2
    return (u > 0).to(u.dtype) + (f - f.detach())


def torch_loop(x):
    mem = torch.zeros_like(x[0])
    out = []
    for t in range(x.shape[0]):
        r = (mem > THRESHOLD).to(x.dtype)
        mem = BETA * mem + x[t] - r * THRESHOLD
        out.append(fast_sigmoid_spike(mem - THRESHOLD))
    return torch.stack(out)


def kernels_only(lif):
    """``lif``'s fused kernels without the layer around them (no NaN/inf check, so no host read of its flag)."""
    from neurosim.kernels.lif import BACKEND

    return lambda x: BACKEND.run("lif", lif.params(), x, need_mem=False, check_finite=False)[0]


def stepped(cell, x, state):
    """A single-step cell ``(x_t, state) -> (spikes_t, state)`` run over the time dimension of ``x``."""
    out = []
    for x_t in x:
        z, state = cell(x_t, state)
        out.append(z)
    return torch.stack(out)


def make_impls(T):
    impls = {}
    lif = neurosim.LIF(beta=BETA, threshold=THRESHOLD, backend="fused").to(DEVICE)
    impls["neurosim fused"] = lambda x: lif(x)
    impls["neurosim fused, kernels only"] = kernels_only(lif)

    def snntorch_impl():
        import snntorch as snn

        leaky = snn.Leaky(beta=BETA, threshold=THRESHOLD, spike_grad=snn.surrogate.fast_sigmoid(SLOPE)).to(DEVICE)
        return lambda x: stepped(leaky, x, torch.zeros_like(x[0]))

    def norse_lif():
        import norse.torch as nt

        mod = nt.LIF().to(DEVICE)  # Norse's own time loop over LIFCell
        return lambda x: mod(x)[0]

    def norse_box():
        import norse.torch as nt

        cell = nt.LIFBoxCell().to(DEVICE)  # the leaky (current-free) cell, stepped over time
        return lambda x: stepped(cell, x, None)

    def sj_impl():
        from spikingjelly.activation_based import functional as sjf
        from spikingjelly.activation_based import neuron, surrogate

        node = neuron.LIFNode(tau=1 / (1 - BETA), decay_input=False, v_threshold=THRESHOLD, v_reset=None,
                              detach_reset=True, surrogate_function=surrogate.Sigmoid(), step_mode="m").to(DEVICE)

        def run(x):
            sjf.reset_net(node)
            return node(x)

        return run

    builders = {
        "snnTorch Leaky loop": snntorch_impl,
        "Norse LIF": norse_lif,
        "Norse LIFBoxCell loop": norse_box,
        "SpikingJelly 2.0 LIFNode (multi-step)": sj_impl,
        "torch loop": lambda: torch_loop,
    }
    if T <= COMPILE_MAX_T:
        builders["torch.compile(torch loop)"] = lambda: torch.compile(torch_loop, dynamic=False)
    for name, build in builders.items():
        try:
            impls[name] = build()
        except Exception as e:  # a peer that cannot be imported here is reported, not hidden
            impls[name] = e
    return impls


# ----------------------------------------------------------------------------- measurements
def device_ms(fn, reps=10):
    """GPU time of ``fn()`` alone: the summed duration of every device kernel/copy it ran (torch.profiler, CUPTI),
    per call, median over ``reps`` calls made one at a time. Host work (Python, launches, autograd) and the gaps it
    leaves on the device are excluded: this is what the memory floor bounds."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    _sync()
    per_call = []
    for _ in range(reps):
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            _sync()
        per_call.append(sum(e.self_device_time_total for e in prof.key_averages()) / 1e3)
    return statistics.median(per_call)


DEVICE_TIMED = ("neurosim", "SpikingJelly", "torch.compile")  # rows that also get device_ms (few kernels a call)


def time_impl(fn, x, g, budget_ms=1000.0, device_time=False):
    with torch.no_grad():
        fwd, _ = bench(lambda: fn(x), budget_ms=budget_ms)

    def fb():
        out = fn(x)
        torch.autograd.grad(out, x, g)

    fb_ms, reps = bench(fb, budget_ms=budget_ms)
    if not device_time or DEVICE != "cuda":
        return fwd, fb_ms, reps
    with torch.no_grad():
        fwd_dev = device_ms(lambda: fn(x))
    return fwd, fb_ms, reps, fwd_dev, device_ms(fb)


def check_fused(x, g):
    """Fused vs the torch loop on this shape (fp32 state in fused; the loop keeps x's dtype)."""
    lif = neurosim.LIF(beta=BETA, threshold=THRESHOLD, backend="fused").to(DEVICE)
    ref = neurosim.LIF(beta=BETA, threshold=THRESHOLD, backend="torch").to(DEVICE)
    xs = x.detach().float().requires_grad_(True)
    s1 = lif(xs)
    (g1,) = torch.autograd.grad(s1, xs, g.float())
    s2 = ref(xs)
    (g2,) = torch.autograd.grad(s2, xs, g.float())
    return {"spike_mismatch_fp32": int((s1 != s2).sum()), "grad_rel_fp32": float((g1 - g2).norm() / g2.norm())}


def sweep(x, g, floor_ms):
    rows = []
    # the kernels alone (no input check), so that configurations differ only in the kernels
    fn = kernels_only(neurosim.LIF(beta=BETA, threshold=THRESHOLD, backend="fused").to(DEVICE))

    for cfg in SWEEP:
        os.environ["NEUROSIM_FUSED_CONFIG"] = ",".join(map(str, cfg))
        try:
            fwd, fb, _, *dev = time_impl(fn, x, g, budget_ms=300, device_time=True)
            rows.append({"config": cfg, "fwd_ms": fwd, "fwd_bwd_ms": fb, "x_floor": fb / floor_ms})
            if dev:
                rows[-1].update(fwd_dev_ms=dev[0], fwd_bwd_dev_ms=dev[1], dev_x_floor=dev[1] / floor_ms)
        except Exception as e:
            rows.append({"config": cfg, "error": repr(e)[:200]})
        finally:
            os.environ.pop("NEUROSIM_FUSED_CONFIG", None)
        log("   sweep", rows[-1])
    return rows


def mlp_step(backend, T=100, B=64, hidden=1024, steps_budget_ms=3000):
    if DEVICE != "cuda":
        T, B, hidden = 3, 2, 16
    torch.manual_seed(0)
    sizes = [784, hidden, hidden, hidden, 10]
    layers = []
    for i in range(4):
        layers += [torch.nn.Linear(sizes[i], sizes[i + 1]), neurosim.LIF(beta=BETA, backend=backend)]
    net = torch.nn.Sequential(*layers).to(DEVICE)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    x = (torch.rand(T, B, 784, device=DEVICE) < 0.2).float()
    y = torch.randint(0, 10, (B,), device=DEVICE)

    def step():
        opt.zero_grad(set_to_none=True)
        counts = net(x).sum(0)
        loss = torch.nn.functional.cross_entropy(counts, y)
        loss.backward()
        opt.step()

    ms, reps = bench(step, budget_ms=steps_budget_ms, min_reps=5, max_reps=50)
    return ms, reps


def versions():
    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "device": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu (smoke run, not a result)"}
    for mod in ("triton", "snntorch", "norse", "spikingjelly"):
        try:
            m = __import__(mod)
            out[mod] = getattr(m, "__version__", "?")
        except Exception as e:
            out[mod] = f"not importable ({type(e).__name__})"
    if out.get("spikingjelly") == "?":
        from importlib.metadata import version

        out["spikingjelly"] = version("spikingjelly")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--sweep", action="store_true", help="also time other launch configurations of the kernels")
    ap.add_argument("--shapes", type=int, default=4, help="run only the first SHAPES shapes")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: checks the script, times nothing")
    ap.add_argument("--sync-each", action="store_true", help="synchronise after every timed call (see bench)")
    args = ap.parse_args()
    global DEVICE, SHAPES, SWEEP, SYNC_EACH
    SYNC_EACH = args.sync_each
    if args.smoke:
        DEVICE = "cpu"
        SHAPES = [(5, 2, 64, torch.float32), (3, 2, 64, torch.bfloat16)]
        SWEEP = SWEEP[:1]
    os.makedirs(args.out, exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    result = {"versions": versions(), "shapes": [], "mlp": {}}
    log(result["versions"])
    bw = copy_bandwidth()
    result["copy_bandwidth_TBps"] = bw / 1e12
    log(f"copy bandwidth {bw / 1e12:.2f} TB/s (read + write)")

    def save():
        with open(os.path.join(args.out, "lif_kernels.json"), "w") as f:
            json.dump(result, f, indent=1, default=str)
        with open(os.path.join(args.out, "lif_kernels.md"), "w") as f:
            f.write(markdown(result))

    def run_mlp():
        for backend in ("fused", "snntorch"):
            try:
                ms, reps = mlp_step(backend)
                result["mlp"][backend] = {"step_ms": ms, "reps": reps}
            except Exception as e:
                result["mlp"][backend] = {"error": f"{type(e).__name__}: {e}"[:300]}
            log("mlp", backend, result["mlp"][backend])
            save()

    for i, (T, B, N, dtype) in enumerate(SHAPES[: args.shapes]):
        if i == 1:
            run_mlp()  # early, so that a time limit (torch.compile of later shapes) cannot cost the MLP row
        torch.manual_seed(1)
        x = (torch.randn(T, B, N, device=DEVICE) * 0.6 + 0.35).to(dtype).requires_grad_(True)
        g = torch.randn(T, B, N, device=DEVICE).to(dtype)
        nbytes = T * B * N * x.element_size()
        floor_fwd = 2 * nbytes / bw * 1e3
        floor_fb = 5 * nbytes / bw * 1e3
        entry = {"T": T, "B": B, "N": N, "dtype": str(dtype).replace("torch.", ""), "floor_fwd_ms": floor_fwd,
                 "floor_fwd_bwd_ms": floor_fb, "rows": []}
        result["shapes"].append(entry)
        log(f"== T={T} B={B} N={N} {entry['dtype']}: floor fwd {floor_fwd:.3f} ms, fwd+bwd {floor_fb:.3f} ms")
        try:
            entry["check"] = check_fused(x, g)
            log("   check", entry["check"])
        except Exception:
            entry["check"] = {"error": traceback.format_exc()[-500:]}
        for name, fn in make_impls(T).items():
            if isinstance(fn, Exception):
                entry["rows"].append({"impl": name, "error": f"{type(fn).__name__}: {fn}"[:300]})
                log("  ", entry["rows"][-1])
                continue
            try:
                t0 = time.perf_counter()
                fwd, fb, reps, *dev = time_impl(fn, x, g, device_time=name.startswith(DEVICE_TIMED))
                entry["rows"].append({"impl": name, "fwd_ms": fwd, "fwd_bwd_ms": fb, "reps": reps,
                                      "fwd_x_floor": fwd / floor_fwd, "fwd_bwd_x_floor": fb / floor_fb,
                                      "wall_s": time.perf_counter() - t0})
                if dev:
                    entry["rows"][-1].update(fwd_dev_ms=dev[0], fwd_bwd_dev_ms=dev[1],
                                             fwd_dev_x_floor=dev[0] / floor_fwd, fwd_bwd_dev_x_floor=dev[1] / floor_fb)
            except Exception as e:
                entry["rows"].append({"impl": name, "error": f"{type(e).__name__}: {e}"[:300]})
            log("  ", entry["rows"][-1])
            save()
        if args.sweep and i < 3:
            entry["sweep"] = sweep(x, g, floor_fb)
        del x, g
        _empty_cache()
        save()
    if not result["mlp"]:
        run_mlp()
    save()
    log(markdown(result))


def markdown(result):
    v = result["versions"]
    lines = [f"Device: {v.get('device')}; torch {v.get('torch')} (CUDA {v.get('cuda')}), triton {v.get('triton')}, "
             f"snntorch {v.get('snntorch')}, norse {v.get('norse')}, spikingjelly {v.get('spikingjelly')}, "
             f"python {v.get('python')}.",
             f"Measured copy bandwidth: {result.get('copy_bandwidth_TBps', float('nan')):.2f} TB/s (read + write).",
             ""]
    for e in result["shapes"]:
        lines.append(f"**T={e['T']}, B={e['B']}, N={e['N']}, {e['dtype']}** - floor fwd {e['floor_fwd_ms']:.3f} ms, "
                     f"fwd+bwd {e['floor_fwd_bwd_ms']:.3f} ms")
        if "check" in e:
            lines.append(f"(fused vs torch loop, fp32: {e['check']})")
        lines += ["", "| implementation | fwd ms | x floor | fwd+bwd ms | x floor | fused speed-up (fwd+bwd) | "
                      "device fwd ms (x floor) | device fwd+bwd ms (x floor) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        fused = next((r for r in e["rows"] if r["impl"] == "neurosim fused" and "fwd_bwd_ms" in r), None)
        for r in e["rows"]:
            if "error" in r:
                lines.append(f"| {r['impl']} | failed: {r['error'][:120]} | | | | |")
                continue
            sp = r["fwd_bwd_ms"] / fused["fwd_bwd_ms"] if fused else math.nan
            dev = (f"{r['fwd_dev_ms']:.3f} ({r['fwd_dev_x_floor']:.2f}) | {r['fwd_bwd_dev_ms']:.3f} "
                   f"({r['fwd_bwd_dev_x_floor']:.2f})") if "fwd_dev_ms" in r else " | "
            lines.append(f"| {r['impl']} | {r['fwd_ms']:.3f} | {r['fwd_x_floor']:.2f} | {r['fwd_bwd_ms']:.3f} | "
                         f"{r['fwd_bwd_x_floor']:.2f} | {sp:.1f}x | {dev} |")
        if e.get("sweep"):
            lines.append("")
            lines.append("fused launch configs (K steps a chunk, VEC neurons a thread, warps): " + "; ".join(
                f"{s['config']}: {s['fwd_bwd_ms']:.3f} ms ({s['x_floor']:.2f}x)"
                + (f", device {s['fwd_dev_ms']:.3f} / {s['fwd_bwd_dev_ms']:.3f} ms ({s['dev_x_floor']:.2f}x)"
                   if "fwd_dev_ms" in s else "") if "fwd_bwd_ms" in s
                else f"{s['config']}: failed" for s in e["sweep"]))
        lines.append("")
    m = result.get("mlp", {})
    if m:
        lines.append("4-layer spiking MLP (784-1024-1024-1024-10, LIF after each Linear, T=100, B=64, fp32), one SGD "
                     "training step: " + ", ".join(f"{k}: {v.get('step_ms', float('nan')):.2f} ms" for k, v in m.items()))
        if "step_ms" in m.get("fused", {}) and "step_ms" in m.get("snntorch", {}):
            lines.append(f"speed-up fused vs snntorch: {m['snntorch']['step_ms'] / m['fused']['step_ms']:.1f}x")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
