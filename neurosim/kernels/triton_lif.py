r"""Triton kernels for LIF / CubaLIF that run the whole time loop inside one kernel.

Layout: the input is viewed as ``[T, N]`` (``N`` = every neuron of every sample, contiguous); each program owns
``BLOCK = 32 * warps * VEC`` neurons (``VEC`` consecutive neurons a thread: 16-byte loads and stores when ``N``
is a multiple of 16) and walks time in chunks of ``K`` steps. Every time step is one 1-D vector; a chunk's ``K``
loads are all issued before the first is used (:func:`_rows`, a tuple of vectors indexed by compile-time
constants, so they stay in registers).

Memory traffic. Forward: read ``x``, write spikes, and (only when gradients are needed) the state at the start of
every chunk, ``ceil(T/K)`` rows instead of ``T``. Backward: for each chunk, last to first, reload ``x`` and
recompute the ``K`` membrane values from the chunk's saved state into registers (:func:`_replay`), then step back
through them with the incoming spike gradient, writing the input gradient. No membrane trace goes through memory
unless the caller asks for it (``return_mem``). The recomputation repeats the forward arithmetic operation for
operation and fp contraction is disabled, so it reproduces the forward bit for bit. The forward also flags
NaN/inf inputs as it reads them (``CHECK``), so the layer's input check costs no extra pass over ``x``.

Per-parameter gradients (beta, threshold, alpha) are accumulated per neuron over time in registers and written
once (``[N]`` partials); the caller reduces them to the parameter's shape with torch.

The kernel functions are plain Python here; :func:`kernels` wraps them with ``triton.jit`` (GPU) or Triton's
interpreter (``interpret=True``: runs the same code on CPU tensors), so the choice does not depend on the
``TRITON_INTERPRET`` environment variable at import time.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ..spike_tally import SLOTS
from .runtime import check_mode, on_device_of, rebind, with_jit_helpers

SURROGATE_CODES = {"fast_sigmoid": 0, "arctan": 1, "sigmoid": 2}
HALF_PI = 1.5707963267948966


def _params(beta_ptr, th_ptr, alpha_ptr, cols, cmask, BETA_VEC: tl.constexpr, TH_VEC: tl.constexpr,
            ALPHA_VEC: tl.constexpr, CUBA: tl.constexpr):
    # beta and alpha clamped to [0, 1] as in neurosim.neurons.functional, a NaN kept as NaN as torch's clamp keeps
    # it (Triton's default min/max return the other operand: a NaN beta ran as 0); a 1-element parameter is broadcast
    b = tl.load(beta_ptr + cols * BETA_VEC, mask=cmask, other=0.0)
    b = tl.minimum(tl.maximum(b, 0.0, propagate_nan=tl.PropagateNan.ALL), 1.0, propagate_nan=tl.PropagateNan.ALL)
    th = tl.load(th_ptr + cols * TH_VEC, mask=cmask, other=1.0)
    a = b
    if CUBA:
        a = tl.load(alpha_ptr + cols * ALPHA_VEC, mask=cmask, other=0.0)
        a = tl.minimum(tl.maximum(a, 0.0, propagate_nan=tl.PropagateNan.ALL), 1.0, propagate_nan=tl.PropagateNan.ALL)
    return b, th, a


def _rows(ptr, t0, tz, cols, cmask, T, N, K: tl.constexpr):
    # the K rows t0 .. t0+K-1 of a [T, N] tensor as float32 vectors (zeros outside [0, T)), all loads issued
    # before any is used
    out = ()
    for k in tl.static_range(K):
        t = tz + t0 + k
        out = out + (tl.load(ptr + t.to(tl.int64) * N + cols, mask=cmask & (t >= 0) & (t < T),
                             other=0.0).to(tl.float32),)
    return out


def _replay(m, i, xs, b, a, th, CUBA: tl.constexpr, ZERO: tl.constexpr, K: tl.constexpr):
    # the K membranes, then the K currents, after each step of a chunk from the chunk's start state (one flat
    # tuple: Triton 3.6 does not index into a nested tuple returned by a jit function)
    ms = ()
    cur = ()
    for k in tl.static_range(K):
        m, i = _step(m, i, xs[k], b, a, th, CUBA, ZERO)
        ms = ms + (m,)
        cur = cur + (i,)
    return ms + cur


def _fwd_kernel(
    x_ptr, s_ptr, tr_ptr, ckm_ptr, cki_ptr, m0_ptr, i0_ptr, mT_ptr, iT_ptr, bad_ptr, cnt_ptr,
    beta_ptr, th_ptr, alpha_ptr, T, N,
    BETA_VEC: tl.constexpr, TH_VEC: tl.constexpr, ALPHA_VEC: tl.constexpr,
    CUBA: tl.constexpr, ZERO: tl.constexpr, HAS_STATE: tl.constexpr,
    WRITE_TRACE: tl.constexpr, WRITE_CK: tl.constexpr, CHECK: tl.constexpr, COUNT: tl.constexpr,
    SLOTS: tl.constexpr, K: tl.constexpr, BLOCK: tl.constexpr,
):
    # CHECK: set bad_ptr[0] to 1 when an input value is NaN or +-inf (no extra read of x for the input check)
    # COUNT: add the number of spikes this program wrote to cnt_ptr[pid % SLOTS] (int64; the count is the sum of
    # the SLOTS elements), so the spikes need no extra read to be counted
    pid = tl.program_id(0)
    z0 = pid * 0  # a scalar tensor zero: keeps loop indices tensors under the interpreter too
    cols = pid * BLOCK + tl.arange(0, BLOCK)
    tz = cols * 0  # per-lane time index base: "t < T" as a vector (the interpreter mishandles scalar masks)
    cmask = cols < N
    b, th, a = _params(beta_ptr, th_ptr, alpha_ptr, cols, cmask, BETA_VEC, TH_VEC, ALPHA_VEC, CUBA)
    if HAS_STATE:
        m = tl.load(m0_ptr + cols, mask=cmask, other=0.0)
        i = tl.load(i0_ptr + cols, mask=cmask, other=0.0) if CUBA else m
    else:
        m = tl.zeros([BLOCK], tl.float32)
        i = m
    bad = cols < 0  # all False
    n_spk = tl.zeros([BLOCK], tl.float32)  # spikes per lane (<= T: exact in float32 for T < 2**24)
    for c in range(0, tl.cdiv(T, K)):
        t0 = z0 + c * K
        if WRITE_CK:
            tl.store(ckm_ptr + tl.cast(c, tl.int64) * N + cols, m, mask=cmask)
            if CUBA:
                tl.store(cki_ptr + tl.cast(c, tl.int64) * N + cols, i, mask=cmask)
        xs = _rows(x_ptr, t0, tz, cols, cmask, T, N, K)
        if CHECK:
            for k in tl.static_range(K):
                bad = bad | (xs[k] != xs[k]) | (tl.abs(xs[k]) > 3.4028234663852886e38)
        for k in tl.static_range(K):
            t = tz + t0 + k
            valid = t < T
            m_new, i_new = _step(m, i, xs[k], b, a, th, CUBA, ZERO)
            m = tl.where(valid, m_new, m)
            if CUBA:
                i = tl.where(valid, i_new, i)
            offs = t.to(tl.int64) * N + cols
            spk = tl.where(m > th, 1.0, 0.0)
            tl.store(s_ptr + offs, spk.to(s_ptr.dtype.element_ty), mask=cmask & valid)
            if COUNT:  # the value just stored, on lanes that stored it
                n_spk += tl.where(cmask & valid, spk, 0.0)
            if WRITE_TRACE:
                tl.store(tr_ptr + offs, m, mask=cmask & valid)
    tl.store(mT_ptr + cols, m, mask=cmask)
    if CUBA:
        tl.store(iT_ptr + cols, i, mask=cmask)
    # the atomics are relaxed: nothing reads the flag or the count before the kernel ends, and the default
    # (acq_rel) would make each program wait for its spike stores before leaving (a release fence)
    if CHECK:
        tl.atomic_max(bad_ptr + tz, bad.to(tl.int32), mask=bad, sem="relaxed")  # only lanes that saw one
    if COUNT:
        tl.atomic_add(cnt_ptr + pid % SLOTS, tl.sum(n_spk.to(tl.int32), axis=0).to(tl.int64), sem="relaxed")


def _bwd_kernel(
    x_ptr, gs_ptr, gtr_ptr, gx_ptr, ckm_ptr, cki_ptr, gmT_ptr, giT_ptr, gm0_ptr, gi0_ptr,
    gb_ptr, gth_ptr, ga_ptr, beta_ptr, th_ptr, alpha_ptr, slope, T, N,
    BETA_VEC: tl.constexpr, TH_VEC: tl.constexpr, ALPHA_VEC: tl.constexpr,
    CUBA: tl.constexpr, ZERO: tl.constexpr, DETACH: tl.constexpr, SURR: tl.constexpr,
    HAS_GTR: tl.constexpr, HAS_GFINAL: tl.constexpr,
    LEARN_B: tl.constexpr, LEARN_TH: tl.constexpr, LEARN_A: tl.constexpr,
    K: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    z0 = pid * 0
    cols = pid * BLOCK + tl.arange(0, BLOCK)
    tz = cols * 0
    cmask = cols < N
    b, th, a = _params(beta_ptr, th_ptr, alpha_ptr, cols, cmask, BETA_VEC, TH_VEC, ALPHA_VEC, CUBA)
    zero = tl.zeros([BLOCK], tl.float32)
    if HAS_GFINAL:
        cm = tl.load(gmT_ptr + cols, mask=cmask, other=0.0)
        ci = tl.load(giT_ptr + cols, mask=cmask, other=0.0) if CUBA else zero
    else:
        cm = zero
        ci = zero
    acc_b = zero
    acc_th = zero
    acc_a = zero
    n_chunks = tl.cdiv(T, K)
    for cc in range(0, n_chunks):
        c = n_chunks - 1 - cc
        t0 = z0 + c * K
        xs = _rows(x_ptr, t0, tz, cols, cmask, T, N, K)
        gss = _rows(gs_ptr, t0, tz, cols, cmask, T, N, K)
        gts = gss
        if HAS_GTR:
            gts = _rows(gtr_ptr, t0, tz, cols, cmask, T, N, K)
        # recompute the chunk's membranes (and currents) from its saved start state, as the forward did
        m0 = tl.load(ckm_ptr + tl.cast(c, tl.int64) * N + cols, mask=cmask, other=0.0)
        i0 = zero
        if CUBA:
            i0 = tl.load(cki_ptr + tl.cast(c, tl.int64) * N + cols, mask=cmask, other=0.0)
        mi = _replay(m0, i0, xs, b, a, th, CUBA, ZERO, K)  # m_t at [k], i_t at [K + k]
        # step back through the chunk
        for j in tl.static_range(K - 1, -1, -1):  # (a name assigned from kr would not stay a constexpr)
            valid = (tz + t0 + j) < T
            m_cur = mi[j]
            if j == 0:
                m_prev = m0
                i_prev = i0
            else:
                m_prev = mi[j - 1]
                i_prev = mi[K + j - 1]
            g_s = gss[j]
            h = _sg(m_cur - th, slope, SURR)
            gm = g_s * h + cm
            if HAS_GTR:
                gm = gm + gts[j]
            d_th = -(g_s * h)
            r = (m_prev > th).to(tl.float32)
            # d m_t / d(m_{t-1}, i_t, beta, threshold); without DETACH the reset r_t = H(m_{t-1} - th) carries
            # the surrogate gradient hp = sg'(m_{t-1} - th) too
            if ZERO:
                gi = gm * (1.0 - r) + ci if CUBA else gm
                d_b = gm * (1.0 - r) * m_prev
                if CUBA:
                    cm_new = gm * ((1.0 - r) * b)
                else:
                    cm_new = gm * (b * (1.0 - r))
                if not DETACH:
                    hp = _sg(m_prev - th, slope, SURR)
                    if CUBA:
                        pre = b * m_prev + mi[K + j]  # the value the zero reset removed
                    else:
                        pre = b * m_prev
                    d_th += gm * hp * pre
                    cm_new -= gm * hp * pre
            else:
                gi = gm + ci if CUBA else gm
                d_b = gm * m_prev
                d_th -= gm * r
                cm_new = gm * b
                if not DETACH:
                    hp = _sg(m_prev - th, slope, SURR)
                    d_th += gm * th * hp
                    cm_new -= gm * th * hp
            tl.store(gx_ptr + (tz + t0 + j).to(tl.int64) * N + cols, gi.to(gx_ptr.dtype.element_ty),
                     mask=cmask & valid)
            cm = tl.where(valid, cm_new, cm)
            if CUBA:
                ci = tl.where(valid, gi * a, ci)
                if LEARN_A:
                    acc_a += tl.where(valid, gi * i_prev, 0.0)
            if LEARN_B:
                acc_b += tl.where(valid, d_b, 0.0)
            if LEARN_TH:
                acc_th += tl.where(valid, d_th, 0.0)
    tl.store(gm0_ptr + cols, cm, mask=cmask)
    if CUBA:
        tl.store(gi0_ptr + cols, ci, mask=cmask)
    if LEARN_B:
        tl.store(gb_ptr + cols, acc_b, mask=cmask)
    if LEARN_TH:
        tl.store(gth_ptr + cols, acc_th, mask=cmask)
    if LEARN_A:
        tl.store(ga_ptr + cols, acc_a, mask=cmask)


def _step(m, i, x, b, a, th, CUBA: tl.constexpr, ZERO: tl.constexpr):
    # Operation for operation the expressions of neurosim.neurons.functional (same rounding, no contraction).
    r = (m > th).to(tl.float32)
    if CUBA:
        i = a * i + x
        if ZERO:
            m = (1.0 - r) * (b * m + i)
        else:
            m = b * m + i - r * th
    else:
        if ZERO:
            m = b * (1.0 - r) * m + x
        else:
            m = b * m + x - r * th
    return m, i


def _sg(u, slope, SURR: tl.constexpr):
    # d spike / d u of the surrogates in neurosim.neurons.surrogate
    if SURR == 0:
        d = slope * tl.abs(u) + 1.0
        g = 1.0 / (d * d)
    elif SURR == 1:
        v = 1.5707963267948966 * slope * u
        g = (slope * 0.5) / (1.0 + v * v)
    else:
        s = tl.sigmoid(slope * u)
        g = slope * s * (1.0 - s)
    return g


class LaunchConfig(NamedTuple):
    """How a problem is launched: ``K`` time steps a chunk (the forward's checkpoints are ``K`` steps apart, so
    the backward uses the forward's ``K``) and, per pass, ``VEC`` neurons a thread and warps a program
    (``BLOCK = 32 * warps * VEC``)."""

    K: int
    fwd_vec: int
    fwd_warps: int
    bwd_vec: int
    bwd_warps: int


_HELPERS = ("_step", "_sg", "_params", "_rows", "_replay")


@functools.lru_cache(maxsize=None)
def kernels(interpret: bool = False):
    """``(forward, backward)`` kernels. ``interpret=True`` needs Triton's interpreter, which must be switched on
    (``TRITON_INTERPRET=1``) before ``triton`` is first imported: :func:`neurosim.kernels.lif` does that for
    ``NEUROSIM_TRITON_INTERPRET=1``."""
    check_mode(interpret)
    # copies of the kernel and helper functions whose globals see the jit-wrapped helpers under their own names
    ns = with_jit_helpers(globals(), _HELPERS)
    # T is not specialized (a new T needs no recompilation); N is, so that N % 16 == 0 gives 16-byte accesses
    jit = functools.partial(triton.jit, do_not_specialize=["T"])
    return tuple(jit(rebind(fn, ns)) for fn in (_fwd_kernel, _bwd_kernel))


def config(T: int, N: int, interpret: bool = False) -> LaunchConfig:
    """The :class:`LaunchConfig` for a ``[T, N]`` problem (``N`` = every neuron of the batch).

    ``NEUROSIM_FUSED_CONFIG="K,VEC,WARPS"`` (both passes) or ``"K,VEC,WARPS,BWD_VEC,BWD_WARPS"`` overrides the
    choice (benchmark sweeps).
    """
    import os

    if interpret:
        return LaunchConfig(4, 1, 1, 1, 1)
    env = os.environ.get("NEUROSIM_FUSED_CONFIG")
    if env:
        v = [int(p) for p in env.split(",")]
        if len(v) == 3:
            v += v[1:]
        return LaunchConfig(*v)
    # From the launch-config sweeps on an H200 (BENCHMARKS.md, issue 4, runs 6-7; device time of fwd+bwd): K=16;
    # one neuron a thread in 8-warp programs while the neurons alone barely fill the GPU (65k neurons), two
    # neurons a thread (8-byte fp32 accesses) in 4-warp programs once there are millions; 4 a thread was 10-15%
    # slower in fp32 and 2x slower at 65k neurons.
    vec = 2 if N >= (1 << 20) else 1
    return LaunchConfig(16, vec, 4 if vec == 2 else 8, vec, 4 if vec == 2 else 8)


@on_device_of(0, "x")
def launch_forward(x, state_m, state_i, beta, th, alpha, *, cuba, zero, write_trace, write_ck, bad=None,
                   count=None, interpret=False):
    """Run the forward kernel on ``x`` ``[T, N]`` (contiguous, fp32/bf16/fp16).

    ``state_m``/``state_i``: ``[N]`` fp32 initial state or ``None`` (zeros). ``beta``/``th``/``alpha``: fp32
    tensors with 1 or ``N`` elements. Returns ``spikes [T, N]`` (x's dtype), ``trace [T, N]`` fp32 or ``None``,
    final ``m``, ``i`` (``[N]`` fp32; ``i`` is ``None`` for LIF) and the chunk checkpoints ``(ckm, cki)`` or
    ``None`` (what :func:`launch_backward` needs), and the :class:`LaunchConfig` used. ``bad``: an int32
    tensor of one element, zero, that the kernel sets to 1 when ``x`` holds a NaN or inf (``None``: no check).
    ``count``: an int64 tensor of ``SLOTS`` (:data:`neurosim.spike_tally.SLOTS`) elements on ``x``'s device; the
    kernel adds the number of spikes it wrote, spread over them (the count is their sum; ``None``: not counted).
    """
    T, N = x.shape
    cfg = config(T, N, interpret)
    K = cfg.K
    BLOCK = 32 * cfg.fwd_warps * cfg.fwd_vec
    dev = x.device
    f32 = dict(device=dev, dtype=torch.float32)
    dummy = torch.empty(1, **f32)
    spikes = torch.empty_like(x)
    trace = torch.empty(T, N, **f32) if write_trace else None
    n_chunks = triton.cdiv(T, K)
    ckm = torch.empty(n_chunks, N, **f32) if write_ck else None
    cki = torch.empty(n_chunks, N, **f32) if write_ck and cuba else None
    mT = torch.empty(N, **f32)
    iT = torch.empty(N, **f32) if cuba else None
    fwd, _ = kernels(interpret)
    fwd[(triton.cdiv(N, BLOCK),)](
        x, spikes, _or(trace, dummy), _or(ckm, dummy), _or(cki, dummy), _or(state_m, dummy), _or(state_i, dummy),
        mT, _or(iT, dummy), _or(bad, dummy), _or(count, dummy), beta, th, _or(alpha, dummy), T, N,
        BETA_VEC=int(beta.numel() > 1), TH_VEC=int(th.numel() > 1), ALPHA_VEC=int(alpha is not None and alpha.numel() > 1),
        CUBA=cuba, ZERO=zero, HAS_STATE=state_m is not None, WRITE_TRACE=write_trace, WRITE_CK=write_ck,
        CHECK=bad is not None, COUNT=count is not None, SLOTS=SLOTS, K=K, BLOCK=BLOCK, num_warps=cfg.fwd_warps,
        enable_fp_fusion=False,
    )
    return spikes, trace, mT, iT, (ckm, cki), cfg


@on_device_of(0, "x")
def launch_backward(x, g_spikes, g_trace, g_mT, g_iT, ck, beta, th, alpha, *, cuba, zero, detach, surrogate,
                    slope, learn_beta, learn_th, learn_alpha, cfg, interpret=False):
    """Run the backward kernel; returns ``g_x`` (x's dtype), ``g_m0``, ``g_i0`` (``[N]`` fp32, ``g_i0`` ``None``
    for LIF) and per-neuron partial gradients of beta (of the clamped beta), threshold and alpha (``[N]`` or
    ``None`` where not learned). ``g_trace``, ``g_mT``, ``g_iT`` may be ``None`` (no gradient there). ``ck`` and
    ``cfg`` are what :func:`launch_forward` returned (the checkpoints are ``cfg.K`` steps apart)."""
    T, N = x.shape
    K = cfg.K
    BLOCK = 32 * cfg.bwd_warps * cfg.bwd_vec
    f32 = dict(device=x.device, dtype=torch.float32)
    dummy = torch.empty(1, **f32)
    gx = torch.empty_like(x)
    gm0 = torch.empty(N, **f32)
    gi0 = torch.empty(N, **f32) if cuba else None
    gb = torch.empty(N, **f32) if learn_beta else None
    gth = torch.empty(N, **f32) if learn_th else None
    ga = torch.empty(N, **f32) if learn_alpha else None
    has_gfinal = g_mT is not None or g_iT is not None
    if has_gfinal:
        g_mT = torch.zeros(N, **f32) if g_mT is None else g_mT
        g_iT = (torch.zeros(N, **f32) if g_iT is None else g_iT) if cuba else None
    ckm, cki = ck
    _, bwd = kernels(interpret)
    bwd[(triton.cdiv(N, BLOCK),)](
        x, g_spikes, _or(g_trace, dummy), gx, ckm, _or(cki, dummy), _or(g_mT, dummy), _or(g_iT, dummy),
        gm0, _or(gi0, dummy), _or(gb, dummy), _or(gth, dummy), _or(ga, dummy), beta, th, _or(alpha, dummy),
        float(slope), T, N,
        BETA_VEC=int(beta.numel() > 1), TH_VEC=int(th.numel() > 1), ALPHA_VEC=int(alpha is not None and alpha.numel() > 1),
        CUBA=cuba, ZERO=zero, DETACH=detach, SURR=SURROGATE_CODES[surrogate],
        HAS_GTR=g_trace is not None, HAS_GFINAL=has_gfinal,
        LEARN_B=learn_beta, LEARN_TH=learn_th, LEARN_A=learn_alpha,
        K=K, BLOCK=BLOCK, num_warps=cfg.bwd_warps, enable_fp_fusion=False,
    )
    return gx, gm0, gi0, gb, gth, ga


def _or(t, default):
    return default if t is None else t
