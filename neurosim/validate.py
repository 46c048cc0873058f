"""Input checks shared by every public entry point.

Each check raises :class:`ValueError` naming the argument and the allowed range, so bad input never turns
into a silently clamped or truncated result.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, Iterable

import torch

from .context_stack import Stacked

_DEFERRED = Stacked("neurosim_deferred_checks")  # the innermost deferred_checks block's DeferredChecks


COMPACT_EVERY = 4096  # queued checks a DeferredChecks holds before it compacts them


class DeferredChecks:
    """NaN/inf checks whose verdicts stay on the device until :meth:`check` reads them all at once.

    Made active by :func:`deferred_checks`. While active, :func:`finite` and :func:`flag` do not read anything
    back to the host (a GPU would wait for all queued work at every check): they queue a 0-d device value,
    labelled with ``where()`` (a string, or an object whose ``str()`` is one, made only for the error: e.g. the
    layer running, as the energy meter passes it), and :meth:`check` reads
    every queued value with one transfer per device and dtype, raising for the first bad one in call order.

    A long block (an energy meter over many batches) does not keep a value per check: every
    :data:`COMPACT_EVERY` checks the queued values become one verdict tensor per device, dtype and kind, copied to
    the host without waiting (pinned memory, an event), and the verdicts whose copy has arrived are read then: the
    first bad one is kept for :meth:`check` and the rest dropped. The slots a captured CUDA graph adds its checks to
    (``accumulate``) are kept as they are, and read by :meth:`check`: every replay adds to them.
    """

    def __init__(self, where: Callable[[], str] | None = None):
        self.where = where
        # (index, label, name, value, kind): "sum" bad when not finite, "flag" bad when nonzero; index: the check's
        # place in call order
        self._items: list = []
        self._live: list = []  # the same for the slots a captured graph adds to (never compacted)
        self._n = 0  # checks queued since the last check()
        # compacted checks not read yet: ([(index, label, name)], [(positions, verdicts, event)])
        self._chunks: list = []
        self._first_bad = None  # (index, label, name) of the first bad check found among the compacted ones
        # while a CUDA graph is captured: value -> a slot that the graph adds the value to at every replay (a
        # non-finite sum or a nonzero flag then stays so over all replays)
        self.accumulate: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.failed = None  # the label (where()'s object) of the bad check check() last raised for

    def __len__(self):
        """Checks queued since the last :meth:`check`."""
        return self._n

    def _label(self):
        return self.where() if self.where is not None else ""

    def add_values(self, name: str, x: torch.Tensor):
        """Queue the check of ``x``'s values (one device reduction, no host read)."""
        x = x.detach()
        if x.dtype == torch.float64:  # finite float64 values can overflow a float64 sum: test them one by one
            self._add(name, (~torch.isfinite(x)).any(), "flag")
        else:
            self._add(name, x.sum(dtype=torch.float64), "sum")

    def add_flag(self, name: str, bad: torch.Tensor, problem: str | None = None):
        """Queue a kernel's flag (a one-element device tensor, nonzero when ``name`` held NaN/inf, or what
        ``problem`` says: the error then reads ``"{name} {problem}"``)."""
        self._add(name if problem is None else (name, problem), bad, "flag")

    def _add(self, name: str, value: torch.Tensor, kind: str):
        item = (self._n, self._label(), name, value.reshape(1), kind)
        self._n += 1
        if self.accumulate is not None:
            self._live.append(item[:3] + (self.accumulate(value).reshape(1), kind))
            return
        self._items.append(item)
        if len(self._items) >= COMPACT_EVERY:
            self._compact()

    def drop_after(self, n: int):
        """Forget the checks queued after the first ``n`` (a failed CUDA graph capture's)."""
        self._items = [it for it in self._items if it[0] < n]
        self._live = [it for it in self._live if it[0] < n]
        self._n = min(self._n, n)

    def _compact(self):
        """The queued values as verdicts on their way to the host (see the class docstring)."""
        self._scan(wait=False)
        items, self._items = self._items, []
        if self._first_bad is not None:
            return  # (a bad check came first: nothing later is read)
        groups: dict = {}
        for i, (_, _, _, v, kind) in enumerate(items):
            groups.setdefault((v.device, v.dtype, kind), []).append(i)
        parts = []
        for (device, _, kind), idx in groups.items():
            values = torch.cat([items[i][3] for i in idx])
            bad = ~torch.isfinite(values) if kind == "sum" else values != 0
            event = None
            if device.type == "cuda":
                with torch.cuda.device(device):
                    host = torch.empty(bad.shape, dtype=torch.bool, pin_memory=True)
                    host.copy_(bad, non_blocking=True)
                    event = torch.cuda.Event()
                    event.record()
                bad = host
            parts.append((idx, bad, event))
        self._chunks.append(([it[:3] for it in items], parts))

    def _scan(self, wait: bool):
        """Read the compacted verdicts, oldest first, that have reached the host (``wait``: all of them), until a
        bad one is found."""
        while self._chunks and self._first_bad is None:
            labels, parts = self._chunks[0]
            if not wait and any(e is not None and not e.query() for _, _, e in parts):
                return
            for _, _, event in parts:
                if event is not None:
                    event.synchronize()
            bad = [i for idx, verdicts, _ in parts for i, b in zip(idx, verdicts.tolist()) if b]
            if bad:
                self._first_bad = labels[min(bad)]
            self._chunks.pop(0)
        if self._first_bad is not None:
            self._chunks.clear()

    def check(self):
        """Read the queued values back (one transfer per device and dtype) and clear them; raise ValueError
        naming the first bad one."""
        self._scan(wait=True)
        found = [self._first_bad] if self._first_bad is not None else []
        items = self._items + self._live
        self._items, self._live, self._chunks, self._n, self._first_bad = [], [], [], 0, None
        values = read_back([it[3] for it in items])
        found += [it[:3] for it, v in zip(items, values)
                  if (it[4] == "sum" and not math.isfinite(v)) or (it[4] == "flag" and v)]
        if found:
            _, label, name = min(found, key=lambda f: f[0])
            self.failed = label  # (the object where() gave: the energy meter compares it with its layers)
            label = str(label)  # (made now: where() may return any object naming the place)
            name, problem = name if isinstance(name, tuple) else (name, "contains NaN/inf value(s); all values must "
                                                                        "be finite")
            raise ValueError(f"{label + ': ' if label else ''}{name} {problem}")


