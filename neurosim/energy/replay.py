"""Eager metered forwards replayed from a recorded plan: the meter's host work done once per input signature.

A hook-based meter runs Python in every counted module (its counter, the tensor cache, a counting launch per new
tensor). Where the host sets the pace of a forward, that Python is what the GPU waits for (BENCHMARKS.md, energy
run 12). Yet for a given model and input signature it decides the same things in every forward: which tensors to
read, with which fan-out maps, into which count rows, and how the rows combine into each layer's counts.

So under one :class:`~neurosim.energy.EnergyMeter` (one ``with`` block), the first forward of each input signature
(the structure, shapes, dtypes and devices of the model's inputs, and whether autograd is on) is metered as usual
and *recorded* (:class:`Recorder`): every module call the meter wraps (the module, and for each tensor it is given
or returns: shape, strides, storage offset, dtype, device, which earlier tensor's storage it shares, in-place
changes since that storage was first seen; non-tensor arguments by value (numbers, strings, None) or by type),
every counting read (which call's tensor, as which view, into which row, with which fan map and scale), every spike
tally row handed to a fused neuron kernel, and the calls' counts (linear forms over the rows). Each later forward
with the same signature is *replayed* (:class:`Replayer`): the wrapped modules only note their tensors (no counter,
no cache, no launch), each call is checked against the recording as it happens, and when the forward ends every
recorded read runs on the new tensors, up to :data:`~neurosim.kernels.stats.MAX_BATCH` tensors a launch, into a
fresh block of rows; the calls' counts are the recorded ones, read from each replay's block (:class:`Replays`, which
the report evaluates once over all replays, as it does a CUDA graph's). The counts are those the hooks would give:
same reads, same rules.

A forward that changes the meter's own decisions (its fused neuron kernels told to stop tallying spikes that a
fan-weighted read counts anyway) is not kept as the recording: the next forward is recorded instead.

A call that differs from the recording (another branch taken, a new shape, another aliasing of tensors) ends the
replay of that forward: the calls noted so far are counted by the meter's usual hooks, from the tensors kept, and
the rest of the forward runs hooked (its signature is then recorded again). A recording is not used when a counted
tensor is not one of the calls' inputs or outputs (or a view of one), when a counter computed a count tensor itself,
when rows of another forward are referenced, when a tensor was changed in place after it was noted, or when the
tensors noted in one forward would hold more than :func:`max_bytes`: a replayed forward keeps
every noted tensor until it ends (its reads run then), so its peak memory is that of a forward that keeps its
activations (as training does). ``EnergyMeter(replay=False)`` meters every forward with the hooks.
"""
from __future__ import annotations

import numpy as np
import torch

from .device_counts import DeviceCount, RowStats, _count_torch, kernel_view
from . import counters as C

_PLAIN = (int, float, bool, str, type(None))


def max_bytes(device) -> int:
    """Storage a replayed forward may keep alive: an eighth of the GPU's memory, 2 GiB on other devices."""
    if device is not None and device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory // 8
    return 2 << 30


class Replays:
    """The weight of a recording's calls: the forwards replayed from it so far, each with its block of rows. The
    report evaluates each recorded call once over all of them, as it does a CUDA graph's replays
    (:class:`~neurosim.energy.graph.ReplayHistory`, whose interface this is)."""

    def __init__(self, counts, device, base: int, nrows: int):
        self.counts, self.device, self.base, self.nrows = counts, device, base, nrows
        self.bases: list = []  # first row of each replay's block
        self.slot_index: dict = {}  # (no count tensors: a recording with any is not replayed)
        self._arrays = None

    @property
    def n(self) -> int:
        return len(self.bases)

    def add(self, base: int):
        self.bases.append(base)
        self._arrays = None

    def arrays(self) -> tuple:
        """``(rows [n, nrows, COLS], slots [n, 0])``: each replay's block, read back in one transfer."""
        if self._arrays is None:
            buf = self.counts.bufs[self.device][0]
            idx = torch.as_tensor(self.bases)[:, None] + torch.arange(self.nrows)
            self._arrays = (buf[idx.to(buf.device)].cpu().numpy(), np.zeros((self.n, 0)))
        return self._arrays


