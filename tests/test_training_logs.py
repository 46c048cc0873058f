"""The run's logs: log.csv's rows (the learning rate each epoch trained with) and TensorBoard's scalars agree with
the run's history, also after resumes, crashes and earlier runs in the same out_dir."""
import csv

import pytest

from neurosim.training import TrainConfig, Trainer

QUIET = dict(dataset="digits", num_steps=2, batch_size=256, patience=0, progress=False, tensorboard=False,
             plots=False, device="cpu", model_options={"hidden": [8]})


def _rows(out_dir):
    with open(out_dir / "log.csv") as f:
        return list(csv.DictReader(f))


def test_the_lr_column_is_the_rate_the_epoch_trained_with(tmp_path):
    used = {}

    def record(event, trainer):
        if event == "step_end":
            used[trainer.epoch + 1] = trainer.optimizer.param_groups[0]["lr"]

    # lr 0.5 overshoots: the validation loss stops falling and ReduceLROnPlateau(patience=0) halves the rate
    Trainer(TrainConfig(**QUIET, epochs=4, lr=0.5, lr_patience=0, out_dir=str(tmp_path)), callbacks=[record]).fit()
    logged = {int(r["epoch"]): float(r["lr"]) for r in _rows(tmp_path)}
    assert len(set(used.values())) > 1          # the rate did change during the run
    assert logged == used


def _tensorboard(out_dir):
    """{tag: [(step, value), ...]} of what TensorBoard shows for ``out_dir``'s run (after its purges)."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    ea = accumulator.EventAccumulator(str(out_dir / "tb"))
    ea.Reload()
    return {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


def _from_csv(out_dir):
    """The same {tag: [(step, value)]} as log.csv's rows say it (TensorBoard keeps float32)."""
    rows = _rows(out_dir)
    tags = {k.replace("_", "/", 1) if k.startswith(("train_", "val_")) else k: k for k in rows[0] if k != "epoch"}
    return {tag: [(int(r["epoch"]), pytest.approx(float(r[k]), rel=1e-6)) for r in rows] for tag, k in tags.items()}


def test_tensorboard_holds_the_history_after_a_resume_a_crash_and_an_earlier_run(tmp_path, monkeypatch):
    from neurosim.training import logs

    cfg = dict(QUIET, tensorboard=True, out_dir=str(tmp_path))
    last = tmp_path / "checkpoints" / "last.pt"
    Trainer(TrainConfig(**cfg, epochs=1, lr=0.05)).fit()          # an earlier run in the same out_dir
    Trainer(TrainConfig(**cfg, epochs=2)).fit(overwrite=True)     # a fresh run there: the old curves go
    Trainer(TrainConfig(**cfg, epochs=3)).fit(resume=last)        # resumed at an epoch boundary: none lost
    assert len(_rows(tmp_path)) == 3 and _tensorboard(tmp_path) == _from_csv(tmp_path)

    real = logs.TensorBoardLog.log

    def crash_at_epoch_4(self, row):
        if row["epoch"] == 4:
            raise KeyboardInterrupt("killed after the checkpoint, before TensorBoard got the epoch")
        real(self, row)
    monkeypatch.setattr(logs.TensorBoardLog, "log", crash_at_epoch_4)
    with pytest.raises(KeyboardInterrupt):
        Trainer(TrainConfig(**cfg, epochs=4)).fit(resume=last)
    monkeypatch.undo()
    Trainer(TrainConfig(**cfg, epochs=4)).fit(resume=last)        # nothing left to train: the log is made whole
    assert len(_rows(tmp_path)) == 4 and _tensorboard(tmp_path) == _from_csv(tmp_path)


def test_tensorboard_shows_the_history_whatever_the_names_of_the_old_event_files(tmp_path):
    """TensorBoard reads a folder's event files in the order of their names. Two written in the same second by one
    process are told apart by a counter (``...<pid>.9``, ``...<pid>.10``), so an older file could sort last and its
    steps win over the history logged again on a resume (CI: the crash-and-resume test above failed so). Opening
    the log removes the old files: an old file named to sort last leaves no trace."""
    from torch.utils.tensorboard import SummaryWriter

    from neurosim.training import logs

    tb = tmp_path / "tb"
    stale = SummaryWriter(log_dir=str(tb))
    for step in (1, 2, 3, 4):
        stale.add_scalar("val/loss", 99.0, step)
    stale.close()
    (old,) = tb.glob("events.out.tfevents.*")
    old.rename(tb / "events.out.tfevents.9999999999.zz.1.9")
    history = [{"epoch": e, "val_loss": 1.0 / e, "lr": 0.001} for e in (1, 2, 3)]
    log = logs.TensorBoardLog(tb, history)
    log.close()
    shown = _tensorboard(tmp_path)
    assert [step for step, _ in shown["val/loss"]] == [1, 2, 3]
    assert [v for _, v in shown["val/loss"]] == pytest.approx([1.0, 0.5, 1 / 3])


def test_log_csv_gets_the_final_epoch_a_crash_left_out(tmp_path, monkeypatch):
    """Killed after the final epoch's checkpoint, before its log row: the resumed run has no epoch left to train,
    and still ends with the uninterrupted run's log."""
    from neurosim.training import logs

    def cfg(out):
        return TrainConfig(**QUIET, epochs=2, out_dir=str(out))
    Trainer(cfg(tmp_path / "straight")).fit()
    real = logs.write_csv

    def crash_at_epoch_2(path, history):
        if len(history) == 2:
            raise KeyboardInterrupt("killed after the final checkpoint, before log.csv got the epoch")
        return real(path, history)
    monkeypatch.setattr(logs, "write_csv", crash_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg(tmp_path / "killed")).fit()
    monkeypatch.undo()
    assert len(_rows(tmp_path / "killed")) == 1
    Trainer(cfg(tmp_path / "killed")).fit(resume=tmp_path / "killed" / "checkpoints" / "last.pt")
    strip = [{k: v for k, v in r.items() if k != "train_time_s"} for r in _rows(tmp_path / "straight")]
    assert [{k: v for k, v in r.items() if k != "train_time_s"} for r in _rows(tmp_path / "killed")] == strip
