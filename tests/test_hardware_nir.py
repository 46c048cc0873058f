"""NIR export/import checked against snnTorch's and Norse's own NIR importers and exporters (float mode)."""
import logging

import numpy as np
import pytest
import torch
from torch import nn

import neurosim
from neurosim import hardware as hw
from neurosim.layers import TimeDistributed as TD

T, B = 12, 3


def lif(beta, thr):
    return neurosim.LIF(beta=beta, threshold=thr, reset="zero")


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 16), lif(0.8, 0.5), nn.Linear(16, 5, bias=False), lif(0.85, 0.3))


def convnet():
    torch.manual_seed(1)
    return nn.Sequential(TD(nn.Conv2d(2, 4, 3, padding=1)), lif(0.9, 0.4), TD(nn.AvgPool2d(2)),
                         TD(nn.Conv2d(4, 6, 3, padding=1, bias=False)), lif(0.7, 0.3), TD(nn.AvgPool2d(2)),
                         TD(nn.Flatten()), nn.Linear(24, 4), lif(0.9, 0.2))


def readout():
    """No leak in the last layer (beta=1: NIR's IF, the readout spiking_mlp's export_stack ends with) and none kept
    in the first (beta=0: tau = dt, which comes back from float32 a hair under dt)."""
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(20, 16), lif(0.0, 0.3), nn.Linear(16, 5), lif(1.0, 0.8))


CASES = {"mlp": (mlp, (20,)), "conv": (convnet, (2, 8, 8)), "readout": (readout, (20,))}


def spikes_in(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand((T, B, *shape), generator=g) < 0.4).float()


def run_foreign(module, x, stateful):
    """Step a nirtorch-built module per sample (their Flatten(start_dim=0) flattens a batch dimension too)."""
    from snntorch import utils as su

    outs = []
    for b in range(x.shape[1]):
        if not stateful:
            su.reset(module)
        state, seq = None, []
        for t in range(x.shape[0]):
            if stateful:
                o, state = module(x[t, b], state)
            else:
                o = module(x[t, b])
            seq.append(o[0] if isinstance(o, tuple) else o)
        outs.append(torch.stack(seq))
    return torch.stack(outs, 1)


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_to_snntorch_and_norse_same_spikes(case):
    import norse.torch as norse_torch
    from snntorch.import_nir import import_from_nir

    build, shape = CASES[case]
    model = build()
    x = spikes_in(shape)
    with torch.no_grad():
        ref = model(x)
    assert 0 < ref.sum() < ref.numel()
    graph = hw.export_nir(model, input_shape=shape)
    assert graph.metadata["dt"] == 1e-4
    with torch.no_grad():
        # (snnTorch's importer reads nir.IF as snn.Leaky(beta=0.9): a leak the readout case has not)
        snn_out = ref if case == "readout" else run_foreign(import_from_nir(graph), x, stateful=False)
        logging.disable(logging.WARNING)
        try:
            norse_out = run_foreign(norse_torch.from_nir(graph, dt=graph.metadata["dt"]), x, stateful=True)
        finally:
            logging.disable(logging.NOTSET)
    assert torch.equal(snn_out, ref)
    assert torch.equal(norse_out, ref)


@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip_through_neurosim_import(case):
    build, shape = CASES[case]
    model = build()
    x = spikes_in(shape, seed=1)
    back = hw.import_nir(hw.export_nir(model, input_shape=shape))
    # pooling was folded into the synapses: the imported stack has none, yet the spikes are the same
    assert not any(isinstance(m, nn.AvgPool2d) for m in back.modules())
    with torch.no_grad():
        assert torch.equal(back(x), model(x))


