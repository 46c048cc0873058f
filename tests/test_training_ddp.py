"""The same `neurosim train` under torchrun with 2 CPU processes (gloo, DDP) ends within float tolerance of a
one-process run: the global batches hold the same samples (no padding when the training split does not divide
evenly), DDP averages the gradients of the ranks' shares weighted by their sizes, and the metrics are summed over
ranks."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from neurosim.training import TrainConfig, Trainer, get_dataset, get_model
from neurosim.training import checkpoint as ckpt_io
from neurosim.training.trainer import seed_everything

ARGS = ["train", "--dataset", "damped_sine", "--encoder", "direct", "--epochs", "2", "--batch-size", "64",
        "--lr", "3e-3", "--seed", "3", "--no-progress", "--no-tensorboard", "--no-plots"]
# NVLink multicast stays off on the lent multi-GPU hosts (a program using it can take the shared GPUs down)
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


@pytest.mark.parametrize("device, n_points", [
    ("cpu", 600),       # 454 training samples: 7 global batches of 64 and one of 6 (3 per rank)
    ("cpu", 601),       # 455: the last global batch of 7 splits 4/3 (before, rank 1 repeated a sample)
    ("cpu", 513),       # 385: the last global batch has one sample; rank 1 steps at weight 0
    pytest.param("cuda", 600, id="gpu", marks=pytest.mark.skipif(torch.cuda.device_count() < 2,
                 reason="the NCCL twin needs 2 GPUs (run on the device tool's nvidia-h200-x2)"))])
def test_two_processes_match_one_process(tmp_path, device, n_points):
    """gloo on CPU; on a 2-GPU machine the same check with NCCL (one GPU per rank vs one GPU)."""
    env = {**os.environ, **NO_MULTICAST, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    args = [*ARGS, "--device", device, "--data-opt", f"n_points={n_points}"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "-m", "neurosim.cli", *args, "--out-dir", str(tmp_path / "ddp")]
    ddp = subprocess.Popen(torchrun, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    single = subprocess.run([sys.executable, "-m", "neurosim.cli", *args, "--out-dir", str(tmp_path / "one")],
                            env=env, capture_output=True, text=True, timeout=120)
    out, _ = ddp.communicate(timeout=120)
    if ddp.returncode != 0 and "ddress already in use" in out:   # the free port torchrun picked was taken: retry
        res = subprocess.run(torchrun, env=env, capture_output=True, text=True, timeout=120)
        ddp.returncode, out = res.returncode, res.stdout + res.stderr
    assert ddp.returncode == 0, out
    assert single.returncode == 0, single.stderr

    s2, s1 = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("ddp", "one"))
    assert (s2["world_size"], s1["world_size"]) == (2, 1)
    assert (s2["device"].split(":")[0], s1["device"].split(":")[0]) == (device, device)
    assert s2["train_samples"] == s1["train_samples"] == 2 * s1["num_train"]
    assert out.count("neurosim train:") == 1          # only rank 0 reports
    for key in ("loss", "mse", "mae", "r2"):
        assert abs(s2["best"][key] - s1["best"][key]) <= 1e-4 * abs(s1["best"][key]) + 1e-7, key
    a = ckpt_io.load(tmp_path / "ddp" / "checkpoints" / "last.pt")
    b = ckpt_io.load(tmp_path / "one" / "checkpoints" / "last.pt")
    assert len(a["rng"]) == 2 and len(b["rng"]) == 1      # one RNG state per rank
    for k, v in b["model"].items():
        torch.testing.assert_close(a["model"][k], v, rtol=1e-4, atol=1e-5)
    # training moved the weights far more than the tolerance, so the comparison is not trivially true
    cfg = TrainConfig(dataset="damped_sine", encoder="direct", seed=3)
    seed_everything(3)
    init = get_model("spiking_mlp")(get_dataset("damped_sine")(cfg), cfg).state_dict()
    assert max((init[k] - v).abs().max().item() for k, v in b["model"].items()) > 1e-2
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


def _torchrun(*args, ok=True):
    """``torchrun --nproc_per_node=2 args`` on CPU (``args``: a script and its arguments, or ``-m module ...``);
    its output. ``ok``: whether it must succeed (else fail)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *map(str, args)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    if res.returncode != 0 and "ddress already in use" in res.stdout + res.stderr:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert (res.returncode == 0) == ok, res.stdout + res.stderr
    return res.stdout + res.stderr


def _history(path):
    return [{k: v for k, v in r.items() if k != "train_time_s"}
            for r in ckpt_io.load(path / "checkpoints" / "last.pt")["trainer"]["history"]]


