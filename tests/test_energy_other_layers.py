"""neurosim.energy.other_layers: the rest of torch.nn's layers, counted against brute-force loops, the aten ops torch
runs, and the layers already counted that compute the same windows; and the coverage of torch.nn as a whole."""
import inspect
import itertools
import math

import pytest
import torch
from torch import nn

from aten_ops import own_elementwise_ops
from neurosim.energy import counters as C
from neurosim.energy import profile

CONTAINERS = {"Container", "Sequential", "ModuleList", "ModuleDict", "ParameterList", "ParameterDict", "DataParallel",
              "Transformer", "TransformerEncoder", "TransformerDecoder", "RNNCellBase"}  # (walked into, or abstract)


def spikes(*shape, p=0.4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) < p).float()


def row(module, *args, **kw):
    return profile(module, args if len(args) > 1 else args[0], batch_size=1, **kw).layers[0]


def test_every_torch_nn_layer_is_counted_free_or_walked_into():
    """A layer torch adds later fails here: it would be listed as "not counted" until it has a counter."""
    missing = []
    for name, cls in vars(nn).items():
        if not (inspect.isclass(cls) and issubclass(cls, nn.Module)) or cls is nn.Module:
            continue
        if name.endswith("Loss") or name.startswith("Lazy") or name in CONTAINERS or name == "NLLLoss2d":
            continue
        if not any(c in C._COUNTERS for c in cls.__mro__) and not issubclass(cls, C._ZERO_COST):
            missing.append(name)
    assert missing == []


def test_bilinear_real_and_spike_first_operand():
    m = nn.Bilinear(3, 4, 5)
    x1, x2 = torch.randn(2, 3, 3), torch.randn(2, 3, 4)
    outputs = 2 * 3 * 5
    r = row(m, x1, x2)
    assert r.macs == r.dense == outputs * (3 * 4 + 4) and r.synops == 0
    s = spikes(2, 3, 3)
    r = row(m, s, x2)
    # brute force: every (sample, output feature, spike of x1, element of x2) is one row-of-A_k addition
    brute = sum(int(s[t, b, i]) for t, b, i in itertools.product(range(2), range(3), range(3))) * 5 * 4
    assert r.synops == brute and r.macs == outputs * 4 and r.dense == outputs * (3 * 4 + 4) and r.in_spikes
    assert row(m, torch.zeros(2, 3, 3), x2).synops == 0  # silent input: no synaptic operation


@pytest.mark.parametrize("shapes, dim", [(((4, 6), (4, 6)), 1), (((4, 1, 6), (1, 3, 6)), -1), (((2, 5, 3), (2, 5, 3)), 1)])
def test_cosine_similarity_and_pairwise_distance(shapes, dim):
    a, b = (torch.randn(s) for s in shapes)
    full = torch.broadcast_shapes(*shapes)
    d = full[dim]
    outputs = math.prod(full) // d
    assert row(nn.CosineSimilarity(dim=dim), a, b).macs == outputs * (3 * d + 3)
    if dim == -1:  # (PairwiseDistance reduces the last dimension)
        assert row(nn.PairwiseDistance(), a, b).macs == outputs * d * 4


@pytest.mark.parametrize("size", [1, 3, 4])
def test_local_response_norm_against_the_aten_ops(size):
    """torch's element-wise ops plus the channel window's additions (its avg_pool3d sums ``size`` values, zero
    padding included; the division by ``size`` folds into ``alpha``): ``size + 4`` an element."""
    x = torch.randn(2, 5, 4, 3)
    ops, per_op = own_elementwise_ops(nn.LocalResponseNorm(size), x)
    assert per_op == {"mul": 2 * x.numel(), "add": x.numel(), "pow": x.numel(), "div": x.numel()}
    r = row(nn.LocalResponseNorm(size), x)
    assert r.macs == r.dense == ops + (size - 1) * x.numel() == (size + 4) * x.numel()
    assert row(nn.CrossMapLRN2d(size), x).macs == r.macs  # the same function, computed otherwise


@pytest.mark.parametrize("layer, avg, shape", [
    (nn.LPPool1d(2, 3, stride=1), nn.AvgPool1d(3, stride=1), (2, 3, 7)),
    (nn.LPPool2d(3, 2), nn.AvgPool2d(2), (2, 3, 5, 4)),
    (nn.LPPool2d(2, (2, 3), stride=(1, 2), ceil_mode=True), nn.AvgPool2d((2, 3), stride=(1, 2), ceil_mode=True),
     (1, 2, 5, 7)),
    (nn.LPPool3d(2, 2), nn.AvgPool3d(2), (1, 2, 4, 4, 5)),
])
def test_lp_pool_powers_and_window_sums(layer, avg, shape):
    """Powers and roots against the aten ``pow`` ops torch runs; window sums as the average pool of the same
    windows counts them (one AC per element and window holding it)."""
    # (non-negative: the odd power's root of a negative window sum is NaN, which the meter reports in the output)
    x = torch.randn(shape).abs()
    _, per_op = own_elementwise_ops(layer, x)
    r = row(layer, x)
    assert r.macs == per_op["pow"] == x.numel() + layer(x).numel()
    assert r.acs == r.dense == row(avg, x).dense > 0
    assert r.dense_other == r.macs  # (the same-shape ANN computes the powers too)


