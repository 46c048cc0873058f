"""Metering many batches of one shape on a GPU: the metered forward is captured once in a CUDA graph and replayed.

A hook-based meter does host work in every hooked module (Python in the hooks and counters, a launch per
counted tensor). Where the host sets the pace of a forward (small batches, many layers, fast kernels) that work
is what the GPU waits for (BENCHMARKS.md, "Energy profiling overhead"). Captured in a CUDA graph, one metered
forward becomes device work only: every replay runs the model's kernels and the counting kernels, and no Python.

How the counts stay exact per batch: the rows of the count buffer that the captured forward writes (the counting
kernels' and the fused neurons' spike tallies), and a slot for each 0-d count tensor a counter computed, are
zeroed at the start of the graph; after each replay they are copied (on the device) into a history with one
entry per replay. The report evaluates every captured call once per replay, from that replay's entry, with the
same rules as an eager call (a layer's input may be binary in one batch and not in the next), vectorised over the
replays. The layers' deferred NaN/inf checks add up over the replays instead (a non-finite sum or a nonzero flag
stays so).

Fewer, longer kernels: the warm-ups and the capture read the counted tensors up to 8 a launch
(:attr:`~neurosim.energy.device_counts.CountBuffer.batching`), a read waiting until its batch is full or the
forward ends; a tensor that the forward changes in place after its read was asked for is seen doing so in a
warm-up and read at once from then on. The 0-d counts and check verdicts are added to their slots once, at the end
of the forward, a few launches in all (:class:`Slots`).

Limits: inputs of the captured shapes, dtypes and devices only (others run eagerly under the same meter, see
:func:`neurosim.energy.profile_batches`); a forward that reads a value back to the host (``.item()``, a branch on
a tensor) cannot be captured (RuntimeError naming the cause); a NaN/inf in a replayed batch is reported when the
meter's ``with`` block ends, naming the layer, not the batch; the outputs returned by a replay are the graph's
own tensors, overwritten by the next replay (clone them to keep them).
"""
from __future__ import annotations

import torch

from .. import validate


class Slots:
    """0-d float64 slots allocated before a capture (an allocation inside it would be re-zeroed by every
    replay): ``slots(v)`` takes a free one for ``v`` and returns it (a 0-d view); :meth:`finish`, at the end of the
    capture, adds every value taken since the last finish to its slot, in the graph (the values are kept until
    then). The buffer holds ``size`` slots for each of up to :attr:`REGIONS` value dtypes, so that the values of
    one dtype fill consecutive slots: two launches a dtype (one copy, one addition) add them all."""

    REGIONS = 4  # dtypes with a region of their own; values of further dtypes share the last one (converted)

    def __init__(self, device, size: int):
        self.size = size
        self.buf = torch.zeros(size * self.REGIONS, dtype=torch.float64, device=device)
        self.used = 0  # slots taken in all
        self.index: dict = {}  # id(slot view) -> its position (the view is kept alive by the count holding it)
        self._regions: dict = {}  # dtype (or "mixed") -> [first slot, slots taken, values not yet added]

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        v = v.detach().reshape(1)
        key = v.dtype
        if key not in self._regions and len(self._regions) >= self.REGIONS - 1:
            key = "mixed"  # the last region: values of any other dtype, converted one by one at finish
        region = self._regions.get(key)
        if region is None:
            region = self._regions[key] = [len(self._regions) * self.size, 0, []]
        start, taken, queued = region
        if taken >= self.size:
            raise RuntimeError(f"all {self.size} count slots for {key} values reserved for the CUDA-graph capture "
                               "are taken")
        pos = start + taken
        region[1] += 1
        queued.append(v)
        view = self.buf[pos:pos + 1].reshape(())
        self.index[id(view)] = pos
        self.used += 1
        return view

    def finish(self):
        """Add the values taken since the last call to their slots."""
        for key, region in self._regions.items():
            start, taken, vals = region
            if not vals:
                continue
            region[2] = []
            if key == "mixed":
                vals = [v.to(torch.float64) for v in vals]
            self.buf[start + taken - len(vals):start + taken].add_(torch.cat(vals))  # int64 exact to 2**53


