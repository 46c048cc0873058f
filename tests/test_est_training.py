"""`neurosim train --model est|spikformer`: the EST through the shared trainer on classification and
forecasting, its checkpoint read by `neurosim energy`, and clear errors for bad model options."""
import json

import pytest
import torch

from neurosim import cli
from neurosim.training import TrainConfig
from neurosim.training.data import DataInfo
from neurosim.training.registry import get_model

# (one CPU thread: the float sums, and so the few-epoch accuracies checked below, depend on the thread count)
COMMON = ["--device", "cpu", "--no-progress", "--no-tensorboard", "--no-plots", "--num-steps", "2", "--cpu-threads", "1"]


def test_est_learns_digits_and_energy_reads_its_checkpoint(tmp_path, capsys):
    out = tmp_path / "est"
    cli.main(["train", "--model", "est", "--dataset", "digits", "--epochs", "4", "--lr", "5e-3", "--opt", "dim=16",
              "--opt", "rsm_ratio=0.25", "--out-dir", str(out), *COMMON])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"]["accuracy"] > 0.25          # 10 classes: chance is 0.1 (0.28 here, 0.34 with 2 threads)
    capsys.readouterr()
    cli.main(["energy", str(out / "checkpoints" / "best.pt"), "--json", str(tmp_path / "e.json")])
    text = capsys.readouterr().out
    assert "net.layers.0.attn.block.qk_matmul" in text and "RandomSpikeMask" in text
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["totals"]["synops"] > 0


def test_spikformer_forecasts_the_damped_sine_from_the_last_token(tmp_path):
    out = tmp_path / "sf"
    cli.main(["train", "--model", "spikformer", "--dataset", "damped_sine", "--epochs", "1", "--opt", "dim=16",
              "--data-opt", "n_points=300", "--data-opt", "seq_len=12", "--out-dir", str(out), *COMMON])
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["best"]) >= {"mse", "mae", "r2"}


def test_token_adapter_shapes_and_causality():
    cfg = TrainConfig(model="est", num_steps=3, model_options={"dim": 16, "depth": 1})
    info = DataInfo(torch.utils.data.TensorDataset(torch.zeros(4, 12), torch.zeros(4, 1)), "regression", 1, (12,))
    model = get_model("est")(info, cfg).eval()
    x = torch.randn(5, 12)
    assert model.encode(x).shape == (3, 5, 12, 1)
    y = model(x)
    assert y.shape == (5, 1)
    # the EST is causal along tokens: its per-token outputs up to token 6 ignore tokens 7..11
    x2 = x.clone()
    x2[:, 7:] = torch.randn(5, 5)
    torch.manual_seed(0)
    a = model.net(model.encode(x))
    torch.manual_seed(0)
    b = model.net(model.encode(x2))
    torch.testing.assert_close(a[:, :7], b[:, :7])


def test_bad_model_options_name_the_option(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--model", "est", "--opt", "wings=2", *COMMON])
    assert exc.value.code == 2
    assert "unknown model_options wings for model 'est'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "--model", "est", "--opt", "tokens=7", *COMMON])
    assert "tokens=7 must divide the 64 input features" in capsys.readouterr().err


def test_a_neuron_backend_in_model_options_must_be_the_runs(capsys):
    """model_options neuron={"backend": ...} overrode the run's backend, which config.json recorded as used."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--model", "est", "--backend", "snntorch", "--opt", "neuron={backend: torch}", *COMMON])
    assert exc.value.code == 2
    assert "neuron backend='torch' for model 'est' differs from the run's backend='snntorch'" in \
        capsys.readouterr().err
