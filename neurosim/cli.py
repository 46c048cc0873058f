"""The ``neurosim`` command: ``demo``, ``train``, ``energy``, ``export`` (``neurosim <command> --help``).

Train settings come from, in increasing precedence: built-in defaults, the config stored in the checkpoint
being resumed, a ``--config`` YAML/JSON file, and explicit flags. Bad values are reported argparse-style
(``neurosim train: error: ...``) with exit code 2. ``energy`` and ``export`` come from the modules
``neurosim.energy.cli`` and ``neurosim.hardware.cli`` (a ``register(subparsers)`` function, or an
``add_arguments(parser)`` + ``cli_main(args, load=...)`` pair); while one does not exist its command says so and
exits with status 1.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

SUP = argparse.SUPPRESS


# ---- argument types (raise ArgumentTypeError -> "argument --x: ..." and exit 2) -----------------------------
def int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {v}")
        return v
    parse.__name__ = f"integer >= {minimum}"
    return parse


def _float_in(lo: float, hi: float, lo_open: bool, hi_open: bool):
    interval = ("(" if lo_open else "[") + f"{lo:g}, {hi:g}" + (")" if hi_open else "]")

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number in {interval}, got {text!r}") from None
        ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        if not ok or v != v:
            raise argparse.ArgumentTypeError(f"must be a number in {interval}, got {text}")
        return v
    parse.__name__ = f"number in {interval}"
    return parse


def _device(text: str) -> str:
    if text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {text!r}")


def _key_value(text: str) -> tuple[str, object]:
    if "=" not in text or not text.split("=", 1)[0]:
        raise argparse.ArgumentTypeError(f"must look like KEY=VALUE, got {text!r}")
    import yaml

    from .training.config import parse_yaml

    key, raw = text.split("=", 1)
    try:
        value = parse_yaml(raw) if raw else ""
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(f"cannot parse value of {key!r}: {err}") from None
    return key, value


def _shown(value) -> str:
    """A TrainConfig default as the command line writes it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items()) or "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _add_train_args(p: argparse.ArgumentParser, demo: bool) -> None:
    """The train/demo options. Each defaults to SUPPRESS, so that only flags given override the layers below them
    (see _config_from_args); its help text shows the default it gets: TrainConfig's, or the demo's own."""
    from .neurons import BACKENDS
    from .training.config import ENCODERS, OPTIMIZERS, TrainConfig
    from .training.demo import DEMO_DEFAULTS

    defaults = {**TrainConfig().to_dict(), **(DEMO_DEFAULTS if demo else {})}

    def d(field: str, none: str = "", what: str = "") -> str:
        return f" (default: {what}{none if defaults[field] is None else _shown(defaults[field])})"

    g = p.add_argument_group("what to train")
    if not demo:
        g.add_argument("--config", metavar="FILE", default=SUP, help="YAML or JSON file of TrainConfig fields")
        g.add_argument("--model", metavar="NAME", default=SUP,
                       help="registered model (built in: spiking_mlp; models register est, spikformer, ...)"
                       + d("model"))
        g.add_argument("--dataset", metavar="NAME", default=SUP,
                       help="registered dataset: digits, damped_sine, ..." + d("dataset"))
    g.add_argument("--opt", metavar="KEY=VALUE", action="append", type=_key_value, default=SUP,
                   help="model option (repeatable), e.g. --opt hidden=[256,128]" + d("model_options"))
    g.add_argument("--data-opt", metavar="KEY=VALUE", action="append", type=_key_value, default=SUP,
                   help="dataset option (repeatable), e.g. --data-opt seq_len=16" + d("dataset_options"))
    g.add_argument("--encoder", choices=ENCODERS, default=SUP, help="input spike code"
                   + d("encoder", none="per model/task"))
    g.add_argument("--backend", choices=BACKENDS, default=SUP, help="LIF backend" + d("backend"))
    g.add_argument("--num-steps", type=int_at_least(1), default=SUP, help="time steps T" + d("num_steps"))
    h = p.add_argument_group("optimisation")
    h.add_argument("--epochs", type=int_at_least(1), default=SUP,
                   help="epochs to train at most (early stopping may end sooner)" + d("epochs"))
    h.add_argument("--lr", type=_float_in(0, float("inf"), True, True), default=SUP, help="learning rate" + d("lr"))
    h.add_argument("--batch-size", type=int_at_least(1), default=SUP,
                   help="global batch size (all processes)" + d("batch_size"))
    h.add_argument("--weight-decay", type=_float_in(0, float("inf"), False, True), default=SUP,
                   help="the optimizer's weight decay" + d("weight_decay"))
    h.add_argument("--optimizer", choices=OPTIMIZERS, default=SUP, help="optimizer" + d("optimizer"))
    h.add_argument("--lr-factor", type=_float_in(0, 1, True, True), default=SUP,
                   help="ReduceLROnPlateau factor" + d("lr_factor"))
    h.add_argument("--lr-patience", type=int_at_least(0), default=SUP,
                   help="ReduceLROnPlateau patience (epochs)" + d("lr_patience"))
    h.add_argument("--patience", type=int_at_least(0), default=SUP,
                   help="early-stopping patience (epochs without a lower validation loss; 0: off)" + d("patience"))
    h.add_argument("--grad-clip", type=_float_in(0, float("inf"), False, True), default=SUP,
                   help="max gradient norm (0: off)" + d("grad_clip"))
    h.add_argument("--seed", type=int_at_least(0), default=SUP,
                   help="seed of the split, the initial weights, the sample order and the spike codes" + d("seed"))
    h.add_argument("--val-fraction", type=_float_in(0, 1, True, True), default=SUP,
                   help="share of the samples held out for validation (unless the dataset fixes its split)"
                   + d("val_fraction"))
    r = p.add_argument_group("run")
    r.add_argument("--device", type=_device, default=SUP,
                   help="auto (CUDA when present), cpu, cuda, cuda:N" + d("device"))
    r.add_argument("--bf16", dest="precision", action="store_const", const="bf16", default=SUP,
                   help="bfloat16 autocast" + d("precision"))
    r.add_argument("--cpu-threads", type=int_at_least(0), default=SUP,
                   help="torch threads when training on CPU (0: torch's default)" + d("cpu_threads"))
    r.add_argument("--out-dir", metavar="DIR", default=SUP, help="where logs, checkpoints and plots go"
                   + (" (an earlier run's files there are replaced, unless --resume)" if demo else "") + d("out_dir"))
    r.add_argument("--save-every", type=int_at_least(0), default=SUP,
                   help="also write the last checkpoint every N steps inside an epoch (0: end of epoch only)"
                   + d("save_every"))
    again = r.add_mutually_exclusive_group()
    again.add_argument("--resume", nargs="?", const="auto", metavar="CHECKPOINT", default=SUP,
                       help="continue a killed run (default checkpoint: OUT_DIR/checkpoints/last.pt)")
    if not demo:  # (the demo replaces an earlier run in its out dir: see run_demo)
        again.add_argument("--overwrite", action="store_true", default=SUP,
                           help="replace an earlier run in OUT_DIR: remove the files a run writes there (nothing "
                                "else) before training; without it (or --resume) such a run is an error")
    r.add_argument("--no-progress", dest="progress", action="store_false", default=SUP,
                   help="no progress bar" + d("progress", what="progress bar "))
    r.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", default=SUP,
                   help="no TensorBoard scalars (OUT_DIR/tb)" + d("tensorboard", what="TensorBoard "))
    r.add_argument("--no-plots", dest="plots", action="store_false", default=SUP,
                   help="no loss and prediction plots" + d("plots", what="plots "))


