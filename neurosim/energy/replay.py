"""Eager metered forwards replayed from a recorded plan: the meter's host work done once per input signature.

A hook-based meter runs Python in every counted module (its counter, the tensor cache, a counting launch per new
tensor). Where the host sets the pace of a forward, that Python is what the GPU waits for (BENCHMARKS.md, energy
run 12). Yet for a given model and input signature it decides the same things in every forward: which tensors to
read, with which fan-out maps, into which count rows, and how the rows combine into each layer's counts.

So under one :class:`~neurosim.energy.EnergyMeter` (its recordings kept from one ``with`` block to the next while the
layers it wraps and their settings stay the same), the first forward of each input signature
(the structure, shapes, dtypes and devices of the model's inputs, and whether autograd is on) is metered as usual
and *recorded* (:class:`Recorder`): the sequence of module calls the meter wraps, with the shape and dtype of each
tensor a call is given or returns (non-tensor arguments by value: numbers, strings, None; others by type); every
counting read (which call's tensor, as which view of its storage, into which row, with which fan map and scale);
every spike tally row handed to a fused neuron kernel; and the calls' counts (linear forms over the rows). Every
tensor on the storage of a read tensor is *watched*: its strides, storage offset and device, which storage it shares,
and the in-place changes of that storage.

Each later forward with the same signature is *replayed* (:class:`Replayer`): the wrapped modules only note their
calls (no counter, no cache, no launch), each call is checked against the recording as it happens (module, shapes
and dtypes, and the watched tensors' layout, aliasing and in-place changes), and when the forward ends every recorded
read runs on the new tensors, :data:`~neurosim.kernels.stats.MAX_BATCH` tensors a launch with their launch arguments
made once (:func:`~neurosim.kernels.stats.plan_many`), into the recording's own zeroed block of rows (where the fused
neuron kernels also tallied their spikes), which is then copied to new rows of the count buffer. The exception: a
read the hooks take as a call returns (the output of a product or a sum of two spike tensors, whose values decide its
count, :meth:`~neurosim.energy.EnergyMeter._at_return`) runs as that call's return is matched, one launch from its
own plan, so that an edit of the output in place afterwards (a causal mask on attention scores) cannot change it.
The calls' counts are the recorded ones, read from each replay's rows (:class:`Replays`, which the report evaluates
once over all replays, as it does a CUDA graph's). The counts are those the hooks would give: same reads, same rules.

A forward that changes the meter's own decisions (its fused neuron kernels told to stop tallying spikes that a
fan-weighted read counts anyway) is not kept as the recording: the next forward is recorded instead.

A call that differs from the recording (another branch taken, a new shape, another aliasing or an in-place change of
a watched tensor) ends the replay of that forward: the calls noted so far are counted by the meter's usual hooks,
from the tensors kept, and the rest of the forward runs hooked (its signature is then recorded again). A recording
is not used when a counted tensor is not one of the calls' inputs or outputs (or a view of one), when a counter
computed a count tensor itself, when rows of another forward are referenced, when a tensor was changed in place
after it was noted, or when the tensors noted in one forward would hold more than :func:`max_bytes`: a replayed
forward keeps every noted tensor until it ends (its reads run then), so its peak memory is that of a forward that
keeps its activations (as training does). ``EnergyMeter(replay=False)`` meters every forward with the hooks.

Because the other reads run when the forward ends, a tensor changed in place after the layer that used it, and
before the end, is read changed. Torch's version counter shows such a change (the meter then warns and hooks the next
forwards), except one made through ``.data`` or outside torch (a numpy view, a custom kernel): models that do that
need ``replay=False``. A change after its last use by a wrapped module to a tensor whose reads all ran as their
calls returned changes no count: the replay goes on, without a warning. A replay given up (a change the recording did
not make, seen by the next module given the tensor) hands the rows it read as calls returned to the hooks, which
count those calls from them.
"""
from __future__ import annotations

import numpy as np
import torch

from .device_counts import COLS, DeviceCount, RowStats, _count_torch, kernel_view, tally_region
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

    def clear(self):
        """No replay counted (the meter was reset): the next replay adds the recorded calls to the layers again."""
        self.bases = []
        self._arrays = None

    def add(self, base: int):
        self.bases.append(base)
        self._arrays = None

    def arrays(self) -> tuple:
        """``(rows [n, nrows, COLS], slots [n, 0])``: each replay's block, from the count buffer's read-back."""
        if self._arrays is None:
            idx = np.asarray(self.bases)[:, None] + np.arange(self.nrows)
            self._arrays = (self.counts.raw(self.device)[idx], np.zeros((self.n, 0)))
        return self._arrays


