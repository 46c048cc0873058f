"""Counting during a forward pass: the counted modules' forwards wrapped, one device->host transfer at the end.

``profile(model, inputs)`` runs the model once under an :class:`EnergyMeter`; the meter can also wrap any
forward pass the caller runs itself (``with EnergyMeter(model) as m: model(x)``; ``m.report()``).
"""
from __future__ import annotations

import fnmatch
import gc
import inspect
import math
import numbers
import threading
import types
import warnings
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .. import spike_tally, validate
from . import counters as C
from .device_counts import BAD, COLS, NNZ, ONES, CountBuffer, DeviceCount, RowStats, TallyStats
from .graph import signature
from .hardware import HardwareProfile, get_profile
from .replay import OPEN, Recorder, Replayer, Replays
from .report import EnergyReport, LayerReport
from .stats_cache import StatsCache

RATES = ("needed", "all")
MAX_RECORDINGS = 16  # input signatures a meter records (further ones are metered by the hooks)
_SCRIPTED = ("a TorchScript module (torch.jit.script / trace): it runs compiled, without calling its submodules in "
             "Python, so its operations are not counted; meter the module before scripting it")
CHANGED_LATE = ("a tensor it made or was given was changed in place before the replayed forward read it: its counts "
                "are of the changed values")


@dataclass(eq=False)  # compared and hashed by identity (CountBuffer keys rows by the slot making them)
class _Slot:
    name: str
    module: nn.Module
    counter: object  # callable or None (not counted)
    require: bool = False  # its spike-deciding input must be binary (require_spikes)
    neuron: bool = False  # a spiking neuron: its output (spikes) is always counted
    check_input: bool = False  # a neuron that does not check its input for NaN/inf itself: the meter reads it
    reread: bool = False  # a neuron whose spikes a fan-map counter reads anyway: its kernel is not asked to count them
    first_call: int = -1
    module_ref: object = None  # a kept meter between profile calls: a weak reference to the module (module None)
    pre: object = None  # the meter's pre-hook and hook for it (run by its wrapped forward, or for a replay given up)
    post: object = None
    notes: set = field(default_factory=set)
    # one entry per call: (count or None, stats of the rate-defining input, output stats, all input stats,
    # weight: 1 for a call run once, the ReplayHistory of the CUDA graph that captured it, or the Replays of the
    # recording it was recorded in: neurosim.energy.replay)
    calls: list = field(default_factory=list)

    # (the output of a layer whose operation counts depend on it is read as the layer returns, EnergyMeter._at_return:
    # this is about the rate read later, with the next layer's read of the tensor)
    CHANGED_OUTPUT = "output changed in place before it was counted: its output rate is of the changed values"
    CHANGED_READ = ("a tensor its counter read was changed in place before the read ran (a CUDA graph's batched "
                    "read): its counts are of the changed values")

    def __str__(self):
        return f"layer {self.name!r} ({type(self.module).__name__})"

    def changed_output(self):
        self.notes.add(self.CHANGED_OUTPUT)

    def changed_read(self):
        self.notes.add(self.CHANGED_READ)

    def changes(self) -> int:
        return (self.CHANGED_OUTPUT in self.notes) + (self.CHANGED_READ in self.notes)


def _first_tensor(obj):
    if torch.is_tensor(obj):
        return obj
    if isinstance(obj, (tuple, list)):
        for o in obj:
            t = _first_tensor(o)
            if t is not None:
                return t
    if isinstance(obj, dict):
        for o in obj.values():
            t = _first_tensor(o)
            if t is not None:
                return t
    return None


_get_ident = threading.get_ident
# module id -> [thread, blocks, module]: the modules some meter's block wraps, and the thread it runs in
_CLAIMS: dict = {}
_CLAIMED = threading.Condition()


def _claim(modules: list) -> list:
    """Take ``modules`` for this thread's meter, waiting while a meter of another thread wraps any of them. All or
    none: a waiting thread holds none, so two threads never wait for each other. (Meters of one thread nest: each
    wraps over the other's wrappers and unwraps last-in first-out.)"""
    me = _get_ident()
    with _CLAIMED:
        while any((c := _CLAIMS.get(id(m))) is not None and c[0] != me for m in modules):
            _CLAIMED.wait()
        for m in modules:
            c = _CLAIMS.get(id(m))
            if c is None:
                _CLAIMS[id(m)] = [me, 1, m]
            else:
                c[1] += 1
    return modules


def _release(modules: list):
    with _CLAIMED:
        for m in modules:
            c = _CLAIMS[id(m)]
            c[1] -= 1
            if not c[1]:
                del _CLAIMS[id(m)]
        _CLAIMED.notify_all()


class _Wrapped:
    """``module.forward`` replaced by ``make(module.forward)`` (an instance attribute over the class's method: a
    module's ``__call__`` takes its forward from the instance; no hooks, whose modules run torch's slower hooked
    call path, BENCHMARKS.md energy run 12); :meth:`remove` restores it. (Set in the instance's ``__dict__``:
    ``nn.Module.__setattr__`` would look for parameters, buffers and modules of that name first.)"""

    __slots__ = ("module", "forward", "previous", "call")

    def __init__(self, module: nn.Module, make):
        self.module = module
        self.previous = module.__dict__.get("forward")  # an instance attribute already there (None: the method)
        self.call = module.forward  # what the wrapper calls (relinked when the wrapper under it goes first)
        self.forward = make(self)
        self.forward.wrapped_by_meter = self
        module.__dict__["forward"] = self.forward

    def remove(self):
        self._unlink()
        # (the wrapper refers to this handle and the handle to it: a cycle, which would be left to the collector)
        del self.forward.wrapped_by_meter
        self.forward = self.call = None

    def _unlink(self):
        d = self.module.__dict__
        top = d.get("forward")
        if top is self.forward:
            if self.previous is None:
                del d["forward"]
            else:
                d["forward"] = self.previous
            return
        # another meter's wrapper was put on top later and is still there (blocks of one thread ended out of order,
        # as interleaved coroutines can): take this one out of the chain under it
        above = getattr(top, "wrapped_by_meter", None)
        while above is not None and above.call is not self.forward:
            above = getattr(above.call, "wrapped_by_meter", None)
        if above is not None:
            above.call = self.call
            if above.previous is self.forward:
                above.previous = self.previous


# values compared by equality (numbers, strings) or, for functions, by identity
_SETTING = frozenset((bool, int, float, str, type(None), types.FunctionType, types.BuiltinFunctionType))


_OTHER = object()  # (an attribute value that is not a setting)


def _plain(v, depth: int = 3):
    """``v`` as a comparable copy (lists as tuples) when it is a plain value (also a subclass or numpy scalar: a
    scale swept with ``np.linspace``, an IntEnum, a torch.Size) or a (nested) tuple/list of them, else
    :data:`_OTHER`."""
    if type(v) in _SETTING:
        return v
    if isinstance(v, (tuple, list)) and depth:
        items = tuple(_plain(e, depth - 1) for e in v)
        if not any(e is _OTHER for e in items):
            return items
    elif isinstance(v, (numbers.Number, str)):
        return v
    return _OTHER


def _settings(module: nn.Module, keep: list | None = None) -> tuple:
    """A module's own plain-valued attributes (its train/eval mode, a convolution's stride and padding, a pooling's
    kernel size given as a list, a product's scale, a transformer layer's activation function...): what a counter's
    rules may depend on besides the shapes a replay checks. A change between two ``with`` blocks makes the meter
    record its forwards anew. ``keep``: gets ``(name, value, its comparable copy, whether the value itself cannot
    change)`` of each (for :func:`_settings_moved`)."""
    # (torch's own state: the names starting with "_"; "forward": the meter's wrapper, new in every block)
    out = []
    for k, v in module.__dict__.items():
        if k[0] == "_" or k == "forward":
            continue
        if type(v) in _SETTING:
            out.append((k, v))
            if keep is not None:
                keep.append((k, v, v, True))
        elif not isinstance(v, (torch.Tensor, nn.Module)):
            p = _plain(v)
            if p is not _OTHER:
                out.append((k, p))
                if keep is not None:  # (a tuple of plain values cannot change; a list can, in place)
                    keep.append((k, v, p, type(v) is tuple and all(type(e) in _SETTING for e in v)))
    return tuple(out)


def _settings_moved(quick: list) -> bool:
    """Whether a setting of the modules in ``quick`` (``(module __dict__, its length, _settings' keep)``, taken when
    the settings were last compared) changed since: cheaper than :func:`_settings` over every attribute, for a
    check before each forward of a block. (An attribute added and another removed between two forwards of one
    block, leaving the length, is not seen here; entering the block again compares everything.)"""
    for d, n, items in quick:
        if len(d) - ("forward" in d) != n:  # (the meter's wrapper comes and goes as "forward")
            return True
        for k, v, p, fixed in items:
            now = d.get(k, _OTHER)
            if now is v and fixed:
                continue
            if type(now) in _SETTING:
                if now != p or type(now) is not type(p):
                    return True
            elif _plain(now) != p:
                return True
    return False


def _tensors(args):
    return [a for a in args if torch.is_tensor(a)]


