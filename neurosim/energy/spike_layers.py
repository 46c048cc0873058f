"""Counters for neurosim's spiking layers that hold no arithmetic of their own (:mod:`neurosim.layers`).

They are core layers, so their counters are registered with the core (``import neurosim.energy``), not by
``neurosim.models``: a model built from :mod:`neurosim.layers` alone is counted the same whatever else was imported.

* :class:`~neurosim.layers.RandomSpikeMask`: a dropped spike is a synaptic failure and costs nothing; the layers
  reading the masked tensor count only the surviving spikes. The report states, for every mask, its ratio and mode
  and whether it masked in the profiled pass (mode ``"train"`` masks only in training mode; ``"always"`` at
  inference too), with the fraction of spikes it actually removed (its input vs output nonzeros).
* :class:`~neurosim.layers.SEWConnect`: ``"add"`` is an addition (counted like :class:`neurosim.layers.Add`);
  ``"and"`` / ``"iand"`` on spikes are logic gates, counted as no arithmetic.
"""
from __future__ import annotations

from ..layers import RandomSpikeMask, SEWConnect
from . import counters as C
from .counters import Count, count_add, register_counter


def count_mask(module: RandomSpikeMask, args, output) -> Count:
    # the summary compares the mask's input and output nonzeros: both are read, whatever the meter's ``rates``
    C.output_stats(output, rates_only=True)
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


def count_sew(module: SEWConnect, args, output) -> Count:
    if module.fn == "add":
        return count_add(module.add, args, output)
    return Count(dense=0, note=f"SEW {module.fn.upper()}: logic on spikes, no arithmetic counted")


register_counter(RandomSpikeMask, count_mask, summary=summarize_mask)
register_counter(SEWConnect, count_sew)
