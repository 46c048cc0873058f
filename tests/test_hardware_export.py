"""Export checks that need no Lava: refusals list every offending layer, nothing partial is written, the
NetX file reads back into the same Loihi-mode network, corrupt files and bad inputs give clear errors."""
import numpy as np
import pytest
import torch
from torch import nn

import neurosim
from neurosim import hardware as hw
from neurosim.hardware.cli import cli_main, save_exportable
from neurosim.layers import MatMul, TimeDistributed as TD


def small_mlp(cuba=False):
    torch.manual_seed(0)
    last = neurosim.CubaLIF(alpha=0.5, beta=0.9, threshold=0.2, reset="zero") if cuba else \
        neurosim.LIF(beta=0.9, threshold=0.2, reset="zero")
    return nn.Sequential(nn.Linear(8, 6), neurosim.LIF(beta=0.8, threshold=0.3, reset="zero"), nn.Linear(6, 3), last)


def test_unsupported_layers_are_all_listed_and_nothing_is_written(tmp_path):
    model = nn.Sequential(TD(nn.Conv2d(1, 2, 3)), neurosim.LIF(reset="zero"), TD(nn.MaxPool2d(2)), MatMul(),
                          TD(nn.Flatten()), nn.Linear(2, 4), nn.ReLU(),
                          nn.Linear(4, 2), neurosim.LIF(beta=torch.tensor([0.5, 0.9]), reset="subtract"))
    path = tmp_path / "bad.net"
    with pytest.raises(hw.ExportError) as err:
        hw.export_lava(model, path, input_shape=(1, 6, 6))
    names = [n for n, _ in err.value.problems]
    text = str(err.value)
    for expected in ("MaxPool2d", "MatMul", "ReLU", "beta differs", "reset='subtract'"):
        assert expected in text
    assert "2" in names and "3" in names and "8" in names
    assert not path.exists() and not list(tmp_path.iterdir())


def test_spiking_transformer_is_refused_with_each_offending_layer_named(tmp_path):
    from neurosim.models import ESTConfig, EnhancedSpikingTransformer

    model = EnhancedSpikingTransformer(ESTConfig(8, 10, depth=1, rsm_ratio=0.5))
    with pytest.raises(hw.ExportError) as err:
        hw.export_lava(model, tmp_path / "est.net")
    named = dict(err.value.problems)
    for layer, why in [("layers.0.attn.block.qk_matmul", "two activations"), ("layers.0.attn.rsm", "masking"),
                       ("layers.0.attn.block.w_q.conv", "Conv1d"), ("embed_bn.bn", "normalisation")]:
        assert why in named[layer], (layer, named.get(layer))
    assert not any(name.startswith("layers.0.attn.block.w_v") for name in named)   # Linear: exportable
    assert not (tmp_path / "est.net").exists()


def test_conv_first_needs_input_shape():
    model = nn.Sequential(TD(nn.Conv2d(1, 2, 3)), neurosim.LIF(reset="zero"))
    with pytest.raises(hw.ExportError, match="input_shape"):
        hw.lower(model)


def test_uneven_pool_and_trailing_synapse_are_refused():
    model = nn.Sequential(TD(nn.Conv2d(1, 2, 3, padding=1)), neurosim.LIF(reset="zero"), TD(nn.AvgPool2d(2)),
                          TD(nn.Conv2d(2, 2, 3)), neurosim.LIF(reset="zero"), TD(nn.Flatten()), nn.Linear(2, 2))
    with pytest.raises(hw.ExportError) as err:
        hw.lower(model, input_shape=(1, 5, 5))
    text = str(err.value)
    assert "not divisible by the pool size" in text and "no LIF/CubaLIF neuron" in text