_SIGNATURES: dict = {}  # module type -> the signature of its forward (None: none to bind to)


def _in_order(module: nn.Module, args: tuple, kwargs: dict) -> tuple:
    """A call's arguments as positional ones in the order of its class's ``forward`` signature, defaults filled in
    (``mha(x, m, m, pad)`` and ``mha(value=m, key=m, query=x, key_padding_mask=pad)`` give counters the same tuple).
    Where they do not bind to it: the positional arguments, then the keyword values as given."""
    cls = type(module)
    sig = _SIGNATURES.get(cls, False)
    if sig is False:
        try:
            sig = _SIGNATURES[cls] = inspect.signature(cls.forward)
        except (TypeError, ValueError):
            sig = _SIGNATURES[cls] = None
    if sig is not None:
        try:
            bound = sig.bind(module, *args, **kwargs)
        except TypeError:
            pass
        else:
            bound.apply_defaults()
            out = []
            for name, value in list(bound.arguments.items())[1:]:  # (not self)
                kind = sig.parameters[name].kind
                if kind is inspect.Parameter.VAR_POSITIONAL:
                    out += value
                elif kind is inspect.Parameter.VAR_KEYWORD:
                    out += value.values()
                else:
                    out.append(value)
            return tuple(out)
    return tuple(args) + tuple(kwargs.values())


def _patterns(require_spikes):
    if require_spikes is None or require_spikes is False:
        return ()
    if require_spikes is True:
        return ("*",)
    if isinstance(require_spikes, str):
        return (require_spikes,)
    if isinstance(require_spikes, dict):
        raise ValueError("require_spikes must be None, a bool, a layer name / glob pattern, or a list of them; "
                         f"got a dict {require_spikes!r}")
    try:
        pats = tuple(require_spikes)
    except TypeError:
        pats = None
    if pats is None or not all(isinstance(p, str) for p in pats):
        raise ValueError("require_spikes must be None, a bool, a layer name / glob pattern, or a list of them; "
                         f"got {require_spikes!r}")
    return pats


