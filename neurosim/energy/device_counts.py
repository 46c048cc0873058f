"""Exact per-tensor counts kept in one int64 buffer per device, read back once after the forward pass.

Each counted tensor gets a row of :data:`COLS` int64: ``[nonzeros, elements equal to 1, non-finite elements,
fan-weighted nonzeros, sum of round(x * inv_scale)]`` (the last two when asked for). The row is filled either by the
one-read Triton kernel of
:mod:`neurosim.kernels.stats` (CUDA tensors; CPU tensors under Triton's interpreter with
``NEUROSIM_TRITON_INTERPRET=1``) or by torch ops giving the same numbers. Nothing here synchronises with the
host or allocates per tensor (beyond the torch path's temporaries).

While :attr:`CountBuffer.batching` is on (a CUDA graph's warm-ups and capture, :mod:`neurosim.energy.graph`),
rows are not read one launch each: up to :data:`neurosim.kernels.stats.MAX_BATCH` of them wait
and are read in one launch (:func:`neurosim.kernels.stats.launch_many`), when the batch is full or at
:meth:`CountBuffer.flush`. A tensor changed in place while it waited would be counted changed: a batched row
whose tensor's version moved is noted (its ``on_change``) and its key (the layer that made it, and how many rows
that layer made before it since the last flush) is read at once from then on, so the warm-ups of a graph learn
which rows must not wait.

A row may be *deferred*: its tensor is kept and counted later, by the first consumer that asks (with that
consumer's fan-out map, so a conv input is read once for its firing counts and its SynOps) or at
:meth:`CountBuffer.flush`. A deferred row may also be *optional*: counted only if a consumer asks for it, and
otherwise dropped (never read) when it is released or flushed; the meter uses these for tensors whose counts
would only give a rate nobody needs for an operation count. Counts derived from rows are :class:`DeviceCount`
values: integer linear forms over buffer entries that counters can scale and add, evaluated on the host after the
single read-back.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import validate
from ..kernels.runtime import interpreter_requested, triton_available

NNZ, ONES, BAD, FANW, ISUM = range(5)
COLS = 5
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.bool, torch.uint8,
                  torch.int8, torch.int16, torch.int32, torch.int64)
BACKENDS = ("auto", "torch", "kernel")


class DeviceCount:
    """``const + sum(coef * buffer[dev][row, col])``: an exact count known after the read-back.

    Supports ``+`` and ``-`` with numbers and other DeviceCounts of the same buffer and ``*`` with numbers (lazy,
    no device work). ``int()`` / ``float()`` read the value now (a host synchronisation). Comparisons and truth
    tests raise TypeError: the value is not known yet (outside a meter, :func:`~neurosim.energy.stats` gives tensors,
    which compare)."""

    __slots__ = ("owner", "terms", "const")

    def __init__(self, owner: "CountBuffer", terms: tuple, const=0):
        self.owner, self.terms, self.const = owner, terms, const

    def __mul__(self, k):
        if isinstance(k, (int, float)) and not isinstance(k, bool):
            return DeviceCount(self.owner, tuple((d, r, c, w * k) for d, r, c, w in self.terms), self.const * k)
        return NotImplemented

    __rmul__ = __mul__

    def __add__(self, o):
        if isinstance(o, DeviceCount) and o.owner is self.owner:
            return DeviceCount(self.owner, self.terms + o.terms, self.const + o.const)
        if isinstance(o, (int, float)) and not isinstance(o, bool):
            return DeviceCount(self.owner, self.terms, self.const + o)
        return NotImplemented

    __radd__ = __add__

    def __neg__(self):
        return self * -1

    def _undecided(self, *_):
        raise TypeError("a DeviceCount (a count inside an EnergyMeter) is known only after the forward: it cannot be "
                        "compared or tested now. Keep the counts apart (nnz and ones both), or read them with int() "
                        "(a host read-back, which a recording then does not replay)")

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __bool__ = _undecided
    __hash__ = object.__hash__

    def __sub__(self, o):
        return self + (-o)

    def __rsub__(self, o):
        return (-self) + o

    def __int__(self):
        return int(self._now())

    def __float__(self):
        return float(self._now())

    def _now(self):
        """The value now (a host read-back). A forward being recorded for replays cannot be replayed then: the
        number the counter made of it would stand for every replay (neurosim.energy.replay)."""
        rec = self.owner.recorder
        if rec is not None and not rec.problem:
            rec.problem = "a counter read a count back to the host (int() or float() of a DeviceCount)"
        return self.owner.value(self)

    def __repr__(self):
        return f"DeviceCount({len(self.terms)} terms + {self.const})"


class RowStats:
    """Counts of one tensor in a :class:`CountBuffer` row; duck-types :class:`~neurosim.energy.TensorStats`
    (``numel``, ``nnz``, ``ones``; binary when ``nnz == ones``) with :class:`DeviceCount` values."""

    __slots__ = ("owner", "numel", "dev", "row", "pending", "optional", "dropped", "version", "fan", "fan_order",
                 "inv_scale", "on_change", "key")

    def __init__(self, owner, numel, dev, row, key=None):
        self.owner, self.numel, self.dev, self.row, self.key = owner, numel, dev, row, key
        self.pending = None  # the tensor, while its counts are deferred
        self.optional = False  # deferred rows only: counted if a consumer asks, else dropped (see CountBuffer)
        self.dropped = False  # an optional row nobody asked for: its counts were never taken (all zero)
        self.version = 0
        self.fan = None  # the fan map the row's FANW column was counted with
        self.fan_order = None  # the element order it was counted in (_order: a fan map weighs elements in it)
        self.inv_scale = None  # the factor the row's ISUM column was counted with (None: not counted)
        self.on_change = None  # called when the tensor was changed in place before it was counted (deferred or batched)

    def col(self, col: int) -> DeviceCount:
        return DeviceCount(self.owner, ((self.dev, self.row, col, 1),))

    nnz = property(lambda self: self.col(NNZ))
    ones = property(lambda self: self.col(ONES))
    bad = property(lambda self: self.col(BAD), doc="Non-finite elements (NaN, +-inf).")
    isum = property(lambda self: self.col(ISUM), doc="``sum(round(x * inv_scale))`` over the finite elements (the "
                    "row must have been asked for it).")


class TallyStats(RowStats):
    """Counts of a binary tensor summed over ``slots`` consecutive buffer elements from its row on (a kernel's
    programs spread their additions over them): nonzeros = ones = that sum, which the read-back folds into the
    row's first element (:meth:`CountBuffer.fold`); no non-finite elements."""

    __slots__ = ("slots", "producer")

    def __init__(self, owner, numel, dev, row, slots):
        super().__init__(owner, numel, dev, row)
        self.slots = slots
        self.producer = None  # the meter's record of the layer whose kernel counts them

    def col(self, col: int) -> DeviceCount:
        if col not in (NNZ, ONES):
            return DeviceCount(self.owner, (), 0)
        return DeviceCount(self.owner, ((self.dev, self.row, NNZ, 1),))