def _config_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace, base: dict):
    """Merge defaults < resumed checkpoint's config < --config file < flags; check names; return (cfg, resume)."""
    from .training import checkpoint as ckpt_io
    from .training.config import TrainConfig, load_config_file
    from .training.distributed import resolve_device
    from .training.registry import get_dataset, get_model

    flags = {k: v for k, v in vars(args).items() if k not in ("command", "handler", "config", "resume", "overwrite",
                                                              "opt", "data_opt", "_argv")}
    try:
        file_values = load_config_file(args.config) if getattr(args, "config", None) else {}
        cfg = TrainConfig.from_dict({**base, **file_values, **flags})
        resume = getattr(args, "resume", None)
        if resume is not None:
            path = Path(cfg.out_dir) / "checkpoints" / "last.pt" if resume == "auto" else Path(resume)
            saved = ckpt_io.load(path)["config"]
            cfg = TrainConfig.from_dict({**base, **saved, **file_values, **flags})
            resume = path
        for key, field in (("opt", "model_options"), ("data_opt", "dataset_options")):
            if getattr(args, key, None):
                setattr(cfg, field, {**getattr(cfg, field), **dict(getattr(args, key))})
        cfg.validate()
        get_model(cfg.model)
        get_dataset(cfg.dataset)
        resolve_device(cfg.device)
    except ValueError as err:
        parser.error(str(err))
    return cfg, resume


def _fit(parser, fit):
    """``fit()``'s summary; its usage errors exit 2 argparse-style, a failed run is None (no traceback)."""
    from .training import NonFiniteLoss, RunExists

    from .training.checkpoint import CheckpointError
    from .training.config import ConfigError

    try:
        return fit()
    except RunExists as err:
        parser.error(err.advice("--resume", "--overwrite", "--out-dir"))
    except (ConfigError, CheckpointError) as err:  # (a checkpoint of another run given to --resume, an unwritable
        parser.error(str(err))                     # --out-dir: found before the first step)
    except NonFiniteLoss as err:                   # (a run that failed, not a usage error: status 1, no traceback)
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
    return None


