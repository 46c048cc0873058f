"""The meter's memory of which tensors it has a count-buffer row for, so that no tensor is read twice.

A forward uses a tensor several times: a neuron's output is the next layer's input, a block's input is read again
by its residual addition many layers later, a reshape or a head transpose feeds the next product. The cache maps
the elements a tensor holds to the :class:`~neurosim.energy.device_counts.RowStats` that counts them:

- a tensor whose elements fill one run of storage (contiguous, or a permutation of such) by (first address,
  numel, dtype, device); any other view by (first address, its (stride, size) pairs sorted, dtype, device): a
  view and its transpose (attention's k and k^T) hold the same elements. Nonzeros, ones, non-finite elements and
  scaled sums do not depend on the order; a fan-weighted count does, and the count buffer checks the layout for it.
- An entry holds a weak reference to its tensor (to the tensor it is a view of, if any), removed when that is
  freed, so an address cannot be reused for other values while its entry lives, and the cache keeps no
  activation alive: it can remember a whole forward (:data:`SIZE` entries) at no memory cost.
- ``_version`` (shared by views) catches in-place changes: a counted row whose tensor changed is read again.
- Rows still deferred hold their tensor (they are read later): at most :data:`DEFERRED` of them stay deferred
  for the cache's sake, the oldest being counted, or dropped when optional (its entry then goes too).
"""
from __future__ import annotations

import functools
import weakref
from collections import OrderedDict

import torch

from .device_counts import CountBuffer, RowStats

SIZE = 256  # entries kept (least recently used dropped first)
DEFERRED = 8  # deferred rows kept deferred by the cache (each holds its tensor)


def _fills_span(pairs) -> bool:
    """Whether dims given as (stride, size) pairs sorted by stride fill consecutive storage elements (a permuted
    contiguous tensor)."""
    expected = 1
    for st, sz in pairs:
        if st != expected:
            return False
        expected *= sz
    return True


def key(x: torch.Tensor) -> tuple:
    """What identifies the elements ``x`` holds (see the module docstring)."""
    if x.is_contiguous():
        return (x.data_ptr(), x.numel(), x.dtype, x.device)
    pairs = tuple(sorted((st, sz) for sz, st in zip(x.shape, x.stride()) if sz != 1))
    return (x.data_ptr(), x.numel() if _fills_span(pairs) else pairs, x.dtype, x.device)


def _freed(cache_ref, k, ref):
    """An entry's tensor was freed: forget the entry (unless the key holds another tensor's entry by now)."""
    cache = cache_ref()
    if cache is not None:
        cache._forget(k, ref)


class StatsCache:
    """Rows of recently seen tensors, for the meter (see the module docstring); ``counts`` is the buffer whose
    deferred rows it counts or drops when it lets them go."""

    def __init__(self, counts: CountBuffer):
        self.counts = counts
        self._entries: OrderedDict = OrderedDict()  # key -> (weak reference, version, stats)
        self._deferred: OrderedDict = OrderedDict()  # keys whose rows were deferred when cached, oldest first
        self._self = weakref.ref(self)  # what the entries' callbacks hold (not the cache itself)

    def __len__(self):
        return len(self._entries)

    def clear(self):
        self._entries.clear()
        self._deferred.clear()

    def _forget(self, k, ref=None):
        e = self._entries.get(k)
        if e is not None and (ref is None or e[0] is ref):
            del self._entries[k]
            self._deferred.pop(k, None)

    def get(self, x: torch.Tensor) -> RowStats | None:
        """The row of ``x``'s elements (possibly still deferred), or None."""
        return self.lookup(x)[1]

    def lookup(self, x: torch.Tensor) -> tuple:
        """``(key(x), get(x))``: the key to hand to :meth:`put` when the row is new (no second key computation)."""
        k = key(x)
        return k, self._find(x, k)

    def _find(self, x: torch.Tensor, k) -> RowStats | None:
        hit = self._entries.get(k)
        if hit is None:
            return None
        ref, version, st = hit
        if ref() is None:  # freed (its callback is due): the address may hold other values now
            self._forget(k)
            return None
        if version != x._version:
            if st.pending is None:
                self._forget(k)
                return None  # changed in place since it was counted: count it again
            if st.optional:  # a rate nobody needed yet, of values now gone: not measured
                self.counts.release(st)
                self._forget(k)
                return None
            self.counts.force(st)  # deferred, then changed in place: counted as it is now (its producer is told)
            self._entries[k] = (ref, x._version, st)
        self._entries.move_to_end(k)
        return st

    def put(self, x: torch.Tensor, st: RowStats, k=None):
        """Remember ``st`` as the row of ``x``'s elements (``k``: ``key(x)``, when :meth:`lookup` gave it)."""
        if k is None:
            k = key(x)
        entries = self._entries
        # the reference is to the tensor the view was taken from, whose Python object lives as long as any of its
        # views does (a reshape or flatten of a layer's output outlives the output's own object)
        owner = x._base if x._base is not None else x
        ref = weakref.ref(owner, functools.partial(_freed, self._self, k))
        entries[k] = (ref, x._version, st)
        entries.move_to_end(k)
        self._deferred.pop(k, None)
        if st.pending is not None:
            self._deferred[k] = None
        while len(self._deferred) > DEFERRED:
            self._let_go(next(iter(self._deferred)))
        while len(entries) > SIZE:
            self._let_go(next(iter(entries)))

    def _let_go(self, k):
        """The entry ``k`` stops holding a deferred row: the row is counted now (and stays cached), or dropped
        when optional (and forgotten); an entry dropped for room is forgotten."""
        self._deferred.pop(k, None)
        e = self._entries.get(k)
        if e is None:
            return
        st = e[2]
        self.counts.release(st)
        if st.dropped or len(self._entries) > SIZE:
            self._forget(k)
