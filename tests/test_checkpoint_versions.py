"""Checkpoints of format 1 (before the EST's masks stayed on at inference, the BTSP kernel peaked before the plateau,
and the registry refused settings a model never used) rebuild the model they were trained as."""
import json

import pytest
import torch

import neurosim.models  # noqa: F401  (registers the research models)
from neurosim import cli
from neurosim.layers import RandomSpikeMask
from neurosim.models.btsp import BTSPPlasticity
from neurosim.training import TrainConfig, Trainer
from neurosim.training import checkpoint as ckpt_io
from neurosim.training.restore import load_trained

QUIET = dict(progress=False, tensorboard=False, plots=False, device="cpu", epochs=1)


def _as_format_1(path, out, version=1, **config_changes):
    """The checkpoint at ``path`` as format ``version`` wrote it, the config's changes applied."""
    ck = ckpt_io.load(path)
    ck["version"] = version
    ck["config"] = {**ck["config"], **config_changes}
    ckpt_io.save(out, ck)
    assert torch.load(out, weights_only=True)["version"] == version
    return out


def test_a_format_1_est_keeps_its_masks_off_at_inference(tmp_path):
    Trainer(TrainConfig(model="est", dataset="digits", num_steps=2, batch_size=256, out_dir=str(tmp_path / "run"),
                        model_options={"dim": 8, "depth": 1, "heads": 2, "rsm_ratio": 0.5}, **QUIET)).fit()
    new = tmp_path / "run" / "checkpoints" / "last.pt"
    old = _as_format_1(new, tmp_path / "old.pt")

    def modes(path):
        model = load_trained(path)[0]
        return {m.mode for m in model.modules() if isinstance(m, RandomSpikeMask)}
    assert modes(new) == {"always"} and modes(old) == {"train"}
    assert ckpt_io.load(old)["config"]["model_options"]["rsm_mode"] == "train"
    # resuming it through the command line continues the run as it was (and writes format 2)
    assert cli.main(["train", "--resume", str(old), "--epochs", "2", "--out-dir", str(tmp_path / "run"),
                     "--no-progress", "--no-tensorboard", "--no-plots"]) == 0
    resumed = ckpt_io.load(tmp_path / "run" / "checkpoints" / "last.pt")
    assert resumed["version"] == ckpt_io.VERSION and resumed["epoch"] == 2
    assert resumed["config"]["model_options"]["rsm_mode"] == "train"


