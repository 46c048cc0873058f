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


def test_bad_flag_is_reported():
    res = subprocess.run([sys.executable, str(ROOT / "examples/btspformer/main.py"), "--seq_len", "0"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "seq_len" in res.stderr


@pytest.mark.parametrize("model", ["btspformer", "spiking_btspformer"])
def test_neurosim_train_cli(tmp_path, model, capsys):
    rc = cli.main(["train", "--model", model, "--dataset", "damped_sine", "--data-opt", "seq_len=12",
                   "--data-opt", "n_points=60", "--opt", "model_dim=8", "--opt", "heads=2", "--opt", "layers=1",
                   "--num-steps", "2", "--epochs", "1", "--batch-size", "16", "--device", "cpu",
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
