"""Enhanced Spiking Transformer experiments: spike-count prediction, forecasting, digits; ablations, PE
comparison and a random-spike-masking sweep, over several seeds.

Self-contained (compact training loop; ``neurosim.training`` was not in main when this was written). The rows of
the EST section of RESULTS.md come from (RESULTS.md lists the CPU reruns of the seeds the GPU budget cut off)::

    python examples/est_experiments.py --suite all --device cuda --backend torch --workers 12 --steps 500 \
        --budget-s 390 --out runs/est                                                          # GPU (device tool)
    python examples/est_experiments.py --summarize runs/est/results.jsonl                     # tables
    python examples/est_experiments.py --suite smoke --device cpu --out runs/smoke            # tiny CPU check

Each run appends a line to ``OUT/results.jsonl``; a re-run into the same ``--out`` skips the runs (configuration and
seed) already there, so a run cut off by ``--budget-s`` or a crash resumes. ``--summarize`` counts each
(configuration, seed) once (the last line of a repeated one) and says so when a file repeats runs.

The "astro attention" ablation rows (issue 8: the full EST with astrocyte-modulated attention in place of the
convolutional SSA) were added later, on CPU::

    python examples/est_experiments.py --suite ablation --tasks digits --variants "astro attention" --seeds 0 1 2 \
        --steps 500 --backend torch --device cpu --out runs/est

Data layout: every task yields ``[B, N, F]`` sequences (N positions = tokens); the model repeats real input over
``num_steps`` SNN timesteps, or takes rate-coded spikes ``[T, B, N, F]`` (digits: rows are tokens, columns
features). Sequence tasks are causal: the output at position i predicts position i + horizon from positions <= i.

SynOps: ``neurosim.energy`` (issue 5) was not in main, so :func:`count_ops` counts them with forward hooks:
for ``nn.Linear`` / ``nn.Conv1d`` inputs holding non-negative integers (spikes; SEW-ADD sums count k times) the
ops are ``sum(input) x fan-out`` (Linear: out_features; Conv1d: out_channels/groups x kernel_size, edge effects
ignored); for real-valued inputs they are MACs ``numel x fan-out``; for :class:`neurosim.layers.MatMul` with at
least one binary (spike) operand the ops are the exact number of products with both operands non-zero, with no spike
operand (the astro attention's neuron term) every product is a MAC. Neuron updates and BatchNorm are not counted.
Masked spikes are zeros, so they cost nothing.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as Fn
from torch import nn

from neurosim import validate
from neurosim.cli import int_at_least
from neurosim.encoders import rate
from neurosim.layers import MatMul, NeuronSpec
from neurosim.models import ESTConfig, EnhancedSpikingTransformer, ablation_configs
from neurosim.neurons import BACKENDS

E_AC_PJ, E_MAC_PJ = 0.9, 4.6  # 45 nm, 32-bit float (Horowitz 2014)


# ------------------------------------------------------------------------------------------------ data
def population(n_seq, length, n_neurons=16, n_latent=3, seed=0, periods=(7.0, 12.0, 19.0)):
    """Poisson neurons driven by latent oscillators: ``z_k(t) = sin(2 pi t / P_k + phi_k)`` (random phase per
    sequence), ``rate = exp(b + W z)`` per bin with fixed W, b (drawn from ``seed=1234``); counts ~ Poisson(rate).
    Returns counts and the known rates, both ``[n_seq, length, n_neurons]``."""
    g = torch.Generator().manual_seed(1234)  # the population itself is fixed across data seeds
    w = torch.randn(n_latent, n_neurons, generator=g) * 0.6
    b = torch.log(torch.rand(n_neurons, generator=g) * 1.5 + 0.5)
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length, dtype=torch.float32)
    phase = torch.rand(n_seq, n_latent, generator=g) * 2 * math.pi
    per = torch.tensor(periods[:n_latent])
    z = torch.sin(2 * math.pi * t[None, :, None] / per[None, None] + phase[:, None, :])  # [S, L, K]
    rates = torch.exp(b + z @ w)
    counts = torch.poisson(rates, generator=g)
    return counts, rates


def forecast_series(kind, n_seq, length, seed=0):
    """``[n_seq, length]`` series: ``"multisine"`` (3 sines, random periods 6-30, amplitudes, phases, noise
    0.05) or ``"damped"`` (``A exp(-gamma t) sin(2 pi t / P + phi)``, gamma 0.02-0.08, P 8-20, noise 0.02)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length, dtype=torch.float32)[None]
    u = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    if kind == "multisine":
        y = sum((0.5 + 0.5 * u(n_seq, 1)) * torch.sin(2 * math.pi * t / (6 + 24 * u(n_seq, 1)) + 2 * math.pi * u(n_seq, 1))
                for _ in range(3))
        return y + 0.05 * torch.randn(n_seq, length, generator=g)
    if kind == "damped":
        a, gam, p, phi = 0.5 + u(n_seq, 1), 0.02 + 0.06 * u(n_seq, 1), 8 + 12 * u(n_seq, 1), 2 * math.pi * u(n_seq, 1)
        return a * torch.exp(-gam * t) * torch.sin(2 * math.pi * t / p + phi) + 0.02 * torch.randn(n_seq, length, generator=g)
    raise ValueError(f"kind must be 'multisine' or 'damped', got {kind!r}")


