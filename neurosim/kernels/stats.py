r"""One-read tensor statistics for the energy profiler (Triton; imported only when a kernel is launched).

:func:`launch` reads a tensor once and adds exact int64 counts to a row of the caller's buffer
(:func:`launch_many`: up to :data:`MAX_BATCH` tensors, each to its own row, in one launch):
``[nonzeros, elements equal to 1, non-finite elements, fan-weighted nonzeros, sum of round(x * inv_scale)]``
(the last two only when asked for). A strided view (e.g. a permuted slice such as attention's q, k, v) is read
in place through its collapsed sizes and strides, not copied. The fan map (optional) holds
one integer weight per position of the tensor's trailing ``C`` elements (``C = fan.numel()``): element ``i``
weighs ``fan[i % C]``, e.g. a conv input ``[N, Cin, H, W]`` with a ``[H, W]`` fan-out map.

Layout: each tensor's elements are read in their logical order in blocks of BLOCK; the blocks of all the tensors
of a launch are numbered one after the other and split into one run of consecutive blocks per program of a grid
of a few programs per multiprocessor. A program keeps per-lane counts in registers and, for each tensor its run
touched (one or two), adds its totals to that tensor's row with one integer atomic per column, so the result is
exact and independent of the schedule. Index arithmetic is 32-bit unless an index or storage offset needs more.
There is no host synchronisation and no allocation besides the caller's buffer. Batching tensors matters for
small ones, whose read is otherwise mostly launch, ramp and tail: 8 EST activations of 6 MB take 2.3 us a read
batched against 6.0 us one launch each on an H200 (BENCHMARKS.md, energy run 10).

As in :mod:`neurosim.kernels.triton_lif`, the kernel is a plain Python function wrapped by :func:`kernel` with
``triton.jit``; with ``interpret=True`` it runs in Triton's interpreter on CPU tensors (the tests), which must
have been chosen (``TRITON_INTERPRET=1``) before triton was imported.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .runtime import check_mode, rebind, with_jit_helpers

BLOCK = 1024  # elements a program reads per step (4 a thread in 8 warps)
COLS = 5  # nnz, ones, non-finite, fan-weighted nnz, sum of round(x * inv_scale)
MAX_DIMS = 4  # a strided view is read in place when its dims collapse to at most this many
IDX32_LIMIT = 2 ** 31  # indices and storage offsets below this are computed in 32 bits (tests lower it)


def _block_counts(v, mask, inv_scale, IS_FLOAT: tl.constexpr, HAS_SUM: tl.constexpr):
    # per-lane counts of one block of loaded values (padding lanes loaded as 0): nonzero (bool), equal to 1,
    # non-finite, round(v * inv_scale) where finite (int32, int32, int64; zeros where not asked for)
    nz = v != 0
    one = (v == 1).to(tl.int32)
    bad = tl.zeros(v.shape, tl.int32)
    isum = tl.zeros(v.shape, tl.int64)
    if IS_FLOAT:
        # NaN fails every comparison and |inf| < inf is false: the non-finite elements (0 for padding lanes)
        ok = tl.abs(v) < float("inf")
        bad = (~ok & mask).to(tl.int32)
        if HAS_SUM:  # exact integer products recovered from a scaled result (see launch)
            isum = tl.where(ok, tl.floor(v.to(tl.float32) * inv_scale + 0.5), 0.0).to(tl.int64)
    return nz, one, bad, isum


def _add_row(out, nz, one, bad, isum, IS_FLOAT: tl.constexpr, HAS_SUM: tl.constexpr):
    # a program's totals added to its row ``out`` (pointer to column 0): one integer atomic per column
    tl.atomic_add(out + 0, tl.sum(nz.to(tl.int64), axis=0))
    tl.atomic_add(out + 1, tl.sum(one.to(tl.int64), axis=0))
    if IS_FLOAT:
        tl.atomic_add(out + 2, tl.sum(bad.to(tl.int64), axis=0))
        if HAS_SUM:
            tl.atomic_add(out + 4, tl.sum(isum, axis=0))


def _stats_kernel(xs, fans, ns, cs, starts, rows, scales, dims, out_ptr, total,
                  FLOATS: tl.constexpr, SUMS: tl.constexpr, FANS: tl.constexpr, STRIDED: tl.constexpr,
                  IDX64: tl.constexpr, BLOCK: tl.constexpr, NCOLS: tl.constexpr):
    # The counts of the tensors xs[j] (tuples: pointers, fan maps, sizes, fan map sizes, first blocks, rows,
    # scales, and 7 ints of collapsed sizes / strides a tensor) in one launch; bit j of FLOATS / SUMS / FANS /
    # STRIDED: tensor j is floating / has its scaled sum counted / has a fan map / is read through its strides.
    # Their blocks are numbered one after the other (tensor j's from starts[j] on, ``total`` in all) and each
    # program reads one run of consecutive blocks, so it touches one or two tensors and adds to their rows only.
    pid = tl.program_id(0)
    per = tl.cdiv(total, tl.num_programs(0))
    g0 = pid * per
    g1 = tl.minimum(g0 + per, total)
    lanes = tl.arange(0, BLOCK)
    for j in tl.static_range(len(xs)):
        n = ns[j]
        lo = tl.maximum(g0 - starts[j], 0)
        hi = tl.minimum(g1 - starts[j], tl.cdiv(n, BLOCK))
        if lo < hi:
            acc_nz = tl.zeros([BLOCK], tl.int32)
            acc_one = tl.zeros([BLOCK], tl.int32)
            acc_bad = tl.zeros([BLOCK], tl.int32)
            acc_fan = tl.zeros([BLOCK], tl.int64)
            acc_sum = tl.zeros([BLOCK], tl.int64)
            for b in range(lo, hi):
                if IDX64:  # element indices or storage offsets past 2**31 - 1
                    lin = tl.cast(b, tl.int64) * BLOCK + lanes
                else:  # 32-bit index arithmetic (the strided path's divisions cost far less)
                    lin = b * BLOCK + lanes
                mask = lin < n
                if (STRIDED >> j) & 1:  # a view: its (up to 4) collapsed dims give the storage offset of lin
                    i3 = lin % dims[7 * j + 2]
                    q = lin // dims[7 * j + 2]
                    i2 = q % dims[7 * j + 1]
                    q = q // dims[7 * j + 1]
                    offs = ((q // dims[7 * j]) * dims[7 * j + 3] + (q % dims[7 * j]) * dims[7 * j + 4]
                            + i2 * dims[7 * j + 5] + i3 * dims[7 * j + 6])
                else:
                    offs = lin
                v = tl.load(xs[j] + offs, mask=mask, other=0)
                nz, one, bad, isum = _block_counts(v, mask, scales[j], (FLOATS >> j) & 1, (SUMS >> j) & 1)
                acc_nz += nz.to(tl.int32)
                acc_one += one
                acc_bad += bad
                acc_sum += isum
                if (FANS >> j) & 1:  # element i weighs fan[i % C] (a small map: cached)
                    f = tl.load(fans[j] + lin % cs[j], mask=mask & nz, other=0)
                    acc_fan += f.to(tl.int64)
            out = out_ptr + rows[j] * NCOLS
            _add_row(out, acc_nz, acc_one, acc_bad, acc_sum, (FLOATS >> j) & 1, (SUMS >> j) & 1)
            if (FANS >> j) & 1:
                tl.atomic_add(out + 3, tl.sum(acc_fan, axis=0))


_HELPERS = ("_block_counts", "_add_row")


@functools.lru_cache(maxsize=2)
def kernel(interpret: bool = False):
    """The jit-wrapped kernel; ``interpret`` must match how triton was imported (see the module docstring)."""
    check_mode(interpret)
    return triton.jit(rebind(_stats_kernel, with_jit_helpers(globals(), _HELPERS)))


@functools.lru_cache(maxsize=8)
def _sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 0


def _programs(device: torch.device, blocks: int) -> int:
    """Programs for ``blocks`` steps of BLOCK elements: 4 a multiprocessor, 8 for tensors past 32M elements (the
    fastest in sweeps on an H200, BENCHMARKS.md energy runs 9-10); 2 in the interpreter (it runs them in turn)."""
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
    launch_many([x], out, [row], [inv_scale], [fan], interpret=interpret)


MAX_BATCH = 8  # tensors one launch_many call reads


def launch_many(xs: list, out: torch.Tensor, rows: list, inv_scales: list, fans: list | None = None,
                interpret: bool = False):
    """What :func:`launch` does for each tensor ``xs[j]`` (to row ``rows[j]``, with ``inv_scales[j]`` and
    ``fans[j]``; ``fans`` None: no fan maps), for up to :data:`MAX_BATCH` tensors on ``out``'s device, in one
    launch."""
    fans = [None] * len(xs) if fans is None else fans
    if not 0 < len(xs) <= MAX_BATCH or not len(xs) == len(rows) == len(inv_scales) == len(fans):
        raise ValueError(f"xs, rows, inv_scales and fans must have the same length, 1 to {MAX_BATCH}; got "
                         f"{len(xs)}, {len(rows)}, {len(inv_scales)}, {len(fans)}")
    last = max(rows)
    if not (out.dtype == torch.int64 and out.is_contiguous() and out.numel() >= (last + 1) * COLS):
        raise ValueError(f"out must be a contiguous int64 buffer holding row {last} of {COLS} columns, got "
                         f"{out.dtype} of shape {tuple(out.shape)}")
    args = {k: [] for k in ("xs", "fans", "ns", "cs", "starts", "rows", "scales", "dims")}
    bits = dict(FLOATS=0, SUMS=0, FANS=0, STRIDED=0)
    blocks, idx64 = 0, False
    for x, row, inv, fan in zip(xs, rows, inv_scales, fans):
        n = x.numel()
        if n == 0:
            continue
        if x.device != out.device:
            raise ValueError(f"xs: every tensor must be on out's device {out.device}, got {x.device}")
        if x.dtype == torch.bool:
            x = x.view(torch.uint8)
        dims = collapse(x)
        strided = not (len(dims) == 1 and dims[0][1] == 1)
        if strided and len(dims) > MAX_DIMS:
            raise ValueError(f"x must be contiguous or a view of at most {MAX_DIMS} collapsed dims; got shape "
                             f"{tuple(x.shape)}, strides {x.stride()}")
        span = 1 + sum((sz - 1) * st for sz, st in dims)  # storage elements from the first one the view reads
        idx64 |= max(n, span) + BLOCK >= IDX32_LIMIT
        dims = [(1, 0)] * (MAX_DIMS - len(dims)) + dims
        (_, t0), (s1, t1), (s2, t2), (s3, t3) = dims
        j = len(args["xs"])
        has_sum = inv is not None and x.is_floating_point()
        for name, flag in (("FLOATS", x.is_floating_point()), ("SUMS", has_sum), ("FANS", fan is not None),
                           ("STRIDED", strided)):
            bits[name] |= int(flag) << j
        for name, v in (("xs", x), ("fans", fan if fan is not None else out), ("ns", n),
                        ("cs", fan.numel() if fan is not None else 1), ("starts", blocks), ("rows", int(row)),
                        ("scales", float(inv) if has_sum else 1.0)):
            args[name].append(v)
        args["dims"] += [s1, s2, s3, t0, t1, t2, t3] if strided else [1, 1, 1, 0, 0, 0, 0]
        blocks += triton.cdiv(n, BLOCK)
    if not blocks:
        return
    kernel(interpret)[(_programs(out.device, blocks),)](
        *(tuple(args[k]) for k in ("xs", "fans", "ns", "cs", "starts", "rows", "scales", "dims")), out, blocks,
        **bits, IDX64=idx64, BLOCK=BLOCK, NCOLS=COLS, num_warps=8,
    )
