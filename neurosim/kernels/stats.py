r"""One-read tensor statistics for the energy profiler (Triton; imported only when a kernel is launched).

:func:`launch` reads a tensor once and adds exact int64 counts to a row of the caller's buffer
(:func:`launch_many`: up to :data:`MAX_BATCH` tensors, each to its own row, in one launch):
``[nonzeros, elements equal to 1, non-finite elements, fan-weighted nonzeros, sum of round(x * inv_scale)]``
(the last two only when asked for). A strided view (e.g. a permuted slice such as attention's q, k, v) is read
in place through its collapsed sizes and strides, not copied; without a fan map, whose weights follow the logical
order, its dims are first put in storage order (attention's q, k transposed and v each become rows of one
token's features, one division an element; k transposed is read as k is). The fan map (optional) holds
one integer weight per position of the tensor's trailing ``C`` elements (``C = fan.numel()``): element ``i``
weighs ``fan[i % C]``, e.g. a conv input ``[N, Cin, H, W]`` with a ``[H, W]`` fan-out map.

Layout: each tensor's elements are read in that order in blocks of BLOCK; the blocks of all the tensors
of a launch are numbered one after the other and split into one run of consecutive blocks per program of a grid
of a few programs per multiprocessor. A program keeps per-lane counts in registers and, for each tensor its run
touched (one or two), adds its totals to that tensor's row with one integer atomic per column, so the result is
exact and independent of the schedule. Index arithmetic is 32-bit unless an index or storage offset needs more.
There is no host synchronisation and no allocation besides the caller's buffer. Batching tensors matters for
small ones, whose read is otherwise mostly launch, ramp and tail: 8 EST activations of 6 MB take 2.1 us a read
batched against 4.4 us one launch each on an H200 (BENCHMARKS.md, energy run 11). The atomics are relaxed: the
rows are read after the kernel ends, and a release fence at each would hold the program back.

As in :mod:`neurosim.kernels.triton_lif`, the kernels are plain Python functions wrapped by :func:`kernels` with
``triton.jit``; with ``interpret=True`` it runs in Triton's interpreter on CPU tensors (the tests), which must
have been chosen (``TRITON_INTERPRET=1``) before triton was imported.
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .runtime import check_mode, on_device_of, rebind, with_jit_helpers

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
    # a program's totals added to its row ``out`` (pointer to column 0): one integer atomic per column, relaxed
    # (no memory fence: nothing reads the row before the kernel ends)
    tl.atomic_add(out + 0, tl.sum(nz.to(tl.int64), axis=0), sem="relaxed")
    tl.atomic_add(out + 1, tl.sum(one.to(tl.int64), axis=0), sem="relaxed")
    if IS_FLOAT:
        tl.atomic_add(out + 2, tl.sum(bad.to(tl.int64), axis=0), sem="relaxed")
        if HAS_SUM:
            tl.atomic_add(out + 4, tl.sum(isum, axis=0), sem="relaxed")


def _tensor_counts(x_ptr, fan_ptr, out, lo, hi, n, c, inv_scale, s1, s2, s3, t0, t1, t2, t3,
                   IS_FLOAT: tl.constexpr, HAS_SUM: tl.constexpr, HAS_FAN: tl.constexpr, NDIMS: tl.constexpr,
                   IDX64: tl.constexpr, BLOCK: tl.constexpr):
    # one program's share of one tensor: blocks lo .. hi-1 (of BLOCK elements in logical order), its totals
    # added to the tensor's row ``out`` (pointer to column 0)
    lanes = tl.arange(0, BLOCK)
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
        # a view: its NDIMS (1 to 4) collapsed dims, the last ones of (s0, s1, s2, s3) / (t0, t1, t2, t3), give the
        # storage offset of the logical index; only the dims it has cost a division (size and modulus)
        if NDIMS == 0:
            offs = lin
        elif NDIMS == 1:
            offs = lin * t3
        elif NDIMS == 2:
            offs = (lin // s3) * t2 + (lin % s3) * t3
        elif NDIMS == 3:
            q = lin // s3
            offs = (q // s2) * t1 + (q % s2) * t2 + (lin % s3) * t3
        else:
            q = lin // s3
            r = q // s2
            offs = (r // s1) * t0 + (r % s1) * t1 + (q % s2) * t2 + (lin % s3) * t3
        v = tl.load(x_ptr + offs, mask=mask, other=0)
        nz, one, bad, isum = _block_counts(v, mask, inv_scale, IS_FLOAT, HAS_SUM)
        acc_nz += nz.to(tl.int32)
        acc_one += one
        acc_bad += bad
        acc_sum += isum
        if HAS_FAN == 1:  # element i weighs fan[i % C] (a small map: cached)
            f = tl.load(fan_ptr + lin % c, mask=mask & nz, other=0)
            acc_fan += f.to(tl.int64)
        elif HAS_FAN == 2:  # the map repeated to a multiple c of BLOCK elements: one modulus a block, not a lane
            if IDX64:
                f = tl.load(fan_ptr + (tl.cast(b, tl.int64) * BLOCK) % c + lanes, mask=mask & nz, other=0)
            else:
                f = tl.load(fan_ptr + (b * BLOCK) % c + lanes, mask=mask & nz, other=0)
            acc_fan += f.to(tl.int64)
    _add_row(out, acc_nz, acc_one, acc_bad, acc_sum, IS_FLOAT, HAS_SUM)
    if HAS_FAN:
        tl.atomic_add(out + 3, tl.sum(acc_fan, axis=0), sem="relaxed")


def _stats_kernel(x_ptr, fan_ptr, out_ptr, row, n, c, inv_scale, s1, s2, s3, t0, t1, t2, t3,
                  IS_FLOAT: tl.constexpr, HAS_SUM: tl.constexpr, HAS_FAN: tl.constexpr, NDIMS: tl.constexpr,
                  IDX64: tl.constexpr, BLOCK: tl.constexpr, NCOLS: tl.constexpr):
    # one tensor, plain arguments (a cheaper launch on the host than the tuples of _stats_many_kernel): each
    # program reads one run of consecutive blocks
    blocks = tl.cdiv(n, BLOCK)
    per = tl.cdiv(blocks, tl.num_programs(0))
    lo = tl.program_id(0) * per
    _tensor_counts(x_ptr, fan_ptr, out_ptr + row * NCOLS, lo, tl.minimum(lo + per, blocks), n, c, inv_scale,
                   s1, s2, s3, t0, t1, t2, t3, IS_FLOAT, HAS_SUM, HAS_FAN, NDIMS, IDX64, BLOCK)


def _stats_many_kernel(xs, fans, ns, cs, starts, rows, scales, dims, out_ptr, total,
                       FLOATS: tl.constexpr, SUMS: tl.constexpr, FANS: tl.constexpr, NDIMS: tl.constexpr,
                       IDX64: tl.constexpr, BLOCK: tl.constexpr, NCOLS: tl.constexpr):
    # The tensors xs[j] (tuples: pointers, fan maps, sizes, fan map sizes, first blocks, rows, scales, and 7 ints
    # of collapsed sizes / strides a tensor) in one launch; bit j of FLOATS / SUMS: tensor j is floating / has its
    # scaled sum counted; bits 2j, 2j+1 of FANS: its fan mode (_tensor_counts' HAS_FAN); bits 3j to 3j+2 of NDIMS:
    # its collapsed dims read through strides (0: contiguous). Their blocks are
    # numbered one after the other (tensor j's from starts[j] on, ``total`` in all) and each program reads one run
    # of consecutive blocks, so it touches one or two tensors and adds to their rows only.
    per = tl.cdiv(total, tl.num_programs(0))
    g0 = tl.program_id(0) * per
    g1 = tl.minimum(g0 + per, total)
    for j in tl.static_range(len(xs)):
        lo = tl.maximum(g0 - starts[j], 0)
        hi = tl.minimum(g1 - starts[j], tl.cdiv(ns[j], BLOCK))
        if lo < hi:
            _tensor_counts(xs[j], fans[j], out_ptr + rows[j] * NCOLS, lo, hi, ns[j], cs[j], scales[j],
                           dims[7 * j], dims[7 * j + 1], dims[7 * j + 2], dims[7 * j + 3], dims[7 * j + 4],
                           dims[7 * j + 5], dims[7 * j + 6], (FLOATS >> j) & 1, (SUMS >> j) & 1, (FANS >> (2 * j)) & 3,
                           (NDIMS >> (3 * j)) & 7, IDX64, BLOCK)


_HELPERS = ("_block_counts", "_add_row", "_tensor_counts")


@functools.lru_cache(maxsize=2)
def kernels(interpret: bool = False):
    """``(one tensor, several)``: the jit-wrapped kernels; ``interpret`` must match how triton was imported (see the
    module docstring)."""
    check_mode(interpret)
    ns = with_jit_helpers(globals(), _HELPERS)
    # sizes and strides stay specialised (a size of 1 folds away, and sizes divisible by 16 keep vector loads: a
    # 4-dim view read in 11.6 us against 19.4 us unspecialised on the H200, BENCHMARKS.md energy run 10); the row
    # is not (no recompile per row)
    return (triton.jit(rebind(_stats_kernel, ns), do_not_specialize=["row"]),
            triton.jit(rebind(_stats_many_kernel, ns)))


@functools.lru_cache(maxsize=8)
def _sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 0


def _programs(device: torch.device, blocks: int) -> int:
    """Programs for ``blocks`` steps of BLOCK elements: 4 a multiprocessor, 8 for reads past 32M elements (the
    fastest in sweeps on an H200, BENCHMARKS.md energy runs 9-10); 2 in the interpreter (it runs them in turn)."""
    sms = _sms(device)
    if not sms:
        return min(blocks, 2)
    return max(1, min(blocks, (8 if blocks * BLOCK > (1 << 25) else 4) * sms))


def collapse(x: torch.Tensor, any_order: bool = False) -> list:
    """``x``'s dims as (size, stride) pairs with size-1 dims dropped and dims that step through storage as one
    merged (row-major order kept): a contiguous tensor gives one pair with stride 1. ``any_order``: the dims are
    first sorted by stride, largest first (the storage order: a permuted view of a slice, such as attention's k
    transposed, then has the pairs of the slice itself), for a read whose counts do not depend on the order."""
    dims = [(sz, st) for sz, st in zip(x.shape, x.stride()) if sz != 1]
    if any_order:
        dims.sort(key=lambda d: -d[1])  # stable: dims of equal stride (only possible with stride 0) keep their order
    out: list = []
    for sz, st in dims:
        if out and out[-1][1] == st * sz:
            out[-1] = (out[-1][0] * sz, st)
        else:
            out.append((sz, st))
    return out or [(1, 1)]


def readable(x: torch.Tensor, any_order: bool = False) -> bool:
    """Whether :func:`launch` reads ``x`` in place (contiguous, or a view of at most MAX_DIMS collapsed dims;
    ``any_order``: in storage order, as it does without a fan map)."""
    return len(collapse(x, any_order)) <= MAX_DIMS


MAX_TILED = 1 << 20  # a fan map is repeated to a multiple of BLOCK elements when that takes at most this many
_TILED: dict = {}  # id(fan map) -> (map, its repetition or None)


def _tiled(fan: torch.Tensor):
    """``fan`` repeated to ``lcm(C, BLOCK)`` elements (so that a block's weights are consecutive from one offset:
    one modulus a block instead of one an element), or None when that would exceed MAX_TILED; cached by map."""
    hit = _TILED.get(id(fan))
    if hit is None or hit[0] is not fan:
        if len(_TILED) > 64:
            _TILED.clear()
        c = fan.numel()
        reps = BLOCK // math.gcd(c, BLOCK)
        hit = _TILED[id(fan)] = (fan, fan.repeat(reps) if reps == 1 or c * reps <= MAX_TILED else None)
    return hit[1]


def _prepare(x: torch.Tensor, out: torch.Tensor, fan, inv) -> tuple:
    """``(x as read, flags (float, sum, fan mode: 0 none, 1 fan[i % C], 2 a repeated map, collapsed dims read
    through strides: 0 when contiguous), scale, fan map as read, its size, 7 size/stride ints (constants when
    contiguous: fewer kernel specialisations), needs 64-bit indices)`` of one tensor for a kernel launch. Without a
    fan map the elements are read in storage order."""
    if x.device != out.device:
        raise ValueError(f"x must be on out's device {out.device}, got {x.device}")
    if x.dtype == torch.bool:
        x = x.view(torch.uint8)
    pairs = collapse(x, any_order=fan is None)
    ndims = 0 if len(pairs) == 1 and pairs[0][1] == 1 else len(pairs)
    if ndims > MAX_DIMS:
        raise ValueError(f"x must be contiguous or a view of at most {MAX_DIMS} collapsed dims; got shape "
                         f"{tuple(x.shape)}, strides {x.stride()}")
    span = 1 + sum((sz - 1) * st for sz, st in pairs)  # storage elements from the first one the view reads
    (_, t0), (s1, t1), (s2, t2), (s3, t3) = [(1, 0)] * (MAX_DIMS - len(pairs)) + pairs
    has_sum = inv is not None and x.is_floating_point()
    fan_mode = 0
    if fan is not None:
        tiled = _tiled(fan)
        fan_mode, fan = (1, fan) if tiled is None else (2, tiled)
    return (x, (x.is_floating_point(), has_sum, fan_mode, ndims), float(inv) if has_sum else 1.0, fan,
            fan.numel() if fan is not None else 1, (s1, s2, s3, t0, t1, t2, t3) if ndims else (1, 1, 1, 0, 0, 0, 0),
            max(x.numel(), span) + BLOCK >= IDX32_LIMIT)


def _check_out(out: torch.Tensor, row: int):
    if not (out.dtype == torch.int64 and out.is_contiguous() and out.numel() >= (row + 1) * COLS):
        raise ValueError(f"out must be a contiguous int64 buffer holding row {row} of {COLS} columns, got "
                         f"{out.dtype} of shape {tuple(out.shape)}")


class _Single(NamedTuple):
    """A :func:`launch` layout's arguments but the tensors, the row and the scale, and the kernel Triton compiled
    for it (:data:`_SINGLES`)."""
    source: object  # the fan map given (its identity is in the key; None: no map)
    fan: object  # the fan map as read (a repetition of it), or None
    has_sum: bool
    grid: int
    ints: tuple  # n, c
    dims: tuple  # the 7 collapsed sizes / strides
    consts: tuple  # _stats_kernel's constexprs, in order
    compiled: object


_SINGLES: dict = {}  # layout key -> _Single: single reads launched without Triton's argument binding (launch)
_SINGLE_CONSTEXPRS = ("IS_FLOAT", "HAS_SUM", "HAS_FAN", "NDIMS", "IDX64", "BLOCK", "NCOLS")


@on_device_of(1, "out")
def launch(x: torch.Tensor, out: torch.Tensor, fan: torch.Tensor | None = None, inv_scale: float | None = None,
           interpret: bool = False, row: int = 0):
    """Add the counts of ``x`` (contiguous, or any view for which :func:`readable` holds, with ``any_order``
    when there is no fan map) to row ``row`` of ``out`` (int64, contiguous ``[rows, COLS]``, or one row of
    ``COLS`` elements; zeroed by the caller).

    ``fan``: int32 contiguous weights with ``x.numel() % fan.numel() == 0``, on ``x``'s device, or None (the
    fan-weighted column is left untouched). ``inv_scale`` (floating ``x`` only): also add
    ``sum(round(x * inv_scale))`` over the finite elements, computed in float32, which is exact when every
    ``x`` is an integer ``p`` times ``1 / inv_scale`` rounded to ``x``'s dtype and ``p`` is small enough for that
    dtype (see :func:`neurosim.energy.counters.count_matmul`). bool tensors are read as bytes. How the kernel
    reads: the module docstring.

    The first launch of a layout (sizes, strides, dtype, device, fan map, scaled sum or not, the pointers'
    16-byte alignment) goes through Triton, which binds and specialises the arguments (most of a launch's host
    time); later launches of that layout call the kernel Triton compiled for it directly, as :func:`launch_plan`
    does for a plan.
    """
    n = x.numel()
    if n == 0:
        return
    _check_out(out, row)
    key = None
    if not interpret and _DIRECT:
        # what Triton specialised the compiled kernel on: sizes and strides (their values 1 and divisibility by 16),
        # dtypes, the fan map (a fixed tensor), whether a scaled sum is counted, the pointers' 16-byte alignment;
        # the row is not specialised (do_not_specialize) and the scale, a float, never is
        key = (x.shape, x.stride(), x.dtype, x.device, out.device, id(fan), inv_scale is None,
               x.data_ptr() % 16 == 0, out.data_ptr() % 16 == 0, IDX32_LIMIT)
        hit = _SINGLES.get(key)
        if hit is not None and hit.source is fan:
            if _direct(hit.compiled, hit.grid, (
                    x.view(torch.uint8) if x.dtype == torch.bool else x, out if hit.fan is None else hit.fan, out,
                    row, *hit.ints, float(inv_scale) if hit.has_sum else 1.0, *hit.dims, *hit.consts)):
                return
            key = None
    x, (is_float, has_sum, fan_mode, ndims), scale, fan_read, c, dims, idx64 = _prepare(x, out, fan, inv_scale)
    grid = _programs(out.device, triton.cdiv(n, BLOCK))
    consts = dict(IS_FLOAT=is_float, HAS_SUM=has_sum, HAS_FAN=fan_mode, NDIMS=ndims, IDX64=idx64, BLOCK=BLOCK,
                  NCOLS=COLS)
    compiled = kernels(interpret)[0][(grid,)](x, fan_read if fan_mode else out, out, row, n, c, scale, *dims,
                                               **consts, num_warps=8)
    if key is not None and compiled is not None and hasattr(compiled, "__getitem__"):
        if len(_SINGLES) >= 1024:
            _SINGLES.clear()
        _SINGLES[key] = _Single(fan, fan_read if fan_mode else None, has_sum, grid, (n, c), dims,
                                tuple(consts[k] for k in _SINGLE_CONSTEXPRS), compiled)


MAX_BATCH = 8  # tensors one launch_many call reads


def launch_many(xs: list, out: torch.Tensor, rows: list, inv_scales: list, fans: list | None = None,
                interpret: bool = False):
    """What :func:`launch` does for each tensor ``xs[j]`` (to row ``rows[j]``, with ``inv_scales[j]`` and
    ``fans[j]``; ``fans`` None: no fan maps), for up to :data:`MAX_BATCH` tensors on ``out``'s device, in one
    launch. Its tuple arguments cost the host more than :func:`launch`'s plain ones (about 115 us for 8 tensors
    against 26 us for one on the H200's host, BENCHMARKS.md energy run 10): it pays off in a CUDA graph, where
    the host launches nothing, and where the same reads repeat (:func:`plan_many` once, :func:`launch_plan` each
    time)."""
    plan = plan_many(xs, out, rows, inv_scales, fans)
    if plan is not None:
        launch_plan(plan, xs, out, interpret)


class Plan(NamedTuple):
    """A :func:`launch_many` call's arguments but the tensors themselves (:func:`plan_many`)."""
    which: tuple  # the positions of the non-empty tensors among those planned
    as_bytes: tuple  # for each: a bool tensor, read as uint8
    fans: tuple  # its fan map as read, or None
    ints: tuple  # the kernel's tuples of sizes, fan map sizes, first blocks, rows, scales and collapsed dims
    blocks: int
    grid: int
    consts: dict  # the kernel's constexprs and launch options
    compiled: list  # [Triton's compiled kernel, the pointers' alignments it was launched with] (or empty)