def make_task(task, seed, small=False):
    """Return dict(train=(x, y), test=(x, y, extra), cfg=dict(...), kind=...)."""
    n_train, n_test = (64, 32) if small else (2048, 512)
    if task == "population":
        L = 16 if small else 48
        counts, rates = population(n_train + n_test, L + 1, seed=seed)
        x, y, r = torch.log1p(counts[:, :-1]), counts[:, 1:], rates[:, 1:]
        return dict(kind="poisson", train=(x[:n_train], y[:n_train]), test=(x[n_train:], y[n_train:], r[n_train:]),
                    cfg=dict(in_features=16, out_features=16, max_len=L, causal=True, readout="tokens"))
    if task.startswith("forecast_"):
        L, h = (16, 2) if small else (48, 4)
        s = forecast_series(task.split("_", 1)[1], n_train + n_test, L + h, seed=seed)
        x, y = s[:, :L, None], s[:, h:, None]
        return dict(kind="mse", train=(x[:n_train], y[:n_train]), test=(x[n_train:], y[n_train:], None),
                    cfg=dict(in_features=1, out_features=1, max_len=L, causal=True, readout="tokens"))
    if task == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.tensor(d.images, dtype=torch.float32) / 16.0  # [S, 8 rows (tokens), 8 columns (features)]
        y = torch.tensor(d.target)
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))  # one fixed split
        x, y = x[perm], y[perm]
        n_tr = 64 if small else 1347
        return dict(kind="classify", train=(x[:n_tr], y[:n_tr]), test=(x[n_tr:n_tr + (32 if small else 450)],
                                                                          y[n_tr:n_tr + (32 if small else 450)], None),
                    cfg=dict(in_features=8, out_features=10, max_len=8, causal=False, readout="pool"))
    raise ValueError(f"unknown task {task!r}")


# ------------------------------------------------------------------------------------------------ SynOps
def _spike_like(x):
    return bool((x >= 0).all()) and bool((x == torch.round(x)).all())


def _binary(x):
    return bool(((x == 0) | (x == 1)).all())


