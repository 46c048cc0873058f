"""Energy counters (``neurosim.energy``) for the spiking transformer layers that hold no arithmetic of their own.

* :class:`RandomSpikeMask`: a dropped spike is a synaptic failure and costs nothing; the layers reading the
  masked tensor count only the surviving spikes. The report states, for every mask, its ratio and mode and
  whether it masked in the profiled pass (mode ``"train"`` masks only in training mode; ``"always"`` at
  inference too), with the fraction of spikes it actually removed (its input vs output nonzeros).
* :class:`SEWConnect`: ``"add"`` is an addition (counted like :class:`neurosim.layers.Add`); ``"and"`` /
  ``"iand"`` on spikes are logic gates, counted as no arithmetic.
* :class:`BTSPPlasticity`: its element-wise rule around its gates and outer product (which count themselves),
  as MACs (see :func:`count_btsp`).
* Position embeddings: one addition (AC) per element; the position code itself depends on parameters and
  buffers alone and is precomputed at inference.
"""
from __future__ import annotations

from neurosim.energy import Count, register_counter
from neurosim.energy import counters as C
from neurosim.energy.counters import count_add
from neurosim.layers import RandomSpikeMask, SEWConnect

from .btsp import BTSPPlasticity
from .btspformer import AsymmetricPositionEmbedding, SinusoidalPositionEmbedding


def count_mask(module, args, output) -> Count:
    # the summary compares the mask's input and output nonzeros: both are read, whatever the meter's ``rates``
    C.output_stats(output)
    return Count(dense=0, spike_input=C.stats(args[0]), note="spike masking: dropped spikes cost nothing",
                 info={"ratio": module.ratio, "mode": module.mode, "training": module.training,
                       "active": module.active})


def summarize_mask(row, infos: list) -> tuple[dict, str]:
    """``info`` and the report line of one :class:`RandomSpikeMask` (all its calls in the profiled pass)."""
    first = infos[0]
    active = sum(bool(i["active"]) for i in infos)
    training = sum(bool(i["training"]) for i in infos)
    masked = 1.0 - row.out_nnz / row.in_nnz if row.in_nnz else 0.0
    what = "spikes" if row.in_spikes else "nonzero inputs"
    info = {"rsm_ratio": first["ratio"], "rsm_mode": first["mode"], "active_calls": active, "calls": len(infos),
            "training_calls": training, "inputs_nonzero": row.in_nnz, "outputs_nonzero": row.out_nnz,
            "masked_fraction": masked}
    pass_kind = "training-mode" if training == len(infos) else "eval" if training == 0 else "mixed train/eval"
    head = f"RSM {row.name}: ratio {first['ratio']:g}, mode {first['mode']!r} -> "
    if active == 0:
        return info, head + f"inactive in this {pass_kind} pass (no spike masked)"
    part = "" if active == len(infos) else f" (active in {active} of {len(infos)} calls)"
    return info, head + (f"masked {100 * masked:.1f}% of {what} ({row.in_nnz - row.out_nnz:,} of {row.in_nnz:,}) "
                         f"in this {pass_kind} pass{part}")


def count_sew(module, args, output) -> Count:
    if module.fn == "add":
        return count_add(module.add, args, output)
    return Count(dense=0, note=f"SEW {module.fn.upper()}: logic on spikes, no arithmetic counted")


def count_btsp(module: BTSPPlasticity, args, output) -> Count:
    r"""The BTSP rule's own arithmetic on weights ``a [M, heads, n, n]`` from tokens ``x [M, n, dim]``: the
    sigmoids of the two gates (one per token and head each), the overlap's product by the time kernel, the
    update :math:`c\,(k_+(1-a) - k_- a)` (5 per weight), the new weight :math:`a + \Delta a` (1), and with
    ``renormalize`` the row sums (``n - 1`` additions a row) and a division per weight. The gates' Linear maps
    and the outer product count themselves; the kernel and the rates depend on parameters alone (folded at
    inference); the ``record`` statistics are diagnostics, not counted. A disabled rule costs nothing."""
    if not module.enabled:
        return Count(dense=0, note="BTSP plasticity disabled: no arithmetic")
    attn, x = args[0], args[1]
    renormalize = bool(args[2]) if len(args) > 2 else True
    weights, n = attn.numel(), attn.shape[-1]
    rows = weights // max(n, 1)
    ops = 2 * (x.numel() // x.shape[-1]) * module.heads + 7 * weights
    if renormalize:
        ops += rows * (n - 1) + weights
    return Count(dense=ops, macs=ops, note="BTSP rule: element-wise MACs around its gates and outer product")


def count_position(module, args, output) -> Count:
    n = args[0].numel()
    return Count(dense=n, dense_is_mac=False, acs=n,
                 note="1 addition per element (the position code is precomputed at inference)")


register_counter(RandomSpikeMask, count_mask, overwrite=True, summary=summarize_mask)
register_counter(SEWConnect, count_sew, overwrite=True)
register_counter(BTSPPlasticity, count_btsp, own_ops=True)
register_counter(AsymmetricPositionEmbedding, count_position)
register_counter(SinusoidalPositionEmbedding, count_position)
