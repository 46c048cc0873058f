"""``neurosim export``: a checkpoint -> Lava-DL NetX file or NIR graph.

``cli_main(argv, load_model=None)``: ``load_model(path) -> nn.Module`` rebuilds the trained model from a
checkpoint (``neurosim.cli`` passes the trainer's loader). The default loader reads files written by
:func:`save_exportable`: ``{"builder": "neurosim.<module>:<function>", "kwargs": {...}, "state_dict": ...}``,
loaded with ``torch.load(weights_only=True)``. A file neither reads (a plain state dict) is built by
``--model package.module:function`` (``--model-kwargs JSON``), loaded by the loader ``neurosim energy`` uses for
the same options (:func:`neurosim.energy.cli.default_load`), so both commands read the same files.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path


def _sizes(text: str) -> tuple:
    """One ``--input-shape`` word: sizes separated by commas ("1,8,8"; "1 8 8" gives three words)."""
    try:
        sizes = tuple(int(v) for v in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"must be positive integers, F or C,H,W (e.g. 64 or 1,8,8), got {text!r}")
    return sizes


def _steps(text: str) -> int:
    try:
        steps = int(text)
    except ValueError:
        steps = -1
    if steps < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return steps


def _input_shape(parser: argparse.ArgumentParser, words) -> tuple | None:
    """The ``--input-shape`` words as one shape, ``(F,)`` or ``(C, H, W)`` (else a usage error)."""
    if words is None:
        return None
    shape = tuple(v for word in words for v in word)
    if len(shape) not in (1, 3):
        parser.error(f"argument --input-shape: one time step of one sample is F (features) or C,H,W, got "
                     f"{len(shape)} sizes {','.join(map(str, shape))}")
    return shape


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="neurosim export",
                                          description="Export a trained model to Lava-DL NetX (HDF5) or NIR")
    p.add_argument("checkpoint", help="checkpoint file of the trained model")
    p.add_argument("--format", required=True, choices=("lava", "nir"), help="lava: NetX HDF5; nir: NIR HDF5 graph")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--input-shape", type=_sizes, nargs="+", default=None, metavar="SHAPE",
                   help="shape of one time step of one sample: F features or C,H,W, e.g. 64 or 1,8,8 (1 8 8 works "
                        "too); needed when the first layer is a Conv2d. (neurosim energy's --input-shape is a whole "
                        "input T,B,...)")
    p.add_argument("--model", default=None, metavar="PACKAGE.MODULE:FUNCTION",
                   help="for a plain state dict (not a checkpoint of neurosim train or save_exportable): the function "
                        "that builds its network, as neurosim energy's --model")
    p.add_argument("--model-kwargs", default=None, metavar="JSON",
                   help="JSON keyword arguments for --model, e.g. '{\"hidden\": 32}'")
    p.add_argument("--steps", type=_steps, default=None,
                   help="lava: steps per sample stored in the NetX file (informative; default 0)")
    p.add_argument("--allow-reset-change", action="store_true",
                   help="export reset='subtract' neurons as reset-to-zero, and CubaLIF neurons, whose zero reset "
                        "Lava and NIR do not reproduce (a dynamics change)")
    p.add_argument("--allow-bias-change", action="store_true",
                   help="lava: export CubaLIF biases, which Lava adds to the membrane instead of the synaptic "
                        "current (a dynamics change; NIR keeps them exactly)")
    return p


# What the export functions' errors tell a Python caller to pass, as the command line spells it.
FLAGS = {"allow_reset_change=True": "--allow-reset-change", "allow_bias_change=True": "--allow-bias-change",
         "input_shape=(C, H, W)": "--input-shape C,H,W"}

# The functions a checkpoint of save_exportable may name to rebuild its model. A checkpoint is data, and the loader
# calls the function it names with the keyword arguments it holds: only these are trusted (register_builder).
BUILDERS = {"neurosim.hardware.demo:digits_mlp"}


def register_builder(spec: str) -> str:
    """Trust the ``"package.module:function"`` that returns an ``nn.Module``, for :func:`load_exportable` (and the
    ``neurosim export`` command in this process) to call when a checkpoint names it."""
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ValueError(f"builder must be 'package.module:function', got {spec!r}")
    BUILDERS.add(spec)
    return spec


def save_exportable(model, path, builder: str, **kwargs) -> Path:
    """Save ``model``'s weights with the ``"module:function"`` that rebuilds it (atomically, weights_only-safe; the
    builder must be registered, see :func:`register_builder`)."""
    import torch

    if builder not in BUILDERS:
        raise ValueError(f"builder {builder!r} is not registered (register_builder); registered: {sorted(BUILDERS)}")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save({"builder": builder, "kwargs": kwargs, "state_dict": model.state_dict()}, tmp)
    os.replace(tmp, path)
    return path


class NoBuilder(ValueError):
    """A checkpoint that does not say how to build its model (no "builder": a plain state dict)."""


def load_exportable(path):
    import torch
    from torch import nn

    from neurosim import validate

    path = validate.input_file("checkpoint", path)
    if problem := validate.zip_problem(path, zip_only=False):
        raise ValueError(f"checkpoint {str(path)!r} cannot be read: it is {problem}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"checkpoint {str(path)!r} cannot be read ({type(err).__name__}: {err})") from None
    if not isinstance(ckpt, dict) or not {"builder", "state_dict"} <= set(ckpt):
        raise NoBuilder(f"checkpoint {str(path)!r} has no 'builder'/'state_dict', so it does not say how to build "
                        "its model: write the model with neurosim.hardware.save_exportable, or build it and load "
                        "the state dict yourself")
    spec, kwargs = str(ckpt["builder"]), ckpt.get("kwargs", {})
    if spec not in BUILDERS:
        raise ValueError(f"checkpoint {str(path)!r} names the builder {spec!r}, which is not registered: a checkpoint "
                         f"may only call a trusted function (registered: {sorted(BUILDERS)}; "
                         "neurosim.hardware.cli.register_builder adds one)")
    if not isinstance(kwargs, dict):
        raise ValueError(f"checkpoint {str(path)!r}: its 'kwargs' must be a dict, got {type(kwargs).__name__}")
    mod, fn = spec.split(":")
    try:
        model = getattr(importlib.import_module(mod), fn)(**kwargs)
    except (ImportError, AttributeError, TypeError) as err:
        raise ValueError(f"checkpoint {str(path)!r}: builder {spec!r} with {kwargs} failed "
                         f"({type(err).__name__}: {err})") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"checkpoint {str(path)!r}: builder {spec!r} returned {type(model).__name__}, not an "
                         "nn.Module")
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, TypeError, AttributeError) as err:
        raise ValueError(f"checkpoint {str(path)!r}: its state_dict does not fit the model {spec!r} builds "
                         f"({' '.join(str(err).split())[:300]})") from None
    return model


def _load_model(args, load_model):
    """The model of ``args.checkpoint``: the loader's (a trainer checkpoint, a file of save_exportable), or, for a
    plain state dict, the network ``--model`` builds, loaded as ``neurosim energy --model`` loads it."""
    path = args.checkpoint
    try:
        model = (load_model or load_exportable)(path)
    except NoBuilder:
        if args.model is None:
            raise ValueError(f"checkpoint {path!r} does not say how to build its model (a plain state dict?): give "
                             "--model package.module:function (and --model-kwargs JSON) building the network it is "
                             "for, as neurosim energy takes it; or export a checkpoint of neurosim train, or one "
                             "written from Python with neurosim.hardware.save_exportable") from None
        from neurosim.energy.cli import default_load

        return default_load(path, argparse.Namespace(model=args.model, model_kwargs=args.model_kwargs or "{}"))[0]
    if args.model is not None:
        raise ValueError(f"--model: {path!r} builds its own model (a checkpoint of neurosim train or "
                         "save_exportable); --model and --model-kwargs are for plain state-dict files")
    return model


def cli_main(argv=None, load_model=None) -> int:
    """Entry point of ``neurosim export``; returns the exit status (errors are printed, status 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    shape = _input_shape(parser, args.input_shape)
    if args.model_kwargs is not None and args.model is None:
        parser.error("--model-kwargs needs --model (the function it is passed to)")
    if args.format == "nir":  # (options that do nothing there are refused, not ignored)
        lava_only = {"--allow-bias-change": (args.allow_bias_change, "NIR's CubaLIF takes the bias through its "
                                             "synaptic current as neurosim's does, so the NIR export keeps it exactly"),
                     "--steps": (args.steps is not None, "it is stored in the NetX file; a NIR graph has no such field")}
        given = [f"{flag} applies to --format lava only ({why})" for flag, (on, why) in lava_only.items() if on]
        if given:
            parser.error("; ".join(given))
    from .graph import ExportError

    from neurosim import validate

    try:
        problem = validate.output_problem(args.out)
        if problem:
            raise ValueError(f"--out {args.out!r}: {problem}")
        model = _load_model(args, load_model)
        model.eval()
        if args.format == "lava":
            from .export import export_lava
            net = export_lava(model, args.out, input_shape=shape, steps=args.steps or 0,
                              allow_reset_change=args.allow_reset_change, allow_bias_change=args.allow_bias_change)
            print(f"wrote {args.out}: NetX network, {net.depth} layers, input {net.input_shape}")
        else:
            import nir

            from .nir_io import export_nir
            graph = export_nir(model, input_shape=shape, allow_reset_change=args.allow_reset_change)
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)  # (as the Lava export does)
            tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
            try:
                nir.write(str(tmp), graph)
                tmp.replace(out)
            finally:
                tmp.unlink(missing_ok=True)
            print(f"wrote {args.out}: NIR graph with {len(graph.nodes)} nodes")
    except (ExportError, ValueError) as err:
        if isinstance(err, ExportError):
            err = err.reworded(FLAGS)
        print(f"neurosim export: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli_main())
