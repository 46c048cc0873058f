"""Synthetic moving digits (scikit-learn's 8x8 digits bouncing on a small canvas) and a spiking frame predictor.

The task compares spiking neurons on spatio-temporal prediction: given frames ``0..T-2`` predict frames
``1..T-1`` (each output step predicts the next frame), MSE per pixel.
"""
from __future__ import annotations

import torch
from torch import nn

import neurosim
from neurosim import validate
from neurosim.neurons import BACKENDS
from neurosim.neurons.stc_lif import STCLIF

NEURONS = ("lif", "stc_lif")
DIGIT = 8


def moving_digits(num_sequences: int, num_frames: int = 10, canvas: int = 16, seed: int = 0) -> torch.Tensor:
    """``[N, num_frames, canvas, canvas]`` float32 in [0, 1].

    Each sequence: one random 8x8 digit (pixels / 16) starting at a random position with a random velocity in
    {-1, 0, 1}^2 (not both 0), moving one velocity step per frame and bouncing off the canvas edges
    (the velocity component flips when the next position would leave the canvas).
    """
    from sklearn.datasets import load_digits

    n = validate.positive_int("num_sequences", num_sequences)
    t = validate.positive_int("num_frames", num_frames, minimum=2)
    c = validate.positive_int("canvas", canvas, minimum=DIGIT + 1)
    seed = validate.positive_int("seed", seed, minimum=0)      # 1.9 is not seed 1
    images = torch.tensor(load_digits().images, dtype=torch.float32) / 16.0     # [1797, 8, 8]
    g = torch.Generator().manual_seed(seed)
    which = torch.randint(len(images), (n,), generator=g)
    span = c - DIGIT                                                            # positions 0..span
    pos = torch.randint(span + 1, (n, 2), generator=g)
    vel = torch.randint(-1, 2, (n, 2), generator=g)
    still = (vel == 0).all(1)
    vel[still, 0] = 1                                                           # every digit moves
    out = torch.zeros(n, t, c, c)
    for f in range(t):
        for i in range(n):
            y0, x0 = int(pos[i, 0]), int(pos[i, 1])
            out[i, f, y0:y0 + DIGIT, x0:x0 + DIGIT] = images[which[i]]
        nxt = pos + vel
        bounce = (nxt < 0) | (nxt > span)
        vel = torch.where(bounce, -vel, vel)
        pos = pos + vel
    return out


class FramePredictor(nn.Module):
    """Two spiking conv layers and a conv readout, one step per frame: ``x [B, T, H, W] -> [B, T, H, W]``.

    ``neuron="lif"`` uses :class:`neurosim.LIF` on ``backend`` (one of :data:`neurosim.neurons.BACKENDS`,
    default ``"snntorch"``), ``"stc_lif"`` :class:`neurosim.neurons.stc_lif.STCLIF` (same beta/threshold;
    circuits with ``groups`` channel groups, default 4, and 3x3 windows). Each neuron takes only its own
    option: ``groups`` with ``"lif"`` or ``backend`` with ``"stc_lif"`` (which runs its own time loop) is an
    error rather than a setting silently ignored. Output step t predicts frame t+1 from the spikes at step t (the
    neurons carry the motion history).
    """

    def __init__(self, neuron: str = "lif", channels: int = 16, beta: float = 0.8, threshold: float = 1.0,
                 groups: int | None = None, backend: str | None = None):
        super().__init__()
        validate.one_of("neuron", neuron, NEURONS)
        c = validate.positive_int("channels", channels)
        if neuron == "lif":
            if groups is not None:
                raise ValueError(f"groups applies to neuron='stc_lif' only (the circuits' channel groups); "
                                 f"neuron='lif' takes no groups, got groups={groups!r}")
            backend = "snntorch" if backend is None else backend
            validate.one_of("backend", backend, BACKENDS)
        else:
            if backend is not None:
                raise ValueError(f"backend applies to neuron='lif' only; neuron='stc_lif' runs neurosim's own time "
                                 f"loop and takes no backend, got backend={backend!r}")
            groups = 4 if groups is None else validate.positive_int("groups", groups)
        self.neuron_kind = neuron
        self.conv1 = nn.Conv2d(1, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.readout = nn.Conv2d(c, 1, 3, padding=1)

        def make():
            if neuron == "lif":
                return neurosim.LIF(beta=beta, threshold=threshold, backend=backend)
            return STCLIF(c, spatial_dims=2, groups=groups, beta=beta, threshold=threshold)

        self.lif1, self.lif2 = make(), make()

    @staticmethod
    def _per_step(conv: nn.Module, s: torch.Tensor) -> torch.Tensor:
        t, b = s.shape[:2]
        y = conv(s.reshape(t * b, *s.shape[2:]))
        return y.reshape(t, b, *y.shape[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        validate.input_dtype("x", x, self.conv1.weight)
        validate.finite("x", x)
        validate.rank_exactly("x", x, (4,), "[B, T, H, W]")
        if min(x.shape[1:]) < 1:
            raise ValueError(f"x [B, T, H, W] needs T >= 1 frames of H >= 1 by W >= 1 pixels, got shape "
                             f"{tuple(x.shape)}")
        s = x.transpose(0, 1).unsqueeze(2)                                     # [T, B, 1, H, W]
        s = self.lif1(self._per_step(self.conv1, s))
        s = self.lif2(self._per_step(self.conv2, s))
        return self._per_step(self.readout, s).squeeze(2).transpose(0, 1)     # [B, T, H, W]
