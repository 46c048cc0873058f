"""The meter's memory of counted tensors (neurosim.energy.stats_cache): no tensor read twice in a forward, however
far apart its uses, no activation kept alive, no stale row for an address that now holds other values."""
import gc
import weakref

import torch
from torch import nn

import neurosim
from neurosim.energy import stats_cache
from neurosim.energy.device_counts import CountBuffer
from neurosim.layers import Add, MatMul
from test_energy_kernel import _reads


def _profile_reads(model, x):
    """The report and the tensors counted, as (first address, shape, strides)."""
    return _reads(model, x, record=lambda t, fan: (t.data_ptr(), tuple(t.shape), t.stride()))


class DeepResidual(nn.Module):
    """A block input used by the first layer and again by a residual addition 2 * depth layers later."""

    def __init__(self, d=6, depth=10):
        super().__init__()
        self.layers = nn.ModuleList()
        for _ in range(depth):
            self.layers.extend([nn.Linear(d, d), neurosim.LIF(beta=0.5, threshold=0.2, backend="torch")])
        self.add = Add()

    def forward(self, x):
        h = x
        for layer in self.layers:
            h = layer(h)
        return self.add(x, h)


def test_a_residual_input_is_read_once_however_far_back():
    torch.manual_seed(0)
    x = (torch.rand(3, 2, 6) < 0.4).float()
    model = DeepResidual()
    rep, reads = _profile_reads(model, x)
    assert sum(r[0] == x.data_ptr() for r in reads) == 1  # 20 layers between its two uses
    # (other addresses may repeat: a freed layer output's memory holds the next one's)
    # the addition's counts against hand counts: its first operand's spikes, and the additions (both nonzero)
    with torch.no_grad():
        h = x
        for layer in model.layers:
            h = layer(h)
    add = rep.layer("add")
    assert add.in_nnz == int((x != 0).sum()) > 0
    assert add.acs == int(((x != 0) & (h != 0)).sum()) > 0


class SharedHeads(nn.Module):
    """Attention's k read as k^T by one product and as k by another: the same elements, one read."""

    def __init__(self):
        super().__init__()
        self.lif = neurosim.LIF(beta=0.5, threshold=0.3, backend="torch")
        self.qk, self.kv = MatMul(), MatMul()

    def forward(self, x):  # [T, B, N, 3 * H * dh]
        t, b, n, _ = x.shape
        q, k, v = self.lif(x).reshape(t, b, n, 3, 2, 4).permute(3, 0, 1, 4, 2, 5)
        return self.qk(q, k.transpose(-1, -2)), self.kv(k, v.transpose(-1, -2))


def test_a_view_and_its_transpose_share_one_read():
    torch.manual_seed(1)
    x = torch.rand(2, 3, 5, 24)
    rep, reads = _profile_reads(SharedHeads(), x)
    s_ptr = next(r[0] for r in reads if r[1] == (2, 3, 5, 24))  # the LIF's spikes, read whole for its rate
    k_reads = [r for r in reads if r[0] == s_ptr + 8 * 4]  # k starts 8 floats in
    assert len(k_reads) == 1  # k^T for the first product, k for the second: the same elements
    s = neurosim.LIF(beta=0.5, threshold=0.3, backend="torch")(x)
    k = s.reshape(2, 3, 5, 3, 2, 4)[:, :, :, 1]
    assert rep.layer("kv").in_nnz == int(k.sum()) > 0 and rep.layer("qk").synops > 0


def test_entries_live_as_long_as_their_tensor_and_hold_none():
    buf = CountBuffer("torch")
    cache = stats_cache.StatsCache(buf)
    base = (torch.rand(4, 6) < 0.5).float()
    view = base.t()  # a view: the entry follows base, which outlives the view object
    st = buf.stats(view)
    cache.put(view, st)
    del view
    gc.collect()
    assert cache.get(base.t()) is st and cache.get(base.t().contiguous()) is None  # another address
    ref = weakref.ref(base)
    del base
    gc.collect()
    assert ref() is None and len(cache) == 0  # freed: the address may now hold other values
    # a tensor changed in place since its row was counted is read again
    y = torch.ones(5)
    cache.put(y, buf.stats(y))
    y.mul_(2)
    assert cache.get(y) is None


def test_size_and_deferred_rows_are_bounded():
    buf = CountBuffer("torch")
    cache = stats_cache.StatsCache(buf)
    kept = [torch.full((3,), float(i)) for i in range(stats_cache.SIZE + 5)]
    rows = [buf.stats(t) for t in kept]
    for t, st in zip(kept, rows):
        cache.put(t, st)
    assert len(cache) == stats_cache.SIZE and cache.get(kept[0]) is None and cache.get(kept[-1]) is rows[-1]
    cache.clear()
    deferred = [torch.full((3,), float(i)) for i in range(stats_cache.DEFERRED + 3)]
    opt = [buf.stats(t, defer=True, optional=True) for t in deferred]
    for t, st in zip(deferred, opt):
        cache.put(t, st)
    # the oldest optional rows, dropped (never read) and forgotten; the newest still deferred
    assert all(st.dropped and cache.get(t) is None for t, st in zip(deferred[:3], opt[:3]))
    assert all(st.pending is t and cache.get(t) is st for t, st in zip(deferred[3:], opt[3:]))
    required = torch.ones(3)
    st = buf.stats(required, defer=True)
    cache.put(required, st)
    for t in (torch.zeros(3) for _ in range(stats_cache.DEFERRED)):
        cache.put(t, buf.stats(t, defer=True, optional=True))
    assert st.pending is None and not st.dropped and cache.get(required) is st  # counted, still remembered
    assert buf.value(st.nnz) == 3
