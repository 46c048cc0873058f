r"""One-read tensor statistics for the energy profiler (Triton; imported only when a kernel is launched).

:func:`launch` reads a tensor once and adds exact int64 counts to a row of the caller's buffer:
``[nonzeros, elements equal to 1, non-finite elements, fan-weighted nonzeros, sum of round(x * inv_scale)]``
(the last two only when asked for). A strided view (e.g. a permuted slice such as attention's q, k, v) is read
in place through its collapsed sizes and strides, not copied. The fan map (optional) holds
one integer weight per position of the tensor's trailing ``C`` elements (``C = fan.numel()``): element ``i``
weighs ``fan[i % C]``, e.g. a conv input ``[N, Cin, H, W]`` with a ``[H, W]`` fan-out map.

Layout: the elements are read in their logical order in steps of BLOCK, each step by one program of a grid of a
few programs per multiprocessor; a program keeps per-lane counts in registers and at the end adds its totals to
the row with one integer atomic per column, so the result is exact and independent of the schedule. Index
arithmetic is 32-bit unless an index or storage offset needs more. There is no host synchronisation and no
allocation besides the caller's buffer.

As in :mod:`neurosim.kernels.triton_lif`, the kernel is a plain Python function wrapped by :func:`kernel` with
``triton.jit``; with ``interpret=True`` it runs in Triton's interpreter on CPU tensors (the tests), which must
have been chosen (``TRITON_INTERPRET=1``) before triton was imported.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .runtime import check_mode

BLOCK = 1024  # elements a program reads per step (4 a thread in 8 warps)
COLS = 5  # nnz, ones, non-finite, fan-weighted nnz, sum of round(x * inv_scale)
MAX_DIMS = 4  # a strided view is read in place when its dims collapse to at most this many
IDX32_LIMIT = 2 ** 31  # indices and storage offsets below this are computed in 32 bits (tests lower it)


def _stats_kernel(x_ptr, fan_ptr, out_ptr, row, N, C, inv_scale, s1, s2, s3, t0, t1, t2, t3,
                  IS_FLOAT: tl.constexpr, HAS_FAN: tl.constexpr, HAS_SUM: tl.constexpr, STRIDED: tl.constexpr,
                  IDX64: tl.constexpr, BLOCK: tl.constexpr, NCOLS: tl.constexpr):
    pid = tl.program_id(0)
    n_p = tl.num_programs(0)
    lanes = tl.arange(0, BLOCK)
    acc_nz = tl.zeros([BLOCK], tl.int32)
    acc_one = tl.zeros([BLOCK], tl.int32)
    acc_bad = tl.zeros([BLOCK], tl.int32)
    acc_fan = tl.zeros([BLOCK], tl.int64)
    acc_sum = tl.zeros([BLOCK], tl.int64)
    for b in range(pid, tl.cdiv(N, BLOCK), n_p):
        if IDX64:  # element indices or storage offsets past 2**31 - 1
            lin = tl.cast(b, tl.int64) * BLOCK + lanes
        else:  # 32-bit index arithmetic (the strided path's divisions cost far less)
            lin = b * BLOCK + lanes
        mask = lin < N
        if STRIDED:  # a view: its (up to 4) collapsed dims give the storage offset of the logical index
            i3 = lin % s3
            q = lin // s3
            i2 = q % s2
            q = q // s2
            offs = (q // s1) * t0 + (q % s1) * t1 + i2 * t2 + i3 * t3
        else:
            offs = lin
        v = tl.load(x_ptr + offs, mask=mask, other=0)
        nz = v != 0
        acc_nz += nz.to(tl.int32)
        acc_one += (v == 1).to(tl.int32)
        if IS_FLOAT:
            # NaN fails every comparison and |inf| < inf is false: the non-finite elements (0 for padding lanes)
            ok = tl.abs(v) < float("inf")
            acc_bad += (~ok & mask).to(tl.int32)
            if HAS_SUM:  # exact integer products recovered from a scaled result (see launch)
                acc_sum += tl.where(ok, tl.floor(v.to(tl.float32) * inv_scale + 0.5), 0.0).to(tl.int64)
        if HAS_FAN:  # element i weighs fan[i % C] (a small map: cached)
            f = tl.load(fan_ptr + lin % C, mask=mask & nz, other=0)
            acc_fan += f.to(tl.int64)
    out = out_ptr + row * NCOLS
    tl.atomic_add(out + 0, tl.sum(acc_nz.to(tl.int64), axis=0))
    tl.atomic_add(out + 1, tl.sum(acc_one.to(tl.int64), axis=0))
    if IS_FLOAT:
        tl.atomic_add(out + 2, tl.sum(acc_bad.to(tl.int64), axis=0))
        if HAS_SUM:
            tl.atomic_add(out + 4, tl.sum(acc_sum, axis=0))
    if HAS_FAN:
        tl.atomic_add(out + 3, tl.sum(acc_fan, axis=0))


@functools.lru_cache(maxsize=2)
def kernel(interpret: bool = False):
    """The jit-wrapped kernel; ``interpret`` must match how triton was imported (see the module docstring)."""
    check_mode(interpret)
    return triton.jit(_stats_kernel, do_not_specialize=["row", "s1", "s2", "s3", "t0", "t1", "t2", "t3"])


@functools.lru_cache(maxsize=8)
def _sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 0


def _programs(device: torch.device, blocks: int) -> int:
    """Programs for ``blocks`` steps of BLOCK elements: 4 a multiprocessor, 8 for tensors past 32M elements (the
    fastest in a sweep on an H200, BENCHMARKS.md energy run 9); 2 in the interpreter (it runs them in turn)."""
    sms = _sms(device)
    if not sms:
        return min(blocks, 2)
    return max(1, min(blocks, (8 if blocks * BLOCK > (1 << 25) else 4) * sms))


def collapse(x: torch.Tensor) -> list:
    """``x``'s dims as (size, stride) pairs with size-1 dims dropped and dims that step through storage as one
    merged (row-major order kept): a contiguous tensor gives one pair with stride 1."""
    out: list = []
    for sz, st in zip(x.shape, x.stride()):
        if sz == 1:
            continue
        if out and out[-1][1] == st * sz:
            out[-1] = (out[-1][0] * sz, st)
        else:
            out.append((sz, st))
    return out or [(1, 1)]


def readable(x: torch.Tensor) -> bool:
    """Whether :func:`launch` reads ``x`` in place (contiguous, or a view of at most MAX_DIMS collapsed dims)."""
    return len(collapse(x)) <= MAX_DIMS


def launch(x: torch.Tensor, out: torch.Tensor, fan: torch.Tensor | None = None, inv_scale: float | None = None,
           interpret: bool = False, row: int = 0):
    """Add the counts of ``x`` (contiguous, or any view for which :func:`readable` holds) to row ``row`` of
    ``out`` (int64, contiguous ``[rows, COLS]``, or one row of ``COLS`` elements; zeroed by the caller), in ``x``'s
    logical (row-major) element order.

    ``fan``: int32 contiguous weights with ``x.numel() % fan.numel() == 0``, on ``x``'s device, or None (the
    fan-weighted column is left untouched). ``inv_scale`` (floating ``x`` only): also add
    ``sum(round(x * inv_scale))`` over the finite elements, computed in float32, which is exact when every
    ``x`` is an integer ``p`` times ``1 / inv_scale`` rounded to ``x``'s dtype and ``p`` is small enough for that
    dtype (see :func:`neurosim.energy.counters.count_matmul`). bool tensors are read as bytes. How the kernel
    reads: the module docstring.
    """
    n = x.numel()
    if n == 0:
        return
    if not (out.dtype == torch.int64 and out.is_contiguous() and out.numel() >= (row + 1) * COLS):
        raise ValueError(f"out must be a contiguous int64 buffer holding row {row} of {COLS} columns, got "
                         f"{out.dtype} of shape {tuple(out.shape)}")
    if x.dtype == torch.bool:
        x = x.view(torch.uint8)
    dims = collapse(x)
    strided = not (len(dims) == 1 and dims[0][1] == 1)
    if strided and len(dims) > MAX_DIMS:
        raise ValueError(f"x must be contiguous or a view of at most {MAX_DIMS} collapsed dims; got shape "
                         f"{tuple(x.shape)}, strides {x.stride()}")
    span = 1 + sum((sz - 1) * st for sz, st in dims)  # storage elements from the first one the view reads
    idx64 = max(n, span) + BLOCK >= IDX32_LIMIT
    dims = [(1, 0)] * (MAX_DIMS - len(dims)) + dims
    (_, t0), (s1, t1), (s2, t2), (s3, t3) = dims
    c = fan.numel() if fan is not None else 1
    blocks = triton.cdiv(n, BLOCK)
    has_sum = inv_scale is not None and x.is_floating_point()
    kernel(interpret)[(_programs(x.device, blocks),)](
        x, fan if fan is not None else out, out, row, n, c, float(inv_scale) if has_sum else 1.0,
        s1, s2, s3, t0, t1, t2, t3,
        IS_FLOAT=x.is_floating_point(), HAS_FAN=fan is not None, HAS_SUM=has_sum, STRIDED=strided, IDX64=idx64,
        BLOCK=BLOCK, NCOLS=COLS, num_warps=8,
    )