def read_back(values: list) -> list:
    """Python numbers of one-element tensors, read with one device->host transfer per (device, dtype). (Plain
    synchronous copies: with the device idle, one costs the H200's host about 11 us, a copy to pinned memory and an
    event about 20 us, so copies started before one wait do not pay, BENCHMARKS.md energy run 16.)"""
    groups: dict = {}
    for i, v in enumerate(values):
        groups.setdefault((v.device, v.dtype), []).append(i)
    out = [None] * len(values)
    for idx in groups.values():
        for i, h in zip(idx, torch.cat([values[i].reshape(1) for i in idx]).cpu().tolist()):
            out[i] = h
    return out


class deferred_checks:
    """``with deferred_checks(where) as checks:``: NaN/inf checks inside the block are queued on the device
    (:class:`DeferredChecks`) and read back once, at the end of the block (no exception pending) or when the
    caller runs ``checks.check()``. The error names the argument and ``where()``'s label, not the count of bad
    values. Blocks nest; each reads its own checks."""

    def __init__(self, where: Callable[[], str] | None = None):
        self.checks = DeferredChecks(where)
        self._frame = None

    def __enter__(self) -> DeferredChecks:
        self._frame = _DEFERRED.push(self.checks)
        return self.checks

    def __exit__(self, exc_type, exc, tb):
        _DEFERRED.pop(self._frame)
        if exc_type is None:
            self.checks.check()
        return False


def active_checks() -> DeferredChecks | None:
    """The innermost active :class:`DeferredChecks`, or None (checks run at once)."""
    return _DEFERRED.get()


