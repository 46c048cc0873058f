"""Running exported NetX files on Lava's CPU simulator, from the main environment.

lava-dl 0.6.0 needs Python 3.10 (torch < 2.4, numpy < 2), so it lives in its own virtual environment:
``$NEUROSIM_LAVA_VENV`` or ``<repo>/.venv-lava``, created by ``scripts/lava_env.sh`` on first use when missing
(a few minutes and several GB, once; the installer's output goes to stderr as it runs). :func:`run_lava` writes the
input spikes to an ``.npz`` in a temporary folder, runs ``lava_runner.py`` (next to this file) with the Lava
interpreter, and reads the spikes back.
"""
from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from neurosim import validate

RUNNER = Path(__file__).with_name("lava_runner.py")
REPO = Path(__file__).resolve().parent.parent


class LavaError(RuntimeError):
    """The Lava environment could not be created or the Lava simulation failed (message has its output)."""


def lava_venv() -> Path:
    return Path(os.environ.get("NEUROSIM_LAVA_VENV") or REPO / ".venv-lava")


def lava_python(create: bool = True) -> Path:
    """Path of the Lava environment's interpreter; runs ``scripts/lava_env.sh`` to create it if needed."""
    venv = lava_venv()
    py = venv / "bin" / "python"
    script = REPO / "scripts" / "lava_env.sh"
    ready = (venv / ".neurosim-lava-stamp").is_file() and py.exists()
    if not ready:
        if not create:
            raise LavaError(f"no Lava environment at {venv}")
        if not script.is_file():
            raise LavaError(f"no Lava environment at {venv} and no scripts/lava_env.sh to create it; set "
                            "NEUROSIM_LAVA_VENV to an environment with lava-dl 0.6.0 (Python 3.10)")
        print(f"neurosim: no Lava environment at {venv}: creating it with scripts/lava_env.sh (lava-dl 0.6.0 on "
              "Python 3.10: a few minutes and several GB, once; set NEUROSIM_LAVA_VENV to use an existing one)",
              file=sys.stderr, flush=True)
        code, tail = _run_installer(["bash", str(script)], dict(os.environ, NEUROSIM_LAVA_VENV=str(venv)))
        if code != 0 or not py.exists():
            how = f"failed (exit {code})" if code != 0 else f"left no interpreter at {py}"
            raise LavaError(f"scripts/lava_env.sh {how} creating the Lava environment in {venv}; its last lines:\n"
                            + "".join(tail).rstrip())
    return py


