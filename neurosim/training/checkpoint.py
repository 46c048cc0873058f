"""Atomic checkpoint files and RNG state capture.

Writing: to a temporary file in the same folder, flushed and fsync'ed, then renamed over the target (and the
folder fsync'ed), so a crash at any moment leaves either the old file or the new one, never half of one.
Reading: ``torch.load(weights_only=True)``; a truncated, foreign or mismatching file raises
:class:`CheckpointError` (a ``ValueError``) that names the file and what is wrong, before anything is changed.
"""
from __future__ import annotations

import io
import os
import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import validate
from ..neurons.lif import check_loadable

FORMAT = "neurosim.checkpoint"
# 2: configs mean today's model defaults; a version-1 config is read through registry.upgrade_config (the EST's
# masks in training only, the BTSP kernel at coincidence, settings the analog models never used)
# 3: encoder "latency" is the linear per-input code; before, it was the batch-normalised log code ("latency_log")
# 4: the trainer's partial metric sums of the epoch ("train_sums") are a list, one per process; before, one tensor
# (rank 0's: a mid-epoch resume under torchrun counted rank 0's part on every rank); and the history's "lr" is the
# rate an epoch trained with; before, the rate after its scheduler step (upgraded by _used_rates)
VERSION = 4
READS = (1, 2, 3, 4)
REQUIRED_KEYS = ("format", "version", "model", "optimizer", "scheduler", "epoch", "step_in_epoch",
                 "global_step", "rng", "config", "trainer")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (truncated, not a neurosim checkpoint, or for another model)."""


class ForeignCheckpoint(CheckpointError):
    """A readable torch file that is not a neurosim trainer checkpoint (a plain state dict, another tool's file):
    the command line's other loaders may still read it."""


def atomic_write(path: str | Path, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Call ``write(f)`` on a temp file next to ``path``, fsync it and rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - folders that cannot be opened (some platforms)
        return path
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def save(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write a checkpoint dict atomically (adds the format marker)."""
    payload = {"format": FORMAT, "version": VERSION, **payload}
    return atomic_write(path, lambda f: torch.save(payload, f))


def load(path: str | Path, map_location="cpu") -> dict[str, Any]:
    """Read and check a neurosim checkpoint with ``weights_only=True``; raise :class:`CheckpointError` if unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty (0 bytes)")
    if not zipfile.is_zipfile(path):   # torch.save always writes a zip archive; a cut one loses its directory
        raise CheckpointError(f"checkpoint {str(path)!r} is truncated or not a torch file (no complete zip archive, "
                              f"{path.stat().st_size} bytes)")
    problem = validate.zip_problem(path)
    if problem:
        raise CheckpointError(f"checkpoint {str(path)!r} is {problem}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        m = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        detail = f"it contains a {m.group(1)} object" if m else str(err).splitlines()[0][:200]
        raise CheckpointError(f"checkpoint {str(path)!r} is not a neurosim checkpoint: weights_only loading refused "
                              f"it ({detail})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as err:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is truncated or not a torch file ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200] if str(err) else 'no detail'})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ForeignCheckpoint(f"checkpoint {str(path)!r} is a torch file but not a neurosim checkpoint "
                              f"(no format marker {FORMAT!r})")
    if ckpt.get("version") not in READS:
        raise CheckpointError(f"checkpoint {str(path)!r} has format version {ckpt.get('version')!r}; "
                              f"this neurosim reads versions {', '.join(map(str, READS))}")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks {', '.join(missing)}")
    if ckpt["version"] < VERSION and isinstance(ckpt["config"], dict):
        from .registry import upgrade_config

        ckpt["config"] = upgrade_config(ckpt["config"], ckpt["version"])
        if ckpt["version"] < 4:
            _used_rates(ckpt)
    return ckpt


def _used_rates(ckpt: dict) -> None:
    """Before format 4 the history's "lr" of an epoch was the rate after its scheduler step, i.e. the next epoch's:
    the rate epoch ``e`` trained with is the one recorded for ``e - 1`` (the configured ``lr`` for the first), so a
    resumed run's log.csv and TensorBoard history carry one meaning."""
    trainer = ckpt.get("trainer")
    history = trainer.get("history") if isinstance(trainer, dict) else None
    if not (isinstance(history, list) and history and all(isinstance(r, dict) and "lr" in r for r in history)):
        return
    used = [ckpt["config"].get("lr")] + [r["lr"] for r in history[:-1]]
    trainer["history"] = [{**r, "lr": lr} for r, lr in zip(history, used)]


def check_state_dict(path, name: str, saved: dict, expected: dict) -> None:
    """Raise :class:`CheckpointError` unless ``saved`` has exactly ``expected``'s keys and tensor shapes."""
    missing = sorted(set(expected) - set(saved))
    extra = sorted(set(saved) - set(expected))
    if missing or extra:
        raise CheckpointError(f"checkpoint {str(path)!r} does not fit this {name}: missing {missing[:5]}, "
                              f"unexpected {extra[:5]}")
    for k, v in expected.items():
        if torch.is_tensor(v) and (not torch.is_tensor(saved[k]) or saved[k].shape != v.shape):
            shape = tuple(saved[k].shape) if torch.is_tensor(saved[k]) else type(saved[k]).__name__
            raise CheckpointError(f"checkpoint {str(path)!r} does not fit this {name}: {k} has shape {shape}, "
                                  f"expected {tuple(v.shape)}")


def check_neuron_values(path, model: torch.nn.Module, saved: dict) -> None:
    """Raise :class:`CheckpointError` when ``saved`` (``model``'s state dict) holds a neuron parameter value that its
    layer refuses to load (a NaN beta: :func:`neurosim.neurons.lif.check_loaded`), before anything is loaded."""
    try:
        check_loadable(model, saved)
    except ValueError as err:
        raise CheckpointError(f"checkpoint {str(path)!r} holds a value its model cannot run: {err}") from None


def check_fields(path, name: str, value: Any, keys: tuple[str, ...]) -> None:
    """Raise :class:`CheckpointError` unless ``value`` (the part ``name`` of the file) is a dict holding ``keys``."""
    if not isinstance(value, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} has a malformed {name}: a {type(value).__name__}, "
                              f"not a mapping")
    missing = [k for k in keys if k not in value]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks {', '.join(f'{name}.{k}' for k in missing)}")


# ---- RNG states as plain tensors / ints (all loadable with weights_only=True) -------------------------------

def layer_generators(model: torch.nn.Module | None) -> dict:
    """``{name: layer}`` of ``model``'s layers with their own random generators (``generator_states()``, as seeded
    random spike masks have)."""
    return {} if model is None else {name: m for name, m in model.named_modules()
                                     if callable(getattr(m, "generator_states", None))}


def rng_state(device: torch.device | None = None, model: torch.nn.Module | None = None) -> dict[str, Any]:
    """RNG states of torch (CPU, and the CUDA ``device`` in use if any), numpy and Python's ``random``, and of the
    own generators of ``model``'s layers (seeded random spike masks: ``generator_states()``)."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_version, "internal": torch.tensor(py_internal, dtype=torch.int64),
                   "gauss": py_gauss},
        "cuda": torch.cuda.get_rng_state(device) if device is not None and device.type == "cuda" else None,
        "layers": {name: m.generator_states() for name, m in layer_generators(model).items()},
    }
    return state


def check_rng_states(path, states: Any) -> None:
    """Raise :class:`CheckpointError` unless ``states`` is a non-empty list of :func:`rng_state` dicts (one per
    process), so that :func:`set_rng_state` cannot fail half way."""
    if not isinstance(states, list) or not states:
        raise CheckpointError(f"checkpoint {str(path)!r} holds no RNG states")
    for i, state in enumerate(states):
        check_fields(path, f"rng[{i}]", state, ("torch", "numpy", "python"))
        check_fields(path, f"rng[{i}].numpy", state["numpy"], ("keys", "pos", "has_gauss", "cached_gaussian"))
        check_fields(path, f"rng[{i}].python", state["python"], ("version", "internal", "gauss"))
        for name, t in (("torch", state["torch"]), ("numpy.keys", state["numpy"]["keys"]),
                        ("python.internal", state["python"]["internal"])):
            if not torch.is_tensor(t):
                raise CheckpointError(f"checkpoint {str(path)!r} has a malformed rng[{i}].{name}: a "
                                      f"{type(t).__name__}, not a tensor")


def set_rng_state(state: dict[str, Any], device: torch.device | None = None,
                  model: torch.nn.Module | None = None) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss"]))
    if state.get("cuda") is not None and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
    saved = state.get("layers") or {}  # (checkpoints before this field: the layers' masks start from their seeds)
    for name, m in layer_generators(model).items():
        if name in saved:
            m.set_generator_states(saved[name])
