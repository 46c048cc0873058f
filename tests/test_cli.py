"""The `neurosim` command: argparse-style errors with exit code 2, help for every command, config files
overridden by flags, energy/export stubs that exit non-zero while their modules are missing."""
import json
import shutil
import subprocess
import sys

import pytest
import torch

from neurosim import cli


def _fails(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    return exc.value.code, capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["train", "--epochs", "0"], "argument --epochs: must be an integer >= 1, got 0"),
    (["train", "--epochs", "three"], "argument --epochs: must be an integer >= 1, got 'three'"),
    (["train", "--lr", "-1"], "argument --lr: must be a number in (0, inf), got -1"),
    (["train", "--lr", "nan"], "argument --lr: must be a number in (0, inf), got nan"),
    (["train", "--val-fraction", "1"], "argument --val-fraction: must be a number in (0, 1), got 1"),
    (["train", "--batch-size", "-5"], "argument --batch-size: must be an integer >= 1, got -5"),
    (["train", "--encoder", "morse"], "argument --encoder: invalid choice: 'morse'"),
    (["train", "--backend", "loihi"], "argument --backend: invalid choice: 'loihi'"),
    (["train", "--device", "tpu"], "argument --device: must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
    (["train", "--opt", "hidden"], "argument --opt: must look like KEY=VALUE, got 'hidden'"),
    (["train", "--model", "nope"], "unknown model 'nope'; registered models: "),
    (["train", "--dataset", "nope"], "unknown dataset 'nope'; registered datasets: "),
    (["demo", "--epochs", "-1"], "argument --epochs: must be an integer >= 1, got -1"),
    (["train", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ([], "the following arguments are required: COMMAND"),
])
def test_bad_values_exit_2_with_argparse_message(argv, message, capsys):
    code, err = _fails(argv, capsys)
    assert code == 2
    assert "usage: neurosim" in err and "error: " in err
    assert message in err


def test_cuda_without_gpu_is_a_usage_error(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this check needs a machine without CUDA")
    code, err = _fails(["train", "--device", "cuda"], capsys)
    assert code == 2 and "neurosim train: error: device is 'cuda' but CUDA is not available here" in err


def test_bad_config_file_and_missing_checkpoint_are_usage_errors(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    for text, message in [("epochs: 2\nlearning_rate: 0.1\n", "unknown config key(s) learning_rate"),
                          ("epochs: -2\n", "epochs must be an integer >= 1, got -2"),
                          # (a number quoted in YAML, a null: named, not a torch TypeError)
                          ("val_fraction: '0.2'\n", "val_fraction must be a number in (0.0, 1.0), got '0.2'"),
                          ("weight_decay: null\n", "weight_decay must be a number in [0.0, inf], got None"),
                          ("lr: abc\n", "lr must be a finite number > 0, got 'abc'")]:
        cfg.write_text(text)
        code, err = _fails(["train", "--config", str(cfg)], capsys)
        assert code == 2 and message in err, text
    code, err = _fails(["train", "--out-dir", str(tmp_path / "none"), "--resume"], capsys)
    assert code == 2 and "last.pt' does not exist" in err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 64)
    code, err = _fails(["train", "--resume", str(bad)], capsys)
    assert code == 2 and "bad.pt' is truncated or not a torch file" in err


def test_resuming_another_run_or_an_unwritable_out_dir_are_usage_errors_before_training(tmp_path, capsys):
    tiny = ["train", "--epochs", "1", "--num-steps", "2", "--opt", "hidden=[8]", "--no-progress",
            "--no-tensorboard", "--no-plots", "--device", "cpu"]
    assert cli.main(tiny + ["--out-dir", str(tmp_path / "a")]) == 0
    last = tmp_path / "a" / "checkpoints" / "last.pt"
    code, err = _fails(tiny + ["--opt", "hidden=[16]", "--out-dir", str(tmp_path / "b"), "--resume", str(last)],
                       capsys)
    assert code == 2 and "was written by a different run (model_options" in err
    (tmp_path / "c" / "checkpoints" / "last.pt").mkdir(parents=True)  # (where the checkpoint must go)
    code, err = _fails(tiny + ["--out-dir", str(tmp_path / "c")], capsys)
    assert code == 2 and "out_dir" in err and "cannot hold this run's files" in err
    assert not (tmp_path / "c" / "log.csv").exists()  # (nothing trained)
    code, err = _fails(tiny + ["--dataset", "damped_sine", "--encoder", "rate", "--out-dir", str(tmp_path / "d")],
                       capsys)
    assert code == 2 and "encoder 'rate' cannot encode the samples of dataset 'damped_sine'" in err
    assert not (tmp_path / "d").exists()  # (found before anything was made)


@pytest.mark.parametrize("command", [None, "demo", "train", "energy", "export"])
def test_help_for_every_command(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(([command] if command else []) + ["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and out.startswith("usage: neurosim")
    if command in ("demo", "train"):
        assert "--epochs" in out and "--device" in out and "--resume" in out and "--out-dir" in out


def test_a_command_whose_module_is_missing_says_so_and_fails(capsys):
    import argparse

    parser = argparse.ArgumentParser(prog="neurosim")
    sub = parser.add_subparsers(dest="command", required=True)
    cli._optional_command(sub, "energy", "neurosim.no_such_module", "estimate energy")
    args = parser.parse_args(["energy"])
    assert args.handler(parser, args) == 1
    assert "neurosim energy: not available yet: neurosim.no_such_module is not available" in capsys.readouterr().err


def test_config_file_then_flags(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"dataset": "damped_sine", "epochs": 2, "lr": 0.01, "num_steps": 2,
                               "model_options": {"hidden": [8]}, "dataset_options": {"n_points": 100}}))
    out = tmp_path / "run"
    assert cli.main(["train", "--config", str(cfg), "--epochs", "1", "--data-opt", "seq_len=8", "--no-progress",
                     "--no-tensorboard", "--out-dir", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert (saved["dataset"], saved["epochs"], saved["lr"], saved["num_steps"]) == ("damped_sine", 1, 0.01, 2)
    assert saved["dataset_options"] == {"n_points": 100, "seq_len": 8}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_run"] == 1 and summary["num_train"] + summary["num_val"] == 100 - 8
    printed = capsys.readouterr().out
    assert "best epoch 1 (lowest validation loss): loss " in printed and str(out / "prediction.png") in printed


def test_console_script_is_installed():
    exe = shutil.which("neurosim") or str(__import__("pathlib").Path(sys.executable).with_name("neurosim"))
    res = subprocess.run([exe, "train", "--epochs", "x"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "neurosim train: error: argument --epochs" in res.stderr


class FunctionalReadout(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x).mean(0)


def test_energy_command_rebuilds_a_trainer_checkpoint(tmp_path, capsys):
    from neurosim.training import TrainConfig, Trainer
    from neurosim.training.restore import time_major_inputs

    out = tmp_path / "run"
    Trainer(TrainConfig(epochs=1, num_steps=3, model_options={"hidden": [8]}, progress=False, tensorboard=False,
                        plots=False, out_dir=str(out))).fit()
    ckpt = out / "checkpoints" / "best.pt"
    assert cli.main(["energy", str(ckpt), "--plain", "--json", str(tmp_path / "e.json")]) == 0
    first = json.loads((tmp_path / "e.json").read_text())["layers"][0]
    _, spikes = time_major_inputs(ckpt)                 # the same seeded encoding, recomputed here
    assert spikes.shape == (3, 64, 64)
    # hand count: every input spike drives the 8 hidden synapses once; dense = T*B*64*8 multiply-adds
    assert first["name"] == "model.linears.0"
    assert first["synops"] == int(spikes.sum()) * 8 and first["dense"] == 3 * 64 * 64 * 8
    # the audit (on here) finds no arithmetic outside the counted layers: the time-mean readout is a layer
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["totals"]["not_counted"] == [] and report["layers"][-1]["name"] == "model.time_mean"
    # a functional readout in a plain state-dict model: listed by the audit, not with --no-audit
    torch.save(FunctionalReadout().state_dict(), tmp_path / "readout.pt")
    spikes_file = tmp_path / "x.pt"
    torch.save((torch.rand(3, 2, 4) < 0.5).float(), spikes_file)
    args = ["energy", str(tmp_path / "readout.pt"), "--model", f"{__name__}:FunctionalReadout", "--input",
            str(spikes_file), "--plain"]
    assert cli.main(args + ["--json", str(tmp_path / "a.json")]) == 0
    assert json.loads((tmp_path / "a.json").read_text())["totals"]["not_counted"] == ["FunctionalReadout (functional)"]
    assert cli.main(args + ["--no-audit", "--json", str(tmp_path / "b.json")]) == 0
    assert json.loads((tmp_path / "b.json").read_text())["totals"]["not_counted"] == []
    code, err = _fails(["energy", str(tmp_path / "missing.pt")], capsys)
    assert code == 2 and "does not exist" in err
    # a trainer checkpoint takes --samples validation samples, or the time-major input given; --model is refused
    assert cli.main(["energy", str(ckpt), "--plain", "--samples", "5", "--json", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["batch_size"] == 5
    torch.save((torch.rand(3, 7, 64) < 0.3).float(), tmp_path / "x7.pt")
    assert cli.main(["energy", str(ckpt), "--plain", "--input", str(tmp_path / "x7.pt"), "--json",
                     str(tmp_path / "i.json")]) == 0
    given = json.loads((tmp_path / "i.json").read_text())
    assert given["batch_size"] == 7 and given["layers"][0]["synops"] == int(torch.load(tmp_path / "x7.pt").sum()) * 8
    code, err = _fails(["energy", str(ckpt), "--model", "x:y"], capsys)
    assert code == 2 and "--model: " in err and "is a neurosim trainer checkpoint, which rebuilds its own model" in err
    code, err = _fails(["energy", str(ckpt), "--samples", "5", "--input", str(tmp_path / "x7.pt")], capsys)
    assert code == 2 and "does not go with --input" in err
    # a cut checkpoint says so (it is not taken for a plain state dict that needs --model)
    (tmp_path / "cut.pt").write_bytes(ckpt.read_bytes()[:3000])
    code, err = _fails(["energy", str(tmp_path / "cut.pt")], capsys)
    assert code == 2 and "cut.pt' is truncated or not a torch file" in err


def test_energy_help_states_the_defaults_and_describes_every_option(capsys):
    """`neurosim energy --help` did not give the defaults of --hardware and --input-rate and had no description for
    --seed and --device."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["energy", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ("(default cmos45nm)", "--input-rate INPUT_RATE firing probability", "(default 0.2)",
                   "--seed SEED seed of every random draw (default 0)",
                   "--device DEVICE where the model runs: cpu (default), cuda or cuda:N"):
        assert phrase in text, phrase


class InlineResidual(torch.nn.Module):
    """A user model whose residual ``x + self.lif(self.fc(x))`` is a plain torch call outside every module."""

    def __init__(self):
        super().__init__()
        import neurosim

        self.fc = torch.nn.Linear(5, 5)
        self.lif = neurosim.LIF(backend="torch", threshold=0.5)
        self.out = torch.nn.Linear(5, 3)

    def forward(self, x):
        return self.out(x + self.lif(self.fc(x)))


def test_energy_command_prints_what_profile_prints(tmp_path, capsys):
    """``neurosim energy`` audits by default and says so; what it prints is byte for byte what
    ``profile(..., audit=True)`` prints for the same model and input (and with --no-audit, what profile's default
    prints, which says the audit did not run and how to run it). The files it writes hold the same report."""
    from neurosim.energy import profile

    torch.manual_seed(0)
    model = InlineResidual()
    torch.save(model.state_dict(), tmp_path / "m.pt")
    x = (torch.rand(4, 3, 5) < 0.4).float()
    torch.save(x, tmp_path / "x.pt")
    argv = ["energy", str(tmp_path / "m.pt"), "--model", f"{__name__}:InlineResidual", "--input",
            str(tmp_path / "x.pt"), "--plain"]
    for flags, audit, says in (([], True, "audit on: "), (["--no-audit"], False, "NOT CHECKED: ")):
        capsys.readouterr()
        assert cli.main(argv + flags + ["--json", str(tmp_path / "e.json"), "--csv", str(tmp_path / "e.csv")]) == 0
        printed = capsys.readouterr().out
        rep = profile(model.eval(), x, audit=audit)
        rep.print(rich=False)
        expected = capsys.readouterr().out
        assert printed == expected + f"wrote {tmp_path / 'e.csv'}\nwrote {tmp_path / 'e.json'}\n"
        assert any(line.startswith(says) for line in printed.splitlines()), printed
        assert (tmp_path / "e.json").read_text() == rep.to_json() + "\n"
        assert (tmp_path / "e.csv").read_bytes() == rep.to_csv().encode()
    assert rep.not_counted == [] and profile(model, x, audit=True).not_counted == ["InlineResidual (functional)"]


def test_energy_command_takes_a_batch_first_models_samples_as_its_batch(tmp_path):
    """The transformers take batch-first samples [B, L, F]: the report took dim 1 (the sequence) as the batch size,
    so the per-sample energy of a trained EST was L/B times its real value."""
    import neurosim.models  # noqa: F401  (registers "est")
    from neurosim.training import TrainConfig, Trainer

    out = tmp_path / "run"
    Trainer(TrainConfig(model="est", dataset="digits", epochs=1, num_steps=2, batch_size=256, progress=False,
                        tensorboard=False, plots=False, out_dir=str(out), device="cpu",
                        model_options={"dim": 8, "depth": 1, "heads": 2})).fit()
    assert cli.main(["energy", str(out / "checkpoints" / "last.pt"), "--plain", "--samples", "6", "--json",
                     str(tmp_path / "e.json")]) == 0
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["batch_size"] == 6
    total = report["totals"]
    assert total["energy_per_sample_pj"] == pytest.approx(total["energy_pj"] / 6)


@pytest.fixture(scope="module")
def est_rate_checkpoint(tmp_path_factory):
    """A tiny EST trained one epoch on digits with the rate encoder (a random input code)."""
    import neurosim.models  # noqa: F401  (registers "est")
    from neurosim.training import TrainConfig, Trainer

    out = tmp_path_factory.mktemp("est_rate")
    Trainer(TrainConfig(model="est", dataset="digits", encoder="rate", epochs=1, num_steps=2, batch_size=256,
                        progress=False, tensorboard=False, plots=False, out_dir=str(out), device="cpu",
                        model_options={"dim": 8, "depth": 1, "heads": 2})).fit()
    return out / "checkpoints" / "last.pt"


def _energy_json(argv, path):
    assert cli.main(["energy", *map(str, argv), "--plain", "--json", str(path)]) == 0
    return json.loads(path.read_text())


def test_energy_command_is_reproducible_and_seeded_for_every_model(est_rate_checkpoint, tmp_path):
    """An EST/Spikformer checkpoint rate-codes its input: two runs of `neurosim energy` gave different SynOps and
    --seed changed nothing (its encoder drew from the unseeded global RNG). The same seed now gives the same report,
    another seed another draw, and the command leaves the caller's global RNG as it was."""
    def synops(*flags):
        return _energy_json([est_rate_checkpoint, "--samples", "8", *flags], tmp_path / "e.json")["totals"]["synops"]

    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = synops()
    assert torch.equal(torch.get_rng_state(), state)
    torch.rand(5)                                       # (another global RNG state: the report does not change)
    assert synops() == first == synops("--seed", "0")
    assert synops("--seed", "1") != first


def test_energy_command_leaves_an_est_input_encoder_out_like_the_spiking_mlps(est_rate_checkpoint, tmp_path,
                                                                             capsys):
    """The encoder turns data into input spikes; the network's energy starts at its first synaptic layer (the
    README's ``profile(est.net, est.encode(x))``). For spiking_mlp the command profiled the network on encoded input,
    but an EST checkpoint was profiled with its rate encoder inside, which the report then listed as "NOT COUNTED:
    TokenSequenceModel (functional)". Now the EST is profiled like the MLP: its encoded, seeded input into the
    network, nothing left uncounted."""
    from neurosim.energy import profile
    from neurosim.training.restore import load_trained

    report = _energy_json([est_rate_checkpoint, "--samples", "8"], tmp_path / "e.json")
    printed = capsys.readouterr().out
    assert report["totals"]["not_counted"] == [] and "NOT COUNTED" not in printed
    assert report["layers"][0]["name"] == "model.net.embed" and report["batch_size"] == 8
    model, _, info, val = load_trained(est_rate_checkpoint)
    torch.manual_seed(0)                                # (the command's default --seed)
    spikes = model.encode(torch.stack([info.dataset[i][0] for i in val[:8]]))
    assert spikes.shape == (2, 8, 8, 8) and set(spikes.unique().tolist()) == {0.0, 1.0}
    expected = profile(model.net, spikes, audit=True)
    assert [r["name"] for r in report["layers"]] == ["model.net." + r.name for r in expected.layers]
    assert report["totals"]["synops"] == expected.totals()["synops"]
    assert report["totals"]["energy_pj"] == pytest.approx(expected.totals()["energy_pj"])


def test_energy_command_refuses_an_input_rate_it_would_not_use(est_rate_checkpoint, capsys):
    """--input-rate is the firing probability of --input-shape's random input: without --input-shape the command
    profiled the checkpoint's validation samples and ignored the rate without a word. It is a usage error now."""
    code, err = _fails(["energy", str(est_rate_checkpoint), "--input-rate", "0.2"], capsys)
    assert code == 2 and "usage: neurosim energy" in err and "Traceback" not in err
    assert "error: --input-rate 0.2 is the firing probability of the random input of --input-shape" in err


def test_energy_command_refuses_more_samples_than_the_validation_set_holds(est_rate_checkpoint, tmp_path, capsys):
    """--samples 100000 was cut to the validation set's size without a word (the only sign: "batch size 359"). It
    is a usage error naming how many there are; that many is accepted."""
    from neurosim.training.restore import load_trained

    available = len(load_trained(est_rate_checkpoint)[3])
    code, err = _fails(["energy", str(est_rate_checkpoint), "--samples", "100000"], capsys)
    assert code == 2 and "Traceback" not in err
    assert (f"error: --samples 100000: this checkpoint's dataset has only {available} validation samples; give at "
            f"most {available}") in err
    code, err = _fails(["energy", str(est_rate_checkpoint), "--samples", str(available + 1)], capsys)
    assert code == 2 and f"only {available} validation samples" in err
    assert _energy_json([est_rate_checkpoint, "--samples", available], tmp_path / "e.json")["batch_size"] == available


def test_energy_command_input_of_the_wrong_rank_names_the_checkpoints_layout(est_rate_checkpoint, tmp_path, capsys):
    """--input-shape / --input must be in the layout the checkpoint's model takes: time-major [T, B, ...] spikes for
    a model that encodes its input (the EST: [T, B, tokens, features]), batch-first [B, ...] for the others (the
    BTSPFormer: [B, L]). A shape of another rank failed inside the model (the BTSPFormer's "x must have 2 dimensions
    [B, F]"), or ran on a misread layout; it is a usage error naming the checkpoint's layout now, and the help says
    which layout goes with which model."""
    from neurosim.training import TrainConfig, Trainer

    code, err = _fails(["energy", str(est_rate_checkpoint), "--input-shape", "4,2,64"], capsys)
    assert code == 2 and "Traceback" not in err
    assert ("error: --input-shape 4,2,64 has 3 dims, but this checkpoint's model takes time-major [T, B, 8, 8] "
            "(4 dims), e.g. --input-shape 2,64,8,8") in err
    torch.save((torch.rand(2, 5, 64) < 0.3).float(), tmp_path / "x.pt")
    code, err = _fails(["energy", str(est_rate_checkpoint), "--input", str(tmp_path / "x.pt")], capsys)
    assert code == 2 and f"--input {str(tmp_path / 'x.pt')!r} (a tensor of shape (2, 5, 64)) has 3 dims, but " \
                         "this checkpoint's model takes time-major [T, B, 8, 8]" in err
    assert _energy_json([est_rate_checkpoint, "--input-shape", "3,5,8,8"], tmp_path / "e.json")["batch_size"] == 5
    out = tmp_path / "btsp"
    Trainer(TrainConfig(model="btspformer", dataset="damped_sine", epochs=1, progress=False, tensorboard=False,
                        plots=False, out_dir=str(out), device="cpu", dataset_options={"n_points": 200, "seq_len": 8},
                        model_options={"model_dim": 8, "layers": 1, "heads": 2})).fit()
    btsp = out / "checkpoints" / "last.pt"
    code, err = _fails(["energy", str(btsp), "--input-shape", "4,2,8"], capsys)
    assert code == 2 and "error: --input-shape 4,2,8 has 3 dims, but this checkpoint's model takes batch-first " \
                         "[B, 8] (2 dims)" in err
    assert _energy_json([btsp, "--input-shape", "2,8"], tmp_path / "e.json")["batch_size"] == 2
    with pytest.raises(SystemExit):
        cli.main(["energy", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "time-major T,B,... (its encoded spikes) for a model that encodes its input (spiking_mlp, est, " in text
    assert "batch-first B,... for the others (btspformer," in text


def test_export_stack_is_the_same_network_and_export_command_takes_trainer_checkpoints(tmp_path, capsys):
    import torch
    from neurosim.training import TrainConfig, Trainer
    from neurosim.training.restore import load_trained, time_major_inputs

    out = tmp_path / "run"
    Trainer(TrainConfig(epochs=1, num_steps=5, model_options={"hidden": [12], "reset": "zero"}, progress=False,
                        tensorboard=False, plots=False, out_dir=str(out))).fit()
    ckpt = out / "checkpoints" / "best.pt"
    model = load_trained(ckpt)[0]
    _, s = time_major_inputs(ckpt, num_samples=32)
    stack = model.export_stack()
    h = s
    for layer in list(stack)[:-1]:
        h = layer(h)
    spikes, mem = stack[-1](h, return_mem=True)
    assert spikes.sum() == 0                                           # the readout integrator never fires
    torch.testing.assert_close(mem[-1] / 5, model.forward_spikes(s), rtol=1e-5, atol=1e-5)

    code = cli.main(["export", str(ckpt), "--format", "lava", "--out", str(tmp_path / "net.h5")])
    if code != 0:
        pytest.fail(capsys.readouterr().err)
    assert (tmp_path / "net.h5").stat().st_size > 0 and "NetX network, 2 layers" in capsys.readouterr().out
    # NIR too: the readout integrator (beta=1, no leak) is NIR's IF node, and the graph imports back to the stack
    from neurosim.hardware import import_nir

    code = cli.main(["export", str(ckpt), "--format", "nir", "--out", str(tmp_path / "net.nir")])
    if code != 0:
        pytest.fail(capsys.readouterr().err)
    back = import_nir(str(tmp_path / "net.nir"))
    with torch.no_grad():
        hb = s
        for layer in list(back)[:-1]:
            hb = layer(hb)
        assert torch.equal(hb, h)  # (the hidden spikes)
        torch.testing.assert_close(back[-1](hb, return_mem=True)[1], mem)  # (the readout's membrane: no leak)


def test_export_and_energy_read_the_same_plain_state_dict_with_model(tmp_path, capsys):
    """neurosim energy builds a plain state dict's network with --model package.module:function (--model-kwargs);
    neurosim export told such a file's user to "pass a model loader", which a command cannot: it takes the same
    options (through energy's loader), and a trainer checkpoint, which rebuilds itself, refuses them in both."""
    from neurosim.hardware import demo
    from neurosim.training import TrainConfig, Trainer

    torch.save(demo.digits_mlp(hidden=8).state_dict(), tmp_path / "plain.pt")
    plain = str(tmp_path / "plain.pt")
    spec = ["--model", "neurosim.hardware.demo:digits_mlp", "--model-kwargs", '{"hidden": 8}']
    assert cli.main(["export", plain, "--format", "nir", "--out", str(tmp_path / "m.nir")]) == 2
    err = capsys.readouterr().err
    assert "give --model package.module:function" in err and "neurosim.hardware.save_exportable" in err, err
    assert cli.main(["export", plain, "--format", "nir", "--out", str(tmp_path / "m.nir"), *spec]) == 0
    assert cli.main(["energy", plain, "--plain", "--input-shape", "4,2,64", *spec]) == 0
    assert (tmp_path / "m.nir").exists() and "wrote" in capsys.readouterr().out

    out = tmp_path / "run"
    Trainer(TrainConfig(epochs=1, num_steps=3, model_options={"hidden": [8], "reset": "zero"}, progress=False,
                        tensorboard=False, plots=False, out_dir=str(out))).fit()
    ckpt = str(out / "checkpoints" / "best.pt")
    capsys.readouterr()
    assert cli.main(["export", ckpt, "--format", "lava", "--out", str(tmp_path / "m.net"), *spec]) == 2
    assert "--model: " in (err := capsys.readouterr().err) and "builds its own model" in err, err
    assert not (tmp_path / "m.net").exists()
    code, err = _fails(["energy", ckpt, *spec], capsys)
    assert code == 2 and "--model and --model-kwargs" in err and "rebuilds its own model" in err, err


def test_exponent_notation_is_a_number_in_config_files_and_options(tmp_path):
    """PyYAML follows YAML 1.1, whose floats need a dot and a signed exponent: `lr: 1e-3` was the string '1e-3'
    and refused ("lr must be a finite number > 0, got '1e-3'"), as were --data-opt dt=1e-2 and --opt beta=5e-1."""
    import yaml

    from neurosim.training.config import load_config_file

    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: 1e-3\nweight_decay: 5E-4\ngrad_clip: 1.5e1\nmodel_options: {beta: 5e-1, hidden: [8]}\n")
    parser = cli.build_parser()
    args = parser.parse_args(["train", "--config", str(cfg), "--data-opt", "dt=1e-2", "--opt", "threshold=2e0"])
    config, _ = cli._config_from_args(parser._subparsers._group_actions[0].choices["train"], args, {})
    assert (config.lr, config.weight_decay, config.grad_clip) == (0.001, 0.0005, 15.0)
    assert config.model_options == {"beta": 0.5, "hidden": [8], "threshold": 2.0}
    assert config.dataset_options == {"dt": 0.01}
    assert load_config_file(cfg)["lr"] == 0.001
    # what YAML read before stays as it was: integers, words, quoted strings; PyYAML's own loader is untouched
    for text, value in [("n=3", 3), ("x=e5", "e5"), ("x=1e", "1e"), ("s='1e-3'", "1e-3"), ("v=[1e-3, 2]", [0.001, 2])]:
        assert cli._key_value(text) == (text.split("=")[0], value)
    assert yaml.safe_load("1e-3") == "1e-3"


TINY = ["--epochs", "1", "--num-steps", "2", "--opt", "hidden=[8]", "--no-progress", "--device", "cpu"]


def test_training_into_an_earlier_run_needs_resume_or_overwrite(tmp_path, capsys):
    """A second run in the same --out-dir replaced the first one's checkpoints, log and summary and left the rest
    (its prediction.png, its TensorBoard events next to the new run's). Now it is refused; --overwrite removes the
    files a run writes (nothing else) first."""
    out = tmp_path / "a"
    sine = ["--dataset", "damped_sine", "--data-opt", "n_points=100", "--data-opt", "seq_len=8"]
    assert cli.main(["train", *sine, *TINY, "--out-dir", str(out)]) == 0
    (out / "notes.txt").write_text("mine")
    (out / "tb" / "mine").mkdir()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, err = _fails(["train", *TINY, "--out-dir", str(out)], capsys)
    assert code == 2 and "Traceback" not in err
    assert (f"error: {out} already holds a run (checkpoints/last.pt, checkpoints/best.pt, summary.json and 5 more); "
            "pass --resume to continue it, --overwrite to replace it, or another --out-dir") in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before          # nothing touched
    code, err = _fails(["train", *TINY, "--out-dir", str(out), "--resume", "--overwrite"], capsys)
    assert code == 2 and "argument --overwrite: not allowed with argument --resume" in err

    assert cli.main(["train", *TINY, "--out-dir", str(out), "--overwrite"]) == 0
    assert json.loads((out / "summary.json").read_text())["dataset"] == "digits"
    assert not (out / "prediction.png").exists()                                         # the sine run's plot went
    assert len(list((out / "tb").glob("events.out.tfevents.*"))) == 1                    # the new run's only
    assert (out / "notes.txt").read_text() == "mine" and (out / "tb" / "mine").is_dir()  # not the run's: kept
    (tmp_path / "empty").mkdir()
    assert cli.main(["train", *TINY, "--no-plots", "--out-dir", str(tmp_path / "empty")]) == 0   # an empty folder


def test_the_trainer_refuses_an_earlier_run_unless_told_to_overwrite_it(tmp_path):
    from neurosim.training import RunExists, TrainConfig, Trainer

    cfg = TrainConfig(epochs=1, num_steps=2, model_options={"hidden": [8]}, progress=False, tensorboard=False,
                      plots=False, device="cpu", out_dir=str(tmp_path))
    Trainer(cfg).fit()
    with pytest.raises(RunExists, match=r"already holds a run \(checkpoints/last.pt, .*pass resume=True to continue "
                                         r"it, overwrite=True to replace it, or another out_dir"):
        Trainer(cfg).fit()
    with pytest.raises(ValueError, match="resume and overwrite=True exclude each other"):
        Trainer(cfg).fit(resume=tmp_path / "checkpoints" / "last.pt", overwrite=True)
    assert Trainer(cfg).fit(overwrite=True)["epochs_run"] == 1


def test_demo_replaces_its_earlier_run_and_says_so(tmp_path, capsys):
    """`neurosim demo` (scripts/demo.sh) must keep working when run again into its out dir."""
    args = ["demo", *TINY, "--no-tensorboard", "--no-plots", "--out-dir", str(tmp_path)]
    assert cli.main(args) == 0
    (tmp_path / "energy.csv").write_text("not the trainer's")
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert f"neurosim demo: replaced the earlier run in {tmp_path} (checkpoints/last.pt" in out
    # "best" is the lowest validation loss, not the highest accuracy: the report says so
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (f"validation accuracy {summary['best']['accuracy']:.3f}, loss {summary['best']['loss']:.4f} at epoch 1, "
            "the best (lowest validation loss)") in out
    assert (tmp_path / "energy.csv").read_text() == "not the trainer's"
    code, err = _fails(["demo", "--opt", "beta=abc", "--out-dir", str(tmp_path / "b")], capsys)
    assert code == 2 and "neurosim demo: error: beta must be a number in [0.0, 1.0], got 'abc'" in err


@pytest.mark.parametrize("option, message", [
    ("amplitude=abc", "amplitude must be a finite number, got 'abc'"),   # (was: could not convert string to float)
    # finite, but the float32 series overflows to inf (the model then failed on NaN/inf inputs: a traceback)
    ("amplitude=1e39", "amplitude=1e+39 with gamma=0.1 gives values beyond float32's range (the series is stored "
                       "as float32"),
    ("gamma=-100", "amplitude=1.0 with gamma=-100.0 gives values beyond float32's range"),
])
def test_damped_sine_options_are_named_when_refused(tmp_path, option, message, capsys):
    code, err = _fails(["train", "--dataset", "damped_sine", "--data-opt", option, *TINY, "--out-dir",
                        str(tmp_path / "run")], capsys)
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


class _Pairs(torch.utils.data.Dataset):
    """A map-style dataset that is no TensorDataset (its labels are read sample by sample)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def _labels_up_to(top, tensors=True):
    def build(cfg):
        from torch.utils.data import TensorDataset

        from neurosim.training.data import DataInfo

        x = torch.rand(40, 4, generator=torch.Generator().manual_seed(0))
        y = torch.arange(40) % (top + 1)
        return DataInfo(TensorDataset(x, y) if tensors else _Pairs(x, y), "classification", 10, (4,))
    return build


@pytest.mark.parametrize("tensors", [True, False])
def test_labels_past_num_outputs_are_refused_before_training(tmp_path, tensors, capsys):
    """A dataset whose labels reach num_outputs failed at its first batch with torch's bare 'IndexError: Target 12 is
    out of bounds.' (a device-side assert on CUDA)."""
    from neurosim.training import register_dataset

    register_dataset("labels_to_12", _labels_up_to(12, tensors), overwrite=True)
    register_dataset("labels_to_9", _labels_up_to(9, tensors), overwrite=True)
    run = ["train", "--encoder", "direct", *TINY, "--no-tensorboard", "--no-plots"]
    code, err = _fails([*run, "--dataset", "labels_to_12", "--out-dir", str(tmp_path / "bad")], capsys)
    assert code == 2 and "Traceback" not in err
    assert ("dataset 'labels_to_12' has class labels from 0 to 12, but its num_outputs is 10: the labels must lie "
            "in 0..9") in err
    assert not (tmp_path / "bad").exists()
    assert cli.main([*run, "--dataset", "labels_to_9", "--out-dir", str(tmp_path / "good")]) == 0


@pytest.mark.parametrize("value, message", [
    ("{foo: 1}", "model_options neuron has unknown key(s) 'foo'; allowed keys: beta, threshold, reset, surrogate, "
                 "slope, backend"),          # (was: TypeError: NeuronSpec.__init__() got an unexpected keyword argument)
    ("{reset:zero}", "model_options neuron has unknown key(s) 'reset:zero' (YAML needs a space after the colon: "
                     "{reset: zero}); allowed keys: beta"),
    ("lif", "model_options neuron must be a NeuronSpec, a dict of its fields (beta, threshold, reset, surrogate, "
            "slope, backend) or None; got 'lif'"),     # (was: dictionary update sequence element #0 has length 1)
])
def test_a_bad_neuron_option_is_a_usage_error_listing_the_keys(tmp_path, value, message, capsys):
    code, err = _fails(["train", "--model", "est", "--opt", f"neuron={value}", "--epochs", "1", "--device", "cpu",
                        "--out-dir", str(tmp_path / "run")], capsys)
    assert code == 2 and message in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    # a string read character by character ("hidden must be an integer >= 1, got '2'"); [] built no spiking neuron
    (["--opt", "hidden=256,128"], "hidden must be a layer size >= 1 or a non-empty list of them, such as [256, 128]; "
                                  "got '256,128'"),
    (["--opt", "hidden=[]"], "hidden must be a layer size >= 1 or a non-empty list of them, such as [256, 128]; got []"),
    # norse resets to zero only: the refusal names the option that makes the model train there
    (["--model", "est", "--backend", "norse"], "backend='norse' supports reset='zero' only, and the neurons of model "
     "'est' reset by 'subtract': give them zero reset with --opt \"neuron={reset: zero}\" (model_options "
     "neuron={'reset': 'zero'}) to train on norse"),
    (["--backend", "norse"], "the neurons of model 'spiking_mlp' reset by 'subtract': give them zero reset with --opt "
                             "reset=zero (model_options reset='zero')"),
])
def test_model_option_errors_say_what_is_expected(tmp_path, argv, message, capsys):
    code, err = _fails(["train", *argv, "--epochs", "1", "--device", "cpu", "--out-dir", str(tmp_path / "run")],
                       capsys)
    assert code == 2 and message in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["train", "demo"])
def test_help_shows_every_options_default_and_flags_still_layer(command, capsys):
    """The options default to SUPPRESS (so that a config file is not overridden by defaults) and --help showed no
    default at all; several options had no help text."""
    import argparse

    from neurosim.training.config import TrainConfig
    from neurosim.training.demo import DEMO_DEFAULTS

    defaults = {**TrainConfig().to_dict(), **(DEMO_DEFAULTS if command == "demo" else {})}
    parser = cli.build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]
    shown = 0
    for action in sub._actions:
        assert action.help, action.option_strings                       # every option says what it does
        field = {"opt": "model_options", "data_opt": "dataset_options"}.get(action.dest, action.dest)
        if field in defaults:
            assert action.default is argparse.SUPPRESS, field
            assert "(default: " in action.help, (field, action.help)
            shown += 1
    assert shown == len(TrainConfig.field_names()) - (2 if command == "demo" else 0)   # (demo: no model/dataset)
    assert not set(vars(parser.parse_args([command]))) & set(TrainConfig.field_names())
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    epochs, lr, out_dir = (20, 0.002, "runs/demo") if command == "demo" else (10, 0.001, "runs/train")
    assert f"--epochs EPOCHS epochs to train at most (early stopping may end sooner) (default: {epochs})" in out
    assert f"--lr LR learning rate (default: {lr})" in out and f"(default: {out_dir})" in out
    assert "--seed SEED seed of the split" in out and "--weight-decay WEIGHT_DECAY the optimizer's weight decay" in out
    assert "--no-plots no loss and prediction plots (default: plots on)" in out
    assert "--bf16 bfloat16 autocast (default: fp32)" in out and "(default: 0.2)" in out
    if command == "demo":
        assert "(default: hidden=[128])" in out and "--encoder {rate,latency,latency_log,direct} input spike code " \
                                                     "(default: rate)" in out
    else:
        assert "--encoder {rate,latency,latency_log,direct} input spike code (default: per model/task)" in out
        assert "--model NAME registered model (built in: spiking_mlp; models register est, spikformer, ...) " \
               "(default: spiking_mlp)" in out


def test_resuming_with_fewer_epochs_than_run_says_nothing_is_trained(tmp_path, capsys):
    """--resume --epochs 2 on a run at epoch 4 trained nothing, printed '4 epochs', and summary.json said
    config.epochs 2 next to epochs_run 4."""
    run = ["train", *TINY, "--no-tensorboard", "--no-plots", "--out-dir", str(tmp_path)]
    assert cli.main([*run, "--epochs", "2"]) == 0
    capsys.readouterr()
    assert cli.main(["train", "--out-dir", str(tmp_path), "--resume", "--epochs", "1"]) == 0
    assert "neurosim train: already at epoch 2 >= --epochs 1: nothing to train" in capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["epochs_run"] == summary["config"]["epochs"] == 2
    assert summary["nothing_to_train"] == "already at epoch 2 >= epochs 1"
    assert json.loads((tmp_path / "config.json").read_text())["epochs"] == 2
    assert cli.main(["train", "--out-dir", str(tmp_path), "--resume", "--epochs", "3"]) == 0
    assert "nothing to train" not in capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["epochs_run"] == summary["config"]["epochs"] == 3 and summary["nothing_to_train"] is None
