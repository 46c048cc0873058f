"""Training configuration: one flat dataclass, loadable from YAML/JSON and overridable field by field.

Precedence used by the command line: dataclass defaults < config file < explicit flags.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import validate

OPTIMIZERS = ("adamw", "adam")
PRECISIONS = ("fp32", "bf16")
# "latency": linear time-to-first-spike per input (brightest first, zero last; RESULTS.md, "Trainer input codes");
# "latency_log": the logarithmic code normalised over the whole batch (snntorch.spikegen.latency(normalize=True)),
# what "latency" meant before checkpoint format 3
ENCODERS = ("rate", "latency", "latency_log", "direct")

# Numbers in exponent notation without a dot or without a sign in the exponent (1e-3, 5E2, 1.5e3): strings to
# YAML 1.1's float resolver, which PyYAML follows; floats to YAML 1.2, JSON and Python.
FLOAT_EXPONENT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")

# Fields that decide what a run computes: a resumed run must agree with its checkpoint on all of them.
IDENTITY_FIELDS = ("model", "dataset", "encoder", "backend", "num_steps", "batch_size", "lr", "weight_decay",
                   "optimizer", "seed", "val_fraction", "grad_clip", "precision", "model_options",
                   "dataset_options", "lr_factor", "lr_patience")


@dataclass
class TrainConfig:
    """Everything a training run needs; every field is a plain JSON value so it can live in a checkpoint.

    ``model_options`` / ``dataset_options`` are passed through to the registered builders.
    ``save_every`` writes the "last" checkpoint every that many optimizer steps inside an epoch as well
    (0: only at the end of each epoch); resuming from it replays the rest of the epoch exactly.
    ``patience`` (early stopping) and ``lr_patience`` (ReduceLROnPlateau) count epochs without a lower
    validation loss; ``patience=0`` disables early stopping. ``epochs`` is the number of epochs the run trains to:
    a run resumed with fewer than it has already run trains nothing and records the number it has run instead
    (config.json and summary.json then say ``epochs`` equal to ``epochs_run``).
    """

    model: str = "spiking_mlp"
    dataset: str = "digits"
    encoder: str | None = None          # None: the model's default for the task
    backend: str = "snntorch"
    num_steps: int = 16
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.0
    optimizer: str = "adamw"
    lr_factor: float = 0.5
    lr_patience: int = 2
    patience: int = 5
    grad_clip: float = 1.0              # max global gradient norm; 0 disables clipping
    seed: int = 0
    val_fraction: float = 0.2
    device: str = "auto"                # "auto": CUDA when present, else CPU
    precision: str = "fp32"             # "bf16": autocast to bfloat16 (on CUDA, or CPU if asked)
    cpu_threads: int = 0                # torch intra-op threads when training on CPU (0: torch's default)
    out_dir: str = "runs/train"
    save_every: int = 0
    progress: bool = True
    tensorboard: bool = True
    plots: bool = True
    model_options: dict = field(default_factory=dict)
    dataset_options: dict = field(default_factory=dict)

    def validate(self) -> "TrainConfig":
        """Check every field; raise ValueError naming the field and its allowed range."""
        for name in ("model", "dataset", "backend", "device", "out_dir"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty string, got {getattr(self, name)!r}")
        if self.encoder is not None:
            validate.one_of("encoder", self.encoder, ENCODERS)
        validate.one_of("optimizer", self.optimizer, OPTIMIZERS)
        validate.one_of("precision", self.precision, PRECISIONS)
        self.num_steps = validate.positive_int("num_steps", self.num_steps)
        self.epochs = validate.positive_int("epochs", self.epochs)
        self.batch_size = validate.positive_int("batch_size", self.batch_size)
        self.lr_patience = validate.positive_int("lr_patience", self.lr_patience, minimum=0)
        self.patience = validate.positive_int("patience", self.patience, minimum=0)
        self.seed = validate.positive_int("seed", self.seed, minimum=0)
        self.save_every = validate.positive_int("save_every", self.save_every, minimum=0)
        self.cpu_threads = validate.positive_int("cpu_threads", self.cpu_threads, minimum=0)
        self.lr = validate.positive_float("lr", self.lr)
        for name in ("progress", "tensorboard", "plots"):
            validate.boolean(name, getattr(self, name))
        validate.in_range("weight_decay", self.weight_decay, 0.0, float("inf"))
        validate.in_range("grad_clip", self.grad_clip, 0.0, float("inf"))
        validate.in_range("lr_factor", self.lr_factor, 0.0, 1.0, lo_open=True, hi_open=True)
        validate.in_range("val_fraction", self.val_fraction, 0.0, 1.0, lo_open=True, hi_open=True)
        for name in ("model_options", "dataset_options"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a mapping, got {type(getattr(self, name)).__name__}")
        dev = self.device
        if not (dev in ("auto", "cpu", "cuda") or dev.startswith("cuda:")):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {dev!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: "TrainConfig | None" = None) -> "TrainConfig":
        """Overlay ``data`` on ``base`` (defaults when None). Unknown keys are an error; '-' equals '_'."""
        if not isinstance(data, dict):
            raise ValueError(f"a config must be a mapping of field names to values, got {type(data).__name__}")
        known = set(cls.field_names())
        clean = {str(k).replace("-", "_"): v for k, v in data.items()}
        unknown = sorted(set(clean) - known)
        if unknown:
            raise ValueError(f"unknown config key(s) {', '.join(unknown)}; allowed keys: {', '.join(sorted(known))}")
        values = (base or cls()).to_dict()
        values.update(clean)
        return cls(**values)


@functools.lru_cache(maxsize=None)
def _yaml_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        """``yaml.SafeLoader`` that also reads :data:`FLOAT_EXPONENT` numbers as floats."""

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", FLOAT_EXPONENT, list("-+0123456789."))
    return Loader


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load(text)``, but ``1e-3`` is the number 0.001, not a string (:data:`FLOAT_EXPONENT`); the config
    files' and the command line's KEY=VALUE parser."""
    import yaml

    return yaml.load(text, Loader=_yaml_loader())


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml) or JSON (.json) config file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist")
    text = path.read_text()
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            data = parse_yaml(text) or {}
        else:
            raise ValueError(f"config file must end in .json, .yaml or .yml, got {str(path)!r}")
    except (json.JSONDecodeError, ImportError) as err:
        raise ValueError(f"cannot parse config file {str(path)!r}: {err}") from err
    except Exception as err:  # yaml.YAMLError without importing yaml at module level
        if type(err).__module__.startswith("yaml"):
            raise ValueError(f"cannot parse config file {str(path)!r}: {err}") from err
        raise
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping at top level, got {type(data).__name__}")
    return data


class ConfigError(ValueError):
    """A configuration the dataset or model builder rejected (bad ``model_options``/``dataset_options``), or a
    ``batch_size`` the number of processes does not divide; raised before any training step, so the command line
    reports it as a usage error (exit 2)."""
