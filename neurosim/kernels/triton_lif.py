r"""Triton kernels for LIF / CubaLIF that run the whole time loop inside one kernel.

Layout: the input is viewed as ``[T, N]`` (``N`` = every neuron of every sample, contiguous); each program owns
``BLOCK`` neurons and walks time in chunks of ``K`` steps. A chunk is loaded as one ``[K, BLOCK]`` tile (all of
its loads in flight at once, the next chunk's tile requested before the current one is used) and whole rows of
that tile live in the registers of one thread, so picking step ``k`` out of the tile is a register move
(:func:`_row`: the row mask is a compile-time constant per register and the integer sum folds away).

Memory traffic. Forward: read ``x``, write spikes, and (only when gradients are needed) the state at the start of
every chunk, ``ceil(T/K)`` rows instead of ``T``. Backward: for each chunk, last to first, reload ``x`` and
recompute the ``K`` membrane values from the chunk's saved state into registers, then step back through them
with the incoming spike gradient, writing the input gradient. No membrane trace goes through memory unless the
caller asks for it (``return_mem``). The recomputation repeats the forward arithmetic operation for operation
and fp contraction is disabled, so it reproduces the forward bit for bit.

Per-parameter gradients (beta, threshold, alpha) are accumulated per neuron over time in registers and written
once (``[N]`` partials); the caller reduces them to the parameter's shape with torch.

The kernel functions are plain Python here; :func:`kernels` wraps them with ``triton.jit`` (GPU) or Triton's
interpreter (``interpret=True``: runs the same code on CPU tensors), so the choice does not depend on the
``TRITON_INTERPRET`` environment variable at import time.
"""
from __future__ import annotations

import functools
import types

import torch
import triton
import triton.language as tl

SURROGATE_CODES = {"fast_sigmoid": 0, "arctan": 1, "sigmoid": 2}
HALF_PI = 1.5707963267948966