def count_ops(model: nn.Module, x: torch.Tensor, batch: int | None = None) -> dict:
    """Forward ``x`` once and count synaptic operations (see the module docstring). Returns totals divided by
    ``batch`` (default: the batch size of a model input, ``[B, N, F]`` or ``[T, B, N, F]``)."""
    ops = {"synops": 0.0, "macs": 0.0}

    def linear_hook(mod, inp, out):
        a = inp[0].detach()
        fan = mod.out_features if isinstance(mod, nn.Linear) else mod.out_channels // mod.groups * mod.kernel_size[0]
        if _spike_like(a):
            ops["synops"] += float(a.sum()) * fan
        else:
            ops["macs"] += a.numel() * fan

    def matmul_hook(mod, inp, out):
        a, b = (t.detach() for t in inp)
        if _binary(a) or _binary(b):
            ops["synops"] += float(torch.matmul((a != 0).float(), (b != 0).float()).sum())
        else:  # no spike operand (e.g. the astro attention's neuron term, phi(Q) in {1, 2}): every product is a MAC
            ops["macs"] += float(a.shape[-1] * torch.matmul(a, b).numel())

    handles = []
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d)):
            handles.append(m.register_forward_hook(linear_hook))
        elif isinstance(m, MatMul):
            handles.append(m.register_forward_hook(matmul_hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    if batch is None:
        batch = x.shape[1] if x.dim() == 4 else x.shape[0]
    out = {k: v / batch for k, v in ops.items()}
    out["energy_nj"] = (E_AC_PJ * out["synops"] + E_MAC_PJ * out["macs"]) / 1e3
    return out


# ------------------------------------------------------------------------------------------------ one run
MODEL_DEFAULTS = dict(dim=32, depth=2, heads=4, mlp_ratio=2.0, num_steps=4, kernel_sizes=(3, 5, 7), pe_dim=16,
                      rsm_ratio=0.5, rsm_mode="always", tpu_kernel=3)
DIGIT_STEPS = 8


def build_config(task_cfg, variant: str, overrides: dict, backend="snntorch", small=False):
    base = dict(MODEL_DEFAULTS)
    if small:
        base.update(dim=16, heads=2, pe_dim=8)
    base.update(task_cfg)
    cfg = ESTConfig(neuron=NeuronSpec(backend=backend), **base)
    cfg = ablation_configs(cfg)[variant]
    return replace(cfg, **overrides) if overrides else cfg


def _encode(task, x, gen):
    """Digits: rate-code the [B, 8, 8] intensities into spikes [T, B, 8, 8]; sequences stay real [B, N, F]."""
    return rate(x, DIGIT_STEPS, generator=gen) if task == "digits" else x


def run_one(job: dict) -> dict:
    """Train one model on one task with one seed; return metrics, SynOps and timing."""
    t0 = time.time()
    dev = torch.device(job.get("device", "cpu"))
    small = job.get("small", False)
    torch.manual_seed(job["seed"])
    data = make_task(job["task"], job["seed"], small)
    cfg = build_config(data["cfg"], job["variant"], job.get("overrides", {}), job.get("backend", "snntorch"), small)
    cfg = replace(cfg, rsm_seed=job["seed"] * 7919)
    model = EnhancedSpikingTransformer(cfg).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=job.get("lr", 3e-3))
    steps = job.get("steps", 600)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    xtr, ytr = (t.to(dev) for t in data["train"])
    gen = torch.Generator(device=dev).manual_seed(job["seed"])
    bs = job.get("batch", 64)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(xtr), (bs,), device=dev, generator=gen)
        xb, yb = xtr[idx], ytr[idx]
        out = model(_encode(job["task"], xb, gen))
        loss = _loss(data["kind"], out, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    xte, yte, extra = data["test"]
    xte, yte = xte.to(dev), yte.to(dev)
    egen = torch.Generator(device=dev).manual_seed(10_000 + job["seed"])
    xin = _encode(job["task"], xte, egen)
    with torch.no_grad():
        out = model(xin)
    res = dict(job, final_train_loss=loss.item(), seconds=time.time() - t0, rsm_mode=cfg.rsm_mode,
               rsm_ratio=cfg.rsm_ratio, residual=cfg.residual, pos_encoding=cfg.pos_encoding)
    res.update(_metrics(data["kind"], out, yte, None if extra is None else extra.to(dev)))
    res.update(count_ops(model, xin))
    res["device"] = dev.type
    return res


def _loss(kind, out, y):
    if kind == "poisson":
        return Fn.poisson_nll_loss(out, y, log_input=True)
    if kind == "mse":
        return Fn.mse_loss(out, y)
    return Fn.cross_entropy(out, y)


def r2(pred, target):
    return float(1 - ((pred - target) ** 2).sum() / ((target - target.mean()) ** 2).sum())


def _metrics(kind, out, y, rates):
    if kind == "poisson":
        pred = out.exp()
        # R2 per neuron against the known rates, averaged over neurons
        per = [r2(pred[..., n], rates[..., n]) for n in range(rates.shape[-1])]
        return dict(mse=float(((pred - rates) ** 2).mean()), r2=float(np.mean(per)))
    if kind == "mse":
        return dict(mse=float(((out - y) ** 2).mean()), r2=r2(out, y))
    return dict(accuracy=float((out.argmax(-1) == y).float().mean()))


def ema_baseline(seed=0, alpha=0.2):
    """Non-learned reference for spike-count prediction: exponential moving average of past counts (alpha 0.2
    was the best of 0.05, 0.1, 0.2, 0.3, 0.5 on data seed 99)."""
    counts, rates = population(512, 49, seed=seed)
    x, r = counts[:, :-1], rates[:, 1:]
    ema, preds = x[:, 0], []
    for t in range(x.shape[1]):
        ema = alpha * x[:, t] + (1 - alpha) * ema if t else x[:, 0]
        preds.append(ema)
    pred = torch.stack(preds, 1)
    return dict(mse=float(((pred - r) ** 2).mean()), r2=float(np.mean([r2(pred[..., n], r[..., n]) for n in range(16)])))


# ------------------------------------------------------------------------------------------------ suites
ABLATION_VARIANTS = ["EST (full)", "- conv attention (linear SSA)", "astro attention", "- CPG-PE (no PE)",
                     "- TPU", "- membrane shortcut (SEW-ADD)", "- RSM (ratio 0)", "Spikformer baseline"]
RSM_RATIOS = [0.0, 0.25, 0.5, 0.75, 0.9]


def jobs_for(suite, seeds, device, steps, small=False, backend="snntorch"):
    """All runs of a suite, ordered seed by seed (a cut-off by the time budget loses whole seeds last)."""
    jobs = []

    def add(group, task, variant="EST (full)", **overrides):
        for s in seeds:
            jobs.append(dict(group=group, task=task, variant=variant, overrides=overrides, seed=s, device=device,
                             steps=steps, small=small, backend=backend))

    if suite in ("all", "ablation"):
        for task in ("population", "digits", "forecast_damped"):
            for v in ABLATION_VARIANTS:
                add("ablation", task, v)
    if suite in ("all", "pe"):
        for task in ("forecast_damped", "forecast_multisine"):
            for pe in ("cpg", "cpg_lv2024", "sin", "learned", "none"):
                add("pe", task, pos_encoding=pe)
    if suite in ("all", "rsm"):
        for task in ("digits", "population"):
            for r in RSM_RATIOS:
                add("rsm", task, rsm_ratio=r, rsm_mode="always")
        for r in RSM_RATIOS[1:]:
            add("rsm", "digits", rsm_ratio=r, rsm_mode="train")
    if suite == "smoke":
        add("smoke", "population")
        add("smoke", "digits", "Spikformer baseline")
        add("smoke", "forecast_damped", pos_encoding="sin")
    return sorted(jobs, key=lambda j: seeds.index(j["seed"]))


def _worker_init():
    torch.set_num_threads(1)


def _check_filters(ap, args, jobs):
    """--tasks / --variants / --pe / --rsm-mode name what the suite has, and together leave a run: else a usage
    error naming the allowed values (a misspelt name ran 0 jobs)."""
    suite = f"--suite {args.suite}"
    suites_with = {"PE runs": ("pe", "all", "smoke"), "RSM runs": ("rsm", "all")}

    def check(flag, given, values, what, runs=None):
        allowed = list(dict.fromkeys(v for v in values if v is not None))
        if not allowed:
            ap.error(f"{flag}: {suite} has no {runs} (--suite {', '.join(suites_with[runs])} have them)")
        bad = [v for v in given if v not in allowed]
        if bad:
            ap.error(f"{flag}: {', '.join(repr(v) for v in bad)} {'is' if len(bad) == 1 else 'are'} not among the "
                     f"{what}s of {suite}; choose from {', '.join(repr(v) for v in allowed)}")

    if args.tasks:
        check("--tasks", args.tasks, [j["task"] for j in jobs], "task")
    if args.variants:
        check("--variants", args.variants, [j["variant"] for j in jobs], "variant")
    if args.pe:
        check("--pe", args.pe, [j["overrides"].get("pos_encoding") for j in jobs], "positional encoding", "PE runs")
    if args.rsm_mode:
        check("--rsm-mode", [args.rsm_mode], [j["overrides"].get("rsm_mode") for j in jobs], "RSM mode", "RSM runs")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", default="smoke", choices=["all", "ablation", "pe", "rsm", "smoke"])
    ap.add_argument("--seeds", type=int_at_least(0), nargs="+", default=[0, 1, 2])
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--backend", default="snntorch", choices=BACKENDS, help="neuron backend of every model")
    ap.add_argument("--steps", type=int_at_least(1), default=None)
    ap.add_argument("--workers", type=int_at_least(1), default=1)
    ap.add_argument("--tasks", nargs="+", default=None, help="only these tasks (default: all of the suite)")
    ap.add_argument("--variants", nargs="+", default=None, help="only these model variants (see ablation_configs)")
    ap.add_argument("--pe", nargs="+", default=None, help="only PE runs of these positional encodings")
    ap.add_argument("--rsm-mode", default=None, choices=["train", "always"], help="only RSM runs of this mode")
    ap.add_argument("--budget-s", type=float, default=float("inf"), help="stop starting jobs after this many seconds")
    ap.add_argument("--out", default="runs/est")
    ap.add_argument("--summarize", default=None, help="print markdown tables from a results.jsonl and exit")
    ap.add_argument("--plot", default=None, help="with --summarize: also draw the RSM sweep into this PNG")
    args = ap.parse_args(argv)
    if args.plot and not args.summarize:
        ap.error("--plot draws the runs of a results file: give the file with --summarize (e.g. --summarize "
                 "OUT/results.jsonl --plot rsm.png)")
    if args.summarize:
        try:
            validate.input_file("--summarize", args.summarize)
            problem = validate.output_problem(args.plot) if args.plot else None
            if problem:
                raise ValueError(f"--plot {args.plot!r} cannot be written: {problem}")
            print(summarize(args.summarize))
        except BadResults as err:
            ap.error(f"--summarize: {err}")
        except ValueError as err:
            ap.error(str(err))
        if args.plot:
            try:
                plot_rsm(args.summarize, args.plot)
            except NothingToPlot as err:
                print(f"--plot: {err}", file=sys.stderr)
                return 1
        return 0
    repeated = sorted({s for s in args.seeds if args.seeds.count(s) > 1})
    if repeated:
        ap.error(f"--seeds: {', '.join(map(str, repeated))} given more than once")
    try:
        validate.device("--device", args.device)
    except ValueError as err:
        ap.error(str(err))
    problem = validate.output_problem(os.path.join(args.out, "results.jsonl"))
    if problem:
        ap.error(f"--out {args.out!r} cannot hold results.jsonl: {problem}")
    small = args.suite == "smoke"
    steps = args.steps or (20 if small else 600)
    jobs = jobs_for(args.suite, args.seeds, args.device, steps, small, args.backend)
    _check_filters(ap, args, jobs)
    planned = len(jobs)
    if args.tasks:
        jobs = [j for j in jobs if j["task"] in args.tasks]
    if args.variants:
        jobs = [j for j in jobs if j["variant"] in args.variants]
    if args.pe:
        jobs = [j for j in jobs if j["overrides"].get("pos_encoding") in args.pe]
    if args.rsm_mode:
        jobs = [j for j in jobs if j["overrides"].get("rsm_mode", args.rsm_mode) == args.rsm_mode]
    if not jobs:
        given = " ".join(f"{flag} {' '.join(map(repr, v))}" for flag, v in (
            ("--tasks", args.tasks), ("--variants", args.variants), ("--pe", args.pe),
            ("--rsm-mode", [args.rsm_mode] if args.rsm_mode else None)) if v)
        ap.error(f"{given}: no run of --suite {args.suite} ({planned} planned) matches these filters together")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "results.jsonl")
    if os.path.exists(path):  # a re-run into the same --out resumes: the runs already there are not run again
        try:
            done = {run_key(r) for r in load_rows(path)[0]}
        except BadResults as err:
            ap.error(f"--out: {err}")
        left = [j for j in jobs if run_key(j) not in done]
        if len(left) < len(jobs):
            print(f"{len(jobs) - len(left)} of {len(jobs)} runs are already in {path}: skipped (to run them again, "
                  f"use another --out or take their lines out of the file)", flush=True)
        jobs = left
    start = time.time()
    from tqdm import tqdm

    with open(path, "a") as fh:
        if args.workers > 1:
            import multiprocessing as mp

            ctx = mp.get_context("spawn")
            with ctx.Pool(args.workers, initializer=_worker_init) as pool:
                pending = [pool.apply_async(run_one, (j,)) for j in jobs]
                for p in tqdm(pending, desc="EST runs", file=sys.stdout, mininterval=10):
                    left = args.budget_s - (time.time() - start)
                    if left <= 0:
                        print("time budget spent: remaining jobs dropped", flush=True)
                        pool.terminate()
                        break
                    try:
                        res = p.get(timeout=left)
                    except mp.TimeoutError:
                        print("time budget spent: remaining jobs dropped", flush=True)
                        pool.terminate()
                        break
                    fh.write(json.dumps(res) + "\n")
                    fh.flush()
        else:
            for j in tqdm(jobs, desc="EST runs", file=sys.stdout):
                if time.time() - start > args.budget_s:
                    print("time budget spent: remaining jobs dropped")
                    break
                fh.write(json.dumps(run_one(j)) + "\n")
                fh.flush()
    print(summarize(path))
    return 0


