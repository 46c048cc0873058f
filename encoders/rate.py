"""Rate (Bernoulli) coding."""
from __future__ import annotations

import torch

from neurosim import validate


def rate(data: torch.Tensor, num_steps: int, gain: float = 1.0, offset: float = 0.0,
         generator: torch.Generator | None = None, clamp: bool = False) -> torch.Tensor:
    r"""Bernoulli spike trains: :math:`s_t \sim \mathrm{Bernoulli}(p)` with :math:`p = \text{gain}\cdot x + \text{offset}`.

    Args:
        data: intensities ``[B, ...]``; ``p`` must lie in [0, 1] unless ``clamp=True`` (then it is clipped).
            float64 data is drawn in float64, any other dtype in float32 (as ``snntorch.spikegen.rate`` does).
        num_steps: T >= 1.
        gain, offset: finite numbers, or finite tensors that broadcast against ``data`` (per-feature gains).
        generator: a seeded ``torch.Generator`` on ``data``'s device type for reproducible spikes (the global RNG
            when ``None``; with the same seed the draws equal ``snntorch.spikegen.rate``'s). Anything else is a
            ``ValueError`` naming ``generator``.
    Returns:
        float spikes ``[T, B, ...]`` (float64 for float64 data). They carry no gradient: a Bernoulli draw has
        none, so the output is detached rather than handing back a graph whose gradient is zero.
    """
    validate.finite("data", data)
    validate.rank_at_least("data", data, 1, "[B, ...]")
    num_steps = validate.positive_int("num_steps", num_steps)
    gain, offset = (validate.finite(n, v) if isinstance(v, torch.Tensor) else validate.finite_float(n, v)
                    for n, v in (("gain", gain), ("offset", offset)))
    clamp = validate.boolean("clamp", clamp)
    validate.generator("generator", generator, data.device)
    x = data if data.dtype == torch.float64 else data.float()
    p = x.detach() * gain + offset
    if clamp:
        p = p.clamp(0.0, 1.0)
    else:
        validate.in_range("data*gain+offset (firing probability)", p, 0.0, 1.0)
    probs = p.repeat((num_steps,) + (1,) * p.dim())
    return torch.bernoulli(probs, generator=generator)
