"""Nested blocks that share one context variable (the innermost block's value is the one in effect) and may end in
any order: a block ended while a later one is still open (interleaved coroutines, two meters entered and exited
first-in first-out) takes its value out from under the later one, instead of ``ContextVar.reset`` restoring, when the
later one ends, a value whose block is gone."""
from __future__ import annotations

from contextvars import ContextVar


class _Frame:
    __slots__ = ("value", "outer")

    def __init__(self, value, outer):
        self.value, self.outer = value, outer


class Stacked:
    """A context variable of nested blocks' values (:meth:`push` on entering a block, :meth:`pop` on leaving it)."""

    def __init__(self, name: str):
        self._var: ContextVar = ContextVar(name, default=None)

    def get(self):
        """The innermost open block's value, or None."""
        frame = self._var.get()
        return None if frame is None else frame.value

    def push(self, value) -> _Frame:
        frame = _Frame(value, self._var.get())
        self._var.set(frame)
        return frame

    def pop(self, frame: _Frame) -> None:
        top = self._var.get()
        if top is frame:
            self._var.set(frame.outer)
            return
        while top is not None and top.outer is not frame:  # (ended out of order: unlinked from under a later one)
            top = top.outer
        if top is not None:
            top.outer = frame.outer
