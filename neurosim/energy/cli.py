"""``neurosim energy``: profile a saved checkpoint and print / write the report.

Wiring into the ``neurosim`` command (neurosim/cli.py)::

    sub = subparsers.add_parser("energy", help="SynOps and energy per layer of a checkpoint")
    neurosim.energy.add_arguments(sub)
    sub.set_defaults(func=lambda a: neurosim.energy.cli_main(a, load=<trainer's loader or None>))

``load(checkpoint_path, args) -> (model, inputs or None[, batch_dim[, input_shape]])`` rebuilds the model of a
checkpoint (the training code knows its format); ``batch_dim`` is the inputs' sample dimension, for the per-sample
energy (default 1, ``[T, B, ...]``; 0 for a model that takes batch-first samples); ``input_shape``, the shape of an
input the model takes, makes an ``--input`` / ``--input-shape`` of another rank an error naming that layout.
Without one, the checkpoint is a state dict (or a dict holding one under "model" / "state_dict" / "model_state")
and ``--model package.module:builder`` builds the network.
Inputs: ``--input x.pt`` (a saved tensor) or ``--input-shape T,B,... --input-rate p`` (Bernoulli 0/1 values,
seeded), in the layout the model takes, unless the loader returns some.
"""
from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

import torch

from .. import validate
from .hardware import get_profile, list_profiles


DEFAULT_INPUT_RATE = 0.2  # --input-rate's default: the firing probability of --input-shape's random input


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("checkpoint", help="saved checkpoint (.pt)")
    parser.add_argument("--hardware", default="cmos45nm",
                        help=f"energy profile: one of {', '.join(list_profiles())} (default cmos45nm), or a JSON "
                             "file with the fields of neurosim.energy.HardwareProfile")
    parser.add_argument("--model", default=None, help="builder 'package.module:function' returning the nn.Module")
    parser.add_argument("--model-kwargs", default="{}", help="JSON keyword arguments for --model")
    parser.add_argument("--input", default=None,
                        help="tensor file (torch.save) to feed the model, in the layout of --input-shape")
    parser.add_argument("--input-shape", default=None, metavar="SHAPE",
                        help="comma-separated shape of a random 0/1 input (1 with probability --input-rate) in the "
                             "layout the checkpoint's model takes: time-major T,B,... (its encoded spikes) for a "
                             "model that encodes its input (spiking_mlp, est, spikformer; on digits e.g. 4,64,64 and "
                             "4,64,8,8), batch-first B,... for the others (btspformer, vanilla_transformer, "
                             "astro_transformer, spiking_btspformer, frame_predictor; e.g. 64,16: 0/1 values in "
                             "place of their samples), T,B,... for a --model network. A shape of another rank is an "
                             "error naming the checkpoint's layout")
    parser.add_argument("--input-rate", type=float, default=None,
                        help=f"firing probability of the random input of --input-shape, in [0, 1] (default "
                             f"{DEFAULT_INPUT_RATE}); only with --input-shape")
    parser.add_argument("--samples", type=int, default=None,
                        help="trainer checkpoints: how many validation samples to profile (default 64, or all "
                             "of them when there are fewer; more than there are is an error)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of every random draw (default 0): --input-shape's input, a trainer checkpoint's "
                             "input encoding (e.g. the rate code), spike masks without a seed of their own; the same "
                             "seed gives the same report")
    parser.add_argument("--device", default="cpu", help="where the model runs: cpu (default), cuda or cuda:N")
    parser.add_argument("--require-spikes", action="append", default=None, metavar="PATTERN",
                        help="layer name / glob whose input must be binary (repeatable)")
    parser.add_argument("--csv", default=None, help="write the per-layer table as CSV")
    parser.add_argument("--json", default=None, help="write the report as JSON")
    parser.add_argument("--plot", default=None,
                        help="write a per-layer bar chart (format from the suffix: .png, .pdf, .svg...)")
    parser.add_argument("--plain", action="store_true", help="plain-text table even when rich is installed")
    parser.add_argument("--no-audit", dest="audit", action="store_false",
                        help="skip listing the arithmetic modules run as plain torch functions, outside every "
                             "counted layer (the audit is on by default here; see neurosim.energy.audit)")
    return parser