def _sig(vals) -> list:
    """What a replayed call is checked against: shape and dtype of each tensor, other values as they are (numbers,
    strings, None) or by type."""
    return [(v.shape, v.dtype) if isinstance(v, torch.Tensor) else (v if type(v) in _PLAIN else type(v))
            for v in vals]


def _flat(out) -> tuple:
    """A call's output as the values a position indexes (a tuple or list: its items; a dict: its values)."""
    if isinstance(out, (tuple, list)):
        return tuple(out)
    if isinstance(out, dict):
        return tuple(out.values())
    return (out,)


def _aliases(vals) -> tuple | None:
    """Which of a call's tensor arguments are the same tensor (a counter may tell them apart by identity, as the
    MultiheadAttention one does self- from cross-attention): for each, the position of its first occurrence;
    None when all differ."""
    ids = [id(v) for v in vals if isinstance(v, torch.Tensor)]
    if len(set(ids)) == len(ids):
        return None
    return tuple(ids.index(i) for i in ids)


def _entry_sig(args: tuple, kwargs: dict):
    if not kwargs:
        return _sig(args), _aliases(args)
    return _sig(args), tuple(kwargs), _sig(kwargs.values()), _aliases(args + tuple(kwargs.values()))


def _exit_sig(out):
    if isinstance(out, torch.Tensor):
        return (out.shape, out.dtype)
    if isinstance(out, dict):
        return (dict, tuple(out), _sig(out.values()))
    if isinstance(out, (tuple, list)):
        return (type(out), _sig(out))
    return out if type(out) in _PLAIN else type(out)


def _values(event) -> tuple:
    """The values of a call's entry (its arguments) or exit (its output) that positions ``(step, j)`` index."""
    _, args, kwargs, out = event
    if out is OPEN:
        return args if not kwargs else args + tuple(kwargs.values())
    return _flat(out)


def _layout(v: torch.Tensor) -> tuple:
    return v.storage_offset(), v.shape, v.stride(), v.dtype, v.device


