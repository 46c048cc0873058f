"""Exported NetX files on Lava's own CPU simulator (real Lava environment, created by scripts/lava_env.sh if
missing): spikes equal the Loihi mode for every neuron and step, accuracy within 1 point of the float model,
and the files as lava-dl's ``netx.hdf5.Network`` builds them. All Lava work runs in one subprocess."""
import numpy as np
import pytest
import torch
from torch import nn

import neurosim
from neurosim import hardware as hw
from neurosim.hardware import demo
from neurosim.hardware.loihi import netx_dense_weights, netx_keeps
from neurosim.layers import TimeDistributed as TD

T = 12


def edge_net():
    """Covers the quantization branches: CubaLIF, subtract->zero reset, stride/dilation/groups, no bias,
    all-positive and all-negative dense weights (with a bias that makes the inhibited layer spike)."""
    torch.manual_seed(5)
    net = nn.Sequential(TD(nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2)),
                        neurosim.CubaLIF(alpha=0.7, beta=0.8, threshold=0.3, reset="zero"),
                        TD(nn.Flatten()), nn.Linear(6 * 5 * 5, 20, bias=False),
                        neurosim.LIF(beta=0.6, threshold=0.2, reset="subtract"),
                        nn.Linear(20, 7), neurosim.LIF(beta=0.95, threshold=0.5, reset="zero"),
                        nn.Linear(7, 3), neurosim.LIF(beta=0.5, threshold=0.3, reset="zero"))
    with torch.no_grad():
        net[5].weight.abs_()                 # excitatory-only
        net[7].weight.copy_(-net[7].weight.abs())  # inhibitory-only
        net[5].bias.fill_(0.4)
        net[7].bias.fill_(0.25)                    # spikes unless inhibited
    return net


def pad(x, steps):
    return torch.cat([x, torch.zeros(steps - x.shape[0], *x.shape[1:])])


