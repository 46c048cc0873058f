"""torch's recurrent layers (RNN, GRU, LSTM and their cells) under neurosim.energy, against the aten operations torch
actually runs for them (CPU, oneDNN off so that the LSTM is not one fused op) and against the syops package's
estimate, converted (neurosim/energy/recurrent.py states the conventions)."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils._python_dispatch import TorchDispatchMode

from aten_ops import own_elementwise_ops
from neurosim.energy import profile

aten = torch.ops.aten
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


class _Products(TorchDispatchMode):
    """MACs of the matrix products dispatched (``[M, K] @ [K, N]`` is ``M K N``), and the elements of additions of
    a bias outside them (torch adds a batch-first input's bias after its product)."""

    def __init__(self, biases):
        super().__init__()
        self.biases = {b.data_ptr() for b in biases}
        self.macs = self.bias_adds = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (aten.addmm.default, aten.mm.default):
            a, b = (args[1], args[2]) if func is aten.addmm.default else (args[0], args[1])
            self.macs += a.shape[0] * a.shape[1] * b.shape[1]
        elif func.overloadpacket in (aten.add, aten.add_) and any(
                isinstance(a, torch.Tensor) and a.data_ptr() in self.biases for a in args):
            self.bias_adds += out.numel()
        return out


def aten_counts(module, *args):
    """``(matrix-product MACs, pointwise ops but bias additions)`` of ``module(*args)`` as torch runs it on the
    CPU."""
    biases = [p for name, p in module.named_parameters() if name.startswith("bias")]
    with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False):
        with _Products(biases) as products:
            module(*args)
        pointwise, _ = own_elementwise_ops(module, *args)
    return products.macs, pointwise - products.bias_adds


class Net(nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, *args):
        return self.rnn(*args)[0]


def make(kind, **kw):
    torch.manual_seed(0)
    return getattr(nn, kind)(5, 7, **kw).eval()


def step_units(rnn, steps):
    """Per (time step, direction, layer) of ``rnn``: the hidden units, summed (``steps * dirs * layers * H``)."""
    dirs = 2 if getattr(rnn, "bidirectional", False) else 1
    return steps * dirs * getattr(rnn, "num_layers", 1) * rnn.hidden_size


def not_counted(kind, rnn, steps):
    """The pointwise aten ops neurosim does not count: the sum of the two gate products (G per hidden unit: a dot
    product's accumulation), the addition after a GRU's or LSTM's gate product (its MAC's accumulation) and an
    RNN's ReLU (a comparison)."""
    extra = GATES[kind] + (kind != "RNN" or getattr(rnn, "nonlinearity", "tanh") == "relu")
    return extra * step_units(rnn, steps)


SHAPES = [dict(), dict(num_layers=2, bidirectional=True), dict(num_layers=2, batch_first=True)]


@pytest.mark.parametrize("kind, kw", [(k, kw) for k in GATES for kw in SHAPES] + [
    ("RNN", dict(nonlinearity="relu")), ("LSTM", dict(num_layers=2, proj_size=3, bidirectional=True))])