def test_a_format_1_btspformer_loads_with_its_kernel_and_unused_settings(tmp_path, capsys):
    """The BTSP kernel of format 1 peaked at coincidence (lead=0); the seed's example recorded num_steps=4 for the
    analog model, which never used it and which the registry refuses now."""
    Trainer(TrainConfig(model="btspformer", dataset="damped_sine", batch_size=32, out_dir=str(tmp_path / "run"),
                        dataset_options={"seq_len": 8, "n_points": 120},
                        model_options={"model_dim": 8, "heads": 2, "layers": 1}, **QUIET)).fit()
    new = tmp_path / "run" / "checkpoints" / "last.pt"
    old = _as_format_1(new, tmp_path / "old.pt", num_steps=4)
    leads = [{m.lead for m in load_trained(p)[0].modules() if isinstance(m, BTSPPlasticity)} for p in (new, old)]
    assert leads == [{1.0}, {0.0}]
    assert ckpt_io.load(old)["config"]["num_steps"] == TrainConfig().num_steps
    assert cli.main(["energy", str(old), "--plain", "--samples", "4", "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["batch_size"] == 4
    # a format-2 checkpoint that records a setting the model ignores is still refused
    bad = tmp_path / "bad.pt"
    ck = ckpt_io.load(new)
    ck["config"]["num_steps"] = 4
    ckpt_io.save(bad, ck)
    with pytest.raises(ValueError, match="num_steps=4 does not apply to model 'btspformer'"):
        load_trained(bad)


def test_an_unknown_format_is_refused(tmp_path):
    from neurosim.training.checkpoint import CheckpointError

    assert ckpt_io.READS == (1, 2, 3, 4) and ckpt_io.VERSION == 4
    fields = {k: {} for k in ckpt_io.REQUIRED_KEYS if k not in ("format", "version")}
    ckpt_io.save(tmp_path / "x.pt", {**fields, "version": 5})
    with pytest.raises(CheckpointError, match="has format version 5; this neurosim reads versions 1, 2, 3, 4"):
        ckpt_io.load(tmp_path / "x.pt")


def test_a_format_1_frame_predictor_config_drops_what_its_neuron_ignored():
    from neurosim.training.registry import upgrade_config

    default = TrainConfig()
    lif = upgrade_config({"model": "frame_predictor", "encoder": "rate", "num_steps": 4, "backend": "torch",
                          "model_options": {"neuron": "lif", "groups": 2}}, 1)
    assert lif["model_options"] == {"neuron": "lif"} and lif["backend"] == "torch"
    assert lif["encoder"] == default.encoder and lif["num_steps"] == default.num_steps
    stc = upgrade_config({"model": "frame_predictor", "backend": "fused",
                          "model_options": {"neuron": "stc_lif", "groups": 2}}, 1)
    assert stc["model_options"] == {"neuron": "stc_lif", "groups": 2} and stc["backend"] == default.backend
    same = {"model": "frame_predictor", "backend": "fused", "model_options": {"neuron": "stc_lif"}}
    assert upgrade_config(dict(same), 2) == same


@pytest.mark.parametrize("model,options", [("spiking_mlp", {"hidden": [8]}),
                                           ("est", {"dim": 8, "depth": 1, "heads": 2})])
@pytest.mark.parametrize("version", [1, 2])
def test_a_latency_run_before_format_3_keeps_its_log_code(tmp_path, model, options, version):
    """Format 3 changed what encoder "latency" means (the linear per-input code); older runs encoded with the
    batch-normalised log code, now "latency_log", and are rebuilt with it."""
    from neurosim.training.spiking_mlp import encode

    Trainer(TrainConfig(model=model, dataset="digits", encoder="latency", num_steps=4, batch_size=256,
                        model_options=options, out_dir=str(tmp_path / "run"), **QUIET)).fit()
    new = tmp_path / "run" / "checkpoints" / "last.pt"
    old = _as_format_1(new, tmp_path / "old.pt", version=version)
    assert load_trained(new)[1].encoder == "latency" and load_trained(old)[1].encoder == "latency_log"
    # resuming it with the command it was trained with names the rename
    with pytest.raises(ckpt_io.CheckpointError, match="called 'latency_log' now: resume with --encoder latency_log"):
        Trainer(TrainConfig(model=model, dataset="digits", encoder="latency", num_steps=4, batch_size=256,
                            model_options=options, out_dir=str(tmp_path / "run"), **{**QUIET, "epochs": 2})
                ).fit(resume=str(old))
    x = torch.tensor([[0.0, 0.25, 0.5, 1.0]])
    assert not torch.equal(encode(x, "latency", 4), encode(x, "latency_log", 4))


def test_a_format_3_mid_epoch_checkpoint_resumes_with_its_one_tensor_of_metric_sums(tmp_path):
    """Format 4 saves the epoch's partial metric sums per process; format 3 saved one tensor (rank 0's), which a
    one-process run still resumes from exactly."""
    def cfg(out):
        return TrainConfig(dataset="damped_sine", encoder="direct", num_steps=2, batch_size=32, save_every=2,
                           model_options={"hidden": [8]}, dataset_options={"n_points": 120, "seq_len": 8},
                           out_dir=str(out), **QUIET)

    def crash(event, trainer):
        if event == "step_end" and trainer.global_step == 3:      # (3 steps per epoch; a checkpoint at step 2)
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg(tmp_path / "killed"), callbacks=[crash]).fit()
    ck = ckpt_io.load(tmp_path / "killed" / "checkpoints" / "last.pt")
    assert ck["step_in_epoch"] == 2 and len(ck["trainer"]["train_sums"]) == 1
    ck["trainer"]["train_sums"] = ck["trainer"]["train_sums"][0]
    old = _as_format_1(ckpt_io.save(tmp_path / "one_tensor.pt", ck), tmp_path / "v3.pt", version=3)
    Trainer(cfg(tmp_path / "killed")).fit(resume=old)
    Trainer(cfg(tmp_path / "straight")).fit()
    a, b = (ckpt_io.load(tmp_path / d / "checkpoints" / "last.pt")["trainer"]["history"]
            for d in ("killed", "straight"))
    assert [{**r, "train_time_s": 0} for r in a] == [{**r, "train_time_s": 0} for r in b]


def test_a_history_before_format_4_records_the_rates_its_epochs_trained_with(tmp_path):
    """Before format 4 an epoch's "lr" was the rate after its scheduler step (the next epoch's); read from such a
    checkpoint, the history says the rate each epoch trained with, so a resumed run's log.csv has one meaning."""
    Trainer(TrainConfig(model="spiking_mlp", dataset="digits", num_steps=2, batch_size=256, lr=0.05,
                        model_options={"hidden": [8]}, out_dir=str(tmp_path / "run"), **{**QUIET, "epochs": 3})).fit()
    ck = ckpt_io.load(tmp_path / "run" / "checkpoints" / "last.pt")
    assert [r["lr"] for r in ck["trainer"]["history"]] == [0.05] * 3
    old_meaning = [0.025, 0.025, 0.0125]  # (after a step at epoch 1's end and one at epoch 3's)
    ck["trainer"]["history"] = [{**r, "lr": lr} for r, lr in zip(ck["trainer"]["history"], old_meaning)]
    ck["version"] = 3
    ckpt_io.save(tmp_path / "old.pt", ck)
    assert [r["lr"] for r in ckpt_io.load(tmp_path / "old.pt")["trainer"]["history"]] == [0.05, 0.025, 0.025]
    ck["version"] = 4
    ckpt_io.save(tmp_path / "new.pt", ck)  # (a format-4 history is read as written)
    assert [r["lr"] for r in ckpt_io.load(tmp_path / "new.pt")["trainer"]["history"]] == old_meaning
