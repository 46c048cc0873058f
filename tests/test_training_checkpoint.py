"""Checkpoint files: atomic writes, weights_only loading, clear errors for truncated/foreign/mismatching files."""
import pickle
import random
import re

import numpy as np
import pytest
import torch
from torch import nn

from neurosim.training import CheckpointError, TrainConfig, Trainer
from neurosim.training import checkpoint as ckpt_io

TINY = dict(dataset="damped_sine", encoder="direct", epochs=1, num_steps=2, batch_size=128, progress=False,
            tensorboard=False, plots=False, model_options={"hidden": [8]},
            dataset_options={"n_points": 120, "seq_len": 8})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    Trainer(TrainConfig(**TINY, out_dir=str(out))).fit()
    return out


def test_checkpoint_holds_everything_needed_to_resume(run_dir):
    ck = ckpt_io.load(run_dir / "checkpoints" / "last.pt")
    assert set(ckpt_io.REQUIRED_KEYS) <= set(ck)
    assert ck["config"]["dataset"] == "damped_sine" and ck["epoch"] == 1 and ck["step_in_epoch"] == 0
    assert set(ck["rng"][0]) == {"torch", "numpy", "python", "cuda", "layers"}
    assert ck["optimizer"]["state"] and "best" in ck["scheduler"]


def test_truncated_file_gives_clear_error(run_dir, tmp_path):
    data = (run_dir / "checkpoints" / "last.pt").read_bytes()
    for cut in (len(data) // 2, 100, 0):
        bad = tmp_path / f"cut{cut}.pt"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=r"cut%d\.pt.*(truncated|empty)" % cut):
            ckpt_io.load(bad)


def test_a_byte_flipped_inside_a_checkpoint_is_found(tmp_path):
    """torch.load reads a checkpoint whose tensor bytes changed on disk without complaint; its zip CRCs do not."""
    import zipfile

    path = ckpt_io.save(tmp_path / "c.pt", {"model": nn.Linear(64, 64).state_dict()})
    with zipfile.ZipFile(path) as z:  # (the bytes of the first tensor: the local header, its name, then the data)
        info = next(i for i in z.infolist() if i.filename.endswith("/data/0"))
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + int.from_bytes(
        data[info.header_offset + 28:info.header_offset + 30], "little")
    i = start + 1000
    data[i:i + 100] = bytes(b ^ 0x55 for b in data[i:i + 100])
    path.write_bytes(bytes(data))
    torch.load(path, weights_only=True)  # (no error from torch)
    with pytest.raises(CheckpointError, match="is corrupt: its part .* fails its CRC check"):
        ckpt_io.load(path)


def test_foreign_files_give_clear_errors(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"definitely not a checkpoint\n" * 10)
    with pytest.raises(CheckpointError, match="truncated or not a torch file"):
        ckpt_io.load(junk)
    plain = tmp_path / "plain.pt"
    torch.save(nn.Linear(2, 2).state_dict(), plain)
    with pytest.raises(CheckpointError, match="not a neurosim checkpoint"):
        ckpt_io.load(plain)
    evil = tmp_path / "evil.pt"
    torch.save({"format": ckpt_io.FORMAT, "payload": nn.Linear(2, 2)}, evil)   # a pickled module, not weights
    with pytest.raises(CheckpointError, match="weights_only loading refused it .*torch.nn.modules.linear.Linear"):
        ckpt_io.load(evil)
    with pytest.raises(CheckpointError, match="does not exist"):
        ckpt_io.load(tmp_path / "missing.pt")


def test_resume_from_corrupt_or_mismatched_file_changes_nothing(run_dir, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes((run_dir / "checkpoints" / "last.pt").read_bytes()[:5000])
    out = tmp_path / "new"
    with pytest.raises(CheckpointError, match="truncated"):
        Trainer(TrainConfig(**TINY, out_dir=str(out))).fit(resume=bad)
    assert not out.exists()

    # same run identity but a different network: refused before any state is loaded
    good = ckpt_io.load(run_dir / "checkpoints" / "last.pt")
    good["model"]["readout.weight"] = torch.zeros(1, 3)
    ckpt_io.save(tmp_path / "other.pt", {k: v for k, v in good.items() if k not in ("format", "version")})
    trainer = Trainer(TrainConfig(**TINY, out_dir=str(out)))
    trainer._setup()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(CheckpointError, match="readout.weight has shape \\(1, 3\\), expected \\(1, 8\\)"):
        trainer._resume(tmp_path / "other.pt")
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert trainer.epoch == 0 and trainer.global_step == 0


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1.5])
def test_a_checkpoint_whose_fixed_beta_is_bad_is_refused_by_name_before_anything_changes(run_dir, tmp_path, value):
    """A NaN in a neuron's fixed (non-learned) beta resumed silently: the network ran on with a NaN membrane and no
    spikes. Resuming (or rebuilding the model) refuses it as making that LIF refuses it, naming the file and key."""
    from neurosim import LIF
    from neurosim.training.restore import load_trained

    with pytest.raises(ValueError) as made:
        LIF(beta=value)
    ck = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert not ck["model"]["neurons.0.beta"].requires_grad  # (a buffer: fixed)
    ck["model"]["neurons.0.beta"] = torch.tensor(value)
    torch.save(ck, tmp_path / "bad.pt")
    message = re.escape(f"bad.pt' holds a value its model cannot run: neurons.0.{made.value}")
    trainer = Trainer(TrainConfig(**{**TINY, "epochs": 2}, out_dir=str(tmp_path / "new")))
    trainer._setup()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(CheckpointError, match=message):
        trainer._resume(tmp_path / "bad.pt")
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert trainer.epoch == 0 and not trainer.optimizer.state_dict()["state"]
    with pytest.raises(CheckpointError, match=message):
        load_trained(tmp_path / "bad.pt")