def test_nir_neuron_nodes_are_named_by_their_type():
    """Node names are made per layer (the model's module names are Sequential indices): a readout integrator,
    NIR's IF, was named lif1. A neuron node is named by its NIR type, and imports as before."""
    types = lambda g: {name: type(node).__name__ for name, node in g.nodes.items()}  # noqa: E731
    graph = hw.export_nir(readout())
    assert types(graph) == {"input": "Input", "syn0": "Affine", "lif0": "LIF", "syn1": "Affine", "if1": "IF",
                            "output": "Output"}
    assert [tuple(e) for e in graph.edges] == [("input", "syn0"), ("syn0", "lif0"), ("lif0", "syn1"),
                                               ("syn1", "if1"), ("if1", "output")]
    cuba = nn.Sequential(TD(nn.Flatten()), nn.Linear(64, 5, bias=False),
                         neurosim.CubaLIF(alpha=0.5, beta=0.9, threshold=0.3, reset="zero"))
    with pytest.warns(UserWarning, match="CubaLIF's zero reset"):
        graph = hw.export_nir(cuba, input_shape=(1, 8, 8), allow_reset_change=True)
    assert types(graph) == {"input": "Input", "flatten0": "Flatten", "syn0": "Linear", "cubalif0": "CubaLIF",
                            "output": "Output"}
    with pytest.warns(UserWarning, match="CubaLIF"):
        assert isinstance(hw.import_nir(graph, allow_reset_change=True)[-1], neurosim.CubaLIF)


def test_an_image_input_flattened_into_a_linear_round_trips():
    model = nn.Sequential(TD(nn.Flatten()), nn.Linear(64, 5), lif(0.8, 0.3))
    x = spikes_in((1, 8, 8), seed=3)
    graph = hw.export_nir(model, input_shape=(1, 8, 8))
    back = hw.import_nir(graph)
    with torch.no_grad():
        assert torch.equal(back(x), model(x)) and model(x).sum() > 0


def test_cubalif_parameters_round_trip():
    model = nn.Sequential(nn.Linear(6, 4), neurosim.CubaLIF(alpha=0.6, beta=0.85, threshold=0.7, reset="zero"))
    with pytest.warns(UserWarning, match="CubaLIF's zero reset exported as NIR's"):
        graph = hw.export_nir(model, allow_reset_change=True)
    with pytest.raises(hw.ExportError, match="NIR's CubaLIF keeps the synaptic current after a spike"):
        hw.import_nir(graph)  # (the reset differs the other way too: refused unless allowed, then warned about)
    with pytest.warns(UserWarning, match=r"NIR's CubaLIF imported as neurosim's CubaLIF\(reset='zero'\)"):
        back = hw.import_nir(graph, allow_reset_change=True)
    n = back[1]
    assert isinstance(n, neurosim.CubaLIF)
    assert float(n.alpha) == pytest.approx(0.6, abs=1e-5)
    assert float(n.beta) == pytest.approx(0.85, abs=1e-5)
    assert float(n.threshold) == pytest.approx(0.7, rel=1e-5)
    assert torch.equal(back[0].weight, model[0].weight)


def test_snntorch_export_imports_into_neurosim():
    import snntorch as snn
    from snntorch.export_nir import export_to_nir

    torch.manual_seed(2)
    full = lambda n, v: torch.full((n,), v)  # noqa: E731  (snnTorch's exporter needs per-neuron parameters)
    net = nn.Sequential(nn.Linear(10, 8), snn.Leaky(beta=full(8, 0.8), threshold=full(8, 0.2), reset_mechanism="zero",
                                                    init_hidden=True),
                        nn.Linear(8, 3), snn.Leaky(beta=full(3, 0.9), threshold=full(3, 0.1), reset_mechanism="zero",
                                                   init_hidden=True))
    x = spikes_in((10,), seed=3)
    with torch.no_grad():
        graph = export_to_nir(net, x[0], ignore_dims=[0])
        snn.utils.reset(net)
        ref = torch.stack([net(x[t]) for t in range(T)])
        ours = hw.import_nir(graph)(x)
    assert ref.sum() > 0
    assert torch.equal(ours, ref)