def _fwd_kernel(
    x_ptr, s_ptr, tr_ptr, ckm_ptr, cki_ptr, m0_ptr, i0_ptr, mT_ptr, iT_ptr,
    beta_ptr, th_ptr, alpha_ptr, T, N,
    BETA_VEC: tl.constexpr, TH_VEC: tl.constexpr, ALPHA_VEC: tl.constexpr,
    CUBA: tl.constexpr, ZERO: tl.constexpr, HAS_STATE: tl.constexpr,
    WRITE_TRACE: tl.constexpr, WRITE_CK: tl.constexpr, K: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    z0 = pid * 0  # a scalar tensor zero: keeps loop indices tensors under the interpreter too
    cols = pid * BLOCK + tl.arange(0, BLOCK)
    tz = cols * 0  # per-lane time index base: "t < T" as a vector (the interpreter mishandles scalar masks)
    cmask = cols < N
    kk = tl.arange(0, K)
    b = tl.load(beta_ptr + cols * BETA_VEC, mask=cmask, other=0.0)
    b = tl.minimum(tl.maximum(b, 0.0), 1.0)
    th = tl.load(th_ptr + cols * TH_VEC, mask=cmask, other=1.0)
    a = b
    if CUBA:
        a = tl.load(alpha_ptr + cols * ALPHA_VEC, mask=cmask, other=0.0)
        a = tl.minimum(tl.maximum(a, 0.0), 1.0)
    if HAS_STATE:
        m = tl.load(m0_ptr + cols, mask=cmask, other=0.0)
        i = tl.load(i0_ptr + cols, mask=cmask, other=0.0) if CUBA else m
    else:
        m = tl.zeros([BLOCK], tl.float32)
        i = m
    n_chunks = tl.cdiv(T, K)
    rows = kk
    nxt = tl.load(x_ptr + rows.to(tl.int64)[:, None] * N + cols[None, :],
                  mask=(rows < T)[:, None] & cmask[None, :], other=0.0)
    for c in range(0, n_chunks):
        t0 = z0 + c * K
        cur = nxt
        rows = t0 + K + kk
        nxt = tl.load(x_ptr + rows.to(tl.int64)[:, None] * N + cols[None, :],
                      mask=(rows < T)[:, None] & cmask[None, :], other=0.0)
        if WRITE_CK:
            tl.store(ckm_ptr + tl.cast(c, tl.int64) * N + cols, m, mask=cmask)
            if CUBA:
                tl.store(cki_ptr + tl.cast(c, tl.int64) * N + cols, i, mask=cmask)
        xbits = cur.to(tl.float32).to(tl.int32, bitcast=True)
        for k in tl.static_range(K):
            xk = tl.sum(tl.where(kk[:, None] == k, xbits, 0), axis=0).to(tl.float32, bitcast=True)
            m_new, i_new = _step(m, i, xk, b, a, th, CUBA, ZERO)
            valid = (tz + t0 + k) < T
            m = tl.where(valid, m_new, m)
            if CUBA:
                i = tl.where(valid, i_new, i)
            offs = tl.cast(t0 + k, tl.int64) * N + cols
            tl.store(s_ptr + offs, tl.where(m > th, 1.0, 0.0).to(s_ptr.dtype.element_ty), mask=cmask & valid)
            if WRITE_TRACE:
                tl.store(tr_ptr + offs, m, mask=cmask & valid)
    tl.store(mT_ptr + cols, m, mask=cmask)
    if CUBA:
        tl.store(iT_ptr + cols, i, mask=cmask)


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


def _row(tile_bits, kk, k: tl.constexpr):
    return tl.sum(tl.where(kk[:, None] == k, tile_bits, 0), axis=0).to(tl.float32, bitcast=True)


def _bwd_kernel(
    x_ptr, gs_ptr, gtr_ptr, gx_ptr, ckm_ptr, cki_ptr, gmT_ptr, giT_ptr, gm0_ptr, gi0_ptr,
    gb_ptr, gth_ptr, ga_ptr, beta_ptr, th_ptr, alpha_ptr, slope, T, N,
    BETA_VEC: tl.constexpr, TH_VEC: tl.constexpr, ALPHA_VEC: tl.constexpr,
    CUBA: tl.constexpr, ZERO: tl.constexpr, DETACH: tl.constexpr, SURR: tl.constexpr,
    HAS_GTR: tl.constexpr, HAS_GFINAL: tl.constexpr,
    LEARN_B: tl.constexpr, LEARN_TH: tl.constexpr, LEARN_A: tl.constexpr,
    NEED_I: tl.constexpr, K: tl.constexpr, BLOCK: tl.constexpr,
):
    # NEED_I: keep the recomputed currents i_t (alpha gradient; CubaLIF zero reset without DETACH)
    pid = tl.program_id(0)
    z0 = pid * 0  # a scalar tensor zero: keeps loop indices tensors under the interpreter too
    cols = pid * BLOCK + tl.arange(0, BLOCK)
    tz = cols * 0  # per-lane time index base: "t < T" as a vector (the interpreter mishandles scalar masks)
    cmask = cols < N
    kk = tl.arange(0, K)
    b = tl.load(beta_ptr + cols * BETA_VEC, mask=cmask, other=0.0)
    b = tl.minimum(tl.maximum(b, 0.0), 1.0)
    th = tl.load(th_ptr + cols * TH_VEC, mask=cmask, other=1.0)
    a = b
    if CUBA:
        a = tl.load(alpha_ptr + cols * ALPHA_VEC, mask=cmask, other=0.0)
        a = tl.minimum(tl.maximum(a, 0.0), 1.0)
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
    rows = (n_chunks - 1) * K + kk
    tmask = (rows < T)[:, None] & cmask[None, :]
    toff = rows.to(tl.int64)[:, None] * N + cols[None, :]
    nx = tl.load(x_ptr + toff, mask=tmask, other=0.0)
    ngs = tl.load(gs_ptr + toff, mask=tmask, other=0.0)
    ngt = ngs
    if HAS_GTR:
        ngt = tl.load(gtr_ptr + toff, mask=tmask, other=0.0)
    for cc in range(0, n_chunks):
        c = n_chunks - 1 - cc
        t0 = z0 + c * K
        xt = nx
        gst = ngs
        gtt = ngt
        rows = t0 - K + kk
        tmask = ((rows >= 0) & (rows < T))[:, None] & cmask[None, :]
        toff = rows.to(tl.int64)[:, None] * N + cols[None, :]
        nx = tl.load(x_ptr + toff, mask=tmask, other=0.0)
        ngs = tl.load(gs_ptr + toff, mask=tmask, other=0.0)
        if HAS_GTR:
            ngt = tl.load(gtr_ptr + toff, mask=tmask, other=0.0)
        # recompute the chunk's membranes (and currents) from its saved start state
        m0 = tl.load(ckm_ptr + tl.cast(c, tl.int64) * N + cols, mask=cmask, other=0.0)
        i0 = zero
        if CUBA:
            i0 = tl.load(cki_ptr + tl.cast(c, tl.int64) * N + cols, mask=cmask, other=0.0)
        m = m0
        i = i0
        xbits = xt.to(tl.float32).to(tl.int32, bitcast=True)
        M = tl.zeros([K, BLOCK], tl.int32)
        I = M
        for k in tl.static_range(K):
            m, i = _step(m, i, _row(xbits, kk, k), b, a, th, CUBA, ZERO)
            M = tl.where(kk[:, None] == k, m.to(tl.int32, bitcast=True)[None, :], M)
            if NEED_I:
                I = tl.where(kk[:, None] == k, i.to(tl.int32, bitcast=True)[None, :], I)
        gbits = gst.to(tl.float32).to(tl.int32, bitcast=True)
        gtbits = gbits
        if HAS_GTR:
            gtbits = gtt.to(tl.float32).to(tl.int32, bitcast=True)
        # step back through the chunk
        for kr in tl.static_range(K):
            j = K - 1 - kr
            valid = (tz + t0 + j) < T
            m_cur = _row(M, kk, j)
            if j == 0:
                m_prev = m0
                i_prev = i0
            else:
                m_prev = _row(M, kk, j - 1)
                i_prev = i0
                if NEED_I:
                    i_prev = _row(I, kk, j - 1)
            g_s = _row(gbits, kk, j)
            h = _sg(m_cur - th, slope, SURR)
            gm = g_s * h + cm
            if HAS_GTR:
                gm = gm + _row(gtbits, kk, j)
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
                        pre = b * m_prev + _row(I, kk, j)  # the value the zero reset removed
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
            tl.store(gx_ptr + tl.cast(t0 + j, tl.int64) * N + cols, gi.to(gx_ptr.dtype.element_ty),
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


@functools.lru_cache(maxsize=None)
def kernels(interpret: bool = False):
    """``(forward, backward)`` kernels. ``interpret=True`` needs Triton's interpreter, which must be switched on
    (``TRITON_INTERPRET=1``) before ``triton`` is first imported: :func:`neurosim.kernels.lif` does that for
    ``NEUROSIM_TRITON_INTERPRET=1``."""
    if interpret != _stdlib_interpreted():
        raise RuntimeError(
            "the Triton interpreter is "
            + ("needed" if interpret else "active")
            + " but triton was imported "
            + ("without" if interpret else "with")
            + " TRITON_INTERPRET=1: set NEUROSIM_TRITON_INTERPRET=1 (CPU tensors, interpreter) or leave it unset "
            "(CUDA) in the environment before anything imports triton"
        )
    helpers = {name: triton.jit(globals()[name]) for name in ("_step", "_sg", "_row")}
    # N is not specialized on divisibility: with N % 16 == 0 known, Triton vectorizes the [K, BLOCK] tile loads
    # and (Triton 3.6) spreads the K rows over threads, so every row pick becomes shuffles and barriers (measured
    # ~15-30x the memory floor on an H200). Unspecialized, each thread holds whole rows: no shuffles, no barriers.
    jit = functools.partial(triton.jit, do_not_specialize=["T", "N"])
    out = []
    for fn in (_fwd_kernel, _bwd_kernel):
        # a copy of the kernel function whose globals see the jit-wrapped helpers under their own names
        clone = types.FunctionType(fn.__code__, dict(fn.__globals__, **helpers), fn.__name__, fn.__defaults__,
                                   fn.__closure__)
        functools.update_wrapper(clone, fn)
        out.append(jit(clone))
    return tuple(out)


def _stdlib_interpreted() -> bool:
    # triton.language's own jit functions (tl.sum, tl.cdiv, ...) are wrapped once, when triton is imported
    return type(tl.cdiv).__name__ == "InterpretedFunction"


def config(T: int, N: int, elem_size: int, interpret: bool = False):
    """``(K, VEC, num_warps)`` for a ``[T, N]`` problem; ``BLOCK = 32 * num_warps * VEC`` neurons a program.

    ``VEC`` neurons a thread (scalar loads, each warp reading 32 consecutive neurons of a row), every row of a
    ``[K, BLOCK]`` tile held by the thread that uses it. One neuron a thread and one-warp programs: the most
    threads and loads in flight. The environment variable
    ``NEUROSIM_FUSED_CONFIG="K,VEC,WARPS"`` overrides the choice (benchmark sweeps).
    """
    import os

    if interpret:
        return 4, 1, 1
    env = os.environ.get("NEUROSIM_FUSED_CONFIG")
    if env:
        k, vec, warps = (int(v) for v in env.split(","))
        return k, vec, warps
    # Chosen from the launch-config sweep of benchmarks/lif_kernels.py on an H200 (BENCHMARKS.md, issue 4):
    # K=8, one neuron a thread, one-warp programs was the best or within ~13% of the best at all three shapes
    # (T=500 x 65k neurons, T=16 x 4M neurons in fp32 and bf16); K=16 was 15-45% slower. More neurons a thread
    # (VEC > 1) makes the backward spill registers at K=16 (ptxas, sm_90).
    return 8, 1, 1


def launch_forward(x, state_m, state_i, beta, th, alpha, *, cuba, zero, write_trace, write_ck, interpret=False):
    """Run the forward kernel on ``x`` ``[T, N]`` (contiguous, fp32/bf16/fp16).

    ``state_m``/``state_i``: ``[N]`` fp32 initial state or ``None`` (zeros). ``beta``/``th``/``alpha``: fp32
    tensors with 1 or ``N`` elements. Returns ``spikes [T, N]`` (x's dtype), ``trace [T, N]`` fp32 or ``None``,
    final ``m``, ``i`` (``[N]`` fp32; ``i`` is ``None`` for LIF) and the chunk checkpoints ``(ckm, cki)`` or
    ``None`` (what :func:`launch_backward` needs), and the ``(K, VEC, num_warps)`` used.
    """
    T, N = x.shape
    K, VEC, warps = cfg = config(T, N, x.element_size(), interpret)
    BLOCK = 32 * warps * VEC
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
        mT, _or(iT, dummy), beta, th, _or(alpha, dummy), T, N,
        BETA_VEC=int(beta.numel() > 1), TH_VEC=int(th.numel() > 1), ALPHA_VEC=int(alpha is not None and alpha.numel() > 1),
        CUBA=cuba, ZERO=zero, HAS_STATE=state_m is not None, WRITE_TRACE=write_trace, WRITE_CK=write_ck,
        K=K, BLOCK=BLOCK, num_warps=warps, enable_fp_fusion=False,
    )
    return spikes, trace, mT, iT, (ckm, cki), cfg


def launch_backward(x, g_spikes, g_trace, g_mT, g_iT, ck, beta, th, alpha, *, cuba, zero, detach, surrogate,
                    slope, learn_beta, learn_th, learn_alpha, cfg, interpret=False):
    """Run the backward kernel; returns ``g_x`` (x's dtype), ``g_m0``, ``g_i0`` (``[N]`` fp32, ``g_i0`` ``None``
    for LIF) and per-neuron partial gradients of beta (of the clamped beta), threshold and alpha (``[N]`` or
    ``None`` where not learned). ``g_trace``, ``g_mT``, ``g_iT`` may be ``None`` (no gradient there). ``ck`` and
    ``cfg`` are what :func:`launch_forward` returned (the checkpoints are ``K`` steps apart)."""
    T, N = x.shape
    K, VEC, warps = cfg
    BLOCK = 32 * warps * VEC
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
        NEED_I=cuba and (learn_alpha or (zero and not detach)),
        K=K, BLOCK=BLOCK, num_warps=warps, enable_fp_fusion=False,
    )
    return gx, gm0, gi0, gb, gth, ga


def _or(t, default):
    return default if t is None else t
