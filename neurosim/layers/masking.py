r"""Random spike masking (RSM, after the Masked Spiking Transformer, Wang et al., ICCV 2023).

Each spike is dropped independently with probability ``ratio`` (a synaptic failure): ``out = x * m`` with
``m ~ Bernoulli(1 - ratio)``. Surviving spikes are *not* rescaled, so the output of a binary input stays binary
and a masked spike reaches no synapse: it costs no SynOps in whatever layer reads the output.
"""
from __future__ import annotations

import numbers

import torch
from torch import nn

from .. import validate

MODES = ("train", "always")


def random_spike_mask(x: torch.Tensor, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Drop each element of ``x`` with probability ``ratio`` in [0, 1) (ratio 0 returns ``x`` itself)."""
    _ratio(ratio)
    generator = validate.generator("generator", generator, x.device)
    if ratio == 0.0:
        return x
    keep = torch.rand(x.shape, generator=generator, device=x.device) >= ratio
    return x * keep.to(x.dtype)


def _ratio(ratio) -> float:
    if torch.is_tensor(ratio):  # (validate.in_range takes tensors; a tensor ratio would reach `ratio == 0.0`)
        raise ValueError(f"ratio must be a number in [0, 1), not a tensor; got a tensor of shape {tuple(ratio.shape)}")
    validate.in_range("ratio", ratio, 0.0, 1.0, hi_open=True)
    return float(ratio)


def _seed(seed):
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0 or None; got {seed!r}")
    return int(seed)


class RandomSpikeMask(nn.Module):
    """RSM as a layer.

    Args:
        ratio: mask ratio in [0, 1): the expected fraction of spikes removed.
        mode: ``"train"`` masks only in training mode (identity in ``eval()``); ``"always"`` masks at
            inference too (the setting whose SynOps saving is real at deployment).
        seed: seeds this layer's own generator (per device), so masks are reproducible; ``None`` uses the
            global RNG. ``reseed()`` restarts the sequence.
    """

    def __init__(self, ratio: float = 0.0, mode: str = "train", seed: int | None = None):
        super().__init__()
        self.ratio = _ratio(ratio)
        validate.one_of("mode", mode, MODES)
        self.mode = mode
        self.seed = _seed(seed)
        self._gens: dict = {}

    def reseed(self, seed: int | None = None):
        if seed is not None:
            self.seed = _seed(seed)
        self._gens = {}

    def generator_states(self) -> dict:
        """``{device: state}`` of this layer's generators (where the mask sequence stands), for a checkpoint; the
        trainer saves them with the other RNG states, so a resumed run draws the masks an uninterrupted one would."""
        return {key: g.get_state() for key, g in self._gens.items()}

    def set_generator_states(self, states: dict) -> None:
        """Continue the mask sequences saved by :meth:`generator_states` (a device this machine lacks is skipped:
        masks there start from ``seed``)."""
        if self.seed is None:
            return
        for key, state in states.items():
            device = torch.device(key)
            if device.type == "cuda" and (not torch.cuda.is_available() or
                                          (device.index or 0) >= torch.cuda.device_count()):
                continue
            g = torch.Generator(device=device)
            g.set_state(state)
            self._gens[key] = g

    def _generator(self, device) -> torch.Generator | None:
        if self.seed is None:
            return None
        key = str(device)
        if key not in self._gens:
            g = torch.Generator(device=device)
            g.manual_seed(int(self.seed))
            self._gens[key] = g
        return self._gens[key]

    @property
    def active(self) -> bool:
        return self.ratio > 0 and (self.training or self.mode == "always")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return x
        return random_spike_mask(x, self.ratio, self._generator(x.device))

    def extra_repr(self):
        return f"ratio={self.ratio:g}, mode={self.mode!r}, seed={self.seed}"
