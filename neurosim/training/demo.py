"""``neurosim demo``: the small spiking MLP learns scikit-learn's digits through the trainer."""
from __future__ import annotations

from .config import TrainConfig
from .trainer import Trainer

# Sized to finish in well under a minute on two CPU cores (see BENCHMARKS.md, "Training (issue 3)").
# One CPU thread: the layers are too small for intra-op threads to pay off, and on a busy machine OpenMP
# threads waiting for each other made it up to 48x slower (BENCHMARKS.md).
DEMO_DEFAULTS = dict(model="spiking_mlp", dataset="digits", encoder="rate", num_steps=16, epochs=20, lr=2e-3,
                     batch_size=64, patience=5, cpu_threads=1, out_dir="runs/demo", model_options={"hidden": [128]})


def demo_config(**overrides) -> TrainConfig:
    return TrainConfig.from_dict({**DEMO_DEFAULTS, **overrides})


def run_demo(cfg: TrainConfig, resume=None, echo=print) -> dict:
    """Train and report. A demo that does not resume replaces an earlier run in ``cfg.out_dir`` (the files a run
    writes there, nothing else: ``Trainer.fit(overwrite=True)``) and says so, so that it can be run again."""
    trainer = Trainer(cfg)
    earlier = trainer.earlier_run() if resume is None else []
    summary = trainer.fit(resume=resume, overwrite=resume is None)
    if "paths" in summary:  # rank 0
        best = summary["best"]
        if earlier:
            echo(f"neurosim demo: replaced the earlier run in {cfg.out_dir} ({', '.join(earlier)})")
        if summary["nothing_to_train"]:
            echo(f"neurosim demo: {summary['nothing_to_train'].replace('>= epochs', '>= --epochs')}: nothing to train")
        echo(f"neurosim demo: spiking MLP ({cfg.num_steps} time steps, {cfg.encoder} code) on digits, "
             f"{summary['epochs_run']} epochs on {summary['device']}")
        echo(f"  validation accuracy {best['accuracy']:.3f}, loss {best['loss']:.4f} at epoch {summary['best_epoch']}, "
             f"the best (lowest validation loss); {summary['train_samples_per_s']:.0f} training samples/s")
        for key, path in summary["paths"].items():
            echo(f"  {key:<16} {path}")
    return summary