@pytest.fixture(scope="module")
def lava(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lava")
    out = {}
    xtr, ytr, xte, yte = demo.digits_spikes(T)
    torch.manual_seed(0)
    mlp = demo.digits_mlp()
    demo.train_classifier(mlp, xtr, ytr, epochs=6, lr=5e-3, progress=False)
    ctr, _, cte, _ = demo.digits_spikes(T, image=True)
    torch.manual_seed(0)
    conv = demo.digits_convnet()
    demo.train_classifier(conv, ctr, ytr, epochs=6, lr=1e-2, progress=False)
    edge = edge_net()
    with pytest.warns(UserWarning, match="subtract|CubaLIF"):
        edge_loihi = hw.export_lava(edge, tmp / "edge.net", input_shape=(4, 9, 9), allow_reset_change=True,
                                    allow_bias_change=True)
    g = torch.Generator().manual_seed(7)
    x_edge = (torch.rand(T, 4, 4, 9, 9, generator=g) < 0.5).float()
    jobs = {"mlp": (mlp, xte, None), "conv": (conv, cte, (1, 8, 8))}
    lava_jobs = []
    for name, (model, x, shape) in jobs.items():
        loihi = hw.export_lava(model, tmp / f"{name}.net", input_shape=shape, steps=T)
        out[name] = dict(model=model, x=x, loihi=loihi, steps=hw.pad_steps(loihi, T), path=tmp / f"{name}.net")
        lava_jobs.append((out[name]["path"], x, out[name]["steps"]))
    out["edge"] = dict(model=edge, x=x_edge, loihi=edge_loihi, steps=hw.pad_steps(edge_loihi, T), path=tmp / "edge.net")
    lava_jobs.append((out["edge"]["path"], x_edge, out["edge"]["steps"]))
    results, described = hw.run_lava_many(lava_jobs, inspect=[out[k]["path"] for k in ("mlp", "conv")])
    for name, res in zip(("mlp", "conv", "edge"), results):
        out[name]["lava"] = res
    for name, d in zip(("mlp", "conv"), described):
        out[name]["netx"] = d
    out["y"] = yte
    return out


@pytest.mark.parametrize("name", ["mlp", "conv", "edge"])
def test_lava_spikes_equal_loihi_mode(name, lava):
    case = lava[name]
    mine = case["loihi"].run(case["x"], case["steps"])
    assert len(mine) == len(case["lava"])
    total = agree = 0
    for i, (a, b) in enumerate(zip(mine, case["lava"])):
        assert a.shape == b.shape, f"layer {i}"
        agree += int((a == b).sum())
        total += a.numel()
        assert 0 < a.sum() < a.numel(), f"layer {i} is silent or saturated: the check would be vacuous"
    print(f"{name}: Lava vs Loihi-mode spike agreement {100 * agree / total:.3f}% of {total} neuron-steps")
    assert agree == total


@pytest.mark.parametrize("name", ["mlp", "conv"])
def test_lava_accuracy_within_one_point_of_float(name, lava):
    case, y = lava[name], lava["y"]
    with torch.no_grad():
        float_acc = demo.accuracy(case["model"](pad(case["x"], case["steps"])), y)
        float_acc_t = demo.accuracy(case["model"](case["x"]), y)
    lava_acc = demo.accuracy(case["lava"][-1], y)
    print(f"{name}: float {float_acc_t:.2f}% (fed the zero-padded stream: {float_acc:.2f}%), Lava {lava_acc:.2f}% "
          f"on {len(y)} digits")
    # The float model as trained and evaluated (T steps) vs Lava (T + depth steps, so that the last layer sees
    # every input step through the one-step-per-layer latency). One digit is 0.28 points.
    assert float_acc_t > 80
    assert abs(lava_acc - float_acc_t) <= 1.0


def test_netx_network_reads_back_the_files(lava):
    for name in ("mlp", "conv"):
        d, layers = lava[name]["netx"], lava[name]["loihi"].layers
        assert int(d["num_layers"]) == len(layers)
        first = layers[0]
        assert tuple(d["inp_shape"]) == (tuple(first.in_shape[::-1]) if first.kind == "conv" else first.in_shape)
        for i, q in enumerate(layers):
            assert str(d[f"{i}_block"]) == ("Conv" if q.kind == "conv" else "Dense")
            assert tuple(d[f"{i}_shape"]) == tuple(q.out_shape[::-1])          # Lava's (x, y, z) = W, H, C
            assert int(d[f"{i}_du"]) == q.i_decay - 1                           # + Lava's ds_offset of 1
            assert int(d[f"{i}_dv"]) == q.v_decay
            assert int(d[f"{i}_vth"]) == q.vth
            assert int(d[f"{i}_bias_exp"]) == 6
            if q.bias is not None:
                bias = d[f"{i}_bias_mant"]
                expect = np.broadcast_to(q.bias, bias.shape) if q.kind == "dense" else \
                    np.broadcast_to(q.bias, bias.shape)
                assert np.array_equal(bias, expect)
            w = d[f"{i}_weight"]
            if q.kind == "dense":
                w_eff, e = netx_dense_weights(q.weight)
                assert int(d[f"{i}_weight_exp"]) == e
                assert np.array_equal(w, w_eff)
                assert netx_keeps(q.weight)                                        # lossless 8-bit weights
            else:
                # netx flips the kernel and reorders to [C_out, kx, ky, C_in]; Lava's conv flips it back
                assert np.array_equal(w, q.weight[:, :, ::-1, ::-1].transpose(0, 3, 2, 1))
                assert tuple(d[f"{i}_stride"]) == q.stride[::-1]
                assert tuple(d[f"{i}_padding"]) == q.padding[::-1]



def test_netx_dense_layer_with_zeros_and_no_positive_weight_runs_as_on_lava(tmp_path):
    """Weights <= 0 with exact zeros are lava-dl's mixed sign mode with no positive weight (its 127 / 0 is numpy's
    inf, so the negative side sets the scale): the Loihi mode reads such a file and runs it spike for spike as Lava."""
    from neurosim.hardware.loihi import QLayer
    from neurosim.hardware.netx import write_netx

    w = np.array([[-200, 0, -100, -50], [-120, -160, 0, -200]])
    write_netx(tmp_path / "m.net", [QLayer("0", "dense", w, np.array([152, 152]), 4096, 410, 254, (4,), (2,))], (4,))
    x = (torch.rand(20, 3, 4, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    net = hw.LoihiNetwork.from_netx(tmp_path / "m.net")
    mine = net(x, 21)
    assert 0 < mine.sum() < mine.numel() and not torch.equal(mine, net(torch.zeros_like(x), 21))  # (inhibited)
    assert torch.equal(hw.run_lava(tmp_path / "m.net", x, 21), mine)


@pytest.mark.parametrize("signs", ["positive", "negative", "mixed", "non-positive with zeros"])
def test_dense_weights_reach_lava_unchanged_in_every_sign_mode(signs, tmp_path):
    """A layer whose bias sets the weight scale, so that its strongest weight quantizes to a power of two (64):
    Lava-DL's optimiser shifts an inhibitory -64 to -256, which Lava's synapse clips and truncates to nothing, so
    the exporter lowers such a scale. Lava's membrane (a never-firing integrator) must be exactly the exported
    integer weights summed over the input spikes plus the bias, in every sign mode."""
    g = torch.Generator().manual_seed(0)
    magnitude = 0.1 * torch.tensor([1.0, 0.75, 0.5, 0.3]).repeat(3, 3)        # [3, 12], strongest 0.1
    sign = {"positive": 1.0, "negative": -1.0, "non-positive with zeros": -(torch.arange(12) % 5 != 0).float(),
            "mixed": torch.where(torch.rand(3, 12, generator=g) < 0.5, -1.0, 1.0)}[signs]
    lin = nn.Linear(12, 3)
    with torch.no_grad():
        lin.weight.copy_(magnitude * sign)
        lin.bias.fill_(6.4)              # weight scale 4095 / 6.4: 0.1 -> 64 (a power of two)
    model = nn.Sequential(lin, neurosim.LIF(beta=1.0, threshold=24 * 6.4, reset="zero"))  # (never reached)
    net = hw.export_lava(model, tmp_path / "m.net")
    q = net.layers[0]
    assert np.abs(q.weight - lin.weight.detach().double().numpy() * q.scale).max() <= 0.5   # (the rounded weights)
    x = (torch.rand(10, 4, 12, generator=g) < 0.5).float()
    spikes, v = hw.run_lava(tmp_path / "m.net", x, 11, return_voltage=True)
    drive = x.sum(0).double() @ torch.as_tensor(q.weight, dtype=torch.float64).T           # [B, 3]
    assert spikes.sum() == 0 and drive.abs().min() > 0
    assert torch.equal(v, 64 * (drive + 11 * torch.as_tensor(q.bias, dtype=torch.float64)))
    loihi_spikes, loihi_v = hw.LoihiNetwork.from_netx(tmp_path / "m.net").run(x, 11, return_voltage=True)
    assert torch.equal(loihi_v, v) and loihi_spikes[-1].sum() == 0  # (the Loihi mode's membrane is Lava's)


def test_netx_delays_are_refused_by_the_loihi_mode_and_run_by_lava(tmp_path):
    """A dense layer's ``delay`` (a NetX field Lava-DL honours) was read without complaint and simulated without it;
    the Loihi mode now refuses it while run_lava still runs the file, where the delays show. All-zero delays are
    what Lava runs without them: read, and spike for spike as Lava."""
    import h5py

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), neurosim.LIF(beta=0.8, threshold=0.3, reset="zero"))
    plain = hw.export_lava(model, tmp_path / "plain.net")
    for name, delay in (("delayed", 3.0), ("zero", 0.0)):
        hw.export_lava(model, tmp_path / f"{name}.net")
        with h5py.File(tmp_path / f"{name}.net", "r+") as f:
            f["layer/1/delay"] = np.full(6, delay, dtype=np.float32)
    with pytest.raises(hw.ExportError, match="layer/1: synaptic delays"):
        hw.LoihiNetwork.from_netx(tmp_path / "delayed.net")
    x = (torch.rand(10, 2, 8, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    delayed, zero = hw.run_lava_many([(tmp_path / "delayed.net", x, 16), (tmp_path / "zero.net", x, 16)])
    mine = plain(x, 16)
    assert mine.sum() > 0 and not torch.equal(delayed[-1], mine)
    assert torch.equal(hw.LoihiNetwork.from_netx(tmp_path / "zero.net")(x, 16), zero[-1])
    assert torch.equal(zero[-1], mine)


def test_creating_the_lava_environment_streams_the_installers_output(tmp_path, monkeypatch):
    """The first run_lava creates a multi-GB environment; its installer's output (the "a few minutes, several GB"
    line, pip's lines) was captured and dropped, so nothing showed for minutes. Each line now goes to stderr as it
    comes (the fake installer waits until its first line was seen), and a failure's error keeps its last lines."""
    import io
    import sys

    from neurosim.hardware import lava_sim

    seen = tmp_path / "seen"

    class Stderr(io.StringIO):
        def write(self, text):
            if "Collecting lava-dl" in text:
                seen.touch()
            return super().write(text)

    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "lava_env.sh").write_text(
        'echo "neurosim: creating the Lava environment (a few minutes, several GB)" >&2\n'
        'echo "Collecting lava-dl==0.6.0"\n'
        'for i in $(seq 200); do [ -e "$SEEN" ] && break; sleep 0.05; done\n'
        '[ -e "$SEEN" ] || { echo "nothing was shown while the installer ran" >&2; exit 3; }\n'
        '[ -n "$FAIL" ] && { echo "ERROR: No matching distribution found for lava-dl==0.6.0" >&2; exit 1; }\n'
        'mkdir -p "$NEUROSIM_LAVA_VENV/bin" && ln -s "$(type -P true)" "$NEUROSIM_LAVA_VENV/bin/python"\n'
        'echo ok > "$NEUROSIM_LAVA_VENV/.neurosim-lava-stamp"\n')
    monkeypatch.setattr(lava_sim, "REPO", tmp_path)
    monkeypatch.setenv("NEUROSIM_LAVA_VENV", str(tmp_path / "venv"))
    monkeypatch.setenv("SEEN", str(seen))
    monkeypatch.setattr(sys, "stderr", Stderr())
    assert lava_sim.lava_python() == tmp_path / "venv" / "bin" / "python"
    lines = sys.stderr.getvalue().splitlines()
    assert "a few minutes and several GB" in lines[0] and "NEUROSIM_LAVA_VENV" in lines[0]
    assert lines[1:] == ["  | neurosim: creating the Lava environment (a few minutes, several GB)",
                         "  | Collecting lava-dl==0.6.0"]
    monkeypatch.setattr(sys, "stderr", Stderr())
    assert lava_sim.lava_python() == tmp_path / "venv" / "bin" / "python"  # (made once: nothing runs, nothing shown)
    assert sys.stderr.getvalue() == ""

    seen.unlink()
    monkeypatch.setenv("NEUROSIM_LAVA_VENV", str(tmp_path / "venv2"))
    monkeypatch.setenv("FAIL", "1")
    with pytest.raises(hw.LavaError) as err:
        lava_sim.lava_python()
    assert "scripts/lava_env.sh failed (exit 1)" in str(err.value)
    assert str(err.value).endswith("Collecting lava-dl==0.6.0\nERROR: No matching distribution found for lava-dl==0.6.0")
    assert "  | ERROR: No matching distribution" in sys.stderr.getvalue()
