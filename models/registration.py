"""Registry builders for the research models and the moving-digits dataset.

Models: ``btspformer``, ``spiking_btspformer``, ``vanilla_transformer`` (BTSPFormer with plain softmax attention
and sinusoidal positions), ``astro_transformer`` (BTSPFormer blocks with astrocyte attention) and
``frame_predictor``; dataset: ``moving_digits``. Registered when :mod:`neurosim.training.registry` exists.
"""
from __future__ import annotations

from torch.utils.data import TensorDataset

from .btspformer import BTSPFormer, SpikingBTSPFormer
from .moving_digits import FramePredictor, moving_digits


def _options(cfg, name: str, allowed: dict) -> dict:
    unknown = sorted(set(cfg.model_options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown model_options {', '.join(unknown)} for model {name!r}; "
                         f"allowed: {', '.join(sorted(allowed))}")
    return {**allowed, **cfg.model_options}


def _seq_len(info, name: str) -> int:
    if info.task != "regression" or len(info.input_shape) != 1 or info.num_outputs != 1:
        raise ValueError(f"model {name!r} needs a one-step forecasting dataset (input [L], one regression "
                         f"target), got task={info.task!r}, input_shape={info.input_shape}")
    return info.input_shape[0]


TRANSFORMER_OPTIONS = {"model_dim": 64, "heads": 4, "layers": 2, "dropout": 0.1}


def _transformer(name: str, **fixed):
    def build(info, cfg):
        o = _options(cfg, name, TRANSFORMER_OPTIONS)
        return BTSPFormer(_seq_len(info, name), o["model_dim"], o["heads"], o["layers"], o["dropout"], **fixed)

    build.__name__ = f"build_{name}"
    return build


def build_spiking_btspformer(info, cfg):
    o = _options(cfg, "spiking_btspformer", {**TRANSFORMER_OPTIONS, "beta": 0.9, "threshold": 1.0})
    return SpikingBTSPFormer(_seq_len(info, "spiking_btspformer"), o["model_dim"], o["heads"], o["layers"],
                             o["dropout"], num_steps=cfg.num_steps, beta=o["beta"], threshold=o["threshold"],
                             backend=cfg.backend)


def build_frame_predictor(info, cfg):
    o = _options(cfg, "frame_predictor", {"neuron": "lif", "channels": 16, "beta": 0.8, "threshold": 1.0,
                                          "groups": 4})
    return FramePredictor(o["neuron"], o["channels"], o["beta"], o["threshold"], o["groups"], cfg.backend)


def moving_digits_dataset(cfg):
    """Options: num_sequences (2000), num_frames (10), canvas (16), seed (0). Input frames 0..T-2, target 1..T-1."""
    from neurosim.training.data import DataInfo, _options as data_options

    o = data_options(cfg, {"num_sequences": 2000, "num_frames": 10, "canvas": 16, "seed": 0})
    frames = moving_digits(o["num_sequences"], o["num_frames"], o["canvas"], o["seed"])
    x, y = frames[:, :-1].contiguous(), frames[:, 1:].contiguous()
    return DataInfo(TensorDataset(x, y), "regression", y[0].numel(), tuple(x.shape[1:]))


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


register()