@pytest.mark.parametrize("layer, shape", [(nn.FractionalMaxPool2d(2, output_size=3), (2, 3, 7, 6)),
                                          (nn.FractionalMaxPool2d((2, 3), output_ratio=0.5), (1, 2, 8, 9)),
                                          (nn.FractionalMaxPool3d(2, output_size=(2, 3, 2)), (1, 2, 5, 6, 4))])
def test_fractional_max_pool_counts_every_window_element(layer, shape):
    x = torch.randn(shape)
    out = layer(x)
    assert row(layer, x).acs == out.numel() * math.prod(layer.kernel_size)


def _bag_reference(idx, offsets, mode, d, padding_idx=None, include_last=False, weighted=False):
    """(ACs, MACs) by a loop over the bags."""
    if idx.dim() == 2:
        bags = [list(r) for r in idx.tolist()]
    else:
        starts = offsets.tolist()[:-1] if include_last else offsets.tolist()
        ends = offsets.tolist()[1:] if include_last else offsets.tolist()[1:] + [idx.numel()]
        bags = [idx.tolist()[a:b] for a, b in zip(starts, ends)]
    adds = macs = 0
    for bag in bags:
        n = sum(1 for i in bag if i != padding_idx)
        if mode in ("sum", "mean") and n:
            adds += (n - 1) * d
            macs += d if mode == "mean" else 0
            macs += n * d if weighted else 0
    return adds, macs


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_bag_against_a_loop_over_the_bags(mode):
    torch.manual_seed(0)
    d = 3
    idx = torch.tensor([1, 2, 4, 5, 4, 3, 9, 0])
    offsets = torch.tensor([0, 2, 2, 7])  # an empty bag, a bag of one
    cases = [dict(args=(idx, offsets)), dict(args=(idx.view(2, 4),)),
             dict(args=(idx, offsets), padding_idx=4), dict(args=(idx, torch.tensor([0, 3, 8])), include_last=True)]
    if mode == "sum":
        cases.append(dict(args=(idx, offsets, torch.rand(idx.numel())), weighted=True))
    for case in cases:
        m = nn.EmbeddingBag(10, d, mode=mode, padding_idx=case.get("padding_idx"),
                            include_last_offset=case.get("include_last", False))
        args = case["args"]
        r = row(m, *args)
        adds, macs = _bag_reference(args[0], args[1] if len(args) > 1 else None, mode, d, case.get("padding_idx"),
                                    case.get("include_last", False), case.get("weighted", False))
        assert (r.acs, r.macs) == (adds, macs), case
        assert r.dense == adds and r.dense_other == macs


@pytest.mark.parametrize("out, k, kw", [((4, 4), 2, {}), ((5, 6), (2, 3), dict(stride=(1, 2), padding=1)),
                                        ((6, 6), 3, dict(dilation=2, stride=1)), ((4, 4), 2, dict(stride=2))])
def test_fold_adds_overlapping_patches(out, k, kw):
    """Against a loop over every block and tap: where a patch value lands, per output element."""
    fold = nn.Fold(out, k, **kw)
    kh, kw_ = (k, k) if isinstance(k, int) else k
    s = kw.get("stride", 1)
    sh, sw = (s, s) if isinstance(s, int) else s
    p = kw.get("padding", 0)
    ph, pw = (p, p) if isinstance(p, int) else p
    dl = kw.get("dilation", 1)
    bh = (out[0] + 2 * ph - dl * (kh - 1) - 1) // sh + 1
    bw = (out[1] + 2 * pw - dl * (kw_ - 1) - 1) // sw + 1
    hits = {}
    for i, j, a, b in itertools.product(range(bh), range(bw), range(kh), range(kw_)):
        r, c = i * sh - ph + a * dl, j * sw - pw + b * dl
        if 0 <= r < out[0] and 0 <= c < out[1]:
            hits[r, c] = hits.get((r, c), 0) + 1
    per_channel = sum(n - 1 for n in hits.values())
    channels, batch = 3, 2
    x = torch.randn(batch, channels * kh * kw_, bh * bw)
    r = row(fold, x)
    assert r.acs == r.dense == per_channel * channels * batch


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_counts_equal_the_cpu_ones():
    cases = [(nn.Bilinear(3, 4, 5), (spikes(2, 3, 3), torch.randn(2, 3, 4))),
             (nn.LPPool2d(2, 2), (torch.randn(2, 3, 5, 4),)),
             (nn.LocalResponseNorm(3), (torch.randn(2, 5, 4, 3),)),
             (nn.FractionalMaxPool2d(2, output_size=3), (torch.randn(2, 3, 7, 6),)),
             (nn.EmbeddingBag(10, 3, mode="mean", padding_idx=4), (torch.tensor([1, 2, 4, 5, 4, 3]), torch.tensor([0, 2, 2]))),
             (nn.Fold((5, 6), (2, 3), stride=(1, 2), padding=1), (torch.randn(2, 18, 18),)),
             (nn.CosineSimilarity(dim=-1), (torch.randn(4, 1, 6), torch.randn(1, 3, 6)))]
    for m, args in cases:
        cpu = row(m, *args)
        gpu = row(m.cuda(), *(a.cuda() for a in args))
        assert (gpu.synops, gpu.macs, gpu.acs, gpu.dense, gpu.dense_other) == (
            cpu.synops, cpu.macs, cpu.acs, cpu.dense, cpu.dense_other), type(m).__name__