class _Forward:
    """The module calls of one forward as the meter's wrappers see them: descriptors, and the tensors kept."""

    def __init__(self):
        self.steps: list = []  # one descriptor a call's entry and one a call's exit, in order
        self.stash: list = []  # every tensor described, in order (kept alive until the forward ends)
        self.versions: list = []  # each one's _version when described
        self.owner: list = []  # index of the step that described it
        # storage address -> (class number, version first seen, position in stash of the first tensor on it)
        self._storages: dict = {}
        self._seen: dict = {}  # id(tensor) -> (its version, descriptor): one passed on from call to call (kept alive)
        self.bytes = 0  # storage kept alive
        self.device = None

    def _desc(self, v):
        if torch.is_tensor(v):
            seen = self._seen.get(id(v))
            if seen is not None and seen[0] == v._version:
                return seen[1]  # described before, unchanged since
            s = v.untyped_storage()
            p = s.data_ptr()
            ver = v._version
            c = self._storages.get(p)
            if c is None:
                c = self._storages[p] = (len(self._storages), ver, len(self.stash))
                n = s.nbytes()
                self.bytes += n
                head = (c[0], n)
                if self.device is None:
                    self.device = v.device
            else:
                head = c[0]
            self.stash.append(v)
            self.versions.append(ver)
            self.owner.append(len(self.steps))
            d = head, v.storage_offset(), v.shape, v.stride(), v.dtype, v.device, ver - c[1]
            self._seen[id(v)] = (ver, d)
            return d
        return v if type(v) in _PLAIN else type(v)

    def _outs(self, out):
        if isinstance(out, (tuple, list)):
            return tuple(self._desc(o) for o in out)
        if isinstance(out, dict):
            return tuple((k, self._desc(o)) for k, o in out.items())
        return self._desc(out)

    def entry(self, idx: int, args: tuple, kwargs: dict) -> tuple:
        d = (idx, tuple(self._desc(a) for a in args), tuple((k, self._desc(v)) for k, v in kwargs.items()))
        self.steps.append(d)
        return d

    def exit(self, idx: int, out) -> tuple:
        d = (idx, self._outs(out))
        self.steps.append(d)
        return d

    def changed(self, positions) -> list:
        """Of stash ``positions``, those whose tensor changed in place since it was described."""
        return [p for p in positions if self.stash[p]._version != self.versions[p]]


class Template:
    """What one recorded forward did: :class:`Recorder` makes it, :class:`Replayer` follows it."""

    def __init__(self, steps, reads, tallies, calls, device, base, nrows, paths, counts):
        self.steps, self.reads, self.tallies, self.calls = steps, reads, tallies, calls
        self.device, self.base, self.nrows, self.paths = device, base, nrows, paths
        self.replays = Replays(counts, device, base, nrows)  # the weight of its calls once replayed


class Recorder(_Forward):
    """A hooked forward that notes what it does (see the module docstring); :meth:`finish` gives the
    :class:`Template`, or the reason there is none."""

    def __init__(self, counts):
        super().__init__()
        self.counts = counts
        self.reads: list = []  # (stash position, view or None, row, fan map, inv_scale, path)
        self.tallies: list = []  # (row, slots)
        self.problem = ""
        self.used0 = {dev: used for dev, (_, used) in counts.bufs.items()}

    def read(self, row: int, x: torch.Tensor, fan, inv_scale, path: str):
        """The count buffer reads ``x`` into ``row`` (``fan``: the int32 or int64 map it passes on, or None)."""
        c = self._storages.get(x.untyped_storage().data_ptr())
        if c is None:
            self.problem = "a counted tensor is not a wrapped module's input or output (nor a view of one)"
            return
        pos = c[2]
        src = self.stash[pos]
        view = None
        if (x.storage_offset(), x.shape, x.stride(), x.dtype) != (src.storage_offset(), src.shape, src.stride(),
                                                                  src.dtype):
            if x.dtype != src.dtype:
                self.problem = "a counted tensor is a reinterpretation of another dtype"
                return
            view = (tuple(x.shape), tuple(x.stride()), x.storage_offset())
        self.reads.append((pos, view, row, fan, inv_scale, path))

    def tally(self, row: int, slots: int):
        self.tallies.append((row, slots))

    def finish(self, slots, marks) -> Template | str:
        """The template, given the meter's slots and how many calls each had before the forward; or why not."""
        if self.problem:
            return self.problem
        counts = self.counts
        grown = [(dev, used - self.used0.get(dev, 0)) for dev, (_, used) in counts.bufs.items()
                 if used > self.used0.get(dev, 0)]
        if len(grown) > 1:
            return "count rows on more than one device"
        if not grown:
            return "nothing counted"
        dev, nrows = grown[0]
        base = self.used0.get(dev, 0)
        if self.changed(range(len(self.stash))):
            return "a tensor was changed in place after a module returned or received it"
        if self.bytes > max_bytes(self.device):
            return f"the forward's tensors take {self.bytes} bytes, more than a replay keeps ({max_bytes(self.device)})"
        calls = []
        for i, (s, n0) in enumerate(zip(slots, marks)):
            for call in s.calls[n0:]:
                rows = []
                if not all(_rows(v, rows) for v in _call_values(call)):
                    return f"layer {s.name!r}: its counter computed a count tensor itself"
                if any(d != dev or not base <= r < base + nrows for d, r in rows):
                    return f"layer {s.name!r}: its counts use rows of an earlier forward"
                calls.append((i, call[:4]))
        reads = [(pos, view, row - base, fan, inv, path) for pos, view, row, fan, inv, path in self.reads]
        tallies = [(row - base, n) for row, n in self.tallies]
        return Template(self.steps, reads, tallies, calls, dev, base, nrows, set(counts.paths), counts)


def _call_values(call):
    from .meter import _TENSOR_FIELDS

    cnt, sin, sout, ins, _ = call
    yield sin
    yield sout
    yield from ins
    if cnt is not None:
        for f in _TENSOR_FIELDS:
            yield getattr(cnt, f)


