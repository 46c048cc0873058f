"""A run killed with SIGKILL mid-epoch and resumed ends exactly where an uninterrupted run with the same
seed ends (CPU, deterministic ops): same weights, optimizer state, metrics and log."""
import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from neurosim.training import checkpoint as ckpt_io

CFG = dict(model="spiking_mlp", dataset="digits", encoder="rate", num_steps=4, epochs=3, batch_size=64, lr=3e-3,
           seed=7, patience=0, save_every=3, progress=False, plots=False, model_options={"hidden": [32]})
KILL_AT_STEP = 30          # epoch 2 (23 steps per epoch), step 7; the last checkpoint is from step 6

CHILD = textwrap.dedent("""
    import json, sys, time
    from neurosim.training import TrainConfig, Trainer
    cfg, marker, kill_at = TrainConfig(**json.loads(sys.argv[1])), sys.argv[2], int(sys.argv[3])

    def hang_at_kill_step(event, trainer):
        if event == "step_end" and trainer.global_step == kill_at:
            with open(marker, "w") as f:
                f.write(str(trainer.step_in_epoch))
            while True:          # wait here for the parent's SIGKILL
                time.sleep(0.1)

    Trainer(cfg, callbacks=[hang_at_kill_step]).fit()
""")


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _cli(*args):
    subprocess.run([sys.executable, "-m", "neurosim.cli", "train", *args], check=True, env=_env(),
                   stdout=subprocess.DEVNULL, timeout=120)


def _rows(out_dir):
    with open(out_dir / "log.csv") as f:
        return [{k: v for k, v in r.items() if k != "train_time_s"} for r in csv.DictReader(f)]


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps({**CFG, "out_dir": str(straight)}))
    ref = subprocess.Popen([sys.executable, "-m", "neurosim.cli", "train", "--config", str(cfg_file)],
                           env=_env(), stdout=subprocess.DEVNULL)

    marker = tmp_path / "killed.marker"
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps({**CFG, "out_dir": str(killed)}), str(marker),
                              str(KILL_AT_STEP)], env=_env())
    deadline = time.time() + 120
    while not marker.exists():
        assert child.poll() is None, "training process ended before reaching the kill step"
        assert time.time() < deadline, "training process never reached the kill step"
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL
    assert int(marker.read_text()) == KILL_AT_STEP - 23      # killed inside the second epoch

    last = ckpt_io.load(killed / "checkpoints" / "last.pt")
    assert (last["epoch"], last["step_in_epoch"], last["global_step"]) == (1, 6, 29)
    assert not list((killed / "checkpoints").glob(".*tmp*")), "a temp file was left behind"

    _cli("--out-dir", str(killed), "--resume", "--no-progress")      # config comes from the checkpoint
    assert ref.wait(timeout=120) == 0

    a = ckpt_io.load(killed / "checkpoints" / "last.pt")
    b = ckpt_io.load(straight / "checkpoints" / "last.pt")
    assert a["global_step"] == b["global_step"] == 3 * 23
    for k in b["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for pid, st in b["optimizer"]["state"].items():
        for name, v in st.items():
            assert torch.equal(a["optimizer"]["state"][pid][name], v), (pid, name)
    assert a["scheduler"] == b["scheduler"]
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])
    assert _rows(killed) == _rows(straight)
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (killed, straight))
    assert sa["best"] == sb["best"] and sa["best_epoch"] == sb["best_epoch"]
    assert sa["best"]["accuracy"] > 0.5          # it did learn something (10 classes)


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    from neurosim.training import CheckpointError, TrainConfig, Trainer

    cfg = TrainConfig(**{**CFG, "epochs": 1, "save_every": 0, "tensorboard": False, "out_dir": str(tmp_path / "a")})
    Trainer(cfg).fit()
    other = TrainConfig(**{**cfg.to_dict(), "seed": 8, "out_dir": str(tmp_path / "b")})
    with pytest.raises(CheckpointError, match="different run.*seed: checkpoint 7 vs now 8"):
        Trainer(other).fit(resume=tmp_path / "a" / "checkpoints" / "last.pt")
    assert not (tmp_path / "b").exists()         # refused before writing anything