class ReplayHistory:
    """The per-replay counts of one captured forward: the weight of the calls it captured (``n`` runs).

    ``base``: the first buffer row the capture took on ``device``; ``rows`` ``[n, rows, COLS]`` and ``slots``
    ``[n, slots]``: each replay's rows from ``base`` on and its count slots (device tensors, grown by doubling)."""

    def __init__(self, base: int, slot_index: dict, device):
        self.base, self.slot_index, self.device = base, slot_index, device
        self.n = 0
        self.rows = self.slots = None
        self._arrays = None

    def add(self, rows: torch.Tensor, slots: torch.Tensor):
        """Append one replay's rows and slots (copied on the device, no host sync)."""
        if self.rows is None or self.n == self.rows.shape[0]:
            cap = 2 * self.n or 16
            grow = [torch.empty((cap,) + tuple(t.shape), dtype=t.dtype, device=t.device) for t in (rows, slots)]
            if self.n:
                grow[0][:self.n].copy_(self.rows[:self.n])
                grow[1][:self.n].copy_(self.slots[:self.n])
            self.rows, self.slots = grow
        self.rows[self.n].copy_(rows)
        self.slots[self.n].copy_(slots)
        self.n += 1
        self._arrays = None

    def arrays(self) -> tuple:
        """``(rows, slots)`` of every replay as numpy arrays (one read each)."""
        if self._arrays is None:
            self._arrays = (self.rows[:self.n].cpu().numpy(), self.slots[:self.n].cpu().numpy())
        return self._arrays


def _tensors(inputs) -> list:
    if torch.is_tensor(inputs):
        return [inputs]
    if isinstance(inputs, dict):
        return [v for v in inputs.values() if torch.is_tensor(v)]
    if isinstance(inputs, (tuple, list)):
        return [v for v in inputs if torch.is_tensor(v)]
    return []


_PLAIN = (int, float, bool, str, bytes, type(None))


def _sig(v, strict: bool, depth: int = 0):
    if torch.is_tensor(v):
        return ("tensor", tuple(v.shape), v.dtype, v.device)
    if depth < 4:
        if isinstance(v, (tuple, list)):
            return (type(v),) + tuple(_sig(e, strict, depth + 1) for e in v)
        if isinstance(v, dict):
            return (dict,) + tuple((k, _sig(e, strict, depth + 1)) for k, e in v.items())
    if strict and type(v) not in _PLAIN:
        raise TypeError(f"not keyed by value: {type(v).__name__}")
    return ("value", v)


def signature(inputs, strict: bool = False) -> tuple:
    """What a graph (or a recording, :mod:`neurosim.energy.replay`) is specialised to: structure, and shape / dtype /
    device of each tensor, also inside nested tuples, lists and dicts (an LSTM state ``(h, c)``); other values as
    they are. ``strict``: a value that is neither a tensor, a plain value (number, string, None) nor such a
    container raises TypeError (keying by it would keep it alive and match it only by identity)."""
    def sig(v):
        return _sig(v, strict)

    if torch.is_tensor(inputs):
        return ("tensor", sig(inputs))
    if isinstance(inputs, dict):
        return ("dict",) + tuple((k, sig(v)) for k, v in inputs.items())
    if isinstance(inputs, (tuple, list)):
        return ("seq",) + tuple(sig(v) for v in inputs)
    raise ValueError(f"inputs must be a tensor, a tuple/list or a dict of inputs, got {type(inputs).__name__}")


def _static(inputs):
    """The graph's own input tensors: copies of ``inputs``' tensors (other values kept)."""
    def copy(v):
        return v.detach().clone() if torch.is_tensor(v) else v

    if torch.is_tensor(inputs):
        return copy(inputs)
    if isinstance(inputs, dict):
        return {k: copy(v) for k, v in inputs.items()}
    return type(inputs)(copy(v) for v in inputs)


def _count_tensors(cnt) -> int:
    """0-d tensors in a counter's Count (each needs a slot when captured: the ones the meter's _accumulate
    replaces)."""
    from .meter import _map_tensors

    found = []
    _map_tensors(cnt, found.append)
    return len(found)


