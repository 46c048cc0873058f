"""The counters of ``torch.nn.MultiheadAttention`` and of the arithmetic ``nn.TransformerEncoderLayer`` /
``DecoderLayer`` run around their modules: an ANN transformer baseline is counted like the spiking models it is
compared with.

The module runs its steps inside one call (no child module is called), so its counter counts them all, from the
shapes of the call (``L`` query and ``S`` key tokens a sample, ``N`` samples, embedding ``E``, ``H`` heads,
``kdim`` / ``vdim`` the key and value widths):

* the input projections: ``N L E E`` for the query, ``N S kdim E`` for the key and ``N S vdim E`` for the value. A
  binary query is projected with SynOps (each spike x ``E``), and so are the key and value when they are the query
  tensor itself (self-attention, ``mha(x, x, x)``); any other key or value is counted as MACs;
* the scores ``q k^T``: ``N L S E`` MACs, and their scaling by ``1 / sqrt(E / H)``, one multiply per score
  (``N H L S``), as :class:`neurosim.layers.MatMul` counts a scale;
* the softmax over the ``S`` keys: :func:`neurosim.energy.elementwise.softmax_ops`;
* the weighted sum of the values: ``N L S E`` MACs; the output projection: ``N L E E`` MACs;
* the averaged attention weights, when returned (``need_weights=True, average_attn_weights=True``): ``H - 1``
  additions and one division per weight, ``N L S H`` MACs.

All of it but the spike-driven projections is in ``macs`` (the SNN does them as the ANN does) and in the layer's
``dense``. A learned bias key (``add_bias_kv``) and a zero key (``add_zero_attn``) each add one key to ``S``. A mask
given to the call (``attn_mask``, ``key_padding_mask``) is added to the scores: one addition per score, as ACs (in
the layer's ``dense_other``: the ANN adds it too). Biases and dropout are not counted.

A transformer layer's attention, linear, norm and dropout modules count themselves; its own forward adds the
residual connections (one addition per element of the layer's input, as ACs: two in an encoder layer, three in a
decoder layer) and applies the feed-forward activation when it is a function: ReLU compares (nothing counted), GELU
is one MAC per hidden element (the convention of :mod:`neurosim.energy.elementwise`; in the row's MACs and its
``dense_other``, while its ``dense`` holds the additions, priced as ACs), any other function is named in the row's
note as not counted; an activation module counts itself.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .counters import Count, register_counter, stats
from .elementwise import softmax_ops


def count_multihead_attention(module: nn.MultiheadAttention, args, output) -> Count:
    """See the module docstring; ``args``: the call's arguments in the order of ``forward``'s signature (query, key,
    value, key_padding_mask, ...: the meter binds keyword arguments to it)."""
    if len(args) < 3:
        raise ValueError(f"{type(module).__name__}: the counter needs the query, key and value as the call's first "
                         f"three arguments, got {len(args)} argument(s)")
    q, k, v = args[0], args[1], args[2]
    e, h = module.embed_dim, module.num_heads
    samples = 1 if q.dim() == 2 else q.shape[0 if module.batch_first else 1]
    n_q, n_k = q.numel() // e, k.numel() // module.kdim  # tokens over all samples
    length, keys = n_q // samples, n_k // samples
    keys += (module.bias_k is not None) + bool(module.add_zero_attn)  # (a learned and a zero key, value appended)
    from_query = 1 + (k is q) + (v is q)  # projections made from the query tensor (spike-driven when binary)
    fixed = ((0 if k is q else n_k * module.kdim * e) + (0 if v is q else n_k * module.vdim * e)
             + 2 * samples * length * keys * e  # scores, weighted values
             + samples * h * length * keys  # the scores' scaling
             + softmax_ops((samples * h, length, keys), -1)
             + n_q * e * e)  # output projection
    weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
    if weights is not None and weights.dim() == q.dim():  # averaged over the heads ([N, L, S] or [L, S])
        fixed += samples * length * keys * h
    # a mask (attn_mask, key_padding_mask: any tensor after the value) is added to the scores, one addition each
    mask_adds = samples * h * length * keys if any(isinstance(a, torch.Tensor) for a in args[3:]) else 0
    s = stats(q)
    return Count(dense=n_q * e * e * from_query, spike_input=s, spike_count=s.nnz * (e * from_query),
                 spike_kind="synops", macs=fixed, dense_also=fixed, acs=mask_adds, dense_also_acs=mask_adds,
                 note="multi-head attention: projections, scores, softmax, weighted values" +
                      (", the mask added to the scores (ACs)" if mask_adds else "") + " (biases not counted)")


def count_transformer_layer(module, args, output) -> Count:
    """The residual additions and the feed-forward activation of an ``nn.TransformerEncoderLayer`` or
    ``nn.TransformerDecoderLayer`` (see the module docstring); its modules count themselves."""
    x = args[0]
    adds = (3 if isinstance(module, nn.TransformerDecoderLayer) else 2) * x.numel()
    act, hidden = module.activation, x.numel() // module.linear1.in_features * module.linear1.out_features
    note = "residual additions (ACs); its modules count themselves"
    if isinstance(act, nn.Module) or act is F.relu:
        macs = 0  # (a module counts itself; ReLU compares)
    elif act is F.gelu:
        macs = hidden
        note += "; GELU: 1 MAC per hidden element"
    else:
        macs = 0
        note += f"; activation function {getattr(act, '__name__', act)!r} not counted (pass it as a module)"
    return Count(dense=adds, dense_is_mac=False, acs=adds, macs=macs, dense_also=macs, note=note)


register_counter(nn.MultiheadAttention, count_multihead_attention)
register_counter(nn.TransformerEncoderLayer, count_transformer_layer, own_ops=True)
register_counter(nn.TransformerDecoderLayer, count_transformer_layer, own_ops=True)