def test_a_resumed_run_draws_the_random_spike_masks_an_uninterrupted_one_would(tmp_path):
    """Seeded random spike masks have their own generators, outside the global RNG: the checkpoint keeps where each
    stands, so a run resumed after epoch 1 ends with the uninterrupted run's weights (before, it replayed epoch 1's
    masks). The run's seed and the process's rank reach those generators too."""
    import neurosim.models  # noqa: F401  (registers "est")
    from neurosim.layers import RandomSpikeMask
    from neurosim.training import TrainConfig, Trainer
    from neurosim.training.trainer import seed_layer_generators

    def cfg(out, epochs, seed=0):
        return TrainConfig(model="est", dataset="digits", num_steps=2, epochs=epochs, batch_size=256, seed=seed,
                           out_dir=str(out), progress=False, tensorboard=False, plots=False, patience=0, device="cpu",
                           model_options={"dim": 8, "depth": 1, "heads": 2, "rsm_ratio": 0.5}).validate()

    whole = Trainer(cfg(tmp_path / "a", 2))
    whole.fit()
    first = Trainer(cfg(tmp_path / "b", 1))
    first.fit()
    ck = ckpt_io.load(first.paths["last_checkpoint"], map_location="cpu")  # (before the resumed run overwrites it)
    resumed = Trainer(cfg(tmp_path / "b", 2))
    resumed.fit(resume=first.paths["last_checkpoint"])
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # without the masks' states (a checkpoint written before they were saved) the resumed run differs
    for r in ck["rng"]:
        r.pop("layers")
    ckpt_io.save(tmp_path / "old.pt", ck)
    old = Trainer(cfg(tmp_path / "c", 2))
    old.fit(resume=tmp_path / "old.pt")
    c = old.model.state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)

    def masks(seed, rank):
        layer = RandomSpikeMask(0.5, seed=3)
        seed_layer_generators(layer, seed, rank)
        return layer(torch.ones(64))
    assert torch.equal(masks(0, 0), RandomSpikeMask(0.5, seed=3)(torch.ones(64)))
    assert not torch.equal(masks(0, 0), masks(1, 0)) and not torch.equal(masks(0, 0), masks(0, 1))
    assert torch.equal(masks(1, 1), masks(1, 1))


def test_a_crash_between_the_checkpoints_of_an_improving_epoch_leaves_best_pt_right(tmp_path, monkeypatch):
    """best.pt and last.pt are two files: killed after the first is written, the resumed run still ends with the
    uninterrupted run's best.pt (before, last.pt came first and already named the epoch best; best.pt stayed an
    epoch behind, and the resumed run had no reason to write it again)."""
    from neurosim.training import TrainConfig, Trainer

    def cfg(out):
        return TrainConfig(**{**CFG, "epochs": 2, "save_every": 0, "tensorboard": False, "out_dir": str(out)})
    straight = Trainer(cfg(tmp_path / "straight")).fit()
    assert straight["best_epoch"] == 2               # the final epoch improves: both files are written

    real, written = ckpt_io.save, []

    def crash_at_the_second_file(path, payload):
        if payload["epoch"] == 2:
            written.append(path)
            if len(written) == 2:
                raise KeyboardInterrupt("killed between the two checkpoints")
        return real(path, payload)
    monkeypatch.setattr(ckpt_io, "save", crash_at_the_second_file)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg(tmp_path / "killed")).fit()
    monkeypatch.undo()
    resumed = Trainer(cfg(tmp_path / "killed")).fit(resume=tmp_path / "killed" / "checkpoints" / "last.pt")
    assert resumed["best_epoch"] == 2
    a, b = (ckpt_io.load(d / "checkpoints" / "best.pt") for d in (tmp_path / "killed", tmp_path / "straight"))
    assert a["epoch"] == b["epoch"] == 2
    for k, v in b["model"].items():
        assert torch.equal(a["model"][k], v), k



def test_fit_resume_true_continues_the_runs_own_last_checkpoint(tmp_path):
    """The command line's bare --resume means OUT_DIR/checkpoints/last.pt; fit(resume=True) was a TypeError
    ("expected str, bytes or os.PathLike object, not bool")."""
    from neurosim.training import CheckpointError, RunExists, TrainConfig, Trainer

    def cfg(epochs, out=tmp_path):
        return TrainConfig(**{**CFG, "epochs": epochs, "save_every": 0, "tensorboard": False, "out_dir": str(out),
                              "num_steps": 2, "batch_size": 256, "model_options": {"hidden": [8]}})
    Trainer(cfg(1)).fit()
    assert Trainer(cfg(2)).fit(resume=True)["epochs_run"] == 2
    with pytest.raises(RunExists):                   # False: a fresh run, as None
        Trainer(cfg(3)).fit(resume=False)
    with pytest.raises(ValueError, match=r"resume must be a checkpoint path, True \(this run's own checkpoint "
                                         r"'.*last.pt'\) or None; got 1"):
        Trainer(cfg(3)).fit(resume=1)
    with pytest.raises(CheckpointError, match=r"checkpoint 'auto' does not exist \(resume=True continues the run"):
        Trainer(cfg(3)).fit(resume="auto")
    with pytest.raises(CheckpointError, match=r"new/checkpoints/last.pt' does not exist"):
        Trainer(cfg(1, tmp_path / "new")).fit(resume=True)