# ------------------------------------------------------------------------------------------------ tables
# What makes two rows the same run: its configuration and seed (not the device: a CPU rerun of a GPU run's seed is
# that seed again). lr and batch are job keys with defaults in run_one, absent from the suites' jobs.
RUN_KEYS = ("group", "task", "variant", "overrides", "seed", "steps", "small", "backend", "lr", "batch")


def run_key(r: dict) -> str:
    """The identity of a job or results row (see RUN_KEYS), as a string."""
    return json.dumps([r.get(k) for k in RUN_KEYS], sort_keys=True)


class BadResults(ValueError):
    """A results file holds a line that is not a run of this script."""


ROW_KEYS = ("group", "task", "variant", "overrides", "seed", "seconds", "synops", "macs", "energy_nj", "rsm_ratio",
            "rsm_mode", "pos_encoding")


def load_rows(path):
    """The runs of a results.jsonl, each (configuration, seed) once: of a run that appears on several lines (run
    again into the same file) the last line is kept, in the place of the first. Returns ``(rows, repeated)``,
    ``repeated`` mapping each such run's key to its number of lines. A line that is not a run of this script
    raises :class:`BadResults` naming it."""
    latest, lines = {}, {}
    with open(path) as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    r = json.loads(line.strip())
                except json.JSONDecodeError as err:
                    at = err.msg if err.msg.endswith(" at") else err.msg + " at"
                    raise BadResults(f"{path} line {n} is not JSON ({at} column {err.colno}; a line cut short?)"
                                     ) from None
                missing = [k for k in ROW_KEYS if k not in r] if isinstance(r, dict) else ["a JSON object"]
                if not missing and "r2" not in r and "accuracy" not in r:
                    missing = ["r2 or accuracy"]
                if missing:
                    raise BadResults(f"{path} line {n} is not a run of this script: it lacks {', '.join(missing)}")
                k = run_key(r)
                latest[k] = r
                lines[k] = lines.get(k, 0) + 1
    return list(latest.values()), {k: n for k, n in lines.items() if n > 1}