BATCH_BYTES = 256 << 20  # tensors a batch may hold (a larger one is read at once: it gains nothing from waiting)

_FANS: dict = {}  # id(fan map) -> (map, int32 copy, int64 copy); the maps live in the counters' fan-out cache


def _fan_maps(fan: torch.Tensor):
    hit = _FANS.get(id(fan))
    if hit is None or hit[0] is not fan:
        if len(_FANS) > 256:
            _FANS.clear()
        f64 = fan.round().to(torch.int64)
        hit = _FANS[id(fan)] = (fan, f64.to(torch.int32).contiguous().reshape(-1), f64.reshape(-1))
    return hit


def _order(x: torch.Tensor):
    """What fixes the order in which ``x`` lists its elements: all contiguous tensors list them alike."""
    return "contiguous" if x.is_contiguous() else (tuple(x.shape), x.stride())


def _same_order(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` list their elements in the same storage order (both contiguous, or same layout)."""
    return _order(a) == _order(b)


class CountBuffer:
    """Rows of exact counts, one int64 ``[capacity, COLS]`` buffer per device (grown by doubling).

    ``backend``: ``"auto"`` (kernel on CUDA, and on CPU under ``NEUROSIM_TRITON_INTERPRET=1``; torch ops
    otherwise), ``"torch"`` or ``"kernel"`` (raises when the kernel cannot run)."""

    def __init__(self, backend: str = "auto", capacity: int = 256):
        if backend not in BACKENDS:
            raise ValueError(f"counting backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        self.capacity0 = capacity
        self.bufs: dict = {}  # device -> [buffer, rows used]
        self.pending: list[RowStats] = []  # deferred rows that will be counted
        self.optional: list[RowStats] = []  # deferred rows counted only if asked for (else dropped)
        self.paths: set[str] = set()  # "kernel", "interpreter", "torch": what counted
        self.tallies: dict = {}  # device -> {slots: [first row of each tally region]} (see fold)
        self.batching = False  # read rows several a launch (see the module docstring)
        self.context = None  # what makes rows now (the meter's layer): their keys; its changed_read() is called
        #                      when a batched tensor of a row without its own on_change was changed while it waited
        self._batch: list = []  # (stats, tensor read, its version when batched, fan map) waiting for one launch
        self._batch_bytes = 0
        self._made: dict = {}  # context -> rows it made since the last flush (the next one's key)
        self.unbatched: set = set()  # keys of rows whose tensor changed while batched: read at once
        self._host = None  # device -> rows as lists of ints, folded (host())
        self._raw = None  # device -> the same rows as read back, unfolded (a numpy array)
        self._cuda_kernel = None
        self.recorder = None  # a neurosim.energy.replay.Recorder noting every read and tally row, while it records

    # ------------------------------------------------------------------------------------------- rows
    def _row(self, device, n: int = 1) -> tuple:
        """``(device, first row)`` of ``n`` new consecutive rows."""
        entry = self.bufs.get(device)
        if entry is None:
            entry = self.bufs[device] = [torch.zeros(self.capacity0, COLS, dtype=torch.int64, device=device), 0]
        buf, used = entry
        if used + n > buf.shape[0]:
            if buf.is_cuda and torch.cuda.is_current_stream_capturing():
                # a new buffer made during a CUDA-graph capture would be refilled with zeros at every replay
                raise RuntimeError(f"count buffer full during a CUDA-graph capture ({used} of {buf.shape[0]} rows "
                                   "used): reserve() more rows before capturing")
            grown = torch.zeros(2 * (used + n), COLS, dtype=torch.int64, device=device)
            grown[:used].copy_(buf[:used])
            entry[0] = grown
        entry[1] = used + n
        self._host = self._raw = None
        return device, used

    def used(self, device) -> int:
        """Rows taken so far on ``device``."""
        entry = self.bufs.get(device)
        return 0 if entry is None else entry[1]

    def reserve(self, device, n: int):
        """Make room for ``n`` more rows on ``device`` now (no allocation while a CUDA graph is captured)."""
        entry = self.bufs.get(device)
        used = 0 if entry is None else entry[1]
        if entry is None or used + n > entry[0].shape[0]:
            self._row(device, n)
            self.bufs[device][1] = used

    def stats(self, x: torch.Tensor, fan: torch.Tensor | None = None, defer: bool = False,
              inv_scale: float | None = None, optional: bool = False, at_once: bool = False) -> RowStats:
        """A new row for ``x``: counted now (with ``fan``, and the ISUM column when ``inv_scale`` is given), or
        deferred (``defer=True``: ``x`` is kept; :meth:`want_sum` may still ask for the ISUM column); a deferred
        row is ``optional`` when it is to be dropped unless a consumer forces it (:meth:`release`). ``at_once``:
        while :attr:`batching`, the read is launched now with the rows waiting, not left to wait for more (its
        values are those of this moment: a module's output that the caller may change in place next)."""
        dev, row = self._row(x.device)
        key = None
        if self.batching:  # the key a batched read is learned by (see the module docstring)
            k = self._made.get(self.context, 0)
            self._made[self.context] = k + 1
            key = (self.context, k)
        st = RowStats(self, x.numel(), dev, row, key)
        st.inv_scale = inv_scale
        if defer:
            st.pending, st.version = x, x._version
            st.optional = optional
            (self.optional if optional else self.pending).append(st)
        else:
            self._count(st, x, fan)
            if at_once and self._batch:
                self.read_batch()
        return st

    def tally_row(self, x: torch.Tensor, slots: int) -> tuple["TallyStats", torch.Tensor]:
        """Counts of a binary tensor shaped like ``x`` that another kernel adds up as it writes it (a fused neuron
        layer's spikes), spread over ``slots`` int64 elements of the buffer: its stats and that region (a view)."""
        dev, row = self._row(x.device, -(-slots // COLS))
        self.paths.add("neuron kernel")
        self.tallies.setdefault(dev, {}).setdefault(slots, []).append(row)
        region = tally_region(self.bufs[dev][0], row, slots)
        if self.recorder is not None:
            self.recorder.tally(row, slots)
        return TallyStats(self, x.numel(), dev, row, slots), region

    def require(self, st: RowStats):
        """Make a deferred optional row one that will be counted (a count now depends on it)."""
        if st.pending is not None and st.optional:
            self.optional.remove(st)
            st.optional = False
            self.pending.append(st)

    def release(self, st: RowStats):
        """Done with a deferred row's tensor: count it now, or drop it when it is optional."""
        if st.pending is None:
            return
        if st.optional:
            self.optional.remove(st)
            st.pending, st.dropped = None, True
        else:
            self.force(st)

    def want_sum(self, st: RowStats, x: torch.Tensor, inv_scale: float) -> DeviceCount:
        """``sum(round(x * inv_scale))`` of ``x`` (whose stats are ``st``): from ``st``'s own pass when it is still
        deferred or was counted with the same factor, else from a new row (a second read of ``x``)."""
        if st.pending is not None and st.inv_scale in (None, inv_scale):
            self.require(st)
            st.inv_scale = inv_scale
        elif st.inv_scale != inv_scale:
            st = self.stats(x, inv_scale=inv_scale)
        return st.isum

    def force(self, st: RowStats, fan: torch.Tensor | None = None, at_once: bool = False):
        """Count a deferred row now (with ``fan`` for its FANW column; ``at_once``: see :meth:`stats`); no-op when
        already counted."""
        x = st.pending
        if x is None:
            return
        st.pending = None
        (self.optional if st.optional else self.pending).remove(st)
        st.optional = False
        if x._version != st.version and st.on_change is not None:
            st.on_change()
        self._count(st, x, fan)
        if at_once and self._batch:
            self.read_batch()

    def flush(self):
        """Count every deferred row that will be counted and read the batched ones; drop the optional ones. Ends a
        forward pass for the batched rows' keys."""
        while self.pending:
            self.force(self.pending[0])
        while self.optional:
            self.release(self.optional[0])
        self.read_batch()
        self._made.clear()

    def forget(self, keep: dict):
        """Drop the rows of each device from row ``keep.get(device, 0)`` on, zeroed to be taken again (the counts are
        added into their rows); the rows below stay as they are. Not while rows are deferred or batched."""
        if self.pending or self.optional or self._batch:
            raise RuntimeError("count rows are still deferred: forget() is for between forward passes")
        for dev, entry in self.bufs.items():
            buf, used = entry
            k = min(keep.get(dev, 0), used)
            if used > k:
                buf[k:used].zero_()
                entry[1] = k
            for firsts in self.tallies.get(dev, {}).values():
                firsts[:] = [r for r in firsts if r < k]
        self._host = self._raw = None
        self.paths = set()

    def drop_batch(self):
        """Forget the batched rows without reading them (a failed CUDA-graph capture)."""
        self._batch, self._batch_bytes = [], 0
        self._made.clear()

    def read_batch(self):
        """Read the batched rows now, in one launch (see the module docstring)."""
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        if not batch:
            return
        for st, flat, version, _ in batch:
            if flat._version != version:  # changed in place while it waited: counted changed, and never again
                self.unbatched.add(st.key)
                changed = st.on_change or getattr(st.key[0], "changed_read", None)
                if changed is not None:
                    changed()
        from ..kernels import stats as K

        st0, flat0, _, _ = batch[0]
        K.launch_many([e[1] for e in batch], self.bufs[st0.dev][0], [e[0].row for e in batch],
                      [e[0].inv_scale for e in batch], [e[3] for e in batch], interpret=flat0.device.type == "cpu")

    def fan_count(self, st: RowStats, x: torch.Tensor, fan: torch.Tensor) -> DeviceCount:
        """Fan-weighted nonzeros of ``x`` (whose stats are ``st``): from ``st``'s own pass when it is still
        deferred or was counted with the same map, else from a new row (a second read of ``x``)."""
        if st.pending is not None:
            # the map weighs elements in x's order: count the deferred tensor with it only if it has that order
            self.force(st, fan if _same_order(st.pending, x) else None)
        if st.fan is not fan or st.fan_order != _order(x):  # (a view in another order may share st)
            st = self.stats(x, fan)
        return DeviceCount(self, ((st.dev, st.row, FANW, 1),))

    # ----------------------------------------------------------------------------------------- counting
    def _path(self, x: torch.Tensor) -> str:
        if self.backend == "torch" or x.dtype not in _KERNEL_DTYPES:
            return "torch"
        if x.is_cuda:
            if self._cuda_kernel is None:  # decided once per buffer (an import test)
                self._cuda_kernel = self.backend == "kernel" or triton_available()
            if self._cuda_kernel:
                return "kernel"
        if x.device.type == "cpu" and interpreter_requested() and triton_available(interpret=True):
            return "interpreter"
        if self.backend == "kernel":
            raise RuntimeError(f"counting backend 'kernel' cannot count a {x.device.type} tensor: needs CUDA, or "
                               "triton with NEUROSIM_TRITON_INTERPRET=1 on CPU")
        return "torch"

    def _count(self, st: RowStats, x: torch.Tensor, fan: torch.Tensor | None):
        x = x.detach()
        buf = self.bufs[st.dev][0]
        st.fan, st.fan_order = fan, (None if fan is None else _order(x))
        path = self._path(x)
        self.paths.add(path)
        if path == "torch":
            fan64 = None if fan is None else _fan_maps(fan)[2]
            if self.recorder is not None:
                self.recorder.read(st.row, x, fan64, st.inv_scale, path)
            _count_torch(x, buf[st.row], fan64, st.inv_scale)
            return
        from ..kernels import stats as K

        flat = kernel_view(x, fan is None)
        fan32 = None if fan is None else _fan_maps(fan)[1]
        if self.recorder is not None:
            self.recorder.read(st.row, x, fan32, st.inv_scale, path)
        if self.batching and st.key not in self.unbatched:
            size = flat.numel() * flat.element_size()
            if size <= BATCH_BYTES // 4:
                if self._batch and (flat.device != self._batch[0][1].device
                                    or self._batch_bytes + size > BATCH_BYTES):
                    self.read_batch()
                self._batch.append((st, flat, flat._version, fan32))
                self._batch_bytes += size
                if len(self._batch) == K.MAX_BATCH:
                    self.read_batch()
                return
        K.launch(flat, buf, fan32, st.inv_scale, interpret=path == "interpreter", row=st.row)

    # ------------------------------------------------------------------------------------------ read-back
    def host(self) -> dict:
        """device -> rows as lists of Python ints (one transfer per device; pending rows are counted first). Kept
        until a row is made (every new row, deferred or batched ones included, comes from :meth:`_row`, which drops
        it), so asking again costs nothing."""
        if self._host is None:
            self.flush()
            self._raw = {dev: buf[:used].cpu().numpy() for dev, (buf, used) in self.bufs.items()}
            self._host = {dev: self.fold(dev, raw.copy()).tolist() for dev, raw in self._raw.items()}
        return self._host

    def raw(self, device) -> np.ndarray:
        """The rows of ``device`` as read back (``[used, COLS]`` int64, tally regions not folded)."""
        self.host()
        return self._raw[device]

    def fold(self, dev, rows, base: int = 0):
        """``rows`` (a numpy int64 array ``[..., r, COLS]`` of the buffer rows of ``dev`` from row ``base`` on, read
        back) with each tally region's sum moved into its first element and its other slots zeroed (in place when
        ``rows`` is contiguous): a tally's count is then that one element (what :class:`TallyStats` refers to).
        Idempotent."""
        rows = np.ascontiguousarray(rows)
        flat = rows.reshape(rows.shape[:-2] + (-1,))
        for slots, firsts in self.tallies.get(dev, {}).items():
            starts = [(r - base) * COLS for r in firsts if r >= base and (r - base) * COLS + slots <= flat.shape[-1]]
            if not starts:
                continue
            idx = np.asarray(starts)[:, None] + np.arange(slots)
            sums = flat[..., idx].sum(-1)
            flat[..., idx] = 0
            flat[..., starts] = sums
        return rows

    def value(self, c: DeviceCount, runs: int = 1):
        """``c`` after the read-back; ``runs``: its constant counts that many times (a graph replayed ``runs`` times
        added its rows up, so the terms are read as they are)."""
        host = self.host()
        v = c.const * runs
        for d, r, col, w in c.terms:
            v += w * host[d][r][col]
        return v


def tally_region(rows: torch.Tensor, row: int, slots: int) -> torch.Tensor:
    """The ``slots`` int64 elements of a contiguous ``[n, COLS]`` block of rows from row ``row`` on: where a neuron
    kernel tallies its spikes (a view)."""
    return rows.view(-1)[row * COLS: row * COLS + slots]


def kernel_view(x: torch.Tensor, any_order: bool) -> torch.Tensor:
    """``x`` as the counting kernel reads it: in place (strided loads, no copy; in storage order when ``any_order``,
    i.e. there is no fan map), else a contiguous copy."""
    from ..kernels import stats as K

    return x if x.is_contiguous() or K.readable(x, any_order=any_order) else x.contiguous()


def rounded_scaled_sum(x: torch.Tensor, inv_scale: float) -> torch.Tensor:
    """``sum(round(x * inv_scale))`` over the finite elements of floating ``x``, the products in float32 (as the
    counting kernel computes them), as a 0-d int64 tensor on ``x``'s device (no host sync)."""
    x = x.detach()
    v = torch.floor(x.float() * inv_scale + 0.5)
    return torch.where(torch.isfinite(x), v, 0).sum(dtype=torch.float64).to(torch.int64)


def _count_torch(x: torch.Tensor, out: torch.Tensor, fan64: torch.Tensor | None, inv_scale: float | None = None):
    """The kernel's numbers with torch ops on the tensor's device, added to ``out`` (a zeroed row) without a host
    sync."""
    zero = torch.zeros((), dtype=torch.int64, device=x.device)
    if x.dtype == torch.bool:
        nnz = torch.count_nonzero(x)
        ones = nnz
    else:
        nnz, ones = torch.count_nonzero(x), torch.count_nonzero(x == 1)
    bad = zero
    # on the CPU a host value costs no wait: one float64 sum settles the usual all-finite case
    if x.is_floating_point() and not (x.device.type == "cpu" and validate.sum_is_finite(x)):
        bad = x.numel() - torch.count_nonzero(torch.isfinite(x))
    fanw = isum = zero
    if fan64 is not None:
        fanw = ((x != 0).reshape(-1, fan64.numel()).sum(0) * fan64).sum()
    if inv_scale is not None and x.is_floating_point():
        isum = rounded_scaled_sum(x, inv_scale)
    out.add_(torch.stack([nnz, ones, bad, fanw, isum]))  # added, as the kernel does (a replayed graph accumulates)
