"""Energy counters (``neurosim.energy``) for the spiking transformer layers that hold no arithmetic of their own.

* :class:`RandomSpikeMask`: a dropped spike is a synaptic failure and costs nothing; the layers reading the
  masked tensor count only the surviving spikes.
* :class:`SEWConnect`: ``"add"`` is an addition (counted like :class:`neurosim.layers.Add`); ``"and"`` /
  ``"iand"`` on spikes are logic gates, counted as no arithmetic.
"""
from __future__ import annotations

from neurosim.energy import Count, register_counter
from neurosim.energy.counters import count_add
from neurosim.layers import RandomSpikeMask, SEWConnect


def count_mask(module, args, output) -> Count:
    return Count(dense=0, note="spike masking: dropped spikes cost nothing")


def count_sew(module, args, output) -> Count:
    if module.fn == "add":
        return count_add(module.add, args, output)
    return Count(dense=0, note=f"SEW {module.fn.upper()}: logic on spikes, no arithmetic counted")


register_counter(RandomSpikeMask, count_mask, overwrite=True)
register_counter(SEWConnect, count_sew, overwrite=True)