def _json(option: str, text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{option}: not valid JSON ({err})") from None


def _hardware(spec: str):
    if spec.endswith(".json"):
        path = Path(spec)
        if not path.is_file():
            raise ValueError(f"--hardware: file {spec!r} does not exist")
        fields = _json(f"--hardware {spec}", path.read_text())
        if not isinstance(fields, dict):
            raise ValueError(f"--hardware {spec}: must hold a JSON object of HardwareProfile fields, got "
                             f"{type(fields).__name__}")
        try:
            return get_profile(fields)
        except ValueError as err:
            raise ValueError(f"--hardware {spec}: {err}") from None
    return spec


def _builder(spec: str):
    if not spec or ":" not in spec:
        raise ValueError(f"--model must be 'package.module:function', got {spec!r}")
    mod, fn = spec.split(":", 1)
    try:
        obj = importlib.import_module(mod)
    except ImportError as err:
        raise ValueError(f"--model {spec!r}: cannot import {mod!r} ({err})") from None
    for part in fn.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"--model {spec!r}: {mod!r} has no {fn!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"--model {spec!r}: {fn!r} is not callable")
    return obj


def _load_tensor_file(what: str, path):
    """``torch.load(path, weights_only=True)``, its failures as a ValueError naming ``what``."""
    if Path(path).is_file() and (problem := validate.zip_problem(path, zip_only=False)):
        raise ValueError(f"{what} {str(path)!r} is {problem}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{what} {str(path)!r} does not exist") from None
    except Exception as err:  # (truncated, empty, not a torch file, pickled objects weights_only refuses)
        first = str(err).splitlines()[0][:200] if str(err) else "no detail"
        raise ValueError(f"{what} {str(path)!r} cannot be read as a torch file ({type(err).__name__}: {first})") \
            from None


def default_load(path, args):
    """State dict checkpoint + ``--model`` builder (the fallback when the caller passes no ``load``)."""
    if args.model is None:
        raise ValueError(f"checkpoint {str(path)!r} is not a neurosim trainer checkpoint: give --model "
                         "package.module:function to rebuild the network its state dict is for")
    kwargs = _json("--model-kwargs", args.model_kwargs)
    if not isinstance(kwargs, dict):
        raise ValueError(f"--model-kwargs must be a JSON object, got {args.model_kwargs!r}")
    build = _builder(args.model)
    ckpt = _load_tensor_file("checkpoint", path)
    state = ckpt
    if isinstance(ckpt, dict):
        for key in ("model", "state_dict", "model_state"):
            if isinstance(ckpt.get(key), dict):
                state = ckpt[key]
                break
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise ValueError(f"checkpoint {str(path)!r} holds no state dict (a dict of named tensors, or one under "
                         f"'model' / 'state_dict' / 'model_state'); got {type(state).__name__}")
    try:
        model = build(**kwargs)
    except TypeError as err:
        raise ValueError(f"--model {args.model!r} rejected --model-kwargs {args.model_kwargs}: {err}") from None
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"--model {args.model!r} must return a torch.nn.Module, got {type(model).__name__}")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"checkpoint {str(path)!r} does not fit the network --model {args.model!r} builds: "
                         f"{' '.join(str(err).split())[:400]}") from None
    return model, None


def _layout(shape, batch_dim: int) -> str:
    """The layout of an input of ``shape`` whose dim ``batch_dim`` counts the samples: "time-major [T, B, 64]"."""
    dims = [str(d) for d in shape]
    if batch_dim < len(dims):
        dims[batch_dim] = "B"
    if batch_dim == 1:
        dims[0] = "T"
        kind = "time-major "
    else:
        kind = "batch-first " if batch_dim == 0 else ""
    return f"{kind}[{', '.join(dims)}] ({len(dims)} dims)"


def _inputs(args, example=None):
    """The input of --input / --input-shape; ``example``: ``(shape, batch_dim)`` of an input the model takes (from
    the loader), whose rank the given input must have."""
    def check_rank(what, rank):
        if example is not None and rank != len(example[0]):
            shape, batch_dim = example
            raise ValueError(f"{what} has {rank} dims, but this checkpoint's model takes {_layout(shape, batch_dim)}, "
                             f"e.g. --input-shape {','.join(str(d) for d in shape)}")

    if args.input is not None:
        x = _load_tensor_file("--input", args.input)
        if not torch.is_tensor(x):
            raise ValueError(f"--input must hold one tensor [T, B, ...], got {type(x).__name__}")
        check_rank(f"--input {args.input!r} (a tensor of shape {tuple(x.shape)})", x.dim())
        return x
    if args.input_shape is None:
        raise ValueError("give --input FILE or --input-shape T,B,... (the checkpoint loader returned no inputs)")
    try:
        shape = [int(v) for v in args.input_shape.split(",")]
    except ValueError:
        raise ValueError(f"--input-shape must be comma-separated integers T,B,..., got {args.input_shape!r}")
    for i, v in enumerate(shape):
        validate.positive_int(f"--input-shape[{i}]", v)
    check_rank(f"--input-shape {args.input_shape}", len(shape))
    if len(shape) < 2:
        raise ValueError(f"--input-shape needs at least 2 dimensions [T, B, ...], got {args.input_shape!r}")
    rate = DEFAULT_INPUT_RATE if args.input_rate is None else args.input_rate
    g = torch.Generator().manual_seed(args.seed)
    return (torch.rand(shape, generator=g) < rate).float()