class EnergyMeter:
    """Count operations of ``model`` during the forward passes run inside ``with EnergyMeter(model):``.

    Args:
        model: the network; modules with a registered counter are hooked, containers are walked into, and
            any other module that runs is listed as "not counted".
        hardware: profile name (``"cmos45nm"``, ``"loihi"``, or registered), a HardwareProfile or a dict.
        require_spikes: layer names or glob patterns whose input must be binary; a non-binary input raises
            ValueError naming the layer, and a pattern that matches no layer of the model raises one when the
            block starts. ``True``: every layer that does synaptic operations (whose counter counts operations
            driven by input spikes: Linear, convolutions, products, additions...), not the real-valued layers
            between them (normalisations, the spiking neurons, whose input is a current).
        counting: how tensors are counted: ``"auto"`` (the one-read Triton kernel for CUDA tensors, torch ops on
            CPU unless ``NEUROSIM_TRITON_INTERPRET=1``), ``"torch"`` or ``"kernel"``. Same counts either way.
        rates: which tensors are read for rates alone. ``"needed"`` (default): a tensor is read when an operation
            count depends on it (the input of a synaptic layer, pooling, a product or an addition, the output of
            a product or an addition), when it is a spiking neuron's output (its firing rate), when it is the
            input of a layer named by ``require_spikes``, or when it is the input of a spiking neuron that does not
            check it for NaN/inf itself (snnTorch, SpikingJelly, Norse: see "NaN/inf" below); other layers' inputs
            and outputs (the real-valued currents between a synaptic layer, its normalisation and its neurons) get
            a rate only if one of these reads covers them, else the report says "not measured" (None). ``"all"``:
            every input and output of every hooked layer is read (up to three times as many reads in a spiking
            transformer), and a NaN/inf is named at the first layer whose input holds it. Operation counts and
            energy are the same either way.
        defer_checks: run the layers' own NaN/inf input checks (:func:`neurosim.validate.finite`, the fused
            kernel's flag) and the meter's check of the model's output as :func:`neurosim.validate.deferred_checks`:
            verdicts stay on the device and are read once when the ``with`` block ends, so the forward never waits
            for the GPU mid-way; the error names the layer that was running (the model, outside every counted
            layer), or an earlier layer whose input the meter read held the NaN. ``False``: each check reads its
            verdict at once (a host sync per check).
        audit: also watch the torch operations the model's modules run themselves, outside every hooked layer
            (``x.mean(0)`` or ``a * b`` in a container's ``forward``), and list them in the report as "not
            counted" rows ``<module> (functional)`` (:mod:`neurosim.energy.audit`). A Python call per aten
            operation: for checking a model's coverage, not for timing; not with :meth:`graphed`.
        replay: the first forward of each input signature (the model called with inputs of given structure,
            shapes, dtypes, devices) is metered by the hooks and recorded; later forwards with that signature are
            replayed from the recording: the counted modules only note their tensors and every counting read runs
            when the forward ends, a few launches in all (:mod:`neurosim.energy.replay`; same counts, far less host
            work; a replayed forward keeps its activations until it ends). ``False``: every forward is hooked. A
            replay notices a tensor changed in place after its layer used it by torch's version counter, and warns;
            a change torch does not record (through ``.data``, a numpy view, a custom kernel writing in place) goes
            unseen, and the replay counts the changed values: use ``replay=False`` for such models. (The outputs
            whose values decide a count, see below, are read as their calls return in a replay too.)

    NaN/inf: a NaN or inf in the model's input, or one made on the way (a NaN weight), passes through most operations
    (normalisation, activations, softmax, means, sums, products) until a place that sees it. Under
    ``rates="needed"`` these are: (1) the input of every layer the meter reads the input of for an operation count
    (Linear, convolutions, pooling, products, additions, multi-head attention) or for ``require_spikes``; (2) the
    input of every spiking neuron, where a NaN would otherwise vanish (``NaN > threshold`` is False): neurosim's
    neurons check it themselves, the meter reads the others' (snnTorch, SpikingJelly, Norse, a class with the neuron
    protocol alone: :func:`neurosim.neurons.protocol.checks_own_input`); (3) the model's output (each floating-point
    tensor in it: one float64 sum a forward, a deferred check), for a NaN that meets none of these on its way out
    (norm, softmax or mean last). The ValueError names the first layer (in the order of their first return) that saw
    it, ``"layer 'name' (Type): ..."``, or ``"model 'Name': output contains NaN/inf ..."``. Not caught: a NaN that an
    operation comparing values drops before any of these (``nn.Threshold``, ``nn.Hardshrink``, a functional
    ``x > 0``), or one in a tensor that none of them receives (a branch whose result is dropped). ``rates="all"``
    reads every input: it names the first layer whose input holds the NaN. The checks of neurons and of the output
    raise when the ``with`` block ends; what the meter's reads found, when the block ends with an error and in
    :meth:`report` (which :func:`profile` calls).

    Every tensor is read once: a layer's output is counted when the next layer starts (or by that layer's
    counter, when it needs the tensor's fan-out-weighted count: convolutions, pooling), its counts go to a
    device buffer, and :meth:`report` reads the buffer back once. The exception is an output whose values decide the
    layer's own count (a product or a sum of two spike tensors: ``MatMul``, ``Add``, SEW ADD): it is read as the
    layer returns, so that code editing it in place afterwards (``scores.masked_fill_(mask, 0)``) does not change
    the count of the operation computed; the next layer reuses that read (a fan-weighted count, conv or pooling,
    reads it again).

    While the ``with`` block runs, torch's fused transformer fast path (``torch.backends.mha``, a process-wide
    switch) is off: in inference it runs ``nn.TransformerEncoderLayer`` and ``nn.MultiheadAttention`` as one fused
    operation without calling their modules, which could then be neither counted nor listed. The same arithmetic
    runs through the modules instead; the switch is set back as it was when the block ends. A meter entered again
    adds the new block's calls to its layers (:meth:`reset` first, for a report of the new block alone). It also
    replays the recordings of earlier blocks, as long as the block wraps the same layers and their plain-valued
    settings are unchanged (train/eval mode, strides, a product's scale; :func:`_settings`). If they changed, its
    forwards are recorded anew.

    A block counts the forwards of the thread that entered it: a forward another thread runs meanwhile passes
    through uncounted, and a meter of another thread that would wrap some of the same modules (the same model
    profiled in two threads) waits for this block to end. A module reachable through two containers is one layer,
    under its first name. A TorchScript module (``torch.jit.script`` / ``trace``) runs its submodules without Python:
    it is one "not counted" layer.
    """

    def __init__(self, model: nn.Module, hardware="cmos45nm", require_spikes=None, counting: str = "auto",
                 defer_checks: bool = True, rates: str = "needed", audit: bool = False, replay: bool = True):
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if rates not in RATES:
            raise ValueError(f"rates must be one of {RATES}, got {rates!r}")
        for name, flag in (("defer_checks", defer_checks), ("audit", audit), ("replay", replay)):
            validate.boolean(name, flag)
        self.rates_all = rates == "all"
        self.model = model
        self.hardware: HardwareProfile = get_profile(hardware)
        self.require = _patterns(require_spikes)
        self.require_all = require_spikes is True  # (synaptic layers only: see require_spikes)
        self._require_seen = 0  # the slots whose names the require_spikes patterns were matched against
        self._slots: list[_Slot] = []
        self._known: dict = {}  # (layer name, id(module)) -> index of its slot
        self._handles = []
        self._seq = 0
        self._running: list[_Slot] = []  # modules entered and not yet left (to name the layer of an error)
        self._counts = CountBuffer(counting)
        self._cache = StatsCache(self._counts)
        self.defer_checks = bool(defer_checks)
        self._checks = None  # the active validate.deferred_checks, while inside ``with``
        self._counting = None  # the slot whose counter runs
        self._tally = None  # (buffer row, stats) handed to a neuron kernel that counts its own spikes
        self._collecting = None  # the active spike_tally.collecting block, while inside ``with``
        self._weight = 1  # weight of the calls being recorded (a graph's ReplayHistory while it is captured)
        self._acc = None  # while a graph is captured: adds a 0-d count to a slot at every replay (graph.Slots)
        self.audit = bool(audit)
        self._audit = None  # the active FunctionalAudit, while inside ``with`` (audit=True)
        self._audited: dict = {}  # module name -> op -> [calls, elements]: functional arithmetic no counter saw
        self._busy = False  # the meter's own hooks are running (their torch ops are not the model's arithmetic)
        self.replay = bool(replay)
        self._templates: dict = {}  # input signature -> replay.Template, or why the recording cannot be replayed
        self._replaying = None  # the Replayer of the forward running, if replayed
        self._recording = None  # the Recorder of the forward running, if recorded
        self._forward = False  # the model's own forward is running (nested calls of it are not new forwards)
        self._graphed = False  # a CUDA graph was captured (neurosim.energy.graph): its calls' rows are its own
        self._fast_off = False  # this block turned torch's transformer fast path off (_FASTPATH), to be set back
        self.replayed = 0  # forwards replayed (not hooked)
        self._walked: list = []  # the slots this block wraps, in the order of the walk
        self._seen = None  # ids of the modules walked so far (during the walk)
        self._to_wrap: list = []  # (module, slot index, slot) found by the walk, wrapped once claimed
        self._claimed = None  # the modules this block claimed (_claim), while it runs
        self._thread = None  # the thread that entered the block: forwards of other threads are not its own
        self._failed = None  # (exception, slot): the innermost counted layer the last exception came out of
        self._stamp = None  # what the recordings were made under: the slots wrapped and their modules' settings
        self._handed = None  # (output, its row) a replay given up read when the call returned (_give_up)
        self._outside = ""  # what labels a check outside every counted layer (_where): the model, while a block runs
        self._quick = None  # while a block runs: what a forward compares to see a setting changed (_settings_moved)

    # ----------------------------------------------------------------------------------------- hooking
    def _walk(self, module: nn.Module, name: str):
        if id(module) in self._seen:  # (reachable through two parents: one layer, under the first name)
            return
        self._seen.add(id(module))
        if isinstance(module, torch.jit.ScriptModule):  # (compiled: its submodules run without Python)
            self._attach(module, name or type(module).__name__, C.counter_for(module), note=_SCRIPTED)
            return
        counter = C.counter_for(module)
        children = list(module.named_children())
        if counter is not None or not children:
            self._attach(module, name or type(module).__name__, counter)
            if children and counter is C.count_neuron:
                # synapses inside a neuron (STC-LIF's circuits, snnTorch RLeaky's recurrent Linear) count
                # themselves; parameterless children (a surrogate-gradient module) are part of the update
                children = [(n, c) for n, c in children if next(c.parameters(), None) is not None]
            elif not (children and C.counts_own_ops(module)):
                return  # counted by its counter alone (or a leaf no counter knows)
        elif (own := [n for n, p in module._parameters.items() if p is not None]) and not getattr(
                module, "parameters_feed_children", False):
            # a container that also holds parameters uses them outside its children: flag it if it runs (unless it
            # declares them data for its children, as a learned positional table read and added by a child Add)
            self._attach(module, name or type(module).__name__, None,
                         note=f"own parameters ({', '.join(own)}) used outside child modules are not counted")
        for child_name, child in children:
            self._walk(child, f"{name}.{child_name}" if name else child_name)

    def _attach(self, module, name, counter, note=""):
        # a meter entered again keeps its layers: their calls add up (a module met again, under its name)
        idx = self._known.get((name, id(module)))
        slot = self._slots[idx] if idx is not None else None
        if slot is None or slot.module is not module or slot.counter is not counter:
            require = bool(self.require) and any(fnmatch.fnmatchcase(name, p) for p in self.require)
            neuron = counter is C.count_neuron or C.is_spiking_neuron(module)
            slot = _Slot(name, module, counter, require=require, neuron=neuron,
                         check_input=neuron and not C.checks_own_input(module))
            idx = self._known[name, id(module)] = len(self._slots)
            self._slots.append(slot)
        if slot.post is None:  # (a new layer, or one of a meter entered again: __exit__ let its hooks go)
            pre, post = self._make_pre_hook(slot), self._make_hook(slot)
            if self.audit:
                pre, post = self._quiet(pre), self._quiet(post)
            slot.pre, slot.post = pre, post
        if note:
            slot.notes.add(note)
        self._walked.append(idx)
        self._to_wrap.append((module, idx, slot))

    def _wrapper(self, module, idx, slot):
        """``forward`` of a counted module: the slot's pre-hook, the module's forward, its hook; while a forward is
        replayed, only a note of the call (see :mod:`neurosim.energy.replay`)."""
        running, exit_code, pre, post, me = self._running, -1 - idx, slot.pre, slot.post, self._thread

        def wrapper(h: _Wrapped):
            def forward(*args, **kwargs):
                if _get_ident() != me:  # (another thread running the model: not this meter's forward)
                    return h.call(*args, **kwargs)
                rp = self._replaying
                if rp is not None and rp.match(idx, (idx, args, kwargs, OPEN),
                                               args if len(args) == 1 and not kwargs else None):
                    running.append(slot)
                    try:
                        out = h.call(*args, **kwargs)
                    except BaseException as exc:
                        self._failed_in(slot, exc)
                        raise
                    finally:
                        if running and running[-1] is slot:
                            running.pop()
                    if self._replaying is rp and rp.match(exit_code, (idx, args, kwargs, out),
                                                          (out,) if isinstance(out, torch.Tensor) else None):
                        return out
                    if self._replaying is rp:
                        self._give_up(rp)
                    post(module, args, kwargs, out)  # (its pre-hook ran when the replay gave up)
                    return out
                if rp is not None:
                    self._give_up(rp)
                rec = self._recording
                if rec is not None:
                    rec.entry(idx, args, kwargs)
                pre(module, args)
                try:
                    out = h.call(*args, **kwargs)
                except BaseException as exc:
                    self._failed_in(slot, exc)
                    if running and running[-1] is slot:
                        running.pop()
                    raise
                if rec is not None:
                    rec.exit(idx, args, kwargs, out)
                post(module, args, kwargs, out)
                return out

            return forward

        return wrapper

    def _failed_in(self, slot: _Slot, exc: BaseException):
        """``slot``'s module raised ``exc``: the layer a block ending with it names (the innermost: the first to
        see it). A layer whose error the model catches is not blamed for a later one."""
        if self._failed is None or self._failed[0] is not exc:
            self._failed = (exc, slot)

    def _root(self, h: _Wrapped):
        """``forward`` of the model itself: a recorded or replayed forward when replay is on; its output checked for
        NaN/inf (:meth:`_check_output`)."""
        me = self._thread

        def forward(*args, **kwargs):
            call = h.call
            if _get_ident() != me or self._forward:  # (another thread's forward; the model calling itself)
                return call(*args, **kwargs)
            _no_inference_tensors(args, kwargs)
            out = run(call, args, kwargs)
            self._check_output(out)
            return out

        def run(call, args, kwargs):
            # (batching: a CUDA graph's warm-ups and capture, neurosim.energy.graph, which meter with the hooks)
            if not self.replay or self.audit or self._counts.batching:
                return call(*args, **kwargs)
            try:
                key = (signature(args, strict=True), signature(kwargs, strict=True), torch.is_grad_enabled())
                hash(key)
            except (TypeError, ValueError):
                return call(*args, **kwargs)
            # (a setting changed since the block started or since its last forward: model.eval() in a metered loop)
            if self._quick is not None and _settings_moved(self._quick):
                self._check_stamp()
            template = self._templates.get(key)
            if template is None and len(self._templates) >= MAX_RECORDINGS:
                return call(*args, **kwargs)  # (inputs that change signature every call: hooked, not kept)
            self._forward = True
            try:
                if template is None:
                    return self._recorded(key, call, args, kwargs)
                if isinstance(template, str):  # (why it cannot be replayed)
                    return call(*args, **kwargs)
                return self._replayed(key, template, call, args, kwargs)
            finally:
                self._forward = False

        return forward

    def _check_output(self, out):
        """The model's output tensors (a tensor, or those in a tuple, list or dict), floating point, checked for
        NaN/inf as the layers' own checks are (a deferred check, read when the block ends): the last place a NaN in
        the input can still be seen when no layer the meter reads, and no neuron, was on its way (the output of a
        norm, a softmax, a mean). One float64 sum of each (a model's output is mostly small: logits)."""
        if isinstance(out, torch.Tensor):
            if out.is_floating_point():
                validate.finite("output", out)
            return
        items = (out.items() if isinstance(out, dict) else enumerate(out) if isinstance(out, (tuple, list))
                 else ())
        for k, v in items:
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                validate.finite(f"output[{k!r}]", v)

    def _recorded(self, key, call, args, kwargs):
        counts = self._counts
        counts.flush()
        self._cache.clear()  # every row this forward's counts use is then made in it
        marks = [len(s.calls) for s in self._slots]
        changes = sum(s.changes() for s in self._slots)
        rereads = sum(s.reread for s in self._slots)
        rec = self._recording = counts.recorder = Recorder(counts)
        try:
            out = call(*args, **kwargs)
            counts.flush()
        finally:
            self._recording = counts.recorder = None
        if sum(s.reread for s in self._slots) != rereads:
            return out  # a neuron's kernel stopped counting its spikes: record the next forward instead
        made = rec.finish(self._slots, marks)
        if not isinstance(made, str) and sum(s.changes() for s in self._slots) != changes:
            made = "a tensor was changed in place before it was counted"
        self._templates[key] = made
        return out

    def _replayed(self, key, template, call, args, kwargs):
        counts = self._counts
        counts.flush()
        self._cache.clear()
        rp = self._replaying = Replayer(template, counts)
        try:
            out = call(*args, **kwargs)
        except BaseException:
            if self._replaying is rp:  # (the calls it ran are counted by the hooks, as in a hooked forward)
                self._give_up(rp)
                self._running.clear()
            raise
        finally:
            if self._replaying is rp:
                self._replaying = None
        if not rp.ok:  # gave up during the forward: the rest ran hooked; record this signature again
            self._templates.pop(key, None)
            return out
        if not rp.complete():
            self._give_up(rp)  # fewer calls than recorded: the hooks count them now
            self._templates.pop(key, None)
            counts.flush()
            return out
        self.replayed += 1
        for i in template.first_exits:  # (numbered as the hooks number them: the order of the first returns)
            slot = self._slots[i]
            if slot.first_call < 0:
                slot.first_call = self._seq
                self._seq += 1
        changed = rp.finish(self._slots)
        for s in changed:
            s.notes.add(CHANGED_LATE)
            self._templates[key] = "a tensor was changed in place in a replayed forward"
        if changed:  # (the hooks would have read those tensors when their layers ran: say so, not only in the notes)
            warnings.warn(f"EnergyMeter: this replayed forward changed tensors in place after layer(s) "
                          f"{', '.join(repr(s.name) for s in changed)} used them, so their counts are of the changed "
                          "values; the meter counts the next forwards of this input signature with its hooks, "
                          "which read a tensor when its layer runs", RuntimeWarning, stacklevel=5)
        return out

    def _give_up(self, rp: Replayer):
        """End the replay of this forward: the calls it matched so far are handed to the hooks, in order (the call
        that differed runs its own hooks)."""
        self._replaying = None
        rp.ok = False
        # the outputs it read as their calls returned (a count their values decide): the hooks count those calls
        # from these rows, not from the tensors as they are now
        handed = rp.handover(self._counts)
        for s in rp.changed_slots(self._slots, handed=handed):  # the hooks now read values changed since the call
            s.notes.add(CHANGED_LATE)
        self._running.clear()  # (the pre-hooks of the calls still running push them again)
        for k, (idx, args, kwargs, out) in enumerate(rp.events):
            s = self._slots[idx]
            if out is OPEN:
                s.pre(s.module, args)
            elif k in handed:
                self._handed = (out, handed[k])
                try:
                    s.post(s.module, args, kwargs, out)
                finally:
                    self._handed = None
            else:
                s.post(s.module, args, kwargs, out)

    def _quiet(self, hook):
        """``hook`` with ``_busy`` set while it runs (the audit ignores the torch operations it makes)."""
        def quiet(*args):
            self._busy, was = True, self._busy
            try:
                return hook(*args)
            finally:
                self._busy = was

        return quiet

    def __enter__(self):
        if self._handles or self._claimed:
            raise RuntimeError("EnergyMeter is already active")
        if torch.is_inference_mode_enabled():
            raise RuntimeError(_INFERENCE)
        self._thread = _get_ident()
        try:
            # a torch.compile'd model's layers under their own names (not "_orig_mod.*"): dynamo guards on the
            # forwards the meter wraps and runs them (tests: a compiled model's report is the eager one's)
            self._walked, self._seen = [], set()
            self._walk(getattr(self.model, "_orig_mod", self.model), "")
            self._seen = None
            if self.require and not self.require_all and len(self._slots) != self._require_seen:
                self._match_required()
            if self.replay and not self.audit:  # (recordings are made and replayed)
                self._check_stamp()
            # another thread metering any of these modules (the same model profiled in two threads) finishes first:
            # a module's forward is wrapped by one thread's meters at a time, so each unwraps what it wrapped
            self._claimed = _claim([m for m, _, _ in self._to_wrap] + [self.model])
            for module, idx, slot in self._to_wrap:
                self._handles.append(_Wrapped(module, self._wrapper(module, idx, slot)))
            self._to_wrap = []
            self._handles.append(_Wrapped(self.model, self._root))
            collecting = spike_tally.collecting(self)
            collecting.__enter__()
            self._collecting = collecting
            # torch's fused transformer fast paths (nn.TransformerEncoderLayer and nn.MultiheadAttention in
            # inference) run a layer without calling its modules, which would then be neither counted nor listed
            _FASTPATH.off()
            self._fast_off = True
            self._outside = _ModelLabel(self.model)
            if self.defer_checks:
                checks = validate.deferred_checks(where=self._where)
                checks.__enter__()
                self._checks = checks
            if self.audit:
                from .audit import FunctionalAudit

                audit = FunctionalAudit(self.model, lambda: self._running, lambda: self._busy, self._audited)
                audit.__enter__()
                self._audit = audit
        except BaseException:
            self._abandon()  # (no with block starts: the model is left as it was)
            raise
        return self

    def _match_required(self):
        """Every ``require_spikes`` pattern names at least one layer (a typo would otherwise check nothing)."""
        names = [s.name for s in self._slots]
        unmatched = [p for p in self.require if not any(fnmatch.fnmatchcase(n, p) for n in names)]
        if unmatched:
            shown = ", ".join(repr(n) for n in names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")
            raise ValueError(f"require_spikes: {', '.join(repr(p) for p in unmatched)} matches no layer of the model "
                             f"(layer names or glob patterns; the layers: {shown or 'none'})")
        self._require_seen = len(self._slots)

    def _check_stamp(self):
        """Other layers, or settings changed since the recordings (between blocks, or between two forwards of one
        block: ``model.eval()`` in a metered loop): the recordings are dropped, the next forwards recorded anew."""
        stamp = self._stamp_now(quick=True)
        if stamp != self._stamp:
            self._templates.clear()
            self._stamp = stamp

    def _stamp_now(self, quick: bool = False) -> tuple:
        """The slots this block wraps, in order, with their modules' settings (:func:`_settings`): the recordings of
        earlier blocks are replayed only while it stays the same. ``quick``: also notes, for the block's later
        forwards, what :func:`_settings_moved` compares (kept until the block ends: it refers to the modules)."""
        slots, settings, self._quick = self._slots, [], [] if quick else None
        for i in self._walked:
            d = slots[i].module.__dict__
            keep = [] if quick else None
            settings.append(_settings(slots[i].module, keep))
            if quick:
                self._quick.append((d, len(d) - ("forward" in d), keep))
        return tuple(self._walked), tuple(settings)

    def _abandon(self):
        """Undo an ``__enter__`` that failed part-way: its forwards unwrapped, its switches set back."""
        for part in (self._audit, self._checks, self._collecting):
            if part is not None:
                part.__exit__(None, None, None)
        self._audit = self._checks = self._collecting = None
        self._unhook()

    def _unhook(self):
        """The model's forwards unwrapped and torch's fast-path switch let go (the end of a block, or of a failed
        start)."""
        for h in reversed(self._handles):
            h.remove()
        self._handles, self._to_wrap, self._quick = [], [], None
        if self._claimed:
            _release(self._claimed)
            self._claimed = None
        if self._fast_off:
            _FASTPATH.release()
            self._fast_off = False

    def _where(self):
        """The innermost layer running: labels a deferred NaN/inf check (its str(), made only for an error); outside
        every counted layer (the model's own code, a neuron module the meter did not walk to, its output), the
        model."""
        return self._running[-1] if self._running else self._outside

    def __exit__(self, exc_type, exc, tb):
        if self._audit is not None:
            self._audit.__exit__(exc_type, exc, tb)  # (its findings are already in self._audited)
            self._audit = None
        self._unhook()
        self._replaying = self._recording = self._counts.recorder = None
        self._forward = False
        if self._collecting is not None:
            self._collecting.__exit__(exc_type, exc, tb)
            self._collecting = self._tally = None
        self._cache.clear()
        self._counts.flush()  # count what is still deferred (no host sync) and drop the tensors it held
        self._let_go()
        self._running.clear()
        failed, self._failed = self._failed, None
        checks, self._checks = self._checks, None
        if exc_type is not None and issubclass(exc_type, (ValueError, RuntimeError)):
            if checks is not None:
                checks.__exit__(exc_type, exc, tb)
            # name the layer: the first one whose input held NaN/inf, else the innermost one the error came from
            self._check_finite(self._host_values())
            if failed is not None and failed[0] is exc:
                s = failed[1]
                raise ValueError(f"layer {s.name!r} ({type(s.module).__name__}) failed: {exc}") from exc
            return False
        if checks is not None:
            try:
                checks.__exit__(exc_type, exc, tb)  # reads the deferred checks (when no exception is pending)
            except ValueError:
                # the first counted layer whose input held NaN/inf, if it came before the layer whose check failed
                failed = checks.checks.failed
                self._check_finite(self._host_values(), upto=failed if isinstance(failed, _Slot) else None)
                raise
        return False

    # ------------------------------------------------------------------ spike_tally sink (fused neuron kernels)
    def row(self, x: torch.Tensor):
        """A buffer row for the spikes a neuron kernel is about to write (only for a hooked neuron layer)."""
        if not (self._running and self._running[-1].neuron) or self._running[-1].reread:
            return None
        if self._replaying is not None:
            return self._replaying.row(x)
        st, region = self._counts.tally_row(x, spike_tally.SLOTS)
        st.producer = self._running[-1]
        self._tally = (region, st)
        return region

    def counted(self, row: torch.Tensor, spikes: torch.Tensor):
        """The kernel that got ``row`` wrote ``spikes``: their counts need no read (the next layer reuses them)."""
        if self._tally is not None and self._tally[0] is row:
            self._cache.put(spikes, self._tally[1])
            self._tally = None

    def _make_pre_hook(self, slot: _Slot):
        counts = self._counts
        fan_input = slot.counter in C.FAN_COUNTERS  # counts its first input with a fan-out map, in one read

        def pre_hook(module, args):
            self._running.append(slot)
            if counts.pending:
                # deferred outputs are counted before any module may change them in place, except the input
                # of a fan-map counter, which its counter counts in the same read as its SynOps
                keep = self._cache.get(args[0]) if fan_input and args and torch.is_tensor(args[0]) else None
                for st in [p for p in counts.pending if p is not keep]:
                    counts.force(st)

        return pre_hook

    # ------------------------------------------------------------------------------------------ counting
    def _stats(self, x: torch.Tensor) -> RowStats:
        k, st = self._cache.lookup(x)
        if st is None:
            st = self._counts.stats(x)
            self._cache.put(x, st, k)
        elif st.pending is not None:
            self._counts.force(st)
        return st

    def _fan_stats(self, x: torch.Tensor, fan: torch.Tensor):
        k, st = self._cache.lookup(x)
        if st is None:
            st = self._counts.stats(x, fan)
            self._cache.put(x, st, k)
        elif type(st) is TallyStats:
            # spikes a neuron kernel counted, which a fan-weighted count reads again: from the next forward on,
            # that read alone counts them (the kernel's tally would cost time for nothing)
            st.producer.reread = True
        return st, self._counts.fan_count(st, x, fan)

    def _defer(self, x: torch.Tensor, slot: _Slot, optional: bool = False) -> RowStats:
        """``x``'s row, deferred if new; ``optional``: dropped unless a consumer asks (a required row stays so)."""
        handed = self._handed
        if handed is not None and handed[0] is x:
            return handed[1]
        k, st = self._cache.lookup(x)
        if st is None:
            st = self._counts.stats(x, defer=True, optional=optional)
            st.on_change = slot.changed_output
            self._cache.put(x, st, k)
        elif not optional:
            self._counts.require(st)
        return st

    def _output_stats(self, x: torch.Tensor, rates_only: bool = False) -> RowStats:
        return self._defer(x, self._counting) if rates_only else self._at_return(x)

    def _scaled_sum(self, x: torch.Tensor, inv_scale: float) -> DeviceCount:
        return self._at_return(x, inv_scale).isum

    def _at_return(self, x: torch.Tensor, inv_scale: float | None = None) -> RowStats:
        """The row of ``x``, a counted module's output that an operation count depends on (a product's or a sum's
        of two spike tensors), counted now, as the module returns it: the read is queued on the device before any
        later operation can change ``x`` in place (on a GPU, stream order then has it read the values as
        computed; while a CUDA graph is captured, the batch of reads waiting is launched with it). The next layer
        reading ``x`` reuses it while ``x`` is unchanged. ``inv_scale``: its ISUM column too
        (:meth:`CountBuffer.want_sum`). A forward being recorded notes the read as one that its replays run
        when this call returns (:mod:`neurosim.energy.replay`); a replay given up hands the row it read then to
        the hooks (:meth:`_give_up`)."""
        handed = self._handed
        if handed is not None and handed[0] is x:
            return handed[1]
        counts, rec = self._counts, self._recording
        if rec is not None:
            rec.timed = True
        try:
            k, st = self._cache.lookup(x)
            if st is None:
                st = counts.stats(x, inv_scale=inv_scale, at_once=True)
                self._cache.put(x, st, k)
            else:  # (a tensor seen before: an output that is a view of a tensor the meter has a row for)
                if inv_scale is not None and st.inv_scale != inv_scale:
                    if st.pending is not None and st.inv_scale is None:
                        st.inv_scale = inv_scale
                    else:  # counted without that factor: a read of its own
                        st = counts.stats(x, inv_scale=inv_scale, at_once=True)
                counts.force(st, at_once=True)  # (nothing when counted)
        finally:
            if rec is not None:
                rec.timed = False
        return st

    def _make_hook(self, slot: _Slot):
        def hook(module, args, kwargs, output):
            if self._running and self._running[-1] is slot:
                self._running.pop()
            if kwargs:
                args = _in_order(module, args, kwargs)
            if slot.first_call < 0:
                slot.first_call = self._seq
                self._seq += 1
            cnt = None
            self._counts.context = slot  # the rows made here are keyed by this layer (CountBuffer.batching)
            if slot.counter is not None:
                rec = self._recording
                if rec is not None and not rec.problem and not C.replayable(module):
                    rec.problem = f"layer {slot.name!r}: its counter reads tensors back as numbers (replay=False)"
                # counters share the meter's tensor stats, however they imported stats and the rest (one read per
                # tensor; conv/pool get their fan-out weighted count from the same read; the output's counts come
                # from the next layer's read)
                token = C.IN_METER.set(self)
                self._counting = slot
                try:
                    cnt = slot.counter(module, args, output)
                finally:
                    C.IN_METER.reset(token)
            full = self.rates_all or slot.require
            # rates="needed": an input's row only if it has one already (counted or deferred), without a read; but
            # the input of a neuron that does not check it itself is read, for its NaN/inf check (a NaN vanishes in
            # the neuron's threshold test: nothing after it would see it)
            tensors = _tensors(args)
            ins = [self._stats(t) if full else self._cache.get(t) for t in tensors]
            if slot.check_input and ins and not full:
                ins[0] = self._stats(tensors[0])
            sin = cnt.spike_input if cnt is not None and cnt.spike_input is not None else (ins[0] if ins else None)
            out = _first_tensor(output)
            sout = None
            if out is not None:
                sout = self._defer(out, slot, optional=not (self.rates_all or slot.neuron))
            if cnt is not None and self._acc is not None:
                _accumulate(cnt, self._acc)
            slot.calls.append((cnt, sin, sout, ins, self._weight))
            if cnt is not None and cnt.note:
                slot.notes.add(cnt.note)

        return hook

    def _let_go(self):
        """Once the block ends, drop what refers back to the meter or a layer from its records (the layers' hooks,
        the rows' callbacks for a tensor changed before its read: nothing is left to read), so that a meter dropped
        after its report is freed by reference counting, not left to the cyclic garbage collector."""
        self._counts.context = None
        for s in self._slots:
            s.pre = s.post = None
            for _, sin, sout, ins, _ in s.calls:
                for st in (sin, sout, *ins):
                    if isinstance(st, RowStats):
                        st.on_change = None

    def reset(self):
        """Forget the calls counted so far: the next :meth:`report` covers the ``with`` blocks entered after this.

        The layers and the recordings of earlier forwards are kept, so a meter entered and reset for each batch
        gives a report per batch while replaying its forwards (see ``replay``): its host work per batch is that of
        a replayed forward and a report, not that of a hooked one. Between ``with`` blocks only; not for a meter
        that captured a CUDA graph (the graph writes into the meter's rows: use a new meter)."""
        if self._handles:
            raise RuntimeError("EnergyMeter.reset() is for between with blocks, not inside one")
        if self._graphed:
            raise RuntimeError("EnergyMeter.reset(): this meter captured a CUDA graph, which writes into its count "
                           "rows at every replay; use a new meter")
        keep: dict = {}  # device -> rows the recordings were made in (their replays' counts are read relative to them)
        for t in self._templates.values():
            if not isinstance(t, str):
                keep[t.device] = max(keep.get(t.device, 0), t.base + t.nrows)
                t.replays.clear()
        self._counts.forget(keep)
        for s in self._slots:  # (the next block's calls note again what they find; _attach its layer notes)
            s.calls = []
            s.notes = set()
            s.first_call = -1  # (the report lists the layers in the order of their first call after the reset)
        self._seq = 0
        self._audited.clear()
        self.replayed = 0

    # -------------------------------------------------------------------------------------------- report
    def _ran(self):
        return sorted((s for s in self._slots if any(_weight(c[4]) for c in s.calls)), key=lambda s: s.first_call)

    def graphed(self, inputs, warmup: int = 2):
        """Capture one metered forward of the model on ``inputs`` (CUDA tensors) in a CUDA graph; returns a
        :class:`~neurosim.energy.graph.GraphedForward` that runs it again for new inputs of the same shapes by
        replaying the graph, without Python, hooks or launches on the host. See :mod:`neurosim.energy.graph`."""
        from .graph import GraphedForward

        if self.audit:
            raise ValueError("audit=True watches eager forwards; a CUDA graph cannot be audited (use audit=False)")
        return GraphedForward(self, inputs, warmup=warmup)

    def _host_values(self) -> dict:
        """id(tensor) -> float for every 0-d count recorded: one transfer per (device, dtype)."""
        tensors: dict = {}
        for s in self._slots:
            # a call's input and output stats are the meter's rows; a recorded call holds no count tensor (replay.py)
            for cnt, sin, _, _, w in s.calls:
                if cnt is not None and type(w) is not Replays:
                    for v in (cnt.macs, cnt.synops, cnt.acs, cnt.spike_count, cnt.spike_input, cnt.spike_input2,
                              cnt.info, sin):
                        if type(v) not in _NOTHING_TO_READ:  # (most are: no call)
                            _visit(v, tensors)
        return {key: float(v) for key, v in zip(tensors, validate.read_back(list(tensors.values())))}

    def _evaluators(self, host) -> dict:
        """weight -> how its calls' counts are read: 1 (eager calls), or a graph's ReplayHistory."""
        evs = {}

        def get(w):
            ev = evs.get(id(w))
            if ev is None:
                if type(w) is int:
                    ev = _Eager(host, self._counts)
                else:  # (replayed once, as in a meter reset for each batch: numbers, without per-replay arrays)
                    ev = (_Once if w.n == 1 else _Replayed)(w, host, self._counts)
                evs[id(w)] = ev
            return ev
        return get

    def _check_finite(self, host, upto: _Slot | None = None):
        """Raise ValueError naming the first layer (in the order of their first return) one of whose inputs the meter
        read held NaN/inf; ``upto``: none after that layer (a later one is not where the NaN was first seen)."""
        if not self._graphed and self._none_bad(host):
            return
        ev_for = self._evaluators(host)
        for s in self._ran():
            if upto is not None and s.first_call > upto.first_call >= 0:
                break
            for _, _, _, ins, w in s.calls:
                if not _weight(w):
                    continue  # a graph never replayed: its rows were never counted
                ev = ev_for(w)
                for st in ins:
                    if not _measured(st):
                        continue
                    if isinstance(st, RowStats):
                        bad = _total(ev.col(st, BAD)) > 0
                    else:
                        bad = st.total is not None and not math.isfinite(host[id(st.total)])
                    if bad:
                        raise ValueError(f"layer {s.name!r} ({type(s.module).__name__}): its input contains "
                                         "NaN/inf value(s); all values must be finite")

    def _none_bad(self, host) -> bool:
        """No count row holds a non-finite element and no 0-d count is non-finite, so no input held any (the usual
        case, answered without the per-call loop of :meth:`_check_finite`; not for a graph's rows, which its
        replays overwrite in the buffer)."""
        if not all(math.isfinite(v) for v in host.values()):
            return False
        return not any(r[BAD] for rows in self._counts.host().values() for r in rows)

    def report(self, batch_size: int | None = None) -> EnergyReport:
        """Read all counts back (one transfer per device and dtype), check them, price them on the hardware."""
        ran = self._ran()
        host = self._host_values()
        counts = self._counts

        self._check_finite(host)
        ev_for = self._evaluators(host)

        hw = self.hardware
        rows, notes = [], []
        unpriced = 0
        for s in ran:
            r = LayerReport(name=s.name, type=type(s.module).__name__, calls=0, counted=s.counter is not None)
            require = s.require
            macs = synops = acs = paper = 0.0
            all_spikes = True
            summary = C.summary_for(s.module) if r.counted else None
            infos = []
            for cnt, sin, sout, ins, weight in s.calls:
                w = _weight(weight)
                if not w:
                    continue
                # an eager call gives numbers and bools; a replayed graph's call gives arrays over its replays
                ev = ev_for(weight)
                val, col, binary = ev.val, ev.col, ev.binary
                r.calls += w
                if not _measured(sin):
                    all_spikes = False  # not read (rates="needed"): the layer's input rate is not measured
                else:
                    b_in = binary(sin)
                    two = cnt is not None and isinstance(cnt.spike_count, dict)
                    s2 = cnt.spike_input2 if two else None
                    nnz = col(sin, NNZ)
                    if s2 is None:
                        r.in_numel += sin.numel * w
                        r.in_nnz += int(_total(nnz))
                    else:
                        # the in rate of a product or sum is its spike operand's: the second's where only it is spikes
                        # (per call or replay; real scores x spike V: V's firing rate, not the scores' nonzero fraction)
                        second = _pick(b_in, False, binary(s2))
                        numel = _pick(second, s2.numel, sin.numel)
                        r.in_numel += int(_total(numel)) if isinstance(numel, np.ndarray) else numel * w
                        r.in_nnz += int(_total(_pick(second, col(s2, NNZ), nnz)))
                    if two:
                        # (a product or sum of two operands is event-driven when either one is spikes: real
                        # scores x spike values is SynOps as much as spikes x real weights)
                        b_in = b_in | binary(cnt.spike_input2)
                    spikes_in = _all(b_in)
                    all_spikes &= spikes_in
                    # (require_spikes=True: only where spikes drive the counted operations)
                    if require and not spikes_in and (cnt is not None and cnt.spike_count is not None
                                                      or not self.require_all):
                        bad = int(_total(nnz - col(sin, ONES)))
                        other = " (nor were its second operand's)" if two else ""
                        raise ValueError(f"layer {s.name!r} ({r.type}) requires binary spikes (values 0 or 1) as "
                                         f"input, but {bad} of {sin.numel * w} input values were not 0 or 1{other}")
                if _measured(sout):
                    r.out_numel += sout.numel * w
                    r.out_nnz += int(_total(col(sout, NNZ)))
                if cnt is None:
                    continue
                if summary is not None:
                    infos += ev.infos(cnt.info)
                same, other = ((cnt.dense_also, cnt.dense_also_acs) if cnt.dense_is_mac
                               else (cnt.dense_also_acs, cnt.dense_also))
                r.dense += (int(cnt.dense) + same) * w
                r.dense_other += other * w
                r.dense_is_mac = cnt.dense_is_mac
                r.neuron_updates += int(cnt.neuron_updates) * w
                macs += _total(val(cnt.macs))
                synops += _total(val(cnt.synops))
                acs += _total(val(cnt.acs))
                if cnt.spike_count is None:
                    continue
                s1, s2 = cnt.spike_input, cnt.spike_input2
                b1 = binary(s1)
                if isinstance(cnt.spike_count, dict):
                    b2 = binary(s2)
                    sc = cnt.spike_count
                    spiking = _pick(b1 & b2, val(sc["both"]), _pick(b1, val(sc["first"]), val(sc["second"])))
                    has = b1 | b2
                    rate2 = col(s2, NNZ) / max(s2.numel, 1) if s2 is not None else 0.0
                    rate = _pick(b1, col(s1, NNZ) / max(s1.numel, 1), rate2)
                else:
                    spiking, has = val(cnt.spike_count), b1
                    rate = col(s1, NNZ) / max(s1.numel, 1)
                dense_runs = _total(_pick(has, 0, 1))  # runs with no binary operand: the dense operations
                if cnt.dense_is_mac:
                    macs += cnt.dense * dense_runs
                else:
                    acs += cnt.dense * dense_runs
                spiking = _total(_pick(has, spiking, 0))
                if cnt.spike_kind == "synops":
                    synops += spiking
                    paper += _total(_pick(has, rate * cnt.dense, 0))  # the papers' rate x dense
                else:
                    acs += spiking
            r.macs, r.synops, r.acs = int(round(macs)), int(round(synops)), int(round(acs))
            r.synops_paper = paper
            r.in_spikes = r.in_numel > 0 and all_spikes
            r.note = "; ".join(sorted(s.notes)) or ("" if r.counted else "no counter registered for this module type")
            if summary is not None:
                r.info, line = summary(r, infos)
                if line:
                    notes.append(line)
                    r.note = f"{r.note}; {line}" if r.note else line
            e_mac = hw.e_mac_pj
            if e_mac is None:
                unpriced += r.macs
                e_mac = 0.0
            base = r.neuron_updates * hw.e_neuron_pj + r.acs * hw.e_ac_pj + r.macs * e_mac
            r.energy_pj = base + r.synops * hw.e_ac_pj
            r.energy_paper_pj = base + r.synops_paper * hw.e_ac_pj
            rows.append(r)
        if self._audited:
            from .audit import describe

            for name, ops in self._audited.items():
                label = f"{name or type(self.model).__name__} (functional)"
                rows.append(LayerReport(name=label, type="functional", calls=max(c for c, _ in ops.values()),
                                        counted=False, note=describe(ops)))
        if unpriced:
            notes.append(f"{unpriced:,} MACs are not priced: profile {hw.name!r} has no MAC energy "
                         "(real-valued layers run off this hardware)")
        return EnergyReport(hardware=hw, layers=rows, batch_size=batch_size, notes=notes,
                            counting="+".join(sorted(counts.paths)), audited=self.audit)


_NOTHING_TO_READ = frozenset((int, float, bool, str, DeviceCount, RowStats, TallyStats, type(None)))


def _visit(v, tensors: dict):
    """Put the 0-d count tensors in ``v`` (a count, TensorStats or dict of them) into ``tensors`` by id."""
    if type(v) in _NOTHING_TO_READ or isinstance(v, (int, float, str, RowStats)):  # (the second test: subclasses)
        return
    if torch.is_tensor(v):
        tensors[id(v)] = v
    elif isinstance(v, C.TensorStats):
        for t in (v.nnz, v.ones, v.total):
            _visit(t, tensors)
    elif isinstance(v, dict):
        for t in v.values():
            _visit(t, tensors)


def _mha_fastpath(enabled):
    """Set torch's transformer fast-path switch (``torch.backends.mha``) to ``enabled`` (None: leave it); returns
    what it was (None where this torch has no such switch)."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        return None
    was = mha.get_fastpath_enabled()
    if enabled is not None:
        mha.set_fastpath_enabled(enabled)
    return was


class _ModelLabel:
    """Labels a NaN/inf check made outside every counted layer (its ``str()``, made only for an error)."""

    __slots__ = ("name",)

    def __init__(self, model):
        self.name = type(getattr(model, "_orig_mod", model)).__name__

    def __str__(self):
        return f"model {self.name!r}"


class _FastPathOff:
    """torch's transformer fast path (a process-wide switch) off while any meter's block runs, in any thread: the
    first block to start notes the switch and turns it off, the last to end sets it back (blocks in two threads
    that each set back what they found would leave it off)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._blocks = 0
        self._before = None

    def off(self):
        with self._lock:
            was = _mha_fastpath(False)
            if self._blocks == 0:
                self._before = was
            self._blocks += 1

    def release(self):
        with self._lock:
            self._blocks -= 1
            if self._blocks == 0:
                _mha_fastpath(self._before)


_FASTPATH = _FastPathOff()


def _weight(w) -> int:
    """How many runs a recorded call stands for: 1, or its graph's (or recording's) replays so far."""
    return w if type(w) is int else w.n


def _pick(cond, a, b):
    """``a if cond else b``, per replay when ``cond`` is an array."""
    if isinstance(cond, np.ndarray):
        return np.where(cond, a, b)
    return a if cond else b


def _total(v) -> float:
    return float(v.sum()) if isinstance(v, np.ndarray) else float(v)


def _all(b) -> bool:
    return bool(b.all()) if isinstance(b, np.ndarray) else bool(b)


_COL_NAMES = {NNZ: "nnz", ONES: "ones", BAD: "bad"}  # a stats column by its TensorStats / RowStats name


class _Eager:
    """Counts of a call run once: numbers, from the one read-back."""

    def __init__(self, host: dict, counts):
        self.host, self.counts = host, counts
        self.rows = counts.host()  # device -> buffer rows (read once)

    def val(self, v):
        if type(v) is DeviceCount:
            return float(self.counts.value(v))
        if torch.is_tensor(v):
            return self.host[id(v)]
        return float(v)

    def col(self, st, c: int) -> float:
        """Column ``c`` (NNZ, ONES, BAD) of a call's stats."""
        if type(st) is RowStats:  # the row itself, without building a DeviceCount
            return float(self.rows[st.dev][st.row][c])
        return self.val(getattr(st, _COL_NAMES[c]))

    def binary(self, st) -> bool:
        if type(st) is RowStats:  # the row itself, without building its DeviceCounts
            r = self.rows[st.dev][st.row]
            return r[NNZ] == r[ONES]
        return st is not None and self.val(st.nnz) == self.val(st.ones)

    def infos(self, info: dict) -> list:
        return [{k: (self.val(v) if torch.is_tensor(v) or isinstance(v, DeviceCount) else v) for k, v in info.items()}]


class _Once(_Eager):
    """Counts of calls captured in a CUDA graph or recorded, replayed once: numbers, as an eager call's (what
    :class:`_Replayed` gives for one replay, without arrays), from the buffer's rows with the rows the calls refer to
    (``history.base`` on) replaced by that replay's."""

    def __init__(self, history, host: dict, counts):
        self.host, self.counts, self.h = host, counts, history
        rows, slots = history.arrays()
        block = counts.fold(history.device, rows, history.base)[0].tolist()  # a tally's count in one element
        self.slot_values = slots[0]
        every = counts.host()
        base, end = history.base, history.base + len(block)
        spliced = list(every.get(history.device, ()))
        spliced[len(spliced):end] = [[0] * COLS] * max(end - len(spliced), 0)
        spliced[base:end] = block
        self.rows = {**every, history.device: spliced}

    def val(self, v):
        if type(v) is DeviceCount:
            out, rows = v.const, self.rows
            for d, row, col, k in v.terms:
                out += k * rows[d][row][col]
            return float(out)
        if torch.is_tensor(v):
            i = self.h.slot_index.get(id(v))
            return float(self.slot_values[i]) if i is not None else self.host[id(v)]
        return float(v)


class _Replayed:
    """Counts of a call captured in a CUDA graph, or recorded and replayed eagerly: arrays with one entry per
    replay, from its ReplayHistory (:mod:`neurosim.energy.graph`) or Replays (:mod:`neurosim.energy.replay`)."""

    def __init__(self, history, host: dict, counts):
        self.h, self.host, self.counts = history, host, counts
        self.n = history.n
        self.rows, self.slots = history.arrays()
        self.rows = counts.fold(history.device, self.rows, history.base)  # a tally region's count in one element

    def val(self, v) -> np.ndarray:
        h = self.h
        if torch.is_tensor(v):
            i = h.slot_index.get(id(v))
            return self.slots[:, i].copy() if i is not None else np.full(self.n, self.host[id(v)])
        if type(v) is DeviceCount:
            out = np.full(self.n, float(v.const))
            for d, row, col, k in v.terms:
                i = row - h.base
                if 0 <= i < self.rows.shape[1]:
                    out += k * self.rows[:, i, col]
                else:  # a row taken before the capture (not expected): the same value in every replay
                    out += k * self.counts.host()[d][row][col]
            return out
        return np.full(self.n, float(v))

    def col(self, st, c: int) -> np.ndarray:
        return self.val(getattr(st, _COL_NAMES[c]))

    def binary(self, st) -> np.ndarray:
        if st is None:
            return np.zeros(self.n, dtype=bool)
        return self.val(st.nnz) == self.val(st.ones)

    def infos(self, info: dict) -> list:
        vals = {k: (self.val(v) if torch.is_tensor(v) or isinstance(v, DeviceCount) else v) for k, v in info.items()}
        return [{k: (float(x[i]) if isinstance(x, np.ndarray) else x) for k, x in vals.items()} for i in range(self.n)]


_TENSOR_FIELDS = ("macs", "synops", "acs", "spike_count", "info", "spike_input", "spike_input2")


def _map_tensors(cnt: C.Count, fn) -> dict:
    """field -> its value with every 0-d tensor ``t`` of ``cnt`` (in numbers, dicts, TensorStats) replaced by
    ``fn(t)``."""
    def sub(v):
        if torch.is_tensor(v):
            return fn(v)
        if isinstance(v, C.TensorStats):
            return C.TensorStats(v.numel, *(None if t is None else sub(t) for t in (v.nnz, v.ones, v.total)))
        if isinstance(v, dict):
            return {k: sub(t) for k, t in v.items()}
        return v

    return {f: sub(getattr(cnt, f)) for f in _TENSOR_FIELDS}


def _accumulate(cnt: C.Count, acc):
    """While a graph is captured: every 0-d tensor of ``cnt`` becomes a slot the graph adds it to at each replay."""
    for f, v in _map_tensors(cnt, acc).items():
        setattr(cnt, f, v)


def _measured(st) -> bool:
    """Whether a call's input/output stats exist: not None, and not an optional row that was never read."""
    return st is not None and not (type(st) is RowStats and st.dropped)


_INFERENCE = ("EnergyMeter cannot count under torch.inference_mode(): inference tensors keep no version counter, "
              "which the meter uses to notice a tensor changed in place before it is counted. Use torch.no_grad() "
              "(profile() does this itself when called in inference mode)")


def _no_inference_tensors(args: tuple, kwargs: dict):
    for where, v in [*enumerate(args), *((repr(k), a) for k, a in kwargs.items())]:
        if isinstance(v, torch.Tensor) and v.is_inference():
            raise ValueError(f"the model's input {where} is an inference tensor (made under torch.inference_mode()): "
                             "EnergyMeter needs tensors with a version counter; make it outside inference mode, or "
                             "clone it under torch.inference_mode(False) (profile() does this itself)")


def _usual_tensors(inputs):
    """``inputs`` with every inference tensor (made under ``torch.inference_mode()``) cloned outside it (``inputs``
    itself when it holds none)."""
    def fix(v):
        if isinstance(v, torch.Tensor) and v.is_inference():
            with torch.inference_mode(False):
                return v.clone()
        return v

    vals = inputs.values() if isinstance(inputs, dict) else inputs if isinstance(inputs, (tuple, list)) else (inputs,)
    if not any(isinstance(v, torch.Tensor) and v.is_inference() for v in vals):
        return inputs
    if isinstance(inputs, dict):
        return {k: fix(v) for k, v in inputs.items()}
    if isinstance(inputs, tuple) and hasattr(inputs, "_fields"):  # (a namedtuple)
        return type(inputs)(*(fix(v) for v in inputs))
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(fix(v) for v in inputs)
    return fix(inputs)


def _call(model, inputs):
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def profile(model: nn.Module, inputs, hardware="cmos45nm", require_spikes=None, grad: bool = False,
            counting: str = "auto", rates: str = "needed", audit: bool = False, batch_size: int | None = None,
            reuse: bool = True):
    """Run ``model(inputs)`` once and count, per layer, the same-shape ANN's MACs and ACs, SynOps, MACs, ACs,
    neuron updates, firing rates and energy on ``hardware``.

    Args:
        model: network taking ``[T, B, ...]`` input(s).
        inputs: a tensor, a tuple/list of positional inputs, or a dict of keyword inputs.
        hardware: ``"cmos45nm"`` (default), ``"loihi"``, a registered name, a HardwareProfile or a dict.
        require_spikes: see :class:`EnergyMeter`.
        grad: run with autograd enabled (default: under ``torch.no_grad()``).
        counting: ``"auto"``, ``"torch"`` or ``"kernel"``: see :class:`EnergyMeter` (same counts).
        rates: ``"needed"`` or ``"all"``: which layers' input/output rates are measured, see :class:`EnergyMeter`
            (same operation counts and energy). Either way a NaN/inf in the inputs raises a ValueError naming where
            it was first seen (``"all"``: the first layer whose input holds it); which NaNs ``"needed"`` catches is
            listed under "NaN/inf" in :class:`EnergyMeter`.
        audit: list the arithmetic the model's modules run as plain torch functions, outside every counted
            layer, as "not counted" rows (see :class:`EnergyMeter`; slower, for checking coverage).
        batch_size: the samples ``inputs`` holds, for the per-sample energy (default: dim 1 of the first input
            tensor, the ``[T, B, ...]`` convention; pass it for another layout, e.g. a batch-first ANN baseline).
        reuse: keep the meter for ``model`` between calls (default). The second call with the same ``require_spikes``,
            ``counting`` and ``rates`` records its forward, and later calls with inputs of the same signature replay
            it (:mod:`neurosim.energy.replay`). This gives the same counts with far less host work, but a replayed
            forward keeps its tensors until it ends (at most an eighth of the GPU's memory, else it is hooked). The
            kept meter holds no reference to ``model``: it goes when the model does. A changed layer or layer setting
            (train/eval mode, a stride, a product's scale) is recorded anew. ``False``: a fresh meter, kept by nobody.

    Returns:
        :class:`EnergyReport` (``print(report)``, ``.to_csv()``, ``.to_json()``, ``.plot()``). Counts cover the
        whole batch.

    Cost: the meter's set-up, its work in each counted call and its report run on the host, whatever the batch size
    (BENCHMARKS.md, energy run 19: 5-8 ms a call for a 4-layer spiking transformer on an H200 machine once the GPU
    sets the pace). A call again on the same model replays the forward. Where the host sets the pace this halves the
    extra time or better (run 20); set-up and report stay. To meter many batches, one
    :class:`EnergyMeter` over them (its later forwards are replayed from the first) or
    :func:`~neurosim.energy.profile_batches` (a CUDA graph) costs a few percent.

    Python's cyclic garbage collector is paused for the call (``gc.disable()``, set back as it was when the call
    ends, however it ends): the meter's records would set it off several times in a large model.
    """
    for name, flag in (("grad", grad), ("audit", audit), ("reuse", reuse)):
        validate.boolean(name, flag)
    first = _first_tensor(inputs)
    if first is None:
        raise ValueError("inputs must contain at least one tensor shaped [T, B, ...]")
    if batch_size is not None:
        batch = validate.positive_int("batch_size", batch_size)
    else:
        batch = int(first.shape[1]) if first.dim() >= 2 else None
    meter, kept = _meter_for(model, hardware, require_spikes, counting, rates, audit, reuse)
    # The meter's records of a forward (thousands of small objects in a transformer) would set off Python's cyclic
    # garbage collector several times during the call, and a full pass walks every tracked object of the process
    # (BENCHMARKS.md energy run 18). So the collector waits for the call's end; the records, which hold no reference
    # cycle once the block ends (EnergyMeter._let_go), are then freed by reference counting, leaving it no work.
    # (A model's own cyclic garbage, if it makes any, is collected as usual once the call returns.)
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        # (in a torch.inference_mode() block: the forward runs outside it, on inputs that are ordinary tensors)
        with torch.inference_mode(False):
            inputs = _usual_tensors(inputs)
            with meter, torch.set_grad_enabled(grad):
                _call(model, inputs)
        return meter.report(batch_size=batch)
    finally:
        if kept:
            _let_model_go(model, meter)
        if paused:
            gc.enable()


# model -> (settings, its EnergyMeter) between profile calls (reuse=True). The entry goes with the model: a kept meter
# holds no reference to the model itself between calls (_let_model_go), only to the layers it wraps.
_KEPT = weakref.WeakKeyDictionary()
_KEPT_LOCK = threading.Lock()


def _meter_for(model, hardware, require_spikes, counting, rates, audit, reuse) -> tuple:
    """``(meter, kept)``: the meter ``profile`` runs, and whether it is the one kept for ``model``."""
    settings = (_patterns(require_spikes), require_spikes is True, counting, rates)
    reuse = reuse and not audit and isinstance(model, nn.Module) and _hashable(model)
    if reuse:
        hw = get_profile(hardware)
        with _KEPT_LOCK:
            entry = _KEPT.get(model)
            if entry is not None and entry[0] == settings and entry[1].model is None:
                meter = entry[1]
                if _hold_layers(meter):
                    try:
                        meter.reset()
                    except BaseException:
                        del _KEPT[model]  # (not expected: a fresh meter from now on)
                        raise
                    meter.model, meter.hardware = model, hw
                    # from the second call on, forwards are recorded, then replayed (neurosim.energy.replay)
                    meter.replay = True
                    return meter, True
                del _KEPT[model]  # (a layer it counted is gone: a fresh meter, which walks the model anew)
    # a first call: one forward, nothing to replay, so it is not recorded either
    meter = EnergyMeter(model, hardware=hardware, require_spikes=require_spikes, counting=counting, rates=rates,
                        audit=audit, replay=False)
    if not reuse:
        return meter, False
    with _KEPT_LOCK:
        if model not in _KEPT or _KEPT[model][1].model is None:
            _KEPT[model] = (settings, meter)
            return meter, True
    return meter, False  # (the kept meter is running in another thread: this call's meter is its own)


def _hashable(model) -> bool:
    """Whether ``model`` can key :data:`_KEPT` (not a module class that defines ``__eq__`` without ``__hash__``)."""
    try:
        hash(model)
    except TypeError:
        return False
    return True


def _let_model_go(model, meter):
    """A kept meter after its call: no reference to the model or its layers (only weak ones, so the entry goes with
    the model even where a layer refers back to it, as a bound-method hook of the model does; and a replaced layer
    is not kept alive); not kept at all when it wraps the model itself (a counted or leaf model)."""
    with _KEPT_LOCK:
        meter.model = None
        entry = _KEPT.get(model)
        if any(s.module is model for s in meter._slots):
            if entry is not None and entry[1] is meter:
                del _KEPT[model]
        elif entry is not None and entry[1] is meter:
            for s in meter._slots:
                s.module_ref, s.module = weakref.ref(s.module), None


def _hold_layers(meter) -> bool:
    """A kept meter's layers held again for its next call (see :func:`_let_model_go`); False if one is gone."""
    modules = [s.module_ref() for s in meter._slots]
    if any(m is None for m in modules):
        return False
    for s, m in zip(meter._slots, modules):
        s.module, s.module_ref = m, None
    return True