class Template:
    """What one recorded forward did, as a replay checks and repeats it: :class:`Recorder` makes it,
    :class:`Replayer` follows it.

    ``steps[k]`` is what a replay checks at step ``k``: ``(code, kind, expected, watch)``. ``code`` is the
    module's index at a call's entry, ``-1 - idx`` at its exit (a last step, code None, matches no call).
    ``kind`` (:data:`SIG`, ...) says how much a check needs: for every kind but :data:`SIG` the step's one value is a
    tensor (one positional tensor given, or a tensor returned) and ``expected`` its (shape, dtype); for :data:`SIG`
    ``expected`` is the step's :func:`_entry_sig` / :func:`_exit_sig`. Only the tensors the reads use are checked
    further: ``watch`` (None, or a tuple of ``(j, group, layout, delta, same)`` for values ``j``) holds the layout of
    every value on the storage of a read tensor (``group`` numbers the storage); ``delta`` is None for the group's
    first value (its anchor), else how many in-place changes the storage had since the anchor, and ``same`` whether
    it was the anchor itself (then only those changes are checked). ``members[group]``: ``(k, slot)`` for the anchor
    and each value that is the anchor itself (an in-place change of the anchor after the forward noted it changes
    them all; a recording keeps no in-place change between their notes, so they noted the anchor's version).
    ``reads``: ``(k, j, group, view, row, fan, inv_scale, path, at, mine)``, the tensor at position ``(k, j)`` (the
    anchor of ``group``), or ``view`` (size, stride, offset) of its storage, read into ``row`` of the block: when the
    forward ends, or, ``at`` not None, when step ``at`` (a call's exit) matches (a count the call's output values
    decide, :meth:`EnergyMeter._at_return`); ``mine``: that read is of the call's output itself."""

    def __init__(self, codes, sigs, watch, groups, reads, tallies, calls, device, base, nrows, paths, counts):
        self.steps = [_step(c, sig, w) for c, sig, w in zip(codes, sigs, watch)] + [(None, SIG, None, None)]
        self.members = [[] for _ in range(groups)]
        for k, (c, w) in enumerate(zip(codes, watch)):
            for _, g, _, delta, same in w or ():
                if delta is None or same:
                    self.members[g].append((k, c if c >= 0 else -1 - c))
        self.groups, self.reads, self.tallies, self.calls = groups, reads, tallies, calls
        # the modules in the order they first returned (the hooks number the layers in that order for the report)
        self.first_exits = list(dict.fromkeys(-1 - c for c in codes if c < 0))
        self.device, self.base, self.nrows, self.paths = device, base, nrows, paths
        self.replays = Replays(counts, device, base, nrows)  # the weight of its calls once replayed
        self.scratch = self.regions = self.torch_reads = self.batches = None
        # step -> the reads run when it matches (a call's exit): [(group, view, copy, row, fan, inv_scale, plan or
        # None (torch ops), interpret, mine, numel)]; None when there are none
        self.timed = None
        # the groups that reads at the forward's end take a tensor from (an in-place change of another group's
        # storage after its reads ran changes no count)
        self.end_groups = frozenset(r[2] for r in reads if r[8] is None)
        self.dirty = False  # a replay started and did not finish (its block holds tallies)

    def plan(self, events: list):
        """What a replay's end runs, made once from the recorded forward's ``events``: a zeroed block of rows that
        each replay fills (its tally regions handed to the neuron kernels, its counting reads) and then copies into
        the count buffer; the reads, :data:`~neurosim.kernels.stats.MAX_BATCH` tensors a launch with their
        arguments ready (:func:`~neurosim.kernels.stats.plan_many`), or counted with torch ops."""
        self.scratch = torch.zeros(self.nrows, COLS, dtype=torch.int64, device=self.device)
        self.regions = [tally_region(self.scratch, off, n) for off, n in self.tallies]
        self.torch_reads, kernel, self.batches = [], [], []
        timed: dict = {}
        for k, j, g, view, off, fan, inv, path, at, mine in self.reads:
            if at is not None:
                x = _resolve(_values(events[k])[j], view, False)
                plan, copy = None, False
                if path != "torch":
                    from ..kernels import stats as K

                    read = kernel_view(x, fan is None)
                    copy = read is not x
                    plan = K.plan_many([read], self.scratch, [off], [inv], [fan])
                    if plan is None:
                        continue  # (an empty tensor: nothing to read)
                timed.setdefault(at, []).append((g, view, copy, off, fan, inv, plan, path == "interpreter", mine,
                                                 x.numel()))
            elif path == "torch":
                self.torch_reads.append(((g, view, False), off, fan, inv))
            else:
                kernel.append((k, j, g, view, off, fan, inv, path == "interpreter"))
        self.timed = timed or None
        if not kernel:
            return
        from ..kernels import stats as K

        for i in range(0, len(kernel), K.MAX_BATCH):
            part, where, xs = kernel[i:i + K.MAX_BATCH], [], []
            for k, j, g, view, _, fan, _, _ in part:
                x = _resolve(_values(events[k])[j], view, False)
                read = kernel_view(x, fan is None)  # (as the count buffer reads it: in place, or a copy)
                where.append((g, view, read is not x))
                xs.append(read)
            plan = K.plan_many(xs, self.scratch, [e[4] for e in part], [e[6] for e in part], [e[5] for e in part])
            self.batches.append((where, plan, part[0][7]))


SIG, SHAPE, ANCHOR, SAME, WATCH = range(5)  # Template step kinds: what a replayed call's check needs
"""``SIG``: its signature (several values, or not a tensor); a step of one tensor: ``SHAPE`` its shape and dtype,
``ANCHOR`` its layout (the first value of a watched storage), ``SAME`` that it is the anchor it was, unchanged,
``WATCH`` its watched layout and storage (see :meth:`Replayer._watched`)."""


def _step(code: int, sig, watch) -> tuple:
    """A :class:`Template` step."""
    if code >= 0 and len(sig) == 2 and type(sig[0]) is list and len(sig[0]) == 1 and type(sig[0][0]) is tuple:
        sig = sig[0][0]  # (one positional argument, no keywords: its aliases are None)
    elif not (code < 0 and type(sig) is tuple and len(sig) == 2 and isinstance(sig[0], torch.Size)):
        return code, SIG, sig, watch
    if watch is None:
        return code, SHAPE, sig, None
    if len(watch) == 1 and watch[0][3] is None:
        return code, ANCHOR, sig, watch
    if len(watch) == 1 and watch[0][4]:
        return code, SAME, sig, watch
    return code, WATCH, sig, watch