def _check_input_options(args):
    """The input options that go together: --input-rate only with --input-shape, and one of --input and
    --input-shape (an option the run would not use is refused, not ignored)."""
    rate = getattr(args, "input_rate", None)
    if args.input is not None and args.input_shape is not None:
        raise ValueError(f"--input and --input-shape both give the input ({args.input!r}, {args.input_shape!r}): "
                         "give one")
    if rate is not None:
        if args.input_shape is None:
            raise ValueError(f"--input-rate {rate:g} is the firing probability of the random input of --input-shape, "
                             "which was not given (without it the input is --input's tensor or a trainer "
                             "checkpoint's validation samples): give --input-shape or leave --input-rate out")
        validate.in_range("--input-rate", rate, 0.0, 1.0)


def _check_outputs(args):
    """Each output path can be written (checked before the model runs, so a typo does not cost a profile)."""
    for option in ("csv", "json", "plot"):
        path = getattr(args, option)
        problem = path and validate.output_problem(path)
        if problem:
            raise ValueError(f"--{option} {path!r}: {problem}")


def cli_main(args, load=None):
    """Run ``neurosim energy``; ``args`` is an argparse Namespace (see :func:`add_arguments`) or an argv list.

    It prints what ``print(profile(model, inputs, audit=True))`` prints for the same model, inputs and hardware
    (``--no-audit``: ``audit=False``, whose report says the arithmetic outside modules was not checked), then one
    ``wrote PATH`` line per file written.

    Returns the :class:`~neurosim.energy.report.EnergyReport` (the caller's exit code is 0 when it returns).
    """
    if not isinstance(args, argparse.Namespace):
        args = add_arguments(argparse.ArgumentParser(prog="neurosim energy")).parse_args(args)
    validate.input_file("checkpoint", args.checkpoint)
    device = validate.device("--device", args.device)
    hardware = get_profile(_hardware(args.hardware))
    samples = getattr(args, "samples", None)
    if samples is not None:
        validate.positive_int("--samples", samples)
    if validate.positive_int("--seed", args.seed, minimum=0) >= 2 ** 64:
        raise ValueError(f"--seed must be an integer in [0, 2**64 - 1], got {args.seed}")
    _check_input_options(args)
    _check_outputs(args)
    # every random draw of the run (the random input, a checkpoint's input code, a spike mask without a seed of its
    # own) comes from --seed, so the same seed gives the same report; the caller's RNG state is left as it was
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(args.seed)
        report = _run(args, load, device, hardware, samples)
    for path, write in ((args.csv, report.to_csv), (args.json, report.to_json), (args.plot, report.plot)):
        if path:
            write(path)
            print(f"wrote {path}")
    return report


def _run(args, load, device, hardware, samples):
    """Load, profile and print (cli_main's seeded part)."""
    from .meter import _first_tensor, profile

    model, inputs, *rest = (load or default_load)(args.checkpoint, args)
    batch_dim = rest[0] if rest else 1
    if inputs is None:
        if samples is not None:
            raise ValueError("--samples picks a trainer checkpoint's validation samples; this run takes its input "
                             "from --input / --input-shape")
        inputs = _inputs(args, (tuple(rest[1]), batch_dim) if len(rest) > 1 and rest[1] is not None else None)
    model = model.to(device).eval()
    inputs = inputs.to(device) if torch.is_tensor(inputs) else inputs
    first = _first_tensor(inputs)
    batch = None if first is None or first.dim() <= batch_dim else first.shape[batch_dim]
    report = profile(model, inputs, hardware=hardware, require_spikes=args.require_spikes,
                     audit=getattr(args, "audit", True), batch_size=batch)
    report.print(rich=False if args.plain else None)
    return report