def test_norse_export_imports_into_neurosim():
    import norse.torch as norse_torch

    torch.manual_seed(3)
    p = norse_torch.LIFBoxParameters(tau_mem_inv=torch.tensor(200.0), v_th=torch.tensor(0.02))
    net = norse_torch.SequentialState(nn.Linear(10, 8), norse_torch.LIFBoxCell(p), nn.Linear(8, 3),
                                      norse_torch.LIFBoxCell(p))
    x = spikes_in((10,), seed=4)
    with torch.no_grad():
        # norse 1.1's to_nir writes tau = dt / tau_mem_inv; dt=1 makes that the true time constant 1/tau_mem_inv
        # (NIR's continuous-time tau), and the graph is then stepped with the cells' own dt = 1e-3.
        graph = norse_torch.to_nir(net, x[0], dt=1.0)
        state, seq = None, []
        for t in range(T):
            o, state = net(x[t], state)
            seq.append(o)
        ref = torch.stack(seq)
        ours = hw.import_nir(graph, dt=1e-3)(x)
    assert ref.sum() > 0
    assert torch.equal(ours, ref)


def test_unsupported_nir_nodes_are_listed():
    import nir

    g = nir.NIRGraph(nodes={"input": nir.Input(np.array([3])),
                            "li": nir.LI(tau=np.ones(3), r=np.ones(3), v_leak=np.zeros(3)),
                            "output": nir.Output(np.array([3]))},
                     edges=[("input", "li"), ("li", "output")])
    with pytest.raises(hw.ExportError, match="li: NIR node LI is not supported"):
        hw.import_nir(g)


def test_cubalif_zero_reset_is_refused_for_nir_because_norse_runs_it_otherwise():
    """NIR's CubaLIF keeps the synaptic current of the step after a spike (Norse's importer runs it so), neurosim's
    zero reset discards it: the export is refused, and allowed only with a warning."""
    import norse.torch as norse_torch

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), neurosim.CubaLIF(alpha=0.6, beta=0.8, threshold=0.5, reset="zero"))
    with pytest.raises(hw.ExportError, match="- 1: CubaLIF's reset='zero' has no exact equivalent"):
        hw.export_nir(model)
    with pytest.warns(UserWarning, match="CubaLIF's zero reset"):
        graph = hw.export_nir(model, allow_reset_change=True)
    x = spikes_in((20,))
    with torch.no_grad():
        ref = model(x)
        logging.disable(logging.WARNING)
        try:
            norse_out = run_foreign(norse_torch.from_nir(graph, dt=graph.metadata["dt"]), x, stateful=True)
        finally:
            logging.disable(logging.NOTSET)
    assert ref.sum() > 0 and not torch.equal(norse_out, ref)


def test_subtract_reset_refused_for_nir():
    model = nn.Sequential(nn.Linear(4, 2), neurosim.LIF(beta=0.9, reset="subtract"))
    with pytest.raises(hw.ExportError, match="reset='subtract'"):
        hw.export_nir(model)


def test_sequential_subclass_with_its_own_forward_is_refused():
    """A Sequential (or TimeDistributed) subclass that overrides forward computes something else than its chain of
    children (here an input gain): exporting the chain would change the network, so it is refused, also nested."""
    class Scaled(nn.Sequential):
        def forward(self, x):
            return super().forward(2.0 * x)

    class ScaledTD(TD):
        def forward(self, x):
            return super().forward(2.0 * x)

    torch.manual_seed(0)
    model = Scaled(nn.Linear(10, 6), lif(0.8, 0.4))
    x = spikes_in((10,))
    with torch.no_grad():
        assert not torch.equal(model(x), nn.Sequential(*model)(x))          # (the chain is another network)
    for bad, name in ((model, "Scaled"), (nn.Sequential(Scaled(nn.Linear(10, 6)), lif(0.8, 0.4)), "0"),
                      (nn.Sequential(ScaledTD(nn.Linear(10, 6)), lif(0.8, 0.4)), "0")):
        with pytest.raises(hw.ExportError, match=f"- {name}: .*it overrides forward: not a plain chain"):
            hw.export_nir(bad)
        with pytest.raises(hw.ExportError, match=f"- {name}: .*it overrides forward"):
            hw.lower(bad)