def test_recurrent_layers_equal_the_aten_ops_torch_runs(kind, kw):
    rnn = make(kind, **kw)
    t, n = 4, 3
    x = torch.rand((n, t, 5) if kw.get("batch_first") else (t, n, 5)) + 0.1  # real-valued: all MACs
    row = profile(Net(rnn), x).layer("rnn")
    products, pointwise = aten_counts(rnn, x)
    assert row.type == kind and row.synops == 0 and row.acs == 0
    assert row.macs == row.dense == products + pointwise - not_counted(kind, rnn, t * n)
    assert products > 0.8 * row.macs  # (the products dominate: the comparison is not carried by the pointwise part)


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
def test_cells_equal_the_aten_ops_torch_runs(kind):
    torch.manual_seed(0)
    cell = getattr(nn, kind + "Cell")(5, 7).eval()
    x = torch.rand(3, 5) + 0.1
    state = (torch.rand(3, 7), torch.rand(3, 7)) if kind == "LSTM" else torch.rand(3, 7)

    class Cell(nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = cell

        def forward(self, x):
            return self.cell(x, state)

    row = profile(Cell(), x).layer("cell")
    products, pointwise = aten_counts(cell, x, state)
    assert row.macs == products + pointwise - not_counted(kind, cell, 3)


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_spike_input_is_projected_with_synops(kind):
    """A binary input: its projection costs each spike ``G H`` SynOps per direction; a silent (masked) input costs
    none; the recurrent part stays MACs, and the dense figure is the real-valued input's."""
    rnn = make(kind, num_layers=2, bidirectional=True)
    g, h, t, n = GATES[kind], 7, 6, 4
    g_x = torch.Generator().manual_seed(1)
    x = (torch.rand(t, n, 5, generator=g_x) < 0.3).float()
    x[:, 0] = 0  # a masked sample
    spiking = profile(Net(rnn), x).layer("rnn")
    dense = profile(Net(rnn), torch.rand(t, n, 5) + 0.1).layer("rnn")
    projection = t * n * 2 * g * h * 5
    assert spiking.synops == x.sum().item() * 2 * g * h > 0
    assert spiking.macs == dense.macs - projection and spiking.dense == dense.dense
    silent = profile(Net(rnn), torch.zeros(t, n, 5)).layer("rnn")
    assert silent.synops == 0 and silent.macs == spiking.macs


def test_packed_sequences_count_their_steps():
    """A PackedSequence of lengths 5, 3 and 1 runs 9 sample steps: counted as torch runs them."""
    rnn = make("GRU", num_layers=2)
    x = torch.rand(5, 3, 5) + 0.1
    packed = pack_padded_sequence(x, torch.tensor([5, 3, 1]))
    row = profile(Net(rnn), (packed,)).layer("rnn")
    products, _ = aten_counts(rnn, packed)
    assert row.macs == products + 6 * step_units(rnn, 9)  # (6: a GRU's gate functions and arithmetic)
    full = profile(Net(rnn), x).layer("rnn")
    assert row.macs * 15 == full.macs * 9


def test_wrong_input_width_names_the_layer():
    with pytest.raises(ValueError, match="layer 'rnn' .LSTM. failed: .*input_size"):
        profile(Net(make("LSTM")), torch.rand(4, 3, 5)[..., :4])


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
def test_gate_products_equal_syops_converted(kind):
    """syops counts per step and sample the products ``W_ih`` and ``W_hh`` (one operation per weight), plus the
    biases (2 G H) and its element-wise terms (RNN H, GRU 7 H, LSTM 10 H, its rnn_syops), layer by layer, times 2
    when bidirectional. neurosim's gate products are its figure without these."""
    from test_energy_peers import _import_syops

    ops = _import_syops()
    rnn = make(kind, num_layers=2, bidirectional=True)
    net = Net(rnn)
    rnn.__syops__ = [0, 0, 0, 0]
    handle = rnn.register_forward_hook(ops.rnn_syops_counter_hook)
    x = torch.rand(4, 3, 5) + 0.1
    with torch.no_grad():
        net(x)
    handle.remove()
    h, g = 7, GATES[kind]
    syops_extra = {"RNN": 1, "GRU": 7, "LSTM": 10}[kind] * h + 2 * g * h
    products = rnn.__syops__[0] - step_units(rnn, 12) * syops_extra // h
    ours = profile(net, x).layer("rnn").macs - {"RNN": 1, "GRU": 6, "LSTM": 8}[kind] * step_units(rnn, 12)
    assert ours == products > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA twin (runs on the GPU machine)")
@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
def test_recurrent_counts_on_cuda_equal_the_cpu(kind):
    rnn = make(kind, num_layers=2, bidirectional=True)
    x = (torch.rand(6, 4, 5, generator=torch.Generator().manual_seed(2)) < 0.3).float()
    cpu = profile(Net(rnn), x).layer("rnn")
    gpu = profile(Net(rnn).cuda(), x.cuda()).layer("rnn")
    assert (gpu.synops, gpu.macs, gpu.dense, gpu.in_rate) == (cpu.synops, cpu.macs, cpu.dense, cpu.in_rate)
