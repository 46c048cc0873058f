"""A run whose loss becomes NaN or infinite stops with an error naming the epoch and step (the command line: status 1,
one line), writes no checkpoint of the diverged weights, and never calls a file best that no finite epoch wrote."""
import json
import math

import pytest
import torch
from torch.utils.data import TensorDataset

from neurosim import cli
from neurosim.training import NonFiniteLoss, TrainConfig, Trainer, register_dataset, split_indices
from neurosim.training import checkpoint as ckpt_io
from neurosim.training.data import DataInfo

N = 200
TINY = dict(encoder="direct", num_steps=2, batch_size=32, epochs=2, patience=0, progress=False, tensorboard=False,
            plots=False, device="cpu", model_options={"hidden": [8]})


def _one_nan_target(split):
    """200 samples of 4 features whose target is their sum; the first sample of the ``split`` ("train" or "val")
    has a NaN target."""
    def build(cfg):
        x = torch.rand(N, 4, generator=torch.Generator().manual_seed(0))
        y = x.sum(1)
        train, val = split_indices(N, cfg.val_fraction, cfg.seed)
        y[(train if split == "train" else val)[0]] = float("nan")
        return DataInfo(TensorDataset(x, y), "regression", 1, (4,))
    return build


register_dataset("nan_train_target", _one_nan_target("train"), overwrite=True)
register_dataset("nan_val_target", _one_nan_target("val"), overwrite=True)


@pytest.mark.parametrize("save_every", [0, 1])
def test_a_nan_target_stops_the_run_at_its_step(tmp_path, save_every):
    """The first step whose weights are not finite (seen from outside, by a callback) is the step the error names;
    before, NaN weights failed the next step inside a spiking layer ("x contains ... NaN/inf value(s)"), and with
    save_every a checkpoint of them was written first."""
    first_nan = []

    def watch(event, trainer):
        if event == "step_end" and not first_nan and not all(p.isfinite().all() for p in trainer.model.parameters()):
            first_nan.append((trainer.epoch + 1, trainer.step_in_epoch))

    cfg = TrainConfig(**TINY, dataset="nan_train_target", save_every=save_every, out_dir=str(tmp_path))
    with pytest.raises(NonFiniteLoss) as err:
        Trainer(cfg, callbacks=[watch]).fit()
    (epoch, step), = first_nan
    assert 1 < step < 5                           # (5 steps per epoch: one more follows, one checkpoint came before)
    assert f"training loss became NaN or infinite in epoch {epoch}, step {step} of 5" in str(err.value)
    last = tmp_path / "checkpoints" / "last.pt"
    assert last.exists() == bool(save_every)
    if save_every:
        ck = ckpt_io.load(last)
        assert ck["step_in_epoch"] == step - 1 and all(v.isfinite().all() for v in ck["model"].values())


def test_an_infinite_loss_is_a_failed_run_on_the_command_line(tmp_path, capsys):
    """Targets of 1e25 overflow the float32 loss: before, the run trained on, exited 0 with "best epoch 0:" and a
    summary naming a best.pt it never wrote."""
    argv = ["train", "--dataset", "damped_sine", "--data-opt", "amplitude=10000000000000000000000000.0", "--encoder",
            "direct", "--num-steps", "2", "--opt", "hidden=[8]", "--epochs", "2", "--device", "cpu", "--no-progress",
            "--no-tensorboard", "--no-plots", "--out-dir", str(tmp_path)]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("neurosim train: error: the training loss became NaN or infinite in epoch 1, step 1 of ")
    assert "Traceback" not in err and not (tmp_path / "summary.json").exists()
    assert not (tmp_path / "checkpoints" / "best.pt").exists()


def test_a_nan_validation_target_stops_the_run_at_its_epoch(tmp_path):
    with pytest.raises(NonFiniteLoss, match="validation loss of epoch 1 is nan"):
        Trainer(TrainConfig(**TINY, dataset="nan_val_target", out_dir=str(tmp_path))).fit()
    assert not (tmp_path / "checkpoints").exists() or not list((tmp_path / "checkpoints").iterdir())


def test_a_run_without_a_best_epoch_neither_lists_nor_loads_a_best_pt(tmp_path):
    """A checkpoint with no best epoch (written before a never-finite validation loss was an error) resumed in an
    out_dir where an earlier run of another network left its best.pt: that file is not this run's."""
    forecast = dict(TINY, dataset="damped_sine", epochs=1, plots=True, dataset_options={"n_points": 120, "seq_len": 8})
    Trainer(TrainConfig(**{**forecast, "model_options": {"hidden": [16]}}, out_dir=str(tmp_path / "run"))).fit()
    Trainer(TrainConfig(**forecast, out_dir=str(tmp_path / "other"))).fit()
    ck = ckpt_io.load(tmp_path / "other" / "checkpoints" / "last.pt")
    ck["trainer"].update(best_val=math.inf, best_epoch=-1)
    ckpt_io.save(tmp_path / "no_best.pt", ck)
    summary = Trainer(TrainConfig(**forecast, out_dir=str(tmp_path / "run"))).fit(resume=tmp_path / "no_best.pt")
    assert "best_checkpoint" not in summary["paths"] and "prediction_plot" in summary["paths"]
    assert "best_checkpoint" not in json.loads((tmp_path / "run" / "summary.json").read_text())["paths"]