def finite(name: str, x: torch.Tensor) -> torch.Tensor:
    """Reject NaN/inf anywhere in ``x``.

    One read of ``x``: its float64 sum is finite exactly when every element is (a NaN or inf propagates; a sum
    of finite float32/16 values cannot overflow float64). Only a non-finite sum (or float64 input, whose finite
    values can overflow a float64 sum) is confirmed element by element (``torch.isfinite`` makes several
    passes and temporaries). Inside :func:`deferred_checks` the verdict is queued instead of read.
    """
    if not torch.is_tensor(x):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point() or x.numel() == 0:
        return x
    checks = _DEFERRED.get()
    if checks is not None:
        checks.add_values(name, x)
        return x
    if sum_is_finite(x):
        return x
    return finite_after_flag(name, x)


def flag(name: str, x: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
    """A kernel's verdict on ``x``: ``bad`` (one-element device tensor) is nonzero when ``x`` held NaN/inf.
    Read now (and confirmed by :func:`finite_after_flag`), or queued inside :func:`deferred_checks`."""
    checks = _DEFERRED.get()
    if checks is not None:
        checks.add_flag(name, bad)
    elif bool(bad.item()):
        finite_after_flag(name, x)
    return x


def refuse_if(name: str, bad: torch.Tensor, problem: str) -> None:
    """Raise ``ValueError(f"{name} {problem}")`` when the one-element device tensor ``bad`` is true; inside
    :func:`deferred_checks` the verdict is queued instead of read (no host-device synchronisation)."""
    checks = _DEFERRED.get()
    if checks is not None:
        checks.add_flag(name, bad, problem)
    elif bool(bad):
        raise ValueError(f"{name} {problem}")


POSITIVE = "must be > 0 everywhere (a finite number); a learnable one can reach 0 or below in training"


def not_positive(x: torch.Tensor) -> torch.Tensor:
    """Where ``x`` is not a finite number > 0 (NaN, inf, 0 or below)."""
    return ~((x.detach() > 0) & (x.detach() < math.inf))


def positive(name: str, x: torch.Tensor) -> torch.Tensor:
    """Require every element of ``x`` (a learnable neuron threshold, changed by training) to be > 0 and finite.
    One read of ``x``, queued inside :func:`deferred_checks` like :func:`finite`."""
    bad = not_positive(x)
    checks = _DEFERRED.get()
    if checks is not None:
        checks.add_flag(name, bad.any(), POSITIVE)
    elif bool(bad.any()):
        raise ValueError(f"{name} {POSITIVE}; found values such as {x.detach()[bad][:5].tolist()}")
    return x


def sum_is_finite(x: torch.Tensor) -> bool:
    """True when floating-point ``x`` certainly holds no NaN/inf: its float64 sum is finite (one read of ``x``; a
    host sync for a GPU tensor). False can still mean all-finite: a float64 input whose sum overflowed."""
    return math.isfinite(float(x.detach().sum(dtype=torch.float64)))


def finite_after_flag(name: str, x: torch.Tensor) -> torch.Tensor:
    """The exact check, for when a fast test (a sum, a kernel's flag) saw a non-finite value: raise with the count
    (or return ``x`` when every element is finite after all, e.g. a float64 sum that overflowed)."""
    bad = int((~torch.isfinite(x.detach())).sum())
    if bad:
        raise ValueError(f"{name} contains {bad} NaN/inf value(s); all values must be finite")
    return x


def rank_at_least(name: str, x: torch.Tensor, k: int, layout: str) -> torch.Tensor:
    if x.dim() < k:
        raise ValueError(f"{name} must have at least {k} dimensions {layout}, got shape {tuple(x.shape)}")
    return x


def rank_exactly(name: str, x: torch.Tensor, ks: Iterable[int], layout: str) -> torch.Tensor:
    ks = tuple(ks)
    if x.dim() not in ks:
        allowed = " or ".join(str(k) for k in ks)
        raise ValueError(f"{name} must have {allowed} dimensions {layout}, got shape {tuple(x.shape)}")
    return x


def holds_one(name: str, x: torch.Tensor, dim: int, what: str) -> torch.Tensor:
    """Require ``x`` to hold at least one ``what`` (a token, a time step) along ``dim``: a layer that mixes along
    an empty axis fails deep inside torch (a reshape, a convolution). A shape check: no device read."""
    if x.shape[dim] == 0:
        raise ValueError(f"{name} must hold at least one {what} (dim {dim}), got shape {tuple(x.shape)}")
    return x


def in_range(name: str, value, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False):
    """Check a scalar or every element of a tensor lies in [lo, hi] (open ends where asked)."""
    interval = ("(" if lo_open else "[") + f"{lo}, {hi}" + (")" if hi_open else "]")
    if value is None or isinstance(value, (str, bytes, bool)):  # (a config file's "0.2" or null)
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    t = torch.as_tensor(value, dtype=torch.float64) if not torch.is_tensor(value) else value.detach().double()
    if not bool(torch.isfinite(t).all()):
        shown = value if not torch.is_tensor(value) or value.numel() == 1 else \
            f"{int((~torch.isfinite(t)).sum())} NaN/inf value(s)"
        raise ValueError(f"{name} must be finite and in {interval}, got {shown}")
    low_ok = (t > lo) if lo_open else (t >= lo)
    high_ok = (t < hi) if hi_open else (t <= hi)
    if not bool((low_ok & high_ok).all()):
        shown = value if not torch.is_tensor(value) or value.numel() == 1 else f"values in [{t.min():g}, {t.max():g}]"
        raise ValueError(f"{name} must be in {interval}, got {shown}")
    return value


def positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) and not (
        isinstance(value, float) and value.is_integer()
    ):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def boolean(name: str, value) -> bool:
    """A flag given as True or False, or NumPy's ``np.True_`` / ``np.False_`` (not a string such as "no", which
    Python would take as true, nor a number)."""
    if type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_"):  # (NumPy 2 / 1)
        return bool(value)
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False; got {value!r}")
    return value


