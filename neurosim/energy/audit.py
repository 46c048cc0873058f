"""Find arithmetic that no counter sees: torch functions a module's ``forward`` calls itself (``x.mean(0)``,
``torch.softmax(...)``, ``a * b``) outside every hooked layer.

Hooks see modules, not functions, so such arithmetic would be missing from the totals without a trace.
:class:`FunctionalAudit` (``EnergyMeter(audit=True)``, ``profile(..., audit=True)``, on in ``neurosim energy``)
watches the aten operations torch dispatches while the meter runs and records, per enclosing module, each
arithmetic one run outside a hooked layer, outside the meter's own hooks and outside neurosim's input checks:
pointwise operations with a numeric result, reductions, products, convolutions, softmax and normalisation;
and the products and convolutions a neuron runs itself (a neuron's counter counts its updates only, so a
synapse it holds as a plain parameter would otherwise be missing).
The report lists them as "not counted" rows (``<module> (functional)``) with the operations and the
elements they produced. It costs a Python call per aten operation, so it is off by default.
"""
from __future__ import annotations

import sys

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

_aten = torch.ops.aten


def _ops(names: str) -> frozenset:
    """The aten op packets of ``names`` that this torch has (an op a version lacks is left out)."""
    return frozenset(op for op in (getattr(_aten, n, None) for n in names.split()) if op is not None)


_NOT_ARITHMETIC = _ops("clone _to_copy copy_ where masked_fill masked_fill_ fill_ zero_ detach lift_fresh")
# products inside a neuron: a neuron's counter counts its updates only, so a product or convolution it runs
# itself (a synapse held as a plain parameter) would be missing from the totals
_SYNAPTIC = _ops("mm bmm addmm baddbmm addbmm matmul mv dot convolution _convolution")
_ARITHMETIC = _SYNAPTIC | _ops(
    "sum mean prod cumsum cumprod var std var_mean std_mean logsumexp norm linalg_vector_norm _softmax "
    "_log_softmax native_layer_norm native_group_norm native_batch_norm _native_batch_norm_legit "
    "_native_batch_norm_legit_no_training scaled_dot_product_attention _scaled_dot_product_flash_attention "
    "_scaled_dot_product_efficient_attention _scaled_dot_product_cudnn_attention")
_QUIET_MODULES = ("neurosim.validate",)  # input checks test values, they are not the model's arithmetic


def is_arithmetic(func, out) -> bool:
    packet = func.overloadpacket
    if packet in _ARITHMETIC:
        return True
    if packet in _NOT_ARITHMETIC or torch.Tag.pointwise not in func.tags:
        return False
    first = out[0] if isinstance(out, (tuple, list)) and out else out
    return isinstance(first, torch.Tensor) and first.dtype != torch.bool


def _numel(out) -> int:
    if isinstance(out, torch.Tensor):
        return out.numel()
    return sum(o.numel() for o in out if isinstance(o, torch.Tensor)) if isinstance(out, (tuple, list)) else 0


def _in_quiet_code(depth: int = 4) -> bool:
    frame = sys._getframe(2)
    for _ in range(depth):
        if frame is None:
            return False
        if frame.f_globals.get("__name__", "").startswith(_QUIET_MODULES):
            return True
        frame = frame.f_back
    return False


class FunctionalAudit(TorchDispatchMode):
    """Records arithmetic aten operations run while ``running()`` (the meter's stack of hooked layers) is empty,
    and products and convolutions run by a neuron itself (the innermost hooked layer is a neuron), when
    ``busy()`` is false (the meter's hooks are not counting); keyed by the innermost module running, in ``found``
    (module name -> op -> [calls, elements produced]; a meter passes the same dict to each forward's audit)."""

    def __init__(self, model: nn.Module, running, busy, found: dict | None = None):
        super().__init__()
        self._running, self._busy = running, busy
        self._names = {m: n for n, m in model.named_modules()}
        self._stack: list[str] = []
        self._hooks = []
        self.found: dict[str, dict[str, list]] = {} if found is None else found

    def __enter__(self):
        def push(module, args):
            self._stack.append(self._names.get(module, type(module).__name__))

        def pop(module, args, output):
            if self._stack:
                self._stack.pop()

        reg = nn.modules.module
        self._hooks = [reg.register_module_forward_pre_hook(push), reg.register_module_forward_hook(pop)]
        return super().__enter__()

    def __exit__(self, *exc):
        for h in self._hooks:
            h.remove()
        self._hooks, self._stack = [], []
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        running = self._running()
        if running and not (running[-1].neuron and func.overloadpacket in _SYNAPTIC):
            return out
        if self._busy() or not self._stack or not is_arithmetic(func, out) or _in_quiet_code():
            return out
        ops = self.found.setdefault(self._stack[-1], {})
        entry = ops.setdefault(func.overloadpacket.__name__, [0, 0])
        entry[0] += 1
        entry[1] += _numel(out)
        return out


def describe(ops: dict) -> str:
    """The report note of one module's functional arithmetic (``op -> [calls, elements]``)."""
    parts = [f"{op} x{calls} ({elements:,} elements)" for op, (calls, elements) in sorted(ops.items())]
    return "arithmetic in this module's forward that no counter counts: " + ", ".join(parts)