def test_write_is_atomic_when_the_writer_dies(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt_io.atomic_write(path, lambda f: torch.save({"x": torch.arange(3)}, f))
    original = path.read_bytes()

    def dying_save(obj, f):
        f.write(b"PK\x03\x04 half a zip file")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(ckpt_io.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt_io.atomic_write(path, lambda f: torch.save({"x": torch.arange(5)}, f))
    assert path.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]       # no temp file left
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.arange(3))


def test_rng_state_round_trip_through_a_file(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.normal()                                       # leaves a cached gaussian in numpy's state
    ckpt_io.save(tmp_path / "rng.pt", {"rng": ckpt_io.rng_state()})
    expected = (torch.rand(4), np.random.normal(size=3), [random.random() for _ in range(3)])
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    ckpt_io.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    got = (torch.rand(4), np.random.normal(size=3), [random.random() for _ in range(3)])
    assert torch.equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_pickle_error_is_reported_by_name(tmp_path):
    # A pickle that is not a torch zip archive (old-style torch files are pickles too): still a clean error.
    p = tmp_path / "old.pt"
    p.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="old.pt' is truncated or not a torch file"):
        ckpt_io.load(p)


def test_fit_sets_the_thread_count_back(tmp_path):
    """cpu_threads is process-wide in torch: a finished fit() leaves it as it found it (a later training in the same
    process, as in a notebook or a test run, would otherwise take other float sums and reach other accuracies)."""
    from neurosim.training import TrainConfig, Trainer

    before = torch.get_num_threads()
    Trainer(TrainConfig(epochs=1, num_steps=2, model_options={"hidden": [8]}, progress=False, tensorboard=False,
                        plots=False, out_dir=str(tmp_path), cpu_threads=before + 1, device="cpu")).fit()
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("damage, message", [
    (lambda ck: ck["trainer"].pop("train_samples"), "lacks trainer.train_samples"),
    (lambda ck: ck["trainer"].pop("best_val"), "lacks trainer.best_val"),
    (lambda ck: ck.update(trainer=[]), "malformed trainer: a list, not a mapping"),
    (lambda ck: ck["trainer"].update(train_sums=torch.zeros(3)), "malformed trainer.train_sums"),
    (lambda ck: ck["rng"][0].pop("numpy"), r"lacks rng\[0\].numpy"),
    (lambda ck: ck["rng"][0]["python"].pop("internal"), r"lacks rng\[0\].python.internal"),
    (lambda ck: ck["rng"][0].update(torch=[1, 2]), r"malformed rng\[0\].torch: a list, not a tensor"),
])
def test_a_checkpoint_missing_a_trainer_field_is_refused_before_anything_changes(run_dir, tmp_path, damage,
                                                                                 message, capsys):
    """A file with the format marker and every top-level key, but a field of the trainer's state or the RNG states
    missing: before, _resume loaded the model and optimizer and then failed with a bare KeyError."""
    from neurosim import cli

    ck = ckpt_io.load(run_dir / "checkpoints" / "last.pt")
    damage(ck)
    bad = ckpt_io.save(tmp_path / "bad.pt", ck)
    trainer = Trainer(TrainConfig(**{**TINY, "epochs": 2}, out_dir=str(tmp_path / "new")))
    trainer._setup()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(CheckpointError, match=message):
        trainer._resume(bad)
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert trainer.epoch == 0 and not trainer.optimizer.state_dict()["state"]
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--resume", str(bad), "--epochs", "2", "--out-dir", str(tmp_path / "new"), "--no-progress"])
    assert exc.value.code == 2 and "bad.pt' " in capsys.readouterr().err