def test_cubalif_reset_and_bias_are_refused_unless_allowed_then_warned(tmp_path):
    """Lava's CUBA neuron keeps the synaptic current after a reset and adds a bias to the membrane, NIR's CubaLIF
    keeps the current too (its bias goes through the current, as neurosim's): each is refused, then warned."""
    model = small_mlp(cuba=True)
    with pytest.raises(hw.ExportError) as err:
        hw.export_lava(model, tmp_path / "m.net")
    assert [name for name, _ in err.value.problems] == ["3", "2"]
    assert "- 3: CubaLIF's reset='zero' has no exact equivalent" in str(err.value)
    assert "- 2: a CubaLIF's bias enters its synaptic current in neurosim" in str(err.value)
    with pytest.raises(hw.ExportError, match="- 2: a CubaLIF's bias") as err:
        hw.export_lava(model, tmp_path / "m.net", allow_reset_change=True)
    assert len(err.value.problems) == 1 and not (tmp_path / "m.net").exists()
    with pytest.raises(hw.ExportError, match="- 3: CubaLIF's reset='zero'"):
        hw.export_nir(model)
    with pytest.warns(UserWarning) as record:
        hw.export_lava(model, tmp_path / "m.net", allow_reset_change=True, allow_bias_change=True)
        hw.export_nir(model, allow_reset_change=True)
    assert [str(w.message) for w in record] == [
        "layers ['2']: CubaLIF's zero reset exported as Lava's, which keeps the synaptic current of the step after "
        "a spike", "layers ['2']: CubaLIF bias exported as Lava's, added to the membrane instead of the synaptic "
        "current", "layers ['2']: CubaLIF's zero reset exported as NIR's, which keeps the synaptic current of the "
        "step after a spike"]  # (a layer is named by its synapse)
    with pytest.raises(hw.ExportError, match="- 3: CubaLIF's reset"):
        hw.LoihiNetwork.from_model(model)
    args = ["m.pt", "--format", "lava", "--out", str(tmp_path / "c.net")]
    assert cli_main(args, load_model=lambda path: small_mlp(cuba=True)) == 2
    with pytest.warns(UserWarning, match="CubaLIF"):
        assert cli_main(args + ["--allow-reset-change", "--allow-bias-change"],
                        load_model=lambda path: small_mlp(cuba=True)) == 0