def test_resumed_ddp_run_matches_uninterrupted_ddp_run(tmp_path):
    """Per-rank RNG states (rate coding draws differ per rank) come back on resume: 1 epoch + resume to 2
    equals 2 epochs straight, bit for bit."""
    common = ["train", "--dataset", "digits", "--encoder", "rate", "--num-steps", "4", "--device", "cpu",
              "--no-progress", "--no-plots", "--no-tensorboard", "--opt", "hidden=[16]", "--batch-size", "128"]

    def torchrun(*args):
        _torchrun("-m", "neurosim.cli", *args)

    torchrun(*common, "--epochs", "1", "--out-dir", str(tmp_path / "resumed"))
    torchrun("train", "--epochs", "2", "--out-dir", str(tmp_path / "resumed"), "--resume", "--no-progress")
    torchrun(*common, "--epochs", "2", "--out-dir", str(tmp_path / "straight"))
    a = ckpt_io.load(tmp_path / "resumed" / "checkpoints" / "last.pt")
    b = ckpt_io.load(tmp_path / "straight" / "checkpoints" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2 and len(a["rng"]) == 2
    assert not torch.equal(a["rng"][0]["torch"], a["rng"][1]["torch"])     # the ranks draw different spikes
    for k, v in b["model"].items():
        assert torch.equal(a["model"][k], v), k
    assert a["trainer"]["history"] == [{**r, "train_time_s": a["trainer"]["history"][i]["train_time_s"]}
                                       for i, r in enumerate(b["trainer"]["history"])]


CRASH_AT = textwrap.dedent("""
    import json, os, sys
    from neurosim.training import TrainConfig, Trainer

    def crash(event, trainer):           # every rank dies after this step (the last checkpoint: some steps before)
        if event == "step_end" and trainer.global_step == int(sys.argv[2]):
            os._exit(3)
    Trainer(TrainConfig(**json.loads(sys.argv[1])), callbacks=[crash]).fit()
""")


def test_a_ddp_run_resumed_mid_epoch_matches_the_uninterrupted_one(tmp_path):
    """Each rank's partial metric sums of the epoch come back to that rank: before, the checkpoint held rank 0's
    only and every rank resumed with them, so the epoch's training metrics counted rank 0's first part twice and
    lost rank 1's. Resumed by one process, rank 0 takes both ranks' sums."""
    cfg = dict(dataset="damped_sine", encoder="direct", epochs=2, batch_size=64, lr=3e-3, seed=3, save_every=3,
               patience=0, device="cpu", progress=False, tensorboard=False, plots=False)
    (tmp_path / "crash.py").write_text(CRASH_AT)
    # 8 steps per epoch: killed at epoch 2, step 5; its last checkpoint is from step 3
    _torchrun(tmp_path / "crash.py", json.dumps({**cfg, "out_dir": str(tmp_path / "killed")}), 13, ok=False)
    last = ckpt_io.load(tmp_path / "killed" / "checkpoints" / "last.pt")
    assert (last["epoch"], last["step_in_epoch"]) == (1, 3) and len(last["trainer"]["train_sums"]) == 2
    shutil.copy(tmp_path / "killed" / "checkpoints" / "last.pt", tmp_path / "mid_epoch.pt")
    _torchrun("-m", "neurosim.cli", "train", "--resume", "--out-dir", tmp_path / "killed")
    _torchrun(tmp_path / "crash.py", json.dumps({**cfg, "out_dir": str(tmp_path / "straight")}), 0)
    assert _history(tmp_path / "killed") == _history(tmp_path / "straight")
    a, b = (ckpt_io.load(tmp_path / d / "checkpoints" / "last.pt")["model"] for d in ("killed", "straight"))
    assert all(torch.equal(a[k], v) for k, v in b.items())

    # one process from the 2-process checkpoint: the same samples, so the same metrics within float tolerance
    Trainer(TrainConfig(**cfg, out_dir=str(tmp_path / "one"))).fit(resume=tmp_path / "mid_epoch.pt")
    for one, two in zip(_history(tmp_path / "one"), _history(tmp_path / "straight"), strict=True):
        assert one == pytest.approx(two, rel=1e-4, abs=1e-7)


def test_a_batch_size_the_processes_do_not_divide_is_a_usage_error(tmp_path):
    """Before, a plain ValueError raised outside fit()'s clean-up: a traceback from every rank, exit code 1."""
    out = _torchrun("-m", "neurosim.cli", "train", "--batch-size", "63", "--epochs", "1", "--device", "cpu",
                    "--no-progress", "--out-dir", tmp_path, ok=False)
    assert out.count("neurosim train: error: batch_size must be a multiple of the number of processes (2), "
                     "got 63") == 2
    assert "(exitcode: 2)" in out and "ValueError" not in out
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_a_failed_set_up_leaves_the_process_group(monkeypatch, tmp_path):
    """The set-up's errors (here: a batch size 2 processes do not divide) tear down the process group it joined, as
    training's errors do (a real one-process gloo group that the set-up is told has 2 ranks)."""
    import torch.distributed as dist

    from neurosim.training import distributed as D
    from neurosim.training.config import ConfigError

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        monkeypatch.setattr(D, "setup", lambda spec: (D.DistInfo(0, 2, 0, initialized_here=True), torch.device("cpu")))
        with pytest.raises(ConfigError, match=r"multiple of the number of processes \(2\), got 63"):
            Trainer(TrainConfig(batch_size=63, device="cpu", out_dir=str(tmp_path))).fit()
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_under_torchrun_rank_0_decides_about_an_earlier_run_in_out_dir(tmp_path):
    """Every rank gets rank 0's refusal (none trains on alone, waiting for the others); with --overwrite rank 0
    removes the earlier run before any rank goes on."""
    args = ["-m", "neurosim.cli", "train", "--dataset", "damped_sine", "--data-opt", "n_points=100", "--epochs", "1",
            "--device", "cpu", "--no-progress", "--no-plots", "--no-tensorboard", "--out-dir", tmp_path]
    Trainer(TrainConfig(dataset="damped_sine", dataset_options={"n_points": 100}, epochs=1, device="cpu",
                        progress=False, plots=False, out_dir=str(tmp_path))).fit()
    before = (tmp_path / "summary.json").read_text()
    out = _torchrun(*args, ok=False)
    assert out.count(f"neurosim train: error: {tmp_path} already holds a run") == 2 and "(exitcode: 2)" in out
    assert (tmp_path / "summary.json").read_text() == before
    _torchrun(*args, "--overwrite")
    assert json.loads((tmp_path / "summary.json").read_text())["world_size"] == 2
    assert not list((tmp_path / "tb").glob("events.out.tfevents.*"))    # (the earlier run's, removed)
