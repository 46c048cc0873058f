"""The run's logs: log.csv's rows (the learning rate each epoch trained with) and TensorBoard's scalars agree with
the run's history, also after resumes, crashes and earlier runs in the same out_dir."""
import csv

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