def test_file_reads_back_into_the_same_loihi_network(tmp_path):
    model = small_mlp(cuba=True)
    with pytest.warns(UserWarning, match="CubaLIF"):
        net = hw.export_lava(model, tmp_path / "m.net", steps=10, allow_reset_change=True, allow_bias_change=True)
    back = hw.LoihiNetwork.from_netx(tmp_path / "m.net")
    x = (torch.rand(10, 5, 8, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    for a, b in zip(net.run(x, 12), back.run(x, 12)):
        assert torch.equal(a, b)
    q = net.layers[1]
    assert q.i_decay == round(0.5 * 4096) and q.v_decay == round(0.1 * 4096)
    assert np.abs(net.layers[0].weight).max() == 254


def test_loihi_mode_is_quantized_float_for_lif_zero():
    """Without bias, LIF(reset='zero') in Loihi mode equals the float model delayed by one step per layer,
    up to quantization: most spikes agree on this random net."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(30, 20, bias=False), neurosim.LIF(beta=0.75, threshold=0.3, reset="zero"))
    x = (torch.rand(20, 8, 30) < 0.3).float()
    net = hw.LoihiNetwork.from_model(model)
    with torch.no_grad():
        ref = model(x)
    out = net(x, 21)[1:]
    assert ref.sum() > 20
    assert (out == ref).float().mean() > 0.97


@pytest.mark.parametrize("content", [b"", b"not an hdf5 file at all", None])
def test_corrupt_netx_files_give_clear_errors(tmp_path, content):
    path = tmp_path / "c.net"
    if content is None:
        hw.export_lava(small_mlp(), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])           # truncated
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match="cannot read the NetX file"):
        hw.read_netx(path)


def test_netx_file_with_unsupported_layer_type(tmp_path):
    import h5py

    path = tmp_path / "m.net"
    hw.export_lava(small_mlp(), path)
    with h5py.File(path, "r+") as f:
        del f["layer/2/type"]
        f["layer/2/type"] = np.array([b"pool"])
        del f["layer/1/neuron/vThMant"]
    with pytest.raises(ValueError) as err:
        hw.read_netx(path)
    assert "layer/2: layer type 'pool'" in str(err.value) and "layer/1: missing field" in str(err.value)


def test_run_lava_rejects_bad_input_before_starting_lava(tmp_path):
    path = tmp_path / "m.net"
    hw.export_lava(small_mlp(), path)
    with pytest.raises(ValueError, match="binary"):
        hw.run_lava(path, torch.full((4, 2, 8), 0.5))
    with pytest.raises(ValueError, match="steps must be >="):
        hw.run_lava(path, torch.zeros(4, 2, 8), steps=3)
    with pytest.raises(ValueError, match="does not exist"):
        hw.run_lava(tmp_path / "missing.net", torch.zeros(4, 2, 8))
    with pytest.raises(ValueError, match=r"at least one time step and one sample .* got shape \(0, 2, 8\)"):
        hw.run_lava(path, torch.zeros(0, 2, 8))  # (T=0 ran Lava for zero steps: it never returned)
    with pytest.raises(ValueError, match=r"takes input steps of shape \(8,\), got \(9,\)"):
        hw.run_lava(path, torch.zeros(4, 2, 9))
    (tmp_path / "junk.net").write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot read the NetX file"):
        hw.run_lava(tmp_path / "junk.net", torch.zeros(4, 2, 8))


def test_export_command_checks_its_output_path_and_input_shape(tmp_path, capsys):
    from neurosim.hardware import demo

    ckpt = save_exportable(demo.digits_mlp(hidden=8), tmp_path / "m.pt", "neurosim.hardware.demo:digits_mlp", hidden=8)
    for fmt in ("lava", "nir"):
        assert cli_main([str(ckpt), "--format", fmt, "--out", str(tmp_path)]) == 2
        assert "--out" in capsys.readouterr().err
        assert cli_main([str(ckpt), "--format", fmt, "--out", str(ckpt / "x.net")]) == 2
        assert "is a file, not a directory" in capsys.readouterr().err
    assert cli_main([str(ckpt), "--format", "nir", "--out", str(tmp_path / "new" / "m.nir")]) == 0  # (made)
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["m.nir"]  # (no temporary left)
    with pytest.raises(ValueError, match="input_shape must be .* of integers, got '64'"):
        hw.export_lava(small_mlp(), tmp_path / "s.net", input_shape="64")


@pytest.mark.parametrize("spoil, message", [
    (lambda m: m[0].weight.data.__setitem__((0, 0), float("nan")), "- 0: its weight holds NaN or inf"),
    (lambda m: m[0].bias.data.__setitem__(0, float("inf")), "- 0: its bias holds NaN or inf"),
    (lambda m: m[1].threshold.fill_(0.0), "- 1: threshold is 0: it must be > 0"),
    (lambda m: m[1].threshold.fill_(-0.5), "- 1: threshold is -0.5: it must be > 0"),
    (lambda m: m[1].beta.fill_(float("nan")), "- 1: beta is nan: it must be finite"),
])
def test_non_finite_parameters_and_thresholds_are_refused_by_both_exports(spoil, message, tmp_path):
    model = small_mlp()
    spoil(model)
    with pytest.raises(hw.ExportError, match=message):
        hw.export_lava(model, tmp_path / "m.net")
    with pytest.raises(hw.ExportError, match=message):
        hw.export_nir(model)
    assert not (tmp_path / "m.net").exists()


def test_a_layer_whose_weights_all_quantize_to_zero_is_refused_before_writing(tmp_path):
    model = small_mlp()
    model[0].weight.data.fill_(1e-3)
    model[0].bias.data.zero_()
    model[1].threshold.fill_(1000.0)  # (the threshold sets the scale: 1e-3 weights round to 0)
    with pytest.raises(hw.ExportError, match="- 0: every weight quantizes to 0"):
        hw.export_lava(model, tmp_path / "m.net")
    assert not (tmp_path / "m.net").exists()


def test_inhibitory_layer_lava_would_empty_is_refused_or_rescaled(tmp_path):
    """Every weight negative and the bias setting the scale: a strongest weight of -1 or -2 would be shifted to -256
    by Lava-DL's optimiser and lost in Lava's synapse, so the export is refused; -64 is exported as -63."""
    from neurosim.hardware.loihi import netx_keeps

    model = nn.Sequential(nn.Linear(8, 6), neurosim.LIF(beta=0.8, threshold=0.3, reset="zero"))
    model[0].weight.data.fill_(-0.001)
    model[0].weight.data[0, 0] = -0.002
    model[0].bias.data.fill_(4.095)        # (scale 1000: the strongest weight quantizes to -2)
    with pytest.raises(hw.ExportError, match="- 0: every weight is <= 0 and the strongest quantizes to -2 at weight "
                                            "scale 1000: Lava-DL's weight optimiser shifts it to -256"):
        hw.export_lava(model, tmp_path / "m.net")
    assert not (tmp_path / "m.net").exists()
    model[0].weight.data.mul_(32)          # (strongest -64: exported as -63, all of it kept)
    q = hw.export_lava(model, tmp_path / "m.net").layers[0]
    assert q.weight.min() == -63 and netx_keeps(q.weight) and q.scale == pytest.approx(63 / 0.064)


def test_weights_lost_to_quantization_are_warned_about(tmp_path):
    model = small_mlp()
    model[0].weight.data.fill_(1e-4)
    model[0].weight.data[0, 0] = 10.0  # (the largest weight sets the scale: the others round to 0)
    with pytest.warns(UserWarning, match="layer '0': 47 of its 48 nonzero weights quantize to 0"):
        hw.export_lava(model, tmp_path / "m.net")


def test_exportable_checkpoints_call_only_registered_builders_and_are_crc_checked(tmp_path):
    """A checkpoint is data: the builder it names is called only if registered (a crafted one named a function
    that writes files); a byte flipped inside it is found by its zip CRCs, which torch.load does not check."""
    from neurosim.hardware import demo
    from neurosim.hardware.cli import load_exportable, register_builder

    target = tmp_path / "written.txt"
    torch.save({"builder": "neurosim.training.checkpoint:atomic_write_text",
                "kwargs": {"path": str(target), "text": "x"}, "state_dict": {}}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="names the builder 'neurosim.training.checkpoint:atomic_write_text', which "
                                         "is not registered"):
        load_exportable(tmp_path / "evil.pt")
    assert not target.exists()
    with pytest.raises(ValueError, match="is not registered"):
        save_exportable(small_mlp(), tmp_path / "m.pt", "neurosim.hardware.demo:nope")
    good = save_exportable(demo.digits_mlp(hidden=8), tmp_path / "m.pt", "neurosim.hardware.demo:digits_mlp", hidden=8)
    data = bytearray(good.read_bytes())
    i = data.find(b"archive/data/0") + 200  # (inside the first tensor's bytes)
    data[i:i + 50] = bytes(b ^ 0xFF for b in data[i:i + 50])
    (tmp_path / "flipped.pt").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="fails its CRC check"):
        load_exportable(tmp_path / "flipped.pt")
    torch.save({"builder": "neurosim.hardware.demo:digits_mlp", "kwargs": {"hidden": 5},
                "state_dict": demo.digits_mlp(hidden=8).state_dict()}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="its state_dict does not fit the model"):
        load_exportable(tmp_path / "other.pt")
    assert register_builder("neurosim.hardware.demo:digits_mlp") == "neurosim.hardware.demo:digits_mlp"


def test_cli_exports_lava_and_nir(tmp_path, capsys):
    import nir

    from neurosim.hardware import demo

    ckpt = save_exportable(demo.digits_mlp(hidden=16), tmp_path / "m.pt", "neurosim.hardware.demo:digits_mlp",
                           hidden=16)
    assert cli_main([str(ckpt), "--format", "lava", "--out", str(tmp_path / "m.net")]) == 0
    assert hw.LoihiNetwork.from_netx(tmp_path / "m.net").layers[0].weight.shape == (16, 64)
    assert cli_main([str(ckpt), "--format", "nir", "--out", str(tmp_path / "m.nir")]) == 0
    g = nir.read(str(tmp_path / "m.nir"))
    assert set(g.nodes) == {"input", "syn0", "lif0", "syn1", "lif1", "output"}
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert cli_main([str(tmp_path / "junk.pt"), "--format", "lava", "--out", str(tmp_path / "j.net")]) == 2
    assert "cannot be read" in capsys.readouterr().err
    assert not (tmp_path / "j.net").exists()


def test_export_command_refuses_a_checkpoint_trained_on_analog_input_for_lava(tmp_path, capsys):
    """The "direct" encoder feeds the analog input as a current; NetX input takes binary spikes (run_lava refuses
    anything else), so the NetX export is refused (exit 2); NIR graphs take analog input and are written."""
    from neurosim import cli
    from neurosim.training import TrainConfig, Trainer

    out = tmp_path / "run"
    Trainer(TrainConfig(epochs=1, num_steps=3, encoder="direct", model_options={"hidden": [8], "reset": "zero"},
                        progress=False, tensorboard=False, plots=False, out_dir=str(out))).fit()
    ckpt = str(out / "checkpoints" / "best.pt")
    assert cli.main(["export", ckpt, "--format", "lava", "--out", str(tmp_path / "m.net")]) == 2
    assert "- input: the model takes analog input currents (trained with the 'direct' encoder)" in \
        capsys.readouterr().err
    assert not (tmp_path / "m.net").exists()
    assert cli.main(["export", ckpt, "--format", "nir", "--out", str(tmp_path / "m.nir")]) == 0
    from neurosim.training.restore import load_trained

    stack = load_trained(ckpt)[0].export_stack()
    with pytest.raises(hw.ExportError, match="analog input currents"):
        hw.LoihiNetwork.from_model(stack)  # (the Loihi mode refuses what export_lava refuses)


def test_pad_steps_counts_the_synapses_of_any_exportable_model_and_checks_t(tmp_path):
    """pad_steps needs no input_shape (a conv net) or allow_reset_change (reset='subtract'): it gives what the
    exported network's depth gives; t must be an integer >= 1."""
    from neurosim.hardware import demo

    conv = demo.digits_convnet()
    sub = nn.Sequential(nn.Linear(4, 3), neurosim.LIF(reset="subtract"))
    with pytest.warns(UserWarning, match="subtract"):
        nets = [hw.export_lava(conv, tmp_path / "c.net", input_shape=(1, 8, 8)),
                hw.export_lava(sub, tmp_path / "s.net", allow_reset_change=True)]
    for model, net in zip((conv, sub), nets):
        assert hw.pad_steps(model, 12) == hw.pad_steps(net, 12) == 12 + net.depth
    assert hw.pad_steps(conv, 12) == 15
    for t in (-5, 0, 2.7, True, "3"):
        with pytest.raises(ValueError, match="t must be an integer >= 1"):
            hw.pad_steps(demo.digits_mlp(), t)
    with pytest.raises(ValueError, match="sequential stack .* without synapses"):
        hw.pad_steps(nn.Sequential(neurosim.LIF()), 3)


def test_run_lava_wants_a_conv_input_in_its_exact_shape(tmp_path):
    """A (C, H, W) input takes spikes [T, B, C, H, W] only (the same number of values in another shape failed
    inside Lava); a flat input takes any shape of its size, as the Loihi mode does."""
    from neurosim.hardware import demo

    hw.export_lava(demo.digits_convnet(), tmp_path / "c.net", input_shape=(1, 8, 8))
    for shape in ((12, 2, 64), (12, 2, 8, 8), (12, 2, 1, 4, 16), (12, 2, 8, 8, 1)):
        with pytest.raises(ValueError, match=r"spikes: .* takes input steps of shape \(1, 8, 8\), got .* must be "
                                             r"\[T, B, 1, 8, 8\]"):
            hw.run_lava(tmp_path / "c.net", torch.zeros(shape))
        with pytest.raises(ValueError, match=r"x must have shape \[T, B, 1, 8, 8\]"):
            hw.LoihiNetwork.from_netx(tmp_path / "c.net")(torch.zeros(shape))


def test_netx_fields_lava_acts_on_but_the_loihi_mode_does_not_model_are_refused(tmp_path):
    """Synaptic delays, graded spikes (messageBits) and all-zero weights: read_netx names each layer, instead of
    reading a network that Lava runs differently (or not at all)."""
    import h5py

    path = tmp_path / "m.net"
    hw.export_lava(small_mlp(), path)
    with h5py.File(path, "r+") as f:
        f["layer/1/delay"] = np.full(6, 3.0, dtype=np.float32)
        f["layer/2/neuron/messageBits"] = 16
    with pytest.raises(ValueError) as err:
        hw.LoihiNetwork.from_netx(path)
    assert "layer/1: synaptic delays (up to 3 steps) are not simulated" in str(err.value)
    assert "layer/2: neuron messageBits 16 (graded spikes) is not simulated" in str(err.value)
    with h5py.File(path, "r+") as f:
        f["layer/1/delay"][...] = 0.0            # (zero delays are what Lava runs without them)
        f["layer/2/neuron/messageBits"][...] = 0
        f["layer/2/weight"][...] = 0.0
    with pytest.raises(ValueError, match=r"cannot read the NetX file .*\n  - layer/2: all weights are zero"):
        hw.read_netx(path)


def test_export_command_takes_the_input_shape_with_commas_or_spaces(tmp_path, capsys):
    """--input-shape is comma-separated as neurosim energy's (1,8,8), and the old space-separated form (1 8 8) still
    works; a shape of another rank or a non-integer size is a usage error naming --input-shape."""
    from neurosim.hardware import demo

    conv = lambda path: demo.digits_convnet()  # noqa: E731 - (a Conv2d first: the input shape is needed)
    for i, words in enumerate((["1,8,8"], ["1", "8", "8"], ["1,8", "8"])):
        out = tmp_path / f"c{i}.net"
        assert cli_main(["c.pt", "--format", "lava", "--out", str(out), "--input-shape", *words], load_model=conv) == 0
        assert hw.LoihiNetwork.from_netx(out).input_shape == (1, 8, 8)
    capsys.readouterr()
    for words, message in ((["8,8"], "got 2 sizes 8,8"), (["1,x,8"], "got '1,x,8'"), (["1,0,8"], "got '1,0,8'"),
                           (["8,"], "got '8,'")):
        with pytest.raises(SystemExit) as exc:
            cli_main(["c.pt", "--format", "nir", "--out", str(tmp_path / "c.nir"), "--input-shape", *words],
                     load_model=conv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and "usage: neurosim export" in err, err
        assert "error: argument --input-shape: " in err and message in err, err
    assert not (tmp_path / "c.nir").exists()


def test_export_command_refusals_name_its_flags_and_the_functions_their_keywords(tmp_path, capsys):
    """A refusal told a command-line user to "pass allow_reset_change=True": the command names its flags
    (--allow-reset-change, --allow-bias-change, --input-shape), the Python functions their keyword arguments."""
    from neurosim.hardware import demo

    subtract = nn.Sequential(nn.Linear(8, 3), neurosim.LIF(reset="subtract"))
    cases = [(subtract, ["pass --allow-reset-change to export with reset-to-zero"]),
             (small_mlp(cuba=True), ["Use LIF, or pass --allow-reset-change to export it so",
                                     "Train without bias, or pass --allow-bias-change to export it so"]),
             (demo.digits_convnet(), ["the first synapse is a Conv2d: pass --input-shape C,H,W"])]
    for model, expected in cases:
        for fmt in ("lava", "nir"):
            out = tmp_path / f"m.{fmt}"
            assert cli_main(["m.pt", "--format", fmt, "--out", str(out)], load_model=lambda p: model) == 2
            err = capsys.readouterr().err
            assert err.startswith("neurosim export: error: the model cannot be exported")
            for text in expected:
                assert text in err or (fmt == "nir" and "bias" in text), (text, err)  # (NIR keeps CubaLIF biases)
            assert "=True" not in err and "input_shape=" not in err, err
            assert not out.exists()
    with pytest.raises(hw.ExportError) as err:
        hw.export_lava(small_mlp(cuba=True), tmp_path / "m.net")
    assert "pass allow_reset_change=True" in str(err.value) and "pass allow_bias_change=True" in str(err.value)
    assert "--allow" not in str(err.value)
    with pytest.raises(hw.ExportError, match=r"pass input_shape=\(C, H, W\)"):
        hw.export_nir(demo.digits_convnet())


def test_export_command_refuses_lava_only_options_with_nir(tmp_path, capsys):
    """--allow-bias-change and --steps were accepted with --format nir and did nothing (NIR keeps a CubaLIF's bias
    exactly; a NIR graph stores no steps): each is a usage error naming it, and nothing is written."""
    base = ["m.pt", "--format", "nir", "--out", str(tmp_path / "m.nir"), "--allow-reset-change"]
    for flags, named in ((["--allow-bias-change"], ["--allow-bias-change"]), (["--steps", "4"], ["--steps"]),
                         (["--steps", "0", "--allow-bias-change"], ["--allow-bias-change", "--steps"])):
        with pytest.raises(SystemExit) as exc:
            cli_main(base + flags, load_model=lambda p: small_mlp(cuba=True))
        err = capsys.readouterr().err
        assert exc.value.code == 2 and "usage: neurosim export" in err
        for flag in named:
            assert f"{flag} applies to --format lava only" in err, err
    assert not (tmp_path / "m.nir").exists()
    with pytest.raises(SystemExit) as exc:
        cli_main(["m.pt", "--format", "lava", "--out", str(tmp_path / "m.net"), "--steps", "-1"])
    assert exc.value.code == 2 and "argument --steps: must be an integer >= 0, got '-1'" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="CubaLIF"):  # (the same options with lava, and nir without them: written)
        assert cli_main(["m.pt", "--format", "lava", "--out", str(tmp_path / "m.net"), "--steps", "4",
                         "--allow-reset-change", "--allow-bias-change"], load_model=lambda p: small_mlp(cuba=True)) == 0
        assert cli_main(base, load_model=lambda p: small_mlp(cuba=True)) == 0
    import h5py

    with h5py.File(tmp_path / "m.net") as f:
        assert int(f["simulation/tSample"][()]) == 4
    assert (tmp_path / "m.nir").exists()


def test_export_command_builds_a_plain_state_dict_with_model_as_energy_does(tmp_path, capsys):
    """A plain state dict got "pass a model loader (neurosim export uses the trainer's) or write it with
    save_exportable", which a command-line user cannot act on. The message names what they can do, and --model /
    --model-kwargs build its network with the loader neurosim energy uses for the same options."""
    import json

    from neurosim.hardware import demo, save_exportable as exported_save

    assert exported_save is save_exportable  # (the name the message gives: neurosim.hardware.save_exportable)
    model = demo.digits_mlp(hidden=8)
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    base = [str(tmp_path / "plain.pt"), "--format", "lava"]
    assert cli_main(base + ["--out", str(tmp_path / "a.net")]) == 2
    err = capsys.readouterr().err
    for text in ("does not say how to build its model", "give --model package.module:function (and --model-kwargs",
                 "neurosim train", "neurosim.hardware.save_exportable"):
        assert text in err, (text, err)
    assert "model loader" not in err and not (tmp_path / "a.net").exists()
    with pytest.raises(ValueError, match="write the model with neurosim.hardware.save_exportable, or build it"):
        hw.load_exportable(tmp_path / "plain.pt")  # (the Python function's own words)

    spec = ["--model", "neurosim.hardware.demo:digits_mlp", "--model-kwargs", json.dumps({"hidden": 8})]
    assert cli_main(base + ["--out", str(tmp_path / "a.net"), *spec]) == 0
    ckpt = save_exportable(model, tmp_path / "m.pt", "neurosim.hardware.demo:digits_mlp", hidden=8)
    assert cli_main([str(ckpt), "--format", "lava", "--out", str(tmp_path / "b.net")]) == 0
    a, b = hw.LoihiNetwork.from_netx(tmp_path / "a.net"), hw.LoihiNetwork.from_netx(tmp_path / "b.net")
    assert all(np.array_equal(x.weight, y.weight) for x, y in zip(a.layers, b.layers))
    capsys.readouterr()
    assert cli_main(base + ["--out", str(tmp_path / "c.net"), "--model", "neurosim.hardware.demo:digits_mlp"]) == 2
    assert "does not fit the network --model 'neurosim.hardware.demo:digits_mlp' builds" in capsys.readouterr().err
    assert cli_main([str(ckpt), "--format", "nir", "--out", str(tmp_path / "c.nir"), *spec]) == 2
    assert "--model: " in (err := capsys.readouterr().err) and "builds its own model" in err, err
    with pytest.raises(SystemExit) as exc:
        cli_main(base + ["--out", str(tmp_path / "c.net"), "--model-kwargs", "{}"])
    assert exc.value.code == 2 and "--model-kwargs needs --model" in capsys.readouterr().err
    assert not (tmp_path / "c.net").exists() and not (tmp_path / "c.nir").exists()


def test_demo_accuracy_scores_tied_outputs_as_the_average_over_every_order_of_the_outputs():
    """demo.accuracy shares a sample among tied top outputs; reference: the first-argmax accuracy averaged over all
    orderings of the output neurons (what a random tie-break gives on average), on counts that tie often."""
    import itertools
    from neurosim.hardware import demo
    g = torch.Generator().manual_seed(3)
    spikes = (torch.rand(3, 40, 4, generator=g) < 0.4).float()  # 3 steps, 40 samples, 4 outputs: many ties
    y = torch.randint(0, 4, (40,), generator=g)
    counts = spikes.sum(0)
    orders = list(itertools.permutations(range(4)))
    ref = sum(float((torch.tensor(p)[counts[:, list(p)].argmax(-1)] == y).float().mean()) for p in orders) / len(orders)
    tied = int(((counts == counts.max(-1, keepdim=True).values).sum(-1) > 1).sum())
    assert tied >= 10  # (the case is about ties)
    assert demo.accuracy(spikes, y) == pytest.approx(100 * ref, abs=1e-4)  # (float32 means)
