"""How neurosim's Triton kernels reach Triton, shared by every kernel module (nothing here imports triton at
import time).

``NEUROSIM_TRITON_INTERPRET=1`` asks for Triton's interpreter (the kernels run on CPU tensors: the test suite).
The interpreter must be switched on (``TRITON_INTERPRET=1``) before triton is first imported, because triton
wraps ``triton.language`` when it is imported; :func:`check_mode` tells a kernel built the other way apart.
"""
from __future__ import annotations

import os
import sys


def interpreter_requested() -> bool:
    return os.environ.get("NEUROSIM_TRITON_INTERPRET", "0") == "1"


def request_interpreter():
    """Switch Triton's interpreter on for this process, if triton is not imported yet."""
    if "triton" not in sys.modules:
        os.environ["TRITON_INTERPRET"] = "1"


def triton_available(interpret: bool = False) -> bool:
    """Whether triton imports (``interpret``: with the interpreter requested first)."""
    if interpret:
        request_interpreter()
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - depends on the installation
        return False
    return True


def check_mode(interpret: bool):
    """Raise RuntimeError when ``interpret`` does not match how triton was imported."""
    import triton.language as tl

    # triton.language's own jit functions (tl.sum, tl.cdiv, ...) are wrapped once, when triton is imported
    active = type(tl.cdiv).__name__ == "InterpretedFunction"
    if interpret != active:
        raise RuntimeError(
            "the Triton interpreter is " + ("needed" if interpret else "active") + " but triton was imported "
            + ("without" if interpret else "with") + " TRITON_INTERPRET=1: set NEUROSIM_TRITON_INTERPRET=1 (CPU "
            "tensors, interpreter) or leave it unset (CUDA) in the environment before anything imports triton"
        )


def on_device_of(pos: int, name: str):
    """Decorate a kernel launcher so that the CUDA device of its tensor argument ``pos`` (or keyword ``name``) is the
    current device while it runs: Triton launches on the current device, whatever device the tensors are on."""
    import functools

    import torch

    def decorate(launcher):
        @functools.wraps(launcher)
        def launch(*args, **kwargs):
            t = args[pos] if len(args) > pos else kwargs[name]
            if t.is_cuda and t.get_device() != torch.cuda.current_device():
                with torch.cuda.device(t.device):
                    return launcher(*args, **kwargs)
            return launcher(*args, **kwargs)

        return launch

    return decorate


def with_jit_helpers(module_globals: dict, helpers) -> dict:
    """A copy of a kernel module's globals in which each function named in ``helpers`` is jit-wrapped (and sees
    the others wrapped): kernels rebound to it with :func:`rebind` call the helpers as Triton functions."""
    import triton

    ns = dict(module_globals)
    for name in helpers:
        ns[name] = triton.jit(rebind(module_globals[name], ns))
    return ns


def rebind(fn, ns: dict):
    """``fn`` with ``ns`` as its globals."""
    import functools
    import types

    clone = types.FunctionType(fn.__code__, ns, fn.__name__, fn.__defaults__, fn.__closure__)
    functools.update_wrapper(clone, fn)
    return clone