class GraphedForward:
    """One metered forward of ``meter.model`` on ``inputs``, captured in a CUDA graph (:meth:`EnergyMeter.graphed`).

    Building it runs ``warmup`` metered forwards on ``inputs`` on a side stream (compiling kernels, filling the
    meter's caches; their counts are discarded), then captures one. Calling it with new inputs of the same
    signature copies them into the graph's input tensors and replays: the batch is counted (the meter's report
    includes every replay) and the model's outputs are returned (the graph's tensors: clone to keep them).
    """

    def __init__(self, meter, inputs, warmup: int = 2):
        if not meter._handles:
            raise RuntimeError("EnergyMeter.graphed() must be called inside `with EnergyMeter(model) as meter:`")
        tensors = _tensors(inputs)
        if not tensors or not all(t.is_cuda for t in tensors):
            raise ValueError("inputs: a CUDA graph needs every input tensor on a CUDA device, got "
                             f"{sorted({str(t.device) for t in tensors}) or 'no tensors'}")
        warmup = validate.positive_int("warmup", warmup)
        self.meter = meter
        self.signature = signature(inputs)
        self.device = tensors[0].device
        self.inputs = _static(inputs)
        counts = meter._counts
        checks = meter._checks.checks if meter._checks is not None else None  # the DeferredChecks
        marks = [len(s.calls) for s in meter._slots]
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        # the graph reads its counted tensors a batch per launch; the warm-ups learn which rows must not wait
        # (their tensor is changed in place later in the forward): see neurosim.energy.device_counts
        counts.flush()  # what eager forwards left deferred: each warm-up then keys its rows from a fresh start
        batching, counts.batching = counts.batching, True
        try:
            self._capture(meter, counts, checks, marks, stream, warmup)
        finally:
            counts.batching = batching

    def _capture(self, meter, counts, checks, marks, stream, warmup):
        from .meter import _call

        notes = [set(s.notes) for s in meter._slots]
        with torch.cuda.stream(stream):
            for i in range(warmup):
                if i == warmup - 1:  # the last warm-up measures what one forward takes
                    rows0 = counts.used(self.device)
                    items0 = len(checks) if checks is not None else 0
                    last = [len(s.calls) for s in meter._slots]
                _call(meter.model, self.inputs)
                counts.flush()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        rows = counts.used(self.device) - rows0
        need_checks = (len(checks) if checks is not None else 0) - items0
        need = sum(_count_tensors(c[0]) for s, n0 in zip(meter._slots, last) for c in s.calls[n0:]
                   if c[0] is not None)
        for s, n0 in zip(meter._slots, marks):  # the warm-ups ran on the first batch: not counted
            del s.calls[n0:]
        for s, kept in zip(meter._slots, notes):  # nor noted (a batched read the warm-ups learned to read at once)
            s.notes = kept
        meter._cache.clear()
        reserve = 2 * rows + 64
        counts.reserve(self.device, reserve)
        base = counts.used(self.device)
        region = counts.bufs[self.device][0][base:base + reserve]
        slots = Slots(self.device, 2 * need + 16)
        check_slots = Slots(self.device, 2 * need_checks + 16)  # never zeroed: the checks add up over replays
        self.history = ReplayHistory(base, slots.index, self.device)

        items = len(checks) if checks is not None else 0
        self.graph = torch.cuda.CUDAGraph()
        meter._weight, meter._acc = self.history, slots
        meter._graphed = True
        if checks is not None:
            checks.accumulate = check_slots
        try:
            with torch.cuda.graph(self.graph):
                region.zero_()  # every replay counts from zero: its counts are copied out after it
                slots.buf.zero_()
                self.outputs = _call(meter.model, self.inputs)
                counts.flush()  # the last layer's deferred counts: their launches belong to the graph
                slots.finish()
                check_slots.finish()
        except Exception as exc:
            for s, n0 in zip(meter._slots, marks):
                del s.calls[n0:]
            if checks is not None:
                checks.drop_after(items)
            counts.pending.clear()
            counts.optional.clear()
            counts.drop_batch()
            raise RuntimeError(f"capturing the metered forward in a CUDA graph failed: {exc} (a forward that reads a "
                               "value back to the host, e.g. .item() or a branch on a tensor, cannot be captured)"
                               ) from exc
        finally:
            meter._weight, meter._acc = 1, None
            if checks is not None:
                checks.accumulate = None
            meter._cache.clear()
        self._rows = region[:counts.used(self.device) - base]
        self._slots = slots.buf

    @property
    def replays(self) -> int:
        """How many times the graph has been replayed (batches counted)."""
        return self.history.n

    def matches(self, inputs) -> bool:
        """Whether ``inputs`` have the captured signature (structure, shapes, dtypes, devices)."""
        try:
            return signature(inputs) == self.signature
        except ValueError:
            return False

    def __call__(self, inputs):
        if not self.matches(inputs):
            raise ValueError(f"inputs: this graph was captured for {self.signature}, got "
                             f"{signature(inputs)}; run other shapes eagerly under the meter")
        if not self.meter._handles:
            raise RuntimeError("the EnergyMeter that captured this graph has ended; replays would not be reported")
        if torch.is_tensor(inputs):
            self.inputs.copy_(inputs)
        else:
            pairs = inputs.items() if isinstance(inputs, dict) else enumerate(inputs)
            for k, v in pairs:
                if torch.is_tensor(v):
                    self.inputs[k].copy_(v)
        self.graph.replay()
        self.history.add(self._rows, self._slots)
        return self.outputs