def _resolve(x: torch.Tensor, view, copy: bool) -> torch.Tensor:
    """The tensor a read takes from ``x``: the view ``view`` (size, stride, offset) of its storage, or ``x`` itself
    (None); copied when ``copy`` (a view the counting kernel cannot read in place)."""
    if view is not None:
        x = x.as_strided(*view)
    return x.contiguous() if copy else x


class Recorder:
    """A hooked forward that notes what it does (see the module docstring); :meth:`finish` gives the
    :class:`Template`, or the reason there is none."""

    def __init__(self, counts):
        self.counts = counts
        self.codes: list = []
        self.sigs: list = []
        self.events: list = []  # (idx, args, kwargs, output or OPEN) a step
        # each tensor value, in order: ((k, j), storage address, version of the storage's first value then,
        # the tensor, its version)
        self.positions: list = []
        self._storages: dict = {}  # storage address -> (first position, its version, bytes)
        # (position, view or None, row, fan map, inv_scale, storage address, path, step or None, mine): a read, and
        # for one the meter takes as a call returns (timed, see Template) the step of that exit and whether it is of
        # the call's output itself
        self.reads: list = []
        self.timed = False  # the reads made now are taken as a call returns (EnergyMeter._at_return)
        self.tallies: list = []  # (row, slots)
        self.problem = ""
        self.device = None
        self.used0 = {dev: used for dev, (_, used) in counts.bufs.items()}

    def _note(self, k: int, vals: tuple):
        for j, v in enumerate(vals):
            if isinstance(v, torch.Tensor):
                st = v.untyped_storage()
                p, ver = st.data_ptr(), v._version
                first = self._storages.get(p)
                if first is None:
                    first = self._storages[p] = ((k, j), ver, st.nbytes())
                    if self.device is None:
                        self.device = v.device
                self.positions.append(((k, j), p, first[1], v, ver))

    def entry(self, idx: int, args: tuple, kwargs: dict):
        event = (idx, args, kwargs, OPEN)
        self._step(idx, _entry_sig(args, kwargs), event)

    def exit(self, idx: int, args: tuple, kwargs: dict, out):
        event = (idx, args, kwargs, out)
        self._step(-1 - idx, _exit_sig(out), event)

    def _step(self, code, sig, event):
        self._note(len(self.codes), _values(event))
        self.codes.append(code)
        self.sigs.append(sig)
        self.events.append(event)

    def read(self, row: int, x: torch.Tensor, fan, inv_scale, path: str):
        """The count buffer reads ``x`` into ``row`` (``fan``: the int32 or int64 map it passes on, or None)."""
        p = x.untyped_storage().data_ptr()
        first = self._storages.get(p)
        if first is None:
            self.problem = "a counted tensor is not a wrapped module's input or output (nor a view of one)"
            return
        (k, j) = first[0]
        src = _values(self.events[k])[j]
        view = None
        if _layout(x)[:4] != _layout(src)[:4]:
            if x.dtype != src.dtype:
                self.problem = "a counted tensor is a reinterpretation of another dtype"
                return
            view = (tuple(x.shape), tuple(x.stride()), x.storage_offset())
        at = mine = None
        if self.timed:
            at = len(self.codes) - 1  # (the exit just noted: the meter's hook for it is running)
            out = self.events[at][3]
            mine = (isinstance(out, torch.Tensor) and out.untyped_storage().data_ptr() == p
                    and _layout(out)[:4] == _layout(x)[:4])
        self.reads.append((first[0], view, row, fan, inv_scale, p, path, at, mine))

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
        if any(v._version != ver for *_, v, ver in self.positions):
            return "a tensor was changed in place after a module returned or received it"
        size = sum(n for _, _, n in self._storages.values())
        if size > max_bytes(self.device):
            return f"the forward's tensors take {size} bytes, more than a replay keeps ({max_bytes(self.device)})"
        calls = []
        for i, (s, n0) in enumerate(zip(slots, marks)):
            for call in s.calls[n0:]:
                rows = []
                if not all(_rows(v, rows) for v in _call_values(call)):
                    return f"layer {s.name!r}: its counter computed a count tensor itself"
                if any(d != dev or not base <= r < base + nrows for d, r in rows):
                    return f"layer {s.name!r}: its counts use rows of an earlier forward"
                calls.append((i, call[:4]))
        # every value on the storage of a read tensor is watched: layout, and the storage's in-place changes
        groups = {}
        for _, _, _, _, _, p, *_ in self.reads:
            groups.setdefault(p, len(groups))
        watch = [None] * len(self.codes)
        for (k, j), p, ver0, v, ver in self.positions:
            g = groups.get(p)
            if g is not None:
                a, _, _ = self._storages[p]
                w = watch[k] = watch[k] or []
                if a == (k, j):
                    w.append((j, g, _layout(v), None, False))
                else:  # (``same``: the anchor itself, then only its in-place changes are checked)
                    w.append((j, g, _layout(v), ver - ver0, v is _values(self.events[a[0]])[a[1]]))
        watch = [None if w is None else tuple(w) for w in watch]
        reads = [(k, j, groups[p], view, row - base, fan, inv, path, at, mine)
                 for (k, j), view, row, fan, inv, p, path, at, mine in self.reads]
        tallies = [(row - base, n) for row, n in self.tallies]
        template = Template(self.codes, self.sigs, watch, len(groups), reads, tallies, calls, dev, base, nrows,
                            set(counts.paths), counts)
        template.plan(self.events)
        return template


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