def one_of(name: str, value, allowed: Iterable) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(repr(a) for a in allowed)}; got {value!r}")


def input_file(name: str, path):
    """``path`` as a Path, when it is an existing file (a directory, or nothing there, is an error naming ``name``)."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{name} {str(path)!r} "
                         + ("is a directory, not a file" if path.is_dir() else "does not exist"))
    return path


def output_problem(path) -> str | None:
    """Why an output file cannot be written at ``path`` (a directory there, a file where a directory should be, a
    directory without write permission), or None."""
    import os
    from pathlib import Path

    path = Path(path)
    if path.is_dir():
        return "it is a directory"
    parent = next((a for a in path.absolute().parents if a.exists()), None)
    if parent is not None and not parent.is_dir():
        return f"{str(parent)!r} is a file, not a directory"
    if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
        return f"directory {str(parent)!r} is not writable"
    return None


def zip_problem(path, zip_only: bool = True) -> str | None:
    """Why the zip archive at ``path`` (what ``torch.save`` writes) cannot be trusted, or None: not a complete
    archive (cut short), or a member whose bytes no longer match its CRC-32 (flipped on disk or in transit;
    ``torch.load`` itself does not check). ``zip_only=False``: a file that is no zip archive at all (torch's legacy
    format, or no torch file: ``torch.load`` says which) is not this check's problem."""
    import zipfile

    if not zip_only and not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        return f"truncated or not a torch file ({type(err).__name__}: {err})"
    return f"corrupt: its part {bad!r} fails its CRC check" if bad is not None else None


def device(name: str, spec) -> torch.device:
    """A device given as ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (or a torch.device) that this machine has."""
    text = str(spec)
    if not (text in ("cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit())):
        raise ValueError(f"{name} must be 'cpu', 'cuda' or 'cuda:N'; got {spec!r}")
    dev = torch.device(text)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name} is {text!r} but CUDA is not available here; use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name} is {text!r} but only {torch.cuda.device_count()} CUDA device(s) are present")
    return dev


