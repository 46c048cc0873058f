"""The BTSPFormer command line (seed flags, output files), the registry entries, and the moving-digits task."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neurosim import cli
from neurosim.models import BTSPFormer, moving_digits
from neurosim.models.moving_digits import DIGIT

ROOT = Path(__file__).resolve().parents[1]


def test_seed_command_writes_every_output(tmp_path):
    # the seed's exact flags (no --use_gpu on this CPU machine), fewer samples/epochs, a smaller model
    cmd = [sys.executable, str(ROOT / "examples/btspformer/main.py"), "--seq_len", "16", "--num_samples", "160",
           "--batch_size", "32", "--epochs", "2", "--lr", "1e-3", "--model_dim", "16", "--heads", "2",
           "--layers", "1", "--out_dir", str(tmp_path), "--no_progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    for name in ("btspformer_model.pth", "btspformer_loss_curve.png", "btspformer_inference.png",
                 "logs/log.csv", "logs/summary.json", "checkpoints/best.pt", "checkpoints/last.pt"):
        assert (tmp_path / name).is_file(), name
    assert list((tmp_path / "logs/tb").glob("events.out.tfevents.*")), "no TensorBoard events"
    rows = (tmp_path / "logs/log.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and "val_mse" in rows[0] and "val_mae" in rows[0]
    metrics = json.loads((tmp_path / "btspformer_metrics.json").read_text())
    assert metrics["plasticity"]["mean_row_tv"] > 0
    # the saved model rebuilds and reproduces the reported validation MSE on the same windows
    saved = torch.load(tmp_path / "btspformer_model.pth", weights_only=True)
    assert saved["model_options"] == {"model_dim": 16, "heads": 2, "layers": 1, "dropout": 0.1}
    model = BTSPFormer(16, 16, 2, 1).eval()
    model.load_state_dict(saved["model"])
    summary = json.loads((tmp_path / "logs/summary.json").read_text())
    assert summary["num_train"] == 128 and summary["num_val"] == 32          # 80/20 split of 160 windows
    assert "Finished" not in res.stderr and "MSE" in res.stdout
    # run again into the same folder: refused, the earlier run kept; --overwrite replaces it
    res = subprocess.run(cmd + ["--epochs", "1"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert (f"main.py: error: {tmp_path} already holds a run (checkpoints/last.pt, checkpoints/best.pt, "
            "logs/summary.json and 3 more); pass --overwrite to replace it, or another --out_dir") in res.stderr
    assert len((tmp_path / "logs/log.csv").read_text().strip().splitlines()) == 3
    res = subprocess.run(cmd + ["--epochs", "1", "--overwrite"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len((tmp_path / "logs/log.csv").read_text().strip().splitlines()) == 2
    assert len(list((tmp_path / "logs/tb").glob("events.out.tfevents.*"))) == 1


def test_a_setting_the_builder_refuses_is_reported_like_a_bad_flag(tmp_path):
    """--dropout 1.5 passed the command line and failed in fit(): a ConfigError traceback from run(), exit 1."""
    res = subprocess.run([sys.executable, str(ROOT / "examples/btspformer/main.py"), "--epochs", "1", "--num_samples",
                          "200", "--model_dim", "16", "--heads", "2", "--layers", "1", "--dropout", "1.5",
                          "--out_dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "main.py: error: dropout must be" in res.stderr


def test_bad_flag_is_reported():
    res = subprocess.run([sys.executable, str(ROOT / "examples/btspformer/main.py"), "--seq_len", "0"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "seq_len" in res.stderr


@pytest.mark.parametrize("model", ["btspformer", "spiking_btspformer"])
def test_neurosim_train_cli(tmp_path, model, capsys):
    steps = ["--num-steps", "2"] if model == "spiking_btspformer" else []    # the analog model has no SNN steps
    rc = cli.main(["train", "--model", model, "--dataset", "damped_sine", "--data-opt", "seq_len=12",
                   "--data-opt", "n_points=60", "--opt", "model_dim=8", "--opt", "heads=2", "--opt", "layers=1",
                   *steps, "--epochs", "1", "--batch-size", "16", "--device", "cpu",
                   "--out-dir", str(tmp_path), "--no-progress", "--no-plots", "--no-tensorboard"])
    assert rc == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["model"] == model and summary["best"]["mse"] > 0


def test_moving_digits_motion():
    frames = moving_digits(6, num_frames=12, canvas=12, seed=3)
    assert frames.shape == (6, 12, 12, 12)
    assert float(frames.min()) >= 0 and float(frames.max()) <= 1
    for seq in frames:
        # every frame holds the same digit: the same pixel mass, inside the canvas
        mass = seq.sum((1, 2))
        torch.testing.assert_close(mass, mass[0].expand_as(mass))
        # consecutive frames: the next frame is the current one moved by at most one pixel per axis
        for t in range(11):
            best = min(float((torch.roll(seq[t], (dy, dx), (0, 1)) - seq[t + 1]).abs().sum())
                       for dy in (-1, 0, 1) for dx in (-1, 0, 1))
            assert best < 1e-6
        assert not torch.equal(seq[0], seq[1])       # it moves
    assert DIGIT == 8


def test_moving_digits_seed_must_be_a_whole_number():
    for seed in (1.9, -1, "1", True):
        with pytest.raises(ValueError, match=r"seed must be an integer >= 0"):
            moving_digits(2, 3, 12, seed=seed)
    assert torch.equal(moving_digits(2, 3, 12, seed=2.0), moving_digits(2, 3, 12, seed=2))   # 2.0 is seed 2


@pytest.mark.parametrize("neuron", ["lif", "stc_lif"])
def test_frame_predictor_refuses_empty_frames(neuron):
    from neurosim.models import FramePredictor

    model = FramePredictor(neuron, 4, groups=2) if neuron == "stc_lif" else FramePredictor(neuron, 4)
    for shape in ((2, 0, 12, 12), (2, 3, 0, 12), (2, 3, 12, 0)):
        with pytest.raises(ValueError, match=r"T >= 1 frames of H >= 1 by W >= 1 pixels"):
            model(torch.zeros(shape))
    assert model(torch.zeros(0, 3, 12, 12)).shape == (0, 3, 12, 12)   # an empty batch is fine


def test_frame_predictor_through_registry(tmp_path):
    rc = cli.main(["train", "--model", "frame_predictor", "--dataset", "moving_digits", "--data-opt",
                   "num_sequences=24", "--data-opt", "num_frames=4", "--opt", "neuron=stc_lif", "--opt", "channels=4",
                   "--opt", "groups=2", "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--out-dir",
                   str(tmp_path), "--no-progress", "--no-plots", "--no-tensorboard"])
    assert rc == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["best"]["mse"] > 0


def test_comparison_script_quick(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("research_compare", ROOT / "examples/research_compare.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    results = mod.main(["--quick", "--seeds", "0", "--out", str(tmp_path)])
    models = sorted(r["model"] for r in results)
    assert models == sorted(["astro_transformer", "btspformer", "spiking_btspformer", "vanilla_transformer",
                             "frame_predictor[lif]", "frame_predictor[stc_lif]"])
    md = (tmp_path / "results.md").read_text()
    assert "btspformer" in md and "Persistence baseline" in md
    btsp = next(r for r in results if r["model"] == "btspformer")
    assert btsp["plasticity"]["mean_row_tv"] > 0 and btsp["plasticity"]["val_without_plasticity"]["mse"] > 0
    # every spiking layer fires at the best epoch, so the frame predictors' scores differ (with 3 training steps
    # their second layer never fired: both readouts were constant, with the same MSE 8.98e-02 and MAE 2.08e-01)
    spiking = {r["model"]: r["firing_rates"] for r in results if r.get("firing_rates")}
    assert set(spiking) == {"spiking_btspformer", "frame_predictor[lif]", "frame_predictor[stc_lif]"}
    assert set(spiking["frame_predictor[lif]"]) == {"lif1", "lif2"}
    assert all(rate > 0 for rates in spiking.values() for rate in rates.values()), spiking
    lif, stc = (next(r for r in results if r["model"] == f"frame_predictor[{n}]") for n in ("lif", "stc_lif"))
    assert lif["val"]["mse"] != stc["val"]["mse"] and lif["val"]["mae"] != stc["val"]["mae"]
    assert "Silent" not in md


def _compare_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("research_compare", ROOT / "examples/research_compare.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_comparison_script_names_a_silent_spiking_layer(tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    from torch.utils.data import TensorDataset

    from neurosim.models import FramePredictor

    mod = _compare_script()
    # the callback, on a frame predictor whose second layer gets no input current
    torch.manual_seed(0)
    model = FramePredictor("lif", 4).train()
    with torch.no_grad():
        model.conv2.weight.zero_()
        model.conv2.bias.zero_()
    frames = moving_digits(8, 4, 12, seed=0)
    trainer = SimpleNamespace(model=model, info=SimpleNamespace(dataset=TensorDataset(frames[:, :-1], frames[:, 1:])),
                              val_idx=list(range(8)), device=torch.device("cpu"), epoch=1, best_epoch=0)
    cb = mod.FiringRates()
    rng = torch.get_rng_state()
    cb("epoch_start", trainer)
    assert cb.rates is None
    cb("epoch_end", trainer)
    assert set(cb.rates) == {"lif1", "lif2"} and cb.rates["lif1"] > 0 and cb.rates["lif2"] == 0 and cb.samples == 8
    assert model.training and torch.equal(torch.get_rng_state(), rng)
    trainer.epoch = 2                                   # an epoch that did not improve: the best epoch's rates stay
    cb.rates["lif1"] = 0.5
    cb("epoch_end", trainer)
    assert cb.rates["lif1"] == 0.5
    # the script: a warning naming model, seed and layer, and a note under the table
    silent = {"task": "moving_digits", "model": "frame_predictor[lif]", "seed": 0, "epochs_run": 1, "parameters": 1,
              "val": {"mse": 0.1, "mae": 0.2}, "firing_rates": {"lif1": 0.01, "lif2": 0.0}, "firing_samples": 5}
    monkeypatch.setattr(mod, "digits_job", lambda neuron, seed, *a: dict(silent, model=f"frame_predictor[{neuron}]",
                                                                         seed=seed))
    mod.main(["--quick", "--only", "digits", "--seeds", "0", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    for neuron in ("lif", "stc_lif"):
        assert (f"WARNING: frame_predictor[{neuron}] seed 0: spiking layer lif2 fired no spike on 5 validation "
                f"samples at the best epoch, so what follows it is constant") in out
    assert ("Silent spiking layers (no spike on up to 64 validation samples at the best epoch; the rows of these "
            "models do not measure their neurons): frame_predictor[lif] seed 0: lif2; frame_predictor[stc_lif] seed "
            "0: lif2.") in (tmp_path / "results.md").read_text()


# --------------------------------------------------------------- run settings a model does not use are refused
def _build(model, dataset="damped_sine", **fields):
    from neurosim.training import TrainConfig
    from neurosim.training.registry import get_dataset, get_model

    options = {"seq_len": 8, "n_points": 40} if dataset == "damped_sine" else {"num_sequences": 4, "num_frames": 3}
    cfg = TrainConfig(model=model, dataset=dataset, device="cpu", dataset_options=options, **fields).validate()
    return get_model(model)(get_dataset(dataset)(cfg), cfg)


# the trainer's defaults, written out: encoder unset, backend snntorch, 16 steps
DEFAULTS = {"encoder": None, "backend": "snntorch", "num_steps": 16}


@pytest.mark.parametrize("model", ["btspformer", "vanilla_transformer", "astro_transformer"])
@pytest.mark.parametrize("field,value", [("encoder", "latency"), ("backend", "norse"), ("num_steps", 4)])
def test_analog_transformers_refuse_spiking_settings(model, field, value):
    import re

    msg = (f"{field}={value!r} does not apply to model {model!r} (an analog transformer fed the raw window, no "
           f"spiking neurons); it accepts only the default {field}={DEFAULTS[field]!r}")
    with pytest.raises(ValueError, match=re.escape(msg)):
        _build(model, **{field: value})
    assert isinstance(_build(model), BTSPFormer)          # the defaults still build


def test_spiking_btspformer_uses_backend_and_steps_but_no_encoder():
    with pytest.raises(ValueError, match=r"encoder='rate' does not apply to model 'spiking_btspformer' .*"
                                         r"accepts only the default encoder=None"):
        _build("spiking_btspformer", encoder="rate")
    model = _build("spiking_btspformer", backend="torch", num_steps=3)
    assert model.num_steps == 3 and model.encoder.backend == "torch"


def test_frame_predictor_refuses_settings_it_ignores():
    from neurosim.models import FramePredictor

    md = "moving_digits"
    for field, value in (("encoder", "rate"), ("num_steps", 4)):
        with pytest.raises(ValueError, match=rf"{field}={value!r} does not apply to model 'frame_predictor' "
                                             rf"\(the frames drive the neurons directly.*default {field}="):
            _build("frame_predictor", md, **{field: value})
    with pytest.raises(ValueError, match=r"backend='fused' does not apply to model 'frame_predictor' "
                                         r"\(neuron='stc_lif' runs neurosim's own time loop"):
        _build("frame_predictor", md, backend="fused", model_options={"neuron": "stc_lif", "channels": 4})
    with pytest.raises(ValueError, match=r"groups applies to neuron='stc_lif' only.*got groups=2"):
        _build("frame_predictor", md, model_options={"groups": 2})
    # what each neuron does take
    lif = _build("frame_predictor", md, backend="torch")
    assert lif.neuron_kind == "lif" and lif.lif1.backend == "torch"
    stc = _build("frame_predictor", md, model_options={"neuron": "stc_lif", "channels": 8})
    assert stc.neuron_kind == "stc_lif" and stc.lif1.groups == 4            # the documented default
    assert _build("frame_predictor", md).lif1.backend == "snntorch"
    # the class itself
    with pytest.raises(ValueError, match=r"backend must be one of 'snntorch', 'norse', 'fused', 'torch'; got 'bogus'"):
        FramePredictor(backend="bogus")
    with pytest.raises(ValueError, match=r"groups applies to neuron='stc_lif' only.*got groups=5"):
        FramePredictor("lif", groups=5)
    with pytest.raises(ValueError, match=r"backend applies to neuron='lif' only.*got backend='norse'"):
        FramePredictor("stc_lif", 8, backend="norse")
    assert FramePredictor("stc_lif", 8, groups=2).lif1.groups == 2


def test_seed_config_num_steps_only_for_the_spiking_model():
    from neurosim.models import btsp_experiment as X

    with pytest.raises(ValueError, match=r"num_steps applies to model 'spiking_btspformer' only; model "
                                         r"'btspformer' has no SNN time steps"):
        X.seed_config("btspformer", num_steps=3)
    assert X.seed_config("btspformer").num_steps == DEFAULTS["num_steps"]
    assert X.seed_config("spiking_btspformer").num_steps == 4
    assert X.seed_config("spiking_btspformer", num_steps=3).num_steps == 3
    res = subprocess.run([sys.executable, str(ROOT / "examples/btspformer/main.py"), "--num_steps", "3"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "num_steps applies to model 'spiking_btspformer' only" in res.stderr


def test_the_btsp_models_take_the_kernels_lead_as_a_model_option():
    """``lead=0`` rebuilds the kernel RESULTS.md's BTSP rows were measured with (maximum at coincidence); the
    default peaks one step before the plateau; the models without the BTSP rule refuse the option."""
    from neurosim.models.btsp import BTSPPlasticity

    for name in ("btspformer", "spiking_btspformer"):
        for opts, lead in (({}, 1.0), ({"lead": 0}, 0.0)):
            model = _build(name, model_options=opts)
            leads = {m.lead for m in model.modules() if isinstance(m, BTSPPlasticity)}
            assert leads == {lead}, (name, opts)
    with pytest.raises(ValueError, match="lead"):
        _build("vanilla_transformer", model_options={"lead": 0})


def test_the_btspformer_scripts_cli_line_is_the_same_run():
    """examples/btspformer/main.py's docstring gives the `neurosim train` line of the seed's run: the same training
    settings, data and model (it differed in epochs, batch size and both patiences)."""
    import dataclasses
    import re

    from neurosim import cli
    from neurosim.models.btsp_experiment import seed_config
    from neurosim.training.registry import get_dataset, get_model

    doc = (ROOT / "examples" / "btspformer" / "main.py").read_text()
    line = re.search(r"``(neurosim train .*?)``", doc, re.S).group(1).split()[1:]
    parser = cli.build_parser()
    cfg, _ = cli._config_from_args(parser, parser.parse_args(line + ["--device", "cpu"]), {})
    ref = seed_config("btspformer")
    run_only = {"out_dir", "plots", "progress", "tensorboard", "model_options", "dataset_options"}
    differ = {f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(ref, f.name)}
    assert differ <= run_only, differ
    a, b = get_dataset(cfg.dataset)(cfg), get_dataset(ref.dataset)(ref)
    assert len(a.dataset) == len(b.dataset) and all(
        torch.equal(a.dataset[i][0], b.dataset[i][0]) for i in (0, len(a.dataset) - 1))
    torch.manual_seed(0)
    ma = get_model(cfg.model)(a, cfg)
    torch.manual_seed(0)
    mb = get_model(ref.model)(b, ref)
    assert str(ma) == str(mb)
    assert all(torch.equal(p, q) for p, q in zip(ma.state_dict().values(), mb.state_dict().values()))


@pytest.mark.parametrize("dataset", ["digits", "damped_sine"])
def test_frame_predictor_refuses_a_dataset_without_frames(tmp_path, dataset, capsys):
    """frame_predictor on digits or the sine window failed in its first forward ("x must have 4 dimensions
    [B, T, H, W], got shape (64, 64)": a traceback, exit 1, config.json, checkpoints/ and tb/ left behind); like
    est on moving_digits, it is refused before anything is made."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--model", "frame_predictor", "--dataset", dataset, "--epochs", "1", "--no-progress",
                  "--out-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert "model 'frame_predictor' needs a frame-prediction dataset (input frames [T, H, W]" in err
    assert not (tmp_path / "run").exists()


def test_comparison_script_refuses_an_earlier_comparisons_runs_unless_overwrite(tmp_path, monkeypatch, capsys):
    """A second comparison into the same --out stopped in its first job with the trainer's RunExists traceback;
    it is refused before any job trains, naming --overwrite, which each job's trainer then gets."""
    mod = _compare_script()
    (tmp_path / "digits_lif_s0" / "checkpoints").mkdir(parents=True)
    (tmp_path / "digits_lif_s0" / "checkpoints" / "last.pt").write_bytes(b"")
    args = ["--quick", "--seeds", "0", "--only", "digits", "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as err:
        mod.main(args)
    assert err.value.code == 2 and "--overwrite" in capsys.readouterr().err

    seen = []

    def job(neuron, seed, out, stop_at, quick, use_gpu, overwrite=False):
        seen.append(overwrite)
        raise KeyboardInterrupt  # (stop after the first job's arguments are seen)

    monkeypatch.setattr(mod, "digits_job", job)
    with pytest.raises(KeyboardInterrupt):
        mod.main(args + ["--overwrite"])
    assert seen == [True]