class Replayer:
    """A forward replayed from ``template``: its calls are checked as they happen (:meth:`match` returns False at
    the first difference); :meth:`finish` runs the reads and hands the counts to the slots."""

    def __init__(self, template: Template, counts):
        self.t, self.counts = template, counts
        self.steps = template.steps
        self.k = 0  # steps matched so far
        self.n_tally = 0
        self.events: list = []  # (slot index, args, kwargs, output or OPEN) a step, for the reads or a fallback
        # each group's first value, and its _version then (the reads take their tensors from these)
        self.anchors: list = [None] * template.groups
        # (step, watched tensor, its _version when noted, its group) for watched values other than the anchors and
        # the anchors themselves, whose in-place changes the anchors show (Template.members)
        self.noted: list = []
        self.timed = template.timed  # step -> the reads run as it matches (Template.timed), or None
        if template.dirty:  # (a replay that did not finish left tallies in the block)
            template.scratch.zero_()
        template.dirty = True
        self.ok = True

    def match(self, code: int, event: tuple, one: tuple | None) -> bool:
        """Step ``code`` (see :class:`Template`: a module's index at a call's entry, ``-1 - idx`` at its exit) with
        ``event`` (``(idx, args, kwargs, OPEN)`` or ``(idx, args, kwargs, output)``): noted if it is the recording's
        next step, else the replay ends. ``one``: the step's only value in a 1-tuple (one positional argument, or an
        output that is a tensor), else None."""
        k = self.k
        c, kind, expected, watch = self.steps[k]
        if c == code and self.ok:
            if kind and one is not None:
                v = one[0]
                if kind == SHAPE:
                    ok = isinstance(v, torch.Tensor) and v.shape == expected[0] and v.dtype == expected[1]
                elif kind == ANCHOR and isinstance(v, torch.Tensor):
                    ok = _layout(v) == watch[0][2]
                    if ok:
                        self.anchors[watch[0][1]] = (v, v._version)
                elif kind == SAME and v is (a := self.anchors[watch[0][1]])[0]:
                    ok = v._version == a[1] + watch[0][3]
                else:
                    ok = self._watched(watch, k, one)
            else:
                _, args, kwargs, out = event
                ok = kind == SIG and (_entry_sig(args, kwargs) if out is OPEN else _exit_sig(out)) == expected and (
                    watch is None or self._watched(watch, k, _values(event)))
            if ok:
                self.k = k + 1
                self.events.append(event)
                if self.timed is not None and k in self.timed:
                    self._read_timed(self.timed[k])
                return True
        self.ok = False
        return False

    def _read_timed(self, reads: list):
        """The reads the recording took as this call returned (a count its output values decide), run now, before
        anything later in the forward can change the tensors in place."""
        block, anchors = self.t.scratch, self.anchors
        for g, view, copy, off, fan, inv, plan, interpret, _, _ in reads:
            x = _resolve(anchors[g][0], view, copy)
            if plan is None:
                _count_torch(x.detach(), block[off], fan, inv)
            else:
                from ..kernels import stats as K

                K.launch_plan(plan, [x], block, interpret)

    def _watched(self, watch: tuple, k: int, vals: tuple) -> bool:
        """The values of step ``k`` that share a read tensor's storage (``watch``, see :class:`Template`): as
        recorded (layout, aliasing, in-place changes of the storage)."""
        anchors = self.anchors
        for j, g, layout, delta, same in watch:
            v = vals[j]
            if not isinstance(v, torch.Tensor):
                return False
            ver = v._version
            if delta is None:  # the group's first value
                if _layout(v) != layout:
                    return False
                anchors[g] = (v, ver)
                continue
            a = anchors[g]
            if a is None or ver - a[1] != delta:
                return False
            if same and v is a[0]:
                continue  # (its later in-place changes are the anchor's: Template.members)
            if _layout(v) != layout or v.untyped_storage().data_ptr() != a[0].untyped_storage().data_ptr():
                return False
            self.noted.append((k, v, ver, g))
        return True

    def row(self, x: torch.Tensor):
        """The tally region the recording gave the next fused neuron kernel, or None (the replay then ends)."""
        if not self.ok or self.n_tally >= len(self.t.tallies):
            self.ok = False
            return None
        self.n_tally += 1
        return self.t.regions[self.n_tally - 1]

    def complete(self) -> bool:
        return self.ok and self.steps[self.k][0] is None and self.n_tally == len(self.t.tallies)

    def finish(self, slots) -> list:
        """Run the recorded reads on this forward's tensors into the template's block, copy the block to new rows of
        the count buffer and count them as one more replay of the recorded calls (added to ``slots`` at the first
        replay); returns the slots whose read tensors changed in place while the forward ran."""
        t, counts = self.t, self.counts
        block = t.scratch
        self._read(block)
        dev, base = counts._row(t.device, t.nrows)
        counts.bufs[dev][0][base:base + t.nrows].copy_(block)
        block.zero_()
        t.dirty = False
        if not t.replays.n:  # the first replay: the recorded calls join the slots, weighted by the replays
            for i, call in t.calls:
                slots[i].calls.append(call + (t.replays,))
                if call[0] is not None and call[0].note:  # (a meter reset since the recording forgot its notes)
                    slots[i].notes.add(call[0].note)
        t.replays.add(base)  # (its tally regions are folded by the recording's, Replays.base on)
        counts.paths |= t.paths
        return self.changed_slots(slots, t.end_groups)

    def _read(self, block: torch.Tensor):
        """The recorded reads of this forward's tensors (each group's anchor, or a view of its storage) into
        ``block``."""
        t, anchors = self.t, self.anchors
        for (g, view, copy), off, fan, inv in t.torch_reads:
            _count_torch(_resolve(anchors[g][0], view, copy).detach(), block[off], fan, inv)
        if t.batches:
            from ..kernels import stats as K

            for where, plan, interpret in t.batches:
                if plan is not None:
                    K.launch_plan(plan, [_resolve(anchors[g][0], view, copy) for g, view, copy in where], block,
                                  interpret)

    def changed_slots(self, slots, groups=None, handed=()) -> list:
        """The slots of the calls that noted a watched tensor since changed in place: at the forward's end, of the
        ``groups`` whose reads ran then (a group read only as its call returned was read before the change); for a
        replay given up, of every group (the hooks read the noted tensors now) but at the steps in ``handed``,
        whose call's output the hooks get as it was read when the call returned."""
        found = {self.events[k][0] for k, v, ver, g in self.noted
                 if v._version != ver and (groups is None or g in groups) and k not in handed}
        for g, a in enumerate(self.anchors):
            if a is not None and a[0]._version != a[1] and (groups is None or g in groups):
                found.update(i for k, i in self.t.members[g] if k < self.k and k not in handed)
        return [slots[i] for i in sorted(found)]

    def handover(self, counts) -> dict:
        """For a replay given up: step -> the row of the call's output read as that call returned (a timed read of
        the output itself), copied from the block to a new row of the count buffer, for the hooks to count the call
        with (its output may have changed in place since)."""
        out = {}
        if self.timed is None:
            return out
        t = self.t
        for k, reads in self.timed.items():
            if k >= self.k:
                continue
            for _, _, _, off, _, inv, _, _, mine, numel in reads:
                if mine:
                    dev, row = counts._row(t.device)
                    counts.bufs[dev][0][row].copy_(t.scratch[off])
                    st = RowStats(counts, numel, dev, row)
                    st.inv_scale = inv
                    out[k] = st
        if out:
            counts.paths |= t.paths
        return out


OPEN = object()  # an event's output while the call runs
