"""Registry builders for the research models and the moving-digits dataset.

Models: ``est`` and ``spikformer`` (token adapters around :class:`EnhancedSpikingTransformer`), ``btspformer``, ``spiking_btspformer``, ``vanilla_transformer`` (BTSPFormer with plain softmax attention
and sinusoidal positions), ``astro_transformer`` (BTSPFormer blocks with astrocyte attention) and
``frame_predictor``; dataset: ``moving_digits``. Registered when :mod:`neurosim.training.registry` exists.
"""
from __future__ import annotations

import math
from dataclasses import fields

import torch
from torch import nn
from torch.utils.data import TensorDataset

from neurosim import validate

from .btsp import DEFAULT_LEAD
from .btspformer import BTSPFormer, SpikingBTSPFormer
from .est import ESTConfig, EnhancedSpikingTransformer, spikformer_config
from .moving_digits import FramePredictor, moving_digits


def _reject_unknown(cfg, name: str, allowed) -> None:
    unknown = sorted(set(cfg.model_options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown model_options {', '.join(unknown)} for model {name!r}; "
                         f"allowed: {', '.join(sorted(allowed))}")


def _options(cfg, name: str, allowed: dict) -> dict:
    _reject_unknown(cfg, name, allowed)
    return {**allowed, **cfg.model_options}


def _config_default(field_name: str):
    from neurosim.training.config import TrainConfig

    return next(f.default for f in fields(TrainConfig) if f.name == field_name)


def _refuse_unused(cfg, name: str, why: dict) -> None:
    """``why``: the run-identity fields (encoder, backend, num_steps) model ``name`` does not use, each with the
    reason. They are recorded in config.json and checkpoints, so a value other than the trainer's default would
    label the run with a setting it never used: a ValueError naming the field, the model and what it accepts."""
    for field_name, reason in why.items():
        value, default = getattr(cfg, field_name), _config_default(field_name)
        if value != default:
            raise ValueError(f"{field_name}={value!r} does not apply to model {name!r} ({reason}); it accepts only "
                             f"the default {field_name}={default!r}")


ANALOG = "an analog transformer fed the raw window, no spiking neurons"
FRAMES = "the frames drive the neurons directly, one time step per frame"


# What each model never uses of the run settings, with the reason, from its model_options: the builders refuse
# those settings (_refuse_unused), and a format-1 config has them reset (_upgrade_v1).
def _analog_unused(opts: dict) -> dict:
    return dict.fromkeys(("encoder", "backend", "num_steps"), ANALOG)


def _spiking_btspformer_unused(opts: dict) -> dict:
    return {"encoder": "its input is encoded by a LIF layer of its own, fed the embedded window for num_steps steps"}


def _frame_predictor_unused(opts: dict) -> dict:
    why = {"encoder": FRAMES, "num_steps": FRAMES}
    if opts.get("neuron", "lif") == "stc_lif":
        why["backend"] = "neuron='stc_lif' runs neurosim's own time loop; backend picks the LIF backend of neuron='lif'"
    return why


def _seq_len(info, name: str) -> int:
    if info.task != "regression" or len(info.input_shape) != 1 or info.num_outputs != 1:
        raise ValueError(f"model {name!r} needs a one-step forecasting dataset (input [L], one regression "
                         f"target), got task={info.task!r}, input_shape={info.input_shape}")
    return info.input_shape[0]


def _check_frames(info, name: str) -> None:
    if info.task != "regression" or len(info.input_shape) != 3 or info.num_outputs != math.prod(info.input_shape):
        raise ValueError(f"model {name!r} needs a frame-prediction dataset (input frames [T, H, W], the next frames as "
                         f"regression target, e.g. moving_digits), got task={info.task!r}, "
                         f"input_shape={info.input_shape}, num_outputs={info.num_outputs}")


TRANSFORMER_OPTIONS = {"model_dim": 64, "heads": 4, "layers": 2, "dropout": 0.1}


def _transformer(name: str, **fixed):
    btsp = fixed.get("attention") == "btsp"  # (lead: where the BTSP time kernel peaks; 0 = the kernel before 619d426)

    def build(info, cfg):
        _refuse_unused(cfg, name, _analog_unused(cfg.model_options))
        o = _options(cfg, name, {**TRANSFORMER_OPTIONS, "lead": DEFAULT_LEAD} if btsp else TRANSFORMER_OPTIONS)
        extra = {"lead": o["lead"]} if btsp else {}
        return BTSPFormer(_seq_len(info, name), o["model_dim"], o["heads"], o["layers"], o["dropout"], **fixed,
                          **extra)

    build.__name__ = f"build_{name}"
    return build


def build_spiking_btspformer(info, cfg):
    _refuse_unused(cfg, "spiking_btspformer", _spiking_btspformer_unused(cfg.model_options))
    o = _options(cfg, "spiking_btspformer", {**TRANSFORMER_OPTIONS, "beta": 0.9, "threshold": 1.0,
                                              "lead": DEFAULT_LEAD})
    return SpikingBTSPFormer(_seq_len(info, "spiking_btspformer"), o["model_dim"], o["heads"], o["layers"],
                             o["dropout"], num_steps=cfg.num_steps, beta=o["beta"], threshold=o["threshold"],
                             backend=cfg.backend, lead=o["lead"])


def build_frame_predictor(info, cfg):
    """model_options: neuron ("lif" or "stc_lif"), channels, beta, threshold, and groups (stc_lif only, default 4).
    The frames are the input current, one SNN step per frame: no encoder, no num_steps; backend picks the LIF
    backend (neuron="lif" only). The dataset gives frames [T, H, W] and the next frames as target (moving_digits)."""
    _refuse_unused(cfg, "frame_predictor", _frame_predictor_unused(cfg.model_options))
    _check_frames(info, "frame_predictor")
    neuron = cfg.model_options.get("neuron", "lif")
    o = _options(cfg, "frame_predictor", {"neuron": "lif", "channels": 16, "beta": 0.8, "threshold": 1.0,
                                          "groups": None})
    return FramePredictor(o["neuron"], o["channels"], o["beta"], o["threshold"], o["groups"],
                          cfg.backend if neuron == "lif" else None)


def moving_digits_dataset(cfg):
    """Options: num_sequences (2000), num_frames (10), canvas (16), seed (0). Input frames 0..T-2, target 1..T-1."""
    from neurosim.training.data import DataInfo, _options as data_options

    o = data_options(cfg, {"num_sequences": 2000, "num_frames": 10, "canvas": 16, "seed": 0})
    frames = moving_digits(o["num_sequences"], o["num_frames"], o["canvas"], o["seed"])
    x, y = frames[:, :-1].contiguous(), frames[:, 1:].contiguous()
    return DataInfo(TensorDataset(x, y), "regression", y[0].numel(), tuple(x.shape[1:]))


def _upgrade_v1(options: dict | None = None, unused=None, dropped=lambda opts: ()):
    """``builder.upgrade`` (neurosim.training.registry.upgrade_config) for a config of checkpoint format 1: the
    model options whose default has changed since, at their old value; the run settings the model never used
    (``unused``, the function its builder refuses them by) at the trainer's defaults; and the model options it
    ignored (``dropped(options)``) removed. (Recorded, not used: the model is the same.) Then, for every version
    before 3, the encoder's old meaning (``upgrade_encoder``)."""
    def upgrade(config: dict, version: int) -> dict:
        from neurosim.training.spiking_mlp import upgrade_encoder

        config = upgrade_encoder(config, version)
        if version >= 2:
            return config
        opts = {**(options or {}), **(config.get("model_options") or {})}
        config["model_options"] = {k: v for k, v in opts.items() if k not in dropped(opts)}
        for name in (unused(opts) if unused is not None else ()):
            config[name] = _config_default(name)
        return config
    return upgrade


MODELS = {
    "btspformer": _transformer("btspformer", attention="btsp", position="asymmetric"),
    "vanilla_transformer": _transformer("vanilla_transformer", attention="softmax", position="sinusoidal"),
    "astro_transformer": _transformer("astro_transformer", attention="astro", position="sinusoidal"),
    "spiking_btspformer": build_spiking_btspformer,
    "frame_predictor": build_frame_predictor,
}


def register() -> bool:
    """Register everything above; False when this neurosim has no training registry."""
    try:
        from neurosim.training.registry import register_dataset, register_model
    except ImportError:
        return False
    for name, builder in MODELS.items():
        register_model(name, builder)
    register_dataset("moving_digits", moving_digits_dataset)
    return True


# ------------------------------------------------------------------------------------------ spiking transformers
class TokenSequenceModel(nn.Module):
    """Adapter from the trainer's flat samples ``[B, F]`` to a token model's ``[T, B, N, F/N]``.

    Classification (e.g. digits, 64 pixels): ``tokens`` rows of ``F/tokens`` features, pooled readout.
    Forecasting (a window of L values): L tokens of one value each, causal, the last token's output is the
    next-step prediction. ``encoder`` "direct" feeds the analog tokens at every SNN step (the EST embeds them with a
    Linear + spiking neuron); "rate"/"latency" turn them into spikes with :mod:`neurosim.encoders` first.
    ``forward(x) = forward_spikes(encode(x))``, as in the spiking MLP: the encoder turns data into input spikes and
    the network starts at its first synaptic layer (what ``neurosim energy`` profiles, on input encoded and seeded
    beforehand, like the README's ``profile(est.net, est.encode(x))``).
    """

    def __init__(self, net: nn.Module, tokens: int, encoder: str, num_steps: int, last_token: bool):
        super().__init__()
        self.net, self.tokens, self.encoder, self.num_steps, self.last_token = net, tokens, encoder, num_steps, last_token

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, F]`` -> ``[T, B, tokens, F/tokens]``."""
        from neurosim.training.spiking_mlp import encode

        validate.rank_exactly("x", x, (2,), "[B, F]")
        steps = encode(x, self.encoder, self.num_steps)          # [T, B, F]
        return steps.reshape(*steps.shape[:2], self.tokens, -1)

    def forward_spikes(self, s: torch.Tensor) -> torch.Tensor:
        """The network on encoded input ``[T, B, tokens, F/tokens]`` (:meth:`encode`'s output)."""
        y = self.net(s)
        return y[:, -1] if self.last_token else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_spikes(self.encode(x))


EST_OPTIONS = {"dim": 32, "depth": 2, "heads": 4, "tokens": None}
# model_options the EST builders take: the adapter's and every ESTConfig field the builder does not set itself
EST_ALLOWED = frozenset(EST_OPTIONS) | ({f.name for f in fields(ESTConfig)}
                                       - {"in_features", "out_features", "num_steps", "max_len", "readout"})


def _token_model(name: str, make_config):
    def build(info, cfg):
        from neurosim.layers import NeuronSpec
        from neurosim.layers.neuron import as_spec
        from neurosim.training.spiking_mlp import ENCODERS, refuse_norse_reset

        if len(info.input_shape) != 1:
            raise ValueError(f"model {name!r} takes flat samples [F] (got input_shape={info.input_shape})")
        feats = info.input_shape[0]
        _reject_unknown(cfg, name, EST_ALLOWED)
        opts = {**EST_OPTIONS, **cfg.model_options}
        forecast = info.task == "regression"
        tokens = opts.pop("tokens") or (feats if forecast else _default_tokens(feats))
        if feats % tokens:
            raise ValueError(f"model_options tokens={tokens} must divide the {feats} input features")
        encoder = cfg.encoder or "direct"
        validate.one_of("encoder", encoder, ENCODERS)
        neuron = opts.pop("neuron", None)
        neuron = {} if neuron is None else neuron
        as_spec(neuron, "model_options neuron")   # (a mapping of NeuronSpec's fields)
        if neuron.get("backend", cfg.backend) != cfg.backend:  # (it overrode the run's, which config.json recorded)
            raise ValueError(f"model_options neuron backend={neuron['backend']!r} for model {name!r} differs from the "
                             f"run's backend={cfg.backend!r}: set the neuron backend with the run's backend "
                             f"(--backend), which the run records")
        refuse_norse_reset(cfg, name, neuron.get("reset", NeuronSpec.reset), "\"neuron={reset: zero}\"",
                           "neuron={'reset': 'zero'}")
        neuron = {**neuron, "backend": cfg.backend}
        est_cfg = make_config(feats // tokens, info.num_outputs, num_steps=cfg.num_steps, max_len=max(tokens, 8),
                              readout="tokens" if forecast else "pool", neuron=NeuronSpec(**neuron), **opts)
        return TokenSequenceModel(EnhancedSpikingTransformer(est_cfg), tokens, encoder, cfg.num_steps, forecast)

    build.__name__ = f"build_{name}"
    return build


def _default_tokens(feats: int) -> int:
    """The largest divisor of ``feats`` not above its square root (8 rows of 8 pixels for digits)."""
    return max(d for d in range(1, int(math.isqrt(feats)) + 1) if feats % d == 0)


MODELS["est"] = _token_model("est", ESTConfig)
MODELS["spikformer"] = _token_model("spikformer", spikformer_config)

# format-1 checkpoints (before 2026-11-25): the EST's masks were off at inference, the BTSP kernel peaked at
# coincidence, and settings the analog models never used were recorded without complaint
for _name, _upgrade in (("est", _upgrade_v1({"rsm_mode": "train"})),
                        ("spikformer", _upgrade_v1({"rsm_mode": "train"})),
                        ("btspformer", _upgrade_v1({"lead": 0.0}, _analog_unused)),
                        ("vanilla_transformer", _upgrade_v1(None, _analog_unused)),
                        ("astro_transformer", _upgrade_v1(None, _analog_unused)),
                        ("spiking_btspformer", _upgrade_v1({"lead": 0.0}, _spiking_btspformer_unused)),
                        ("frame_predictor", _upgrade_v1(None, _frame_predictor_unused, lambda opts: (
                            () if opts.get("neuron", "lif") == "stc_lif" else ("groups",))))):  # (lif ignored it)
    MODELS[_name].upgrade = _upgrade


register()