def generator(name: str, value, device=None):
    """A ``torch.Generator`` or None (the global RNG). With ``device`` (where the draws are made), a generator of
    that device type: torch draws on CUDA with a CUDA generator only, on the CPU with a CPU one."""
    if value is None:
        return None
    if not isinstance(value, torch.Generator):
        raise ValueError(f"{name} must be a torch.Generator or None; got {type(value).__name__} {value!r}")
    if device is not None and value.device.type != torch.device(device).type:
        raise ValueError(f"{name} is a generator on {value.device.type!r} but the draws are on "
                         f"{torch.device(device).type!r}; pass torch.Generator(device={torch.device(device).type!r})")
    return value


def broadcasts_to(shape, target) -> bool:
    """Whether a tensor of ``shape`` broadcasts to ``target`` without growing it: no more dimensions than
    ``target``, each trailing one 1 or equal to its match. (Plain Python: ``torch.broadcast_shapes`` takes about
    25 us a call through its symbolic-shape path, and every LIF call checks its parameters' shapes.)"""
    return len(shape) <= len(target) and all(s == 1 or s == t for s, t in zip(reversed(shape), reversed(target)))


def neuron_param(name: str, value: torch.Tensor, neuron_shape) -> torch.Tensor:
    """A neuron parameter (or state) is a scalar or broadcasts to the neuron shape ``x.shape[1:]`` (a shape that
    would broadcast ``x`` itself to more dimensions is an error, not a bigger output: a one-element tensor too, such
    as ``(1, 1, 1)`` for 2-D neurons, which the torch backends broadcast to a 3-D output and the fused kernel did
    not)."""
    if not broadcasts_to(value.shape, neuron_shape):
        raise ValueError(f"{name} of shape {tuple(value.shape)} must be a scalar or broadcastable to the neuron shape "
                         f"x.shape[1:] = {tuple(neuron_shape)} (at most {len(neuron_shape)} dimensions: it must not "
                         "add dimensions to the output)")
    return value


def neuron_state(state, neuron_shape) -> None:
    """Every tensor of a neuron's state (a LIFState / CubaLIFState) broadcasts to the neuron shape ``x.shape[1:]``."""
    for name, s in zip(state._fields, state):
        if not broadcasts_to(s.shape, neuron_shape):
            raise ValueError(f"state.{name} of shape {tuple(s.shape)} must broadcast to x.shape[1:] = "
                             f"{tuple(neuron_shape)}")


def input_dtype(name: str, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A model's input is in its weights' floating dtype, or autocast converts it: otherwise torch fails deep inside
    the first layer ("mat1 and mat2 must have the same dtype"); this says which argument and what to convert."""
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor (the model's dtype, {weight.dtype}); got {x.dtype}: "
                         f"convert it, e.g. {name}.to({weight.dtype})")
    if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
        raise ValueError(f"{name} has dtype {x.dtype} but the model's parameters are {weight.dtype}: convert one "
                         f"to the other ({name}.to({weight.dtype}) or model.to({x.dtype})), or run under "
                         "torch.autocast")
    return x


BINARY = "must be a binary spike tensor (values 0 or 1)"


def binary(name: str, x: torch.Tensor) -> torch.Tensor:
    """Require a spike tensor: every element exactly 0 or 1 (NaN is neither). Queued inside :func:`deferred_checks`
    like :func:`finite`."""
    checks = _DEFERRED.get()
    if checks is not None:
        checks.add_flag(name, ((x.detach() != 0) & (x.detach() != 1)).any(), BINARY)
        return x
    finite(name, x)
    if not bool(((x == 0) | (x == 1)).all()):
        vals = torch.unique(x.detach().flatten())[:5].tolist()
        raise ValueError(f"{name} {BINARY}; found values such as {vals}")
    return x


def _finite_number(name: str, value, bound: str, ok) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)) \
            or not ok(float(value)):
        raise ValueError(f"{name} must be a finite number{' ' + bound if bound else ''}, got {value!r}")
    return float(value)


def finite_float(name: str, value) -> float:
    return _finite_number(name, value, "", lambda v: True)


def positive_float(name: str, value) -> float:
    return _finite_number(name, value, "> 0", lambda v: v > 0)


def non_negative_float(name: str, value) -> float:
    return _finite_number(name, value, ">= 0", lambda v: v >= 0)