def _run_installer(cmd, env, keep: int = 40):
    """Run ``cmd``, copying each line of its output (stdout and stderr) to ``sys.stderr`` as it comes, indented;
    return ``(exit code, its last keep lines)``. Interrupted, it ends the installer's process group."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", bufsize=1, start_new_session=True)
    tail = collections.deque(maxlen=keep)
    try:
        for line in proc.stdout:
            tail.append(line)
            sys.stderr.write("  | " + line)
            sys.stderr.flush()
        return proc.wait(), list(tail)
    finally:
        proc.stdout.close()
        if proc.poll() is None:  # (an interrupt, or an error writing the output: no pip left running behind)
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()


def _spikes_np(spikes) -> np.ndarray:
    x = torch.as_tensor(spikes).detach().cpu().float()
    validate.binary("spikes", x)
    validate.rank_at_least("spikes", x, 3, "[T, B, *input_shape]")
    return x.numpy().astype(np.uint8)


def run_lava_many(jobs, inspect=(), timeout: Optional[float] = None, return_voltage: bool = False):
    """Run several ``(path, spikes, steps)`` jobs in one Lava process (Lava is imported once).

    Returns, per job, the list of every layer's spikes ``[steps, B, *shape]`` as float tensors; with
    ``return_voltage=True`` a pair ``(spikes, voltages)``, ``voltages`` every layer's membrane after the last step
    (see :func:`run_lava`). With ``inspect`` (NetX file paths) it returns ``(results, descriptions)``: for each
    file, a dict of what ``netx.hdf5.Network`` built from it (block types, shapes, neuron parameters, synapse
    weights).
    """
    jobs, inspect = list(jobs), [Path(p).resolve() for p in inspect]
    prepared = []
    for p in inspect:
        validate.input_file("path", p)
    for path, spikes, steps in jobs:
        path = validate.input_file("path", path)
        x = _spikes_np(spikes)
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"spikes must hold at least one time step and one sample [T >= 1, B >= 1, ...], got "
                             f"shape {tuple(x.shape)}")
        from .graph import ExportError
        from .netx import read_netx

        try:  # (a clear error for a file that is not a NetX network, and the input's shape, before Lava starts)
            input_shape = read_netx(path)[1]
        except ExportError as err:
            if not all(name.startswith("layer/") for name, _ in err.problems):
                raise
            input_shape = None  # (layers or fields only Lava itself runs, e.g. delays: Lava checks)
        # (the shape exactly; a flat input's features may come in any shape of that size, as LoihiNetwork takes them)
        flat_ok = input_shape is not None and len(input_shape) == 1 and int(np.prod(x.shape[2:])) == input_shape[0]
        if input_shape is not None and tuple(x.shape[2:]) != tuple(input_shape) and not flat_ok:
            raise ValueError(f"spikes: {str(path)!r} takes input steps of shape {tuple(input_shape)}, got "
                             f"{tuple(x.shape[2:])} (spikes {tuple(x.shape)} must be "
                             f"[T, B, {', '.join(map(str, input_shape))}])")
        steps = x.shape[0] if steps is None else validate.positive_int("steps", steps)
        if steps < x.shape[0]:
            raise ValueError(f"steps must be >= the input length T={x.shape[0]}, got {steps}")
        prepared.append((path.resolve(), x, steps))
    py = lava_python()
    with tempfile.TemporaryDirectory(prefix="neurosim-lava-") as tmp:
        args = []
        for i, (path, x, steps) in enumerate(prepared):
            inp, out = Path(tmp) / f"in{i}.npz", Path(tmp) / f"out{i}.npz"
            np.savez(inp, spikes=x, steps=np.int64(steps))
            args += [str(path), str(inp), str(out)]
        for i, p in enumerate(inspect):
            args += ["--inspect", str(p), str(Path(tmp) / f"inspect{i}.npz")]
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env.setdefault("OMP_NUM_THREADS", "1")
        env["MPLBACKEND"] = "Agg"    # lava-dl imports matplotlib; a Jupyter kernel's inline backend is unknown there
        res = subprocess.run([str(py), str(RUNNER), *args], env=env, capture_output=True, text=True,
                             timeout=timeout, cwd=tmp)
        if res.returncode != 0:
            raise LavaError(f"the Lava simulation failed (exit {res.returncode}):\n{res.stderr[-4000:]}")
        results = []
        for i in range(len(prepared)):
            with np.load(Path(tmp) / f"out{i}.npz") as d:
                n = sum(k.startswith("layer_") for k in d.files)
                spikes = [torch.from_numpy(d[f"layer_{j}"].astype(np.float32)) for j in range(n)]
                volts = [torch.from_numpy(d[f"v_{j}"].astype(np.float64)) for j in range(n)]
                results.append((spikes, volts) if return_voltage else spikes)
        described = []
        for i in range(len(inspect)):
            with np.load(Path(tmp) / f"inspect{i}.npz") as d:
                described.append({k: d[k] for k in d.files})
    return (results, described) if inspect else results


def run_lava(path, spikes, steps: Optional[int] = None, return_all: bool = False, timeout: Optional[float] = None,
             return_voltage: bool = False):
    """Run the NetX file ``path`` on Lava's CPU simulator (Loihi 2 sim config, fixed point).

    ``spikes``: binary input ``[T, B, *input_shape]`` (tensor or array); ``steps`` >= T (the input is padded
    with zeros; use :func:`neurosim.hardware.pad_steps` to cover the network's latency). Each sample starts
    from rest. Returns the output layer's spikes ``[steps, B, *out_shape]`` (float tensor), or the list of
    every layer's spikes with ``return_all=True``.

    ``return_voltage=True`` returns ``(spikes, v)``: ``v`` ``[B, *out_shape]`` is the output layer's membrane
    after the last step (every layer's, a list, with ``return_all``), in Lava's integer units (one weight LSB is
    64; divide by ``64 * scale``, the layer's ``LoihiNetwork.layers[i].scale``, for the float model's units). A
    readout that integrates without spiking (``SpikingMLP.export_stack``) keeps its prediction there: the
    argmax of ``v`` is the predicted class.
    """
    out, v = run_lava_many([(path, spikes, steps)], timeout=timeout, return_voltage=True)[0]
    if not return_all:
        out, v = out[-1], v[-1]
    return (out, v) if return_voltage else out