_CONSTEXPRS = ("FLOATS", "SUMS", "FANS", "NDIMS", "IDX64", "BLOCK", "NCOLS")  # _stats_many_kernel's, in order


def plan_many(xs: list, out: torch.Tensor, rows: list, inv_scales: list, fans: list | None = None) -> Plan | None:
    """The arguments of :func:`launch_many` for tensors laid out as ``xs`` (shape, strides, dtype, device), to be
    launched by :func:`launch_plan` on any tensors of those layouts, into any buffer shaped like ``out``; None
    when every tensor is empty."""
    fans = [None] * len(xs) if fans is None else fans
    if not 0 < len(xs) <= MAX_BATCH or not len(xs) == len(rows) == len(inv_scales) == len(fans):
        raise ValueError(f"xs, rows, inv_scales and fans must have the same length, 1 to {MAX_BATCH}; got "
                         f"{len(xs)}, {len(rows)}, {len(inv_scales)}, {len(fans)}")
    _check_out(out, max(rows))
    which, as_bytes, fan_ptrs, ns, cs, starts, row_ids, scales, dims = [], [], [], [], [], [], [], [], []
    bits = [0, 0, 0, 0]  # FLOATS, SUMS, FANS (2 bits a tensor), NDIMS (3 bits a tensor)
    blocks, idx64 = 0, False
    for i, (x, row, inv, fan) in enumerate(zip(xs, rows, inv_scales, fans)):
        n = x.numel()
        if n == 0:
            continue
        _, flags, scale, fan, c, d, wide = _prepare(x, out, fan, inv)
        j = len(which)
        bits = [b | (int(f) << (w * j)) for w, b, f in zip((1, 1, 2, 3), bits, flags)]
        idx64 |= wide
        which.append(i)
        as_bytes.append(x.dtype == torch.bool)
        fan_ptrs.append(fan)
        ns.append(n)
        cs.append(c)
        starts.append(blocks)
        row_ids.append(int(row))
        scales.append(scale)
        dims += d
        blocks += triton.cdiv(n, BLOCK)
    if not blocks:
        return None
    floats, sums, has_fan, ndims = bits
    return Plan(tuple(which), tuple(as_bytes), tuple(fan_ptrs), (tuple(ns), tuple(cs), tuple(starts),
                tuple(row_ids), tuple(scales), tuple(dims)), blocks, _programs(out.device, blocks),
                dict(FLOATS=floats, SUMS=sums, FANS=has_fan, NDIMS=ndims, IDX64=idx64, BLOCK=BLOCK, NCOLS=COLS,
                     num_warps=8), [])


