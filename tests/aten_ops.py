"""An independent count of the element-wise arithmetic a module's own ``forward`` runs, read from the aten ops
torch actually dispatches (``TorchDispatchMode``), for checking the energy counters of element-wise layers.

Counted: every pointwise aten op (``torch.Tag.pointwise``) one per output element, and sum reductions
(input elements - output elements additions), when run by the module itself (not inside one of its child
modules, which count themselves) and when at least one operand derives from the module's inputs (an op on
parameters, buffers and constants alone is folded at inference). Selections (``where``, ``masked_fill``)
copies and tests (pointwise ops with a boolean result: comparisons, ``isfinite``) are not arithmetic and are
not counted; the layers' own input checks (:func:`neurosim.validate.finite`) are switched off while counting.
"""
from __future__ import annotations

from unittest import mock

import torch
from torch.utils._pytree import tree_flatten
from torch.utils._python_dispatch import TorchDispatchMode

from neurosim import validate

aten = torch.ops.aten
SELECT = {aten.where.self, aten.masked_fill.Scalar, aten.masked_fill.Tensor}
COPIES = {aten.clone.default, aten._to_copy.default, aten.copy_.default}
SUMS = {aten.sum.dim_IntList, aten.sum.default}
# element-wise ops some torch versions do not tag pointwise (torch 2.11 leaves leaky_relu untagged; 2.13 tags it)
UNTAGGED_POINTWISE = {aten.leaky_relu.default}


class _Counter(TorchDispatchMode):
    def __init__(self, inputs):
        super().__init__()
        self.live = {id(t) for t in inputs}   # tensors that derive from the module's inputs
        self.keep = list(inputs)              # kept alive, so that an id is never reused during the count
        self.depth = 0                        # > 0 while a child module runs
        self.ops: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        ins = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        outs = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        if any(id(a) in self.live for a in ins):
            self.live.update(id(o) for o in outs)
            self.keep += outs
            n = 0
            if func in SUMS:
                n = ins[0].numel() - outs[0].numel()
            elif ((torch.Tag.pointwise in func.tags or func in UNTAGGED_POINTWISE) and func not in SELECT | COPIES
                  and outs[0].dtype != torch.bool):
                n = outs[0].numel()
            if n and self.depth == 0:
                name = func.overloadpacket.__name__
                self.ops[name] = self.ops.get(name, 0) + n
        return out


def own_elementwise_ops(module: torch.nn.Module, *args, **kwargs) -> tuple[int, dict]:
    """``(total, per aten op)``: element-wise operations of ``module(*args, **kwargs)`` outside its children."""
    counter = _Counter([a for a in args if isinstance(a, torch.Tensor)])
    handles = []
    for child in module.modules():
        if child is module:
            continue
        handles.append(child.register_forward_pre_hook(lambda m, a: setattr(counter, "depth", counter.depth + 1)))
        handles.append(child.register_forward_hook(lambda m, a, o: setattr(counter, "depth", counter.depth - 1)))
    try:
        with torch.no_grad(), mock.patch.object(validate, "finite", lambda name, x: x), counter:
            module(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return sum(counter.ops.values()), counter.ops
