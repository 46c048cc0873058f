"""Energy counters (``neurosim.energy``) for the layers defined in ``neurosim.models``.

Only layers of this package belong here: the counters of core layers (:mod:`neurosim.layers`, e.g.
``RandomSpikeMask`` and ``SEWConnect``) live in the core (:mod:`neurosim.energy.spike_layers`), so that they count
without ``import neurosim.models``.

* :class:`BTSPPlasticity`: its element-wise rule around its gates and outer product (which count themselves),
  as MACs (see :func:`count_btsp`).
* Position embeddings: one addition (AC) per element; the position code itself depends on parameters and
  buffers alone and is precomputed at inference.
"""
from __future__ import annotations

from neurosim.energy import Count, register_counter

from .btsp import BTSPPlasticity
from .btspformer import AsymmetricPositionEmbedding, SinusoidalPositionEmbedding


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


register_counter(BTSPPlasticity, count_btsp, own_ops=True)
register_counter(AsymmetricPositionEmbedding, count_position)
register_counter(SinusoidalPositionEmbedding, count_position)
