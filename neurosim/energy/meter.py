"""Counting during a forward pass: forward hooks on the counted modules, one device->host transfer at the end.

``profile(model, inputs)`` runs the model once under an :class:`EnergyMeter`; the meter can also wrap any
forward pass the caller runs itself (``with EnergyMeter(model) as m: model(x)``; ``m.report()``).
"""
from __future__ import annotations

import fnmatch
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import nn

from . import counters as C
from .hardware import HardwareProfile, get_profile
from .report import EnergyReport, LayerReport

_STATS_CACHE_SIZE = 8  # recent tensors whose stats are reused (a neuron's output is the next layer's input)


@dataclass
class _Slot:
    name: str
    module: nn.Module
    counter: object  # callable or None (not counted)
    first_call: int = -1
    calls: int = 0
    dense: int = 0
    dense_is_mac: bool = True
    neuron_updates: int = 0
    in_numel: int = 0
    out_numel: int = 0
    notes: set = field(default_factory=set)
    # 0-d tensors, summed at the end: name -> list
    pending: dict = field(default_factory=dict)

    def add(self, key, value):
        if isinstance(value, (int, float)):
            value = torch.tensor(float(value), dtype=torch.float64)
        self.pending.setdefault(key, []).append(value.detach().to(torch.float64).reshape(()))


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


def _tensors(args):
    return [a for a in args if torch.is_tensor(a)]


