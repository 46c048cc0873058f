"""BTSPFormer on the damped sine x(t) = e^{-0.1 t} cos(2 t): the seed's command line on neurosim's trainer.

    python examples/btspformer/main.py --seq_len 50 --num_samples 10000 --batch_size 128 --epochs 100 \
        --lr 1e-3 --use_gpu [--model_dim 64] [--heads 4] [--layers 2]

Writes btspformer_model.pth, btspformer_loss_curve.png, btspformer_inference.png, logs/ (CSV, TensorBoard)
and checkpoints/ into --out_dir (default: the current folder). Same run through the CLI:
``neurosim train --model btspformer --dataset damped_sine --data-opt seq_len=50 --data-opt n_points=10050
--data-opt dt=0.01 --epochs 100 --batch-size 128 --lr 1e-3 --patience 10 --lr-patience 4`` (a test checks the two
give one configuration). ``--model`` also takes spiking_btspformer, vanilla_transformer and astro_transformer.
An earlier run's outputs in --out_dir are an error unless --overwrite replaces them.
"""
import argparse
import json

from neurosim.models.btsp_experiment import DEFAULT_DT, run, seed_config
from neurosim.training import CheckpointError, RunExists
from neurosim.training.config import ConfigError

MODELS = ("btspformer", "spiking_btspformer", "vanilla_transformer", "astro_transformer")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq_len", type=int, default=50, help="sequence length for the input time series")
    ap.add_argument("--num_samples", type=int, default=10000, help="number of synthetic samples (windows) to generate")
    ap.add_argument("--batch_size", type=int, default=128, help="batch size used during training")
    ap.add_argument("--epochs", type=int, default=100, help="number of training epochs")
    ap.add_argument("--lr", type=float, default=1e-3, help="learning rate for the optimizer")
    ap.add_argument("--use_gpu", action="store_true", help="enable GPU acceleration if available")
    ap.add_argument("--model_dim", type=int, default=64, help="width of the transformer representation")
    ap.add_argument("--heads", type=int, default=4, help="number of attention heads")
    ap.add_argument("--layers", type=int, default=2, help="number of transformer encoder layers")
    # neurosim additions
    ap.add_argument("--model", default="btspformer", choices=MODELS, help="which model to train")
    ap.add_argument("--out_dir", default=".", help="folder for every output (default: current folder)")
    ap.add_argument("--dt", type=float, default=DEFAULT_DT, help="sampling step of the damped sine")
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--optimizer", default="adamw", choices=("adamw", "adam"))
    ap.add_argument("--patience", type=int, default=10, help="early stopping: epochs without improvement (0: off)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num_steps", type=int, default=None,
                    help="simulation steps of spiking_btspformer (default 4; the other models take none)")
    ap.add_argument("--no_progress", action="store_true", help="hide the progress bars")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace an earlier run's outputs in --out_dir (without it they are an error)")
    a = ap.parse_args(argv)
    try:
        cfg = seed_config(a.model, a.seq_len, a.num_samples, a.batch_size, a.epochs, a.lr, a.use_gpu, a.model_dim,
                          a.heads, a.layers, a.dt, a.dropout, a.optimizer, a.patience, seed=a.seed,
                          num_steps=a.num_steps, out_dir=a.out_dir, progress=not a.no_progress)
    except ValueError as err:
        ap.error(str(err))
    try:   # (what the builders refuse, e.g. --dropout 1.5, is found in fit(), before the first step)
        metrics = run(cfg, prefix=a.model, overwrite=a.overwrite)
    except RunExists as err:
        ap.error(err.advice(None, "--overwrite", "--out_dir"))
    except (ConfigError, CheckpointError) as err:
        ap.error(str(err))
    print(json.dumps(metrics, indent=2))
    print(f"final validation MSE {metrics['val']['mse']:.3e}  MAE {metrics['val']['mae']:.3e}")
    return metrics


if __name__ == "__main__":
    main()
