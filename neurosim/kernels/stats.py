r"""One-read tensor statistics for the energy profiler (Triton; imported only when a kernel is launched).

:func:`launch` reads a tensor once and adds exact int64 counts to a row of the caller's buffer:
``[nonzeros, elements equal to 1, non-finite elements, fan-weighted nonzeros, sum of round(x * inv_scale)]``
(the last two only when asked for). A strided view (e.g. a permuted slice such as attention's q, k, v) is read
in place through its collapsed sizes and strides, not copied. The fan map (optional) holds
one integer weight per position of the tensor's trailing ``C`` elements (``C = fan.numel()``): element ``i``
weighs ``fan[i % C]``, e.g. a conv input ``[N, Cin, H, W]`` with a ``[H, W]`` fan-out map.

Layout: the tensor is viewed as ``R`` rows of ``C`` elements (without a fan map ``C`` is the tile width and the
last row is masked at ``numel``). A program owns a ``BLOCK_C`` column slice (its fan weights are loaded once)
and walks every ``G``-th group of ``ROWS`` rows, keeping per-lane counts in registers; at the end it adds its
totals to the row with one integer atomic per column, so the result is exact and independent of the schedule. There is
no host synchronisation and no allocation besides the caller's buffer.

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

TILE = 4096  # elements per program iteration
COLS = 5  # nnz, ones, non-finite, fan-weighted nnz, sum of round(x * inv_scale)
MAX_DIMS = 4  # a strided view is read in place when its dims collapse to at most this many


def _stats_kernel(x_ptr, fan_ptr, out_ptr, N, C, R, inv_scale, s1, s2, s3, t0, t1, t2, t3,
                  IS_FLOAT: tl.constexpr, HAS_FAN: tl.constexpr, HAS_SUM: tl.constexpr, STRIDED: tl.constexpr,
                  ROWS: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_c = tl.program_id(0)
    pid_r = tl.program_id(1)
    n_r = tl.num_programs(1)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    rr = tl.arange(0, ROWS)
    acc_nz = tl.zeros([ROWS, BLOCK_C], tl.int32)
    acc_one = tl.zeros([ROWS, BLOCK_C], tl.int32)
    acc_bad = tl.zeros([ROWS, BLOCK_C], tl.int32)
    acc_fan = tl.zeros([ROWS, BLOCK_C], tl.int64)
    acc_sum = tl.zeros([ROWS, BLOCK_C], tl.int64)
    if HAS_FAN:
        fan = tl.load(fan_ptr + cols, mask=cmask, other=0).to(tl.int64)
    for r0 in range(pid_r * ROWS, R, n_r * ROWS):
        rows = r0 + rr
        lin = rows.to(tl.int64)[:, None] * C + cols[None, :]  # the element's index in the logical (row-major) order
        mask = (rows[:, None] < R) & cmask[None, :] & (lin < N)
        if STRIDED:  # a view: its (up to 4) collapsed dims give the storage offset
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
        if HAS_FAN:
            acc_fan += tl.where(nz, fan[None, :], 0)
    tl.atomic_add(out_ptr + 0, tl.sum(tl.sum(acc_nz.to(tl.int64), axis=1), axis=0))
    tl.atomic_add(out_ptr + 1, tl.sum(tl.sum(acc_one.to(tl.int64), axis=1), axis=0))
    if IS_FLOAT:
        tl.atomic_add(out_ptr + 2, tl.sum(tl.sum(acc_bad.to(tl.int64), axis=1), axis=0))
        if HAS_SUM:
            tl.atomic_add(out_ptr + 4, tl.sum(tl.sum(acc_sum, axis=1), axis=0))
    if HAS_FAN:
        tl.atomic_add(out_ptr + 3, tl.sum(tl.sum(acc_fan, axis=1), axis=0))


@functools.lru_cache(maxsize=2)
def kernel(interpret: bool = False):
    """The jit-wrapped kernel; ``interpret`` must match how triton was imported (see the module docstring)."""
    check_mode(interpret)
    return triton.jit(_stats_kernel, do_not_specialize=["R", "s1", "s2", "s3", "t0", "t1", "t2", "t3"])


@functools.lru_cache(maxsize=8)
def _programs(device: torch.device) -> int:
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 2  # the interpreter runs programs one after the other


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


def launch(x: torch.Tensor, out_row: torch.Tensor, fan: torch.Tensor | None = None, inv_scale: float | None = None,
           interpret: bool = False):
    """Add the counts of ``x`` (contiguous, or any view for which :func:`readable` holds) to ``out_row`` (int64,
    ``COLS`` elements, zeroed by the caller), in ``x``'s logical (row-major) element order.

    ``fan``: int32 contiguous weights with ``x.numel() % fan.numel() == 0``, on ``x``'s device, or None (the
    fan-weighted column is left untouched). ``inv_scale`` (floating ``x`` only): also add
    ``sum(round(x * inv_scale))`` over the finite elements, computed in float32, which is exact when every
    ``x`` is an integer ``p`` times ``1 / inv_scale`` rounded to ``x``'s dtype and ``p`` is small enough for that
    dtype (see :func:`neurosim.energy.counters.count_matmul`). bool tensors are read as bytes.
    """
    n = x.numel()
    if n == 0:
        return
    if x.dtype == torch.bool:
        x = x.view(torch.uint8)
    dims = collapse(x)
    strided = not (len(dims) == 1 and dims[0][1] == 1)
    if strided and len(dims) > MAX_DIMS:
        raise ValueError(f"x must be contiguous or a view of at most {MAX_DIMS} collapsed dims; got shape "
                         f"{tuple(x.shape)}, strides {x.stride()}")
    dims = [(1, 0)] * (MAX_DIMS - len(dims)) + dims
    (_, t0), (s1, t1), (s2, t2), (s3, t3) = dims
    if fan is not None:
        c = fan.numel()
        block_c = min(TILE, triton.next_power_of_2(c))
    else:
        c = block_c = TILE
    rows_per_tile = TILE // block_c
    r = triton.cdiv(n, c)
    col_blocks = triton.cdiv(c, block_c)
    groups = max(1, min(triton.cdiv(r, rows_per_tile), _programs(x.device) // col_blocks))
    has_sum = inv_scale is not None and x.is_floating_point()
    kernel(interpret)[(col_blocks, groups)](
        x, fan if fan is not None else out_row, out_row, n, c, r, float(inv_scale) if has_sum else 1.0,
        s1, s2, s3, t0, t1, t2, t3,
        IS_FLOAT=x.is_floating_point(), HAS_FAN=fan is not None, HAS_SUM=has_sum, STRIDED=strided,
        ROWS=rows_per_tile, BLOCK_C=block_c, num_warps=8,
    )