def _rows(v, out: list) -> bool:
    """Add the (device, row) pairs ``v`` refers to to ``out``; False when ``v`` holds a tensor (not replayable)."""
    if type(v) in _PLAIN:
        return True
    if isinstance(v, RowStats):
        out.append((v.dev, v.row))
        return True
    if type(v) is DeviceCount:
        out.extend((d, r) for d, r, _, _ in v.terms)
        return True
    if torch.is_tensor(v):
        return False
    if isinstance(v, C.TensorStats):
        return all(_rows(t, out) for t in (v.nnz, v.ones, v.total))
    if isinstance(v, dict):
        return all(_rows(t, out) for t in v.values())
    if isinstance(v, (tuple, list)):
        return all(_rows(t, out) for t in v)
    return True


class Replayer(_Forward):
    """A forward replayed from ``template``: its calls are checked as they happen (:meth:`enter`, :meth:`leave`
    return False at the first difference); :meth:`finish` runs the reads and hands the counts to the slots."""

    def __init__(self, template: Template, counts):
        super().__init__()
        self.t, self.counts = template, counts
        self.k = 0  # steps matched so far
        self.n_tally = 0
        self.events: list = []  # (slot index, args, kwargs, output or OPEN) in entry/exit order, for a fallback
        dev, self.base = template.device, counts.used(template.device)
        counts._row(dev, template.nrows)  # the whole block now: a tally view must not outlive a regrown buffer
        self.ok = True

    def enter(self, idx: int, args: tuple, kwargs: dict) -> bool:
        """Note a call's entry; False when it differs from the recording (it is then not noted)."""
        if self.ok:
            self.ok = self.k < len(self.t.steps) and self.entry(idx, args, kwargs) == self.t.steps[self.k]
            if self.ok:
                self.k += 1
                self.events.append((idx, args, kwargs, OPEN))
        return self.ok

    def leave(self, idx: int, args: tuple, kwargs: dict, out) -> bool:
        """Note a call's exit; False when it differs from the recording (it is then not noted)."""
        if self.ok:
            self.ok = self.k < len(self.t.steps) and self.exit(idx, out) == self.t.steps[self.k]
            if self.ok:
                self.k += 1
                self.events.append((idx, args, kwargs, out))
        return self.ok

    def row(self, x: torch.Tensor):
        """The tally region the recording gave the next fused neuron kernel, or None (the replay then ends)."""
        if not self.ok or self.n_tally >= len(self.t.tallies):
            self.ok = False
            return None
        off, slots = self.t.tallies[self.n_tally]
        self.n_tally += 1
        return self.counts.region(self.t.device, self.base + off, slots)

    def complete(self) -> bool:
        return self.ok and self.k == len(self.t.steps) and self.n_tally == len(self.t.tallies)

    def finish(self, slots) -> list:
        """Run the recorded reads on this forward's tensors into its block of rows, and count the block as one more
        replay of the recorded calls (added to ``slots`` at the first replay); returns the slots whose read tensors
        changed in place while the forward ran."""
        t, counts = self.t, self.counts
        buf = counts.bufs[t.device][0]
        kernel: list = []
        for pos, view, off, fan, inv, path in t.reads:
            x = self.stash[pos]
            if view is not None:
                x = x.as_strided(*view)
            x = x.detach()
            if path == "torch":
                _count_torch(x, buf[self.base + off], fan, inv)
            else:
                kernel.append((x, self.base + off, inv, fan, path == "interpreter"))
        if kernel:
            from ..kernels import stats as K

            for i in range(0, len(kernel), K.MAX_BATCH):
                part = kernel[i:i + K.MAX_BATCH]
                K.launch_many([kernel_view(e[0], e[3] is None) for e in part], buf, [e[1] for e in part],
                              [e[2] for e in part], [e[3] for e in part], interpret=part[0][4])
        if not t.replays.n:  # the first replay: the recorded calls join the slots, weighted by the replays
            for i, call in t.calls:
                slots[i].calls.append(call + (t.replays,))
        t.replays.add(self.base)  # (its tally regions are folded by the recording's, Replays.base on)
        counts.paths |= t.paths
        return self._slots_of(self.changed({r[0] for r in t.reads}), slots)

    def changed_slots(self, slots) -> list:
        """The slots whose calls noted a tensor changed in place since (for a replay given up: the hooks read the
        noted tensors now)."""
        ids = {id(self.stash[p]) for p in self.changed(range(len(self.stash)))}
        if not ids:
            return []
        found = {}
        for idx, args, kwargs, out in self.events:
            vals = list(args) + list(kwargs.values()) + (list(out) if isinstance(out, (tuple, list)) else [out])
            if any(id(v) in ids for v in vals if torch.is_tensor(v)):
                found[idx] = slots[idx]
        return list(found.values())

    def _slots_of(self, positions, slots) -> list:
        found = [slots[self.steps[self.owner[p]][0]] for p in positions]
        return list({id(s): s for s in found}.values())


OPEN = object()  # an event's output while the call runs