@on_device_of(2, "out")
def launch_plan(plan: Plan, xs: list, out: torch.Tensor, interpret: bool = False):
    """Launch ``plan`` (:func:`plan_many`) on ``xs``, laid out as the tensors it was made for, into ``out``.

    Triton binds and specialises a launch's arguments anew each time (for 8 tensors in tuples, most of a launch's
    host time, BENCHMARKS.md energy run 15). A plan's sizes and dtypes are fixed, so after its first launch the
    kernel Triton compiled for it is launched directly, while the pointers keep the 16-byte alignment (what Triton
    specialises pointers on) they had then; otherwise through Triton again."""
    ptrs = tuple(xs[i].view(torch.uint8) if b else xs[i] for i, b in zip(plan.which, plan.as_bytes))
    fans = tuple(out if f is None else f for f in plan.fans)
    args = (ptrs, fans, *plan.ints, out, plan.blocks)
    key = None
    if not interpret and _DIRECT:  # (the fan maps are the plan's own tensors: their pointers do not change)
        key = tuple(t.data_ptr() % 16 == 0 for t in ptrs) + (out.data_ptr() % 16 == 0,)
        if plan.compiled and plan.compiled[1] == key:
            if _direct(plan.compiled[0], plan.grid, (*args, *(plan.consts[c] for c in _CONSTEXPRS))):
                return
            key = None
    compiled = kernels(interpret)[1][(plan.grid,)](*args, **plan.consts)
    if key is not None and compiled is not None and hasattr(compiled, "__getitem__"):
        plan.compiled[:] = [compiled, key]


def _direct(compiled, grid: int, args: tuple) -> bool:
    """Call ``compiled`` (a kernel Triton compiled) on ``grid`` programs with ``args`` (its arguments, then its
    constexprs, in order) without Triton's launcher. False when the call does not bind (a Triton whose compiled
    kernels take their arguments otherwise raises TypeError before launching anything): direct calls are then off
    for the process, with a warning, and the caller goes through Triton's launcher."""
    global _DIRECT
    try:
        compiled[(grid, 1, 1)](*args)
        return True
    except TypeError as exc:
        _DIRECT = False
        warnings.warn(f"neurosim: counting reads go through Triton's launcher from now on: this Triton's compiled "
                      f"kernels are called differently ({exc})", RuntimeWarning)
        return False


_DIRECT = True  # launch and launch_plan may call compiled kernels directly (off after a call that did not bind)