def _ms(vals, fmt):
    vals = np.asarray(vals, dtype=float)
    sd = vals.std(ddof=1) if len(vals) > 1 else float("nan")
    return f"{fmt.format(vals.mean())} ± {fmt.format(sd)} (n={len(vals)})"


def summarize(path) -> str:
    rows, repeated = load_rows(path)
    if not rows:
        return f"{path} holds no runs."
    out = []
    # training settings that differ between the file's runs split table rows (not averaged as if seeds), labelled
    varying = [k for k in ("steps", "small", "backend", "lr", "batch") if len({r.get(k) for r in rows}) > 1]

    def setting(r):
        return f" [{', '.join(f'{k} {r.get(k)}' for k in varying)}]" if varying else ""

    def metric(r):
        return ("accuracy", r["accuracy"]) if "accuracy" in r else ("r2", r["r2"])

    def table(title, group, keyf, keyname):
        sel = [r for r in rows if r["group"] == group]
        if not sel:
            return
        out.append(f"\n### {title}\n")
        out.append(f"| task | {keyname} | metric | score (mean ± std over seeds) | SynOps / sample | MACs / sample | energy nJ / sample |")
        out.append("|---|---|---|---|---|---|---|")
        keys = []
        for r in sel:
            k = (r["task"], keyf(r) + setting(r))
            if k not in keys:
                keys.append(k)
        for task, key in keys:
            g = [r for r in sel if r["task"] == task and keyf(r) + setting(r) == key]
            name = metric(g[0])[0]
            out.append(f"| {task} | {key} | {name} | {_ms([metric(r)[1] for r in g], '{:.4f}')} | "
                       f"{_ms([r['synops'] for r in g], '{:.3g}')} | {np.mean([r['macs'] for r in g]):.3g} | "
                       f"{np.mean([r['energy_nj'] for r in g]):.3g} |")

    table("Ablation (each row switches one EST component back to the baseline choice)", "ablation",
          lambda r: r["variant"], "variant")
    table("Positional encoding (full EST otherwise)", "pe", lambda r: r["pos_encoding"], "PE")
    table("Random spike masking sweep", "rsm", lambda r: f"ratio {r['rsm_ratio']} ({r['rsm_mode']})", "RSM")
    table("Smoke", "smoke", lambda r: r["variant"], "variant")
    if any(r["task"] == "population" for r in rows):
        ema = [ema_baseline(seed=s) for s in (0, 1, 2)]
        out.append(f"\nNon-learned reference for spike-count prediction (EMA of past counts, alpha 0.2): "
                   f"R2 {_ms([e['r2'] for e in ema], '{:.4f}')}, MSE {np.mean([e['mse'] for e in ema]):.4f}.")
    secs = [r["seconds"] for r in rows]
    out.append(f"\n{len(rows)} runs, {np.mean(secs):.1f} s per run on average.")
    if repeated:
        shown = [f"{r['group']} {r['task']} {r['variant']!r} {json.dumps(r['overrides'], sort_keys=True)} seed "
                 f"{r['seed']} ({repeated[run_key(r)]} lines)" for r in rows if run_key(r) in repeated]
        more = f"; and {len(shown) - 5} more" if len(shown) > 5 else ""
        out.append(f"\nNote: {len(repeated)} runs appear on more than one line of {path} (the same configuration and "
                   f"seed, run again into the same file); each is counted once, its last line: "
                   f"{'; '.join(shown[:5])}{more}.")
    return "\n".join(out)


