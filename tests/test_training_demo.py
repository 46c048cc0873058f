"""`neurosim demo` end to end (default settings, as a user runs it), and the trainer's metrics against
scikit-learn's on the same predictions."""
import csv
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch
from sklearn import metrics as skm

from neurosim.training import TrainConfig, Trainer
from neurosim.training import checkpoint as ckpt_io
from neurosim.training.metrics import MetricSums


def test_demo_runs_through_the_trainer_and_reports_its_outputs(tmp_path):
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "neurosim.cli", "demo", "--out-dir", str(tmp_path / "demo"),
                          "--no-progress"], capture_output=True, text=True, timeout=180,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert res.returncode == 0, res.stderr
    assert time.time() - t0 < 180
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    for key in ("summary", "csv_log", "tensorboard", "loss_curve", "best_checkpoint", "last_checkpoint"):
        path = summary["paths"][key]
        assert path in res.stdout and os.path.exists(path), key
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(summary["paths"]["tensorboard"]))
    with open(summary["paths"]["csv_log"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == summary["epochs_run"] >= 1
    assert f"validation accuracy {summary['best']['accuracy']:.3f}" in res.stdout

    # Independent check: rebuild the model from the best checkpoint and score the validation split ourselves.
    ck = ckpt_io.load(summary["paths"]["best_checkpoint"])
    cfg = TrainConfig(**{**ck["config"], "out_dir": str(tmp_path / "check"), "device": "cpu"})
    trainer = Trainer(cfg)
    trainer._setup()
    trainer.model.load_state_dict(ck["model"])
    logits, y = trainer.predict(trainer.val_idx)
    acc = skm.accuracy_score(y.numpy(), logits.argmax(1).numpy())
    assert acc > 0.85                                        # 10 classes: chance is 0.1
    assert abs(acc - summary["best"]["accuracy"]) < 0.04     # rate coding redraws spikes: small spread only


def test_metric_sums_match_sklearn():
    g = torch.Generator().manual_seed(0)
    out, y = torch.randn(50, 1, generator=g), torch.randn(50, generator=g)
    sums = MetricSums()
    for i in range(0, 50, 16):        # uneven batches
        o, t = out[i:i + 16], y[i:i + 16]
        sums.update("regression", torch.nn.functional.mse_loss(o.squeeze(1), t), o, t)
    m = sums.compute("regression")
    p, t = out.squeeze(1).numpy(), y.numpy()
    np.testing.assert_allclose([m["mse"], m["mae"], m["r2"], m["loss"]],
                               [skm.mean_squared_error(t, p), skm.mean_absolute_error(t, p), skm.r2_score(t, p),
                                skm.mean_squared_error(t, p)], rtol=1e-6)
    logits, labels = torch.randn(40, 5, generator=g), torch.randint(0, 5, (40,), generator=g)
    sums = MetricSums()
    for i in range(0, 40, 7):
        sums.update("classification", torch.nn.functional.cross_entropy(logits[i:i + 7], labels[i:i + 7]),
                    logits[i:i + 7], labels[i:i + 7])
    m = sums.compute("classification")
    assert m["accuracy"] == skm.accuracy_score(labels.numpy(), logits.argmax(1).numpy())
    np.testing.assert_allclose(m["loss"], skm.log_loss(labels.numpy(), logits.softmax(1).numpy(), labels=range(5)),
                               rtol=1e-5)


def test_forecasting_run_writes_prediction_plot_and_early_stops(tmp_path):
    cfg = TrainConfig(dataset="damped_sine", epochs=40, lr=0.05, patience=1, lr_patience=0, num_steps=2,
                      progress=False, tensorboard=False, out_dir=str(tmp_path), model_options={"hidden": [16]},
                      dataset_options={"n_points": 200, "seq_len": 8})
    summary = Trainer(cfg).fit()
    assert summary["stopped_early"] and summary["epochs_run"] < 40
    assert summary["epochs_run"] == summary["best_epoch"] + 1         # patience 1: one epoch without improvement
    assert os.path.getsize(summary["paths"]["prediction_plot"]) > 10_000
    assert os.path.getsize(summary["paths"]["loss_curve"]) > 10_000
    # patience 1 stops at the first epoch without improvement, whose end is where ReduceLROnPlateau(patience=0)
    # halves the rate: every epoch trained at 0.05, and the rate after the run is lower
    lrs = [float(r["lr"]) for r in csv.DictReader(open(summary["paths"]["csv_log"]))]
    assert lrs == [0.05] * summary["epochs_run"]
    assert ckpt_io.load(summary["paths"]["last_checkpoint"])["optimizer"]["param_groups"][0]["lr"] == 0.025


def test_the_digits_demo_script_is_the_demo_command(tmp_path):
    """examples/digits_demo.py passes its flags to `neurosim demo` (the README says every example is run by the
    tests; this one was not)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, os.path.join(root, "examples", "digits_demo.py"), "--epochs", "1",
                          "--out-dir", str(tmp_path / "dd"), "--no-progress", "--no-tensorboard"],
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "dd" / "summary.json").read_text())
    assert summary["epochs_run"] == 1 and f"validation accuracy {summary['best']['accuracy']:.3f}" in res.stdout