def _cmd_train(parser, args) -> int:
    from .training import Trainer

    cfg, resume = _config_from_args(parser, args, {})
    summary = _fit(parser, lambda: Trainer(cfg).fit(resume=resume, overwrite=getattr(args, "overwrite", False)))
    if summary is None:
        return 1
    if "paths" in summary:
        if summary["nothing_to_train"]:
            why = summary["nothing_to_train"].replace(">= epochs", ">= --epochs")
            print(f"neurosim train: {why}: nothing to train")
        best = ", ".join(f"{k} {v:.4g}" for k, v in summary["best"].items())
        print(f"neurosim train: {cfg.model} on {cfg.dataset}, {summary['epochs_run']} epochs on {summary['device']}"
              f" x{summary['world_size']}; best epoch {summary['best_epoch']} (lowest validation loss): {best}")
        for key, path in summary["paths"].items():
            print(f"  {key:<16} {path}")
    return 0


def _cmd_demo(parser, args) -> int:
    from .training.demo import DEMO_DEFAULTS, run_demo

    cfg, resume = _config_from_args(parser, args, dict(DEMO_DEFAULTS))
    return 0 if _fit(parser, lambda: run_demo(cfg, resume=resume)) is not None else 1


def _optional_command(sub, name: str, module: str, help_text: str, load: str | None = None) -> None:
    """Add the command from ``module``: either its ``register(subparsers)``, or its ``add_arguments(parser)`` +
    ``cli_main(args, load=...)`` pair (``load``: 'module:function' giving trainer checkpoints to it). While the
    module is missing, add a stub that says so and exits with status 1."""
    try:
        mod = importlib.import_module(module)
        if hasattr(mod, "register"):
            mod.register(sub)
            return
        add_arguments, cli_main = mod.add_arguments, mod.cli_main
    except (ImportError, AttributeError) as err:
        reason = f"{module} is not available ({type(err).__name__}: {err})"
        p = sub.add_parser(name, help=f"{help_text} [not available yet]",
                           description=f"{help_text}. Not available in this installation yet: {reason}.")

        def stub(parser, args, reason=reason):
            print(f"neurosim {name}: not available yet: {reason}", file=sys.stderr)
            return 1
        p.set_defaults(handler=stub)
        return
    p = sub.add_parser(name, help=help_text, description=f"{help_text}. Trainer checkpoints (neurosim train) "
                       "rebuild their own model; other files need the options below.")
    add_arguments(p)

    def run(parser, args):
        loader = None
        if load:
            mod_name, fn = load.split(":")
            loader = getattr(importlib.import_module(mod_name), fn)
        try:
            cli_main(args, load=loader)
        except ValueError as err:
            parser.error(str(err))
        return 0
    p.set_defaults(handler=run)


def _export_command(sub) -> None:
    """``neurosim export`` from :mod:`neurosim.hardware.cli` (``build_parser`` + ``cli_main(argv, load_model)``),
    with trainer checkpoints rebuilt by :func:`neurosim.training.restore.export_loader`."""
    help_text = "export a model to Lava-DL NetX or NIR"
    try:
        hw = importlib.import_module("neurosim.hardware.cli")
        build, cli_main = hw.build_parser, hw.cli_main
    except (ImportError, AttributeError):
        _optional_command(sub, "export", "neurosim.hardware.cli", help_text)
        return
    p = sub.add_parser("export", help=help_text, description=f"{help_text}. Trainer checkpoints (neurosim train) "
                       "and files of neurosim.hardware.save_exportable rebuild their own model; a plain state dict "
                       "needs --model (as for neurosim energy).")
    build(p)

    def run(parser, args):
        from .training.restore import export_loader

        raw = args._argv
        return cli_main(raw[raw.index("export") + 1:], load_model=export_loader)
    p.set_defaults(handler=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neurosim", description="neurosim: neuromorphic simulation toolkit")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"neurosim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo = sub.add_parser("demo", help="train a small spiking MLP on scikit-learn's digits (about 10 s on CPU)",
                          description="Train the small spiking MLP on the digits data set through the trainer "
                                      "and print the accuracy and where the outputs went.")
    _add_train_args(demo, demo=True)
    demo.set_defaults(handler=_cmd_demo)
    train = sub.add_parser("train", help="train a registered model on a registered dataset",
                           description="Train a registered model on a registered dataset. Works unchanged under "
                                       "`torchrun --nproc_per_node=N -m neurosim.cli train ...` (DDP).")
    _add_train_args(train, demo=False)
    train.set_defaults(handler=_cmd_train)
    _optional_command(sub, "energy", "neurosim.energy.cli", "estimate SynOps and energy of a model",
                      load="neurosim.training.restore:energy_loader")
    _export_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args._argv = argv
    sub_parser = parser._subparsers._group_actions[0].choices[args.command]  # for parser.error in that command
    return int(args.handler(sub_parser, args) or 0)


if __name__ == "__main__":
    sys.exit(main())