def _patterns(require_spikes):
    if require_spikes is None or require_spikes is False:
        return ()
    if require_spikes is True:
        return ("*",)
    if isinstance(require_spikes, str):
        return (require_spikes,)
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
        require_spikes: layer names or glob patterns (``True``: every layer) whose spike-deciding input must
            be binary; a non-binary input raises ValueError naming the layer.
    """

    def __init__(self, model: nn.Module, hardware="cmos45nm", require_spikes=None):
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.hardware: HardwareProfile = get_profile(hardware)
        self.require = _patterns(require_spikes)
        self._slots: list[_Slot] = []
        self._handles = []
        self._seq = 0
        self._cache: OrderedDict = OrderedDict()
        self._running: list[_Slot] = []  # modules entered and not yet left (to name the layer of an error)

    # ----------------------------------------------------------------------------------------- hooking
    def _walk(self, module: nn.Module, name: str):
        counter = C.counter_for(module)
        children = list(module.named_children())
        if counter is not None or not children:
            self._attach(module, name or type(module).__name__, counter)
            return
        own = [n for n, p in module._parameters.items() if p is not None]
        if own:
            # a container that also holds parameters uses them outside its children: flag it if it runs
            self._attach(module, name or type(module).__name__, None,
                         note=f"own parameters ({', '.join(own)}) used outside child modules are not counted")
        for child_name, child in children:
            self._walk(child, f"{name}.{child_name}" if name else child_name)

    def _attach(self, module, name, counter, note=""):
        slot = _Slot(name, module, counter)
        if note:
            slot.notes.add(note)
        self._slots.append(slot)
        self._handles.append(module.register_forward_pre_hook(self._make_pre_hook(slot)))
        self._handles.append(module.register_forward_hook(self._make_hook(slot), with_kwargs=True))

    def __enter__(self):
        if self._handles:
            raise RuntimeError("EnergyMeter is already active")
        self._walk(self.model, "")
        return self

    def __exit__(self, exc_type, exc, tb):
        for h in self._handles:
            h.remove()
        self._handles = []
        self._cache.clear()
        running, self._running = self._running, []
        if exc_type is not None and issubclass(exc_type, (ValueError, RuntimeError)):
            # name the layer: the first one whose input held NaN/inf, else the innermost one that was running
            self._check_finite(self._sums())
            if running:
                s = running[-1]
                raise ValueError(f"layer {s.name!r} ({type(s.module).__name__}) failed: {exc}") from exc
        return False

    def _make_pre_hook(self, slot: _Slot):
        def pre_hook(module, args):
            self._running.append(slot)

        return pre_hook

    # ------------------------------------------------------------------------------------------ counting
    def _stats(self, x: torch.Tensor) -> C.TensorStats:
        # A contiguous tensor is identified by (storage address, numel, dtype): views such as a reshape of a
        # neuron's output, fed to the next layer, reuse its stats. The cache holds the tensor itself, so the
        # address cannot be reused while cached; ``_version`` catches in-place changes.
        key = (x.data_ptr(), x.numel(), x.dtype, x.device) if x.is_contiguous() else ("id", id(x))
        hit = self._cache.get(key)
        if hit is not None and hit[1] == x._version and (key[0] != "id" or hit[0] is x):
            self._cache.move_to_end(key)
            return hit[2]
        s = C.stats(x)
        self._cache[key] = (x, x._version, s)
        if len(self._cache) > _STATS_CACHE_SIZE:
            self._cache.popitem(last=False)
        return s

    def _make_hook(self, slot: _Slot):
        def hook(module, args, kwargs, output):
            if self._running and self._running[-1] is slot:
                self._running.pop()
            if kwargs:
                args = tuple(args) + tuple(kwargs.values())
            if slot.first_call < 0:
                slot.first_call = self._seq
                self._seq += 1
            slot.calls += 1
            ins = _tensors(args)
            for t in ins:  # NaN/inf anywhere in the layer's inputs
                slot.add("nonfinite", self._stats(t).nonfinite)
            prev = C.stats
            C.stats = self._stats  # counters share this call's (and recent calls') tensor stats
            try:
                cnt = slot.counter(module, args, output) if slot.counter is not None else None
            finally:
                C.stats = prev
            sin = cnt.spike_input if cnt is not None and cnt.spike_input is not None else (
                self._stats(ins[0]) if ins else None)
            if sin is not None:
                slot.in_numel += sin.numel
                slot.add("in_nnz", sin.nnz)
                slot.add("in_nonbinary", sin.nonbinary)
            out = _first_tensor(output)
            if out is not None:
                so = self._stats(out)
                slot.out_numel += so.numel
                slot.add("out_nnz", so.nnz)
            if cnt is None:
                return
            slot.dense += int(cnt.dense)
            slot.dense_is_mac = cnt.dense_is_mac
            slot.neuron_updates += int(cnt.neuron_updates)
            for key in ("macs", "synops", "acs", "synops_paper"):
                v = getattr(cnt, key)
                if torch.is_tensor(v) or v:
                    slot.add(key, v)
            if cnt.note:
                slot.notes.add(cnt.note)

        return hook

    # -------------------------------------------------------------------------------------------- report
    def _ran(self):
        return sorted((s for s in self._slots if s.calls), key=lambda s: s.first_call)

    def _sums(self) -> dict:
        """All pending 0-d counts summed per (layer, key): one device->host transfer per device."""
        index, values = [], []
        for s in self._ran():
            for key, vals in s.pending.items():
                for v in vals:
                    index.append((s.name, key))
                    values.append(v)
        sums: dict = {}
        by_dev: dict = {}
        for i, v in enumerate(values):
            by_dev.setdefault(v.device, []).append(i)
        for dev, idx in by_dev.items():
            host = torch.stack([values[i] for i in idx]).cpu().tolist()
            for i, h in zip(idx, host):
                sums[index[i]] = sums.get(index[i], 0.0) + h
        return sums

    def _check_finite(self, sums):
        for s in self._ran():
            bad = int(sums.get((s.name, "nonfinite"), 0))
            if bad:
                raise ValueError(f"layer {s.name!r} ({type(s.module).__name__}): its input contains {bad} NaN/inf "
                                 "value(s); all values must be finite")

    def report(self, batch_size: int | None = None) -> EnergyReport:
        """Read all counts back (one transfer per device), check them, and price them on the hardware."""
        ran = self._ran()
        sums = self._sums()
        get = lambda s, k: sums.get((s.name, k), 0.0)  # noqa: E731
        self._check_finite(sums)
        for s in ran:
            if any(fnmatch.fnmatchcase(s.name, p) for p in self.require):
                nb = int(get(s, "in_nonbinary"))
                if nb:
                    raise ValueError(f"layer {s.name!r} ({type(s.module).__name__}) requires binary spikes "
                                     f"(values 0 or 1) as input, but {nb} of {s.in_numel} input values were not "
                                     "0 or 1")

        hw = self.hardware
        rows, notes = [], []
        unpriced = 0
        for s in ran:
            counted = s.counter is not None
            r = LayerReport(name=s.name, type=type(s.module).__name__, calls=s.calls, counted=counted,
                            dense=s.dense, dense_is_mac=s.dense_is_mac, macs=int(round(get(s, "macs"))),
                            synops=int(round(get(s, "synops"))), acs=int(round(get(s, "acs"))),
                            neuron_updates=s.neuron_updates, synops_paper=get(s, "synops_paper"),
                            in_numel=s.in_numel, in_nnz=int(get(s, "in_nnz")), out_numel=s.out_numel,
                            out_nnz=int(get(s, "out_nnz")),
                            in_spikes=s.in_numel > 0 and int(get(s, "in_nonbinary")) == 0,
                            note="; ".join(sorted(s.notes)) if counted else
                            ("; ".join(sorted(s.notes)) or "no counter registered for this module type"))
            e_mac = hw.e_mac_pj
            if e_mac is None:
                unpriced += r.macs
                e_mac = 0.0
            base = r.neuron_updates * hw.e_neuron_pj + r.acs * hw.e_ac_pj + r.macs * e_mac
            r.energy_pj = base + r.synops * hw.e_ac_pj
            r.energy_paper_pj = base + r.synops_paper * hw.e_ac_pj
            rows.append(r)
        if unpriced:
            notes.append(f"{unpriced:,} MACs are not priced: profile {hw.name!r} has no MAC energy "
                         "(real-valued layers run off this hardware)")
        return EnergyReport(hardware=hw, layers=rows, batch_size=batch_size, notes=notes)


def _call(model, inputs):
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def profile(model: nn.Module, inputs, hardware="cmos45nm", require_spikes=None, grad: bool = False):
    """Run ``model(inputs)`` once and count, per layer, dense ANN MACs, SynOps, MACs, ACs, neuron updates,
    firing rates and energy on ``hardware``.

    Args:
        model: network taking ``[T, B, ...]`` input(s).
        inputs: a tensor, a tuple/list of positional inputs, or a dict of keyword inputs.
        hardware: ``"cmos45nm"`` (default), ``"loihi"``, a registered name, a HardwareProfile or a dict.
        require_spikes: see :class:`EnergyMeter`.
        grad: run with autograd enabled (default: under ``torch.no_grad()``).

    Returns:
        :class:`EnergyReport` (``print(report)``, ``.to_csv()``, ``.to_json()``, ``.plot()``). Counts cover the
        whole batch; ``batch_size`` is taken from dim 1 of the first input tensor.
    """
    first = _first_tensor(inputs)
    if first is None:
        raise ValueError("inputs must contain at least one tensor shaped [T, B, ...]")
    batch = int(first.shape[1]) if first.dim() >= 2 else None
    meter = EnergyMeter(model, hardware=hardware, require_spikes=require_spikes)
    with meter, torch.set_grad_enabled(grad):
        _call(model, inputs)
    return meter.report(batch_size=batch)