class NothingToPlot(ValueError):
    """The results file holds no run that the plot draws."""


def plot_rsm(path, png):
    """Score and SynOps against the mask ratio (mean and std over seeds), one panel per task with RSM runs, one line
    per mask mode with runs (a single ratio is a single point). A file without RSM runs raises
    :class:`NothingToPlot` and writes no PNG."""
    rows = [r for r in load_rows(path)[0] if r["group"] == "rsm"]
    if not rows:
        raise NothingToPlot(f"{path} holds no RSM sweep runs (group 'rsm': --suite rsm or all), so there is "
                            f"nothing to plot; {png} not written")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in rows})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        ax2 = ax.twinx()
        for mode, style in (("always", "-o"), ("train", "--s")):
            if not any(r["task"] == task and r["rsm_mode"] == mode for r in rows):
                continue
            # ratio 0 masks nothing in either mode: its runs start both lines
            sel = [r for r in rows if r["task"] == task and (r["rsm_mode"] == mode or r["rsm_ratio"] == 0)]
            ratios = sorted({r["rsm_ratio"] for r in sel})
            score = [[r.get("accuracy", r.get("r2")) for r in sel if r["rsm_ratio"] == q] for q in ratios]
            syn = [[r["synops"] for r in sel if r["rsm_ratio"] == q] for q in ratios]
            ax.errorbar(ratios, [np.mean(v) for v in score], [np.std(v) for v in score], fmt=style, color="C0",
                        label=f"score, mask {mode}")
            ax2.errorbar(ratios, [np.mean(v) for v in syn], [np.std(v) for v in syn], fmt=style, color="C3",
                         label=f"SynOps, mask {mode}")
        ax.set_xlabel("RSM mask ratio")
        ax.set_ylabel("accuracy" if task == "digits" else "R2 vs known rates", color="C0")
        ax2.set_ylabel("SynOps per test sample", color="C3")
        ax.set_title(f"Random spike masking: {task}")
        ax.legend(loc="lower left", fontsize=8)
        ax2.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(png)), exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
