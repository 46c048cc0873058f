"""Latency (time-to-first-spike) coding: stronger inputs fire earlier, each input fires at most once."""
from __future__ import annotations

import torch

from neurosim import validate


def _check(data, num_steps, threshold, tau, first_spike_time, linear, normalize, epsilon):
    validate.finite("data", data)
    validate.rank_at_least("data", data, 1, "[B, ...]")
    validate.in_range("data", data, 0.0, 1.0)
    num_steps = validate.positive_int("num_steps", num_steps)
    validate.in_range("threshold", threshold, 0.0, 1.0, lo_open=True, hi_open=True)
    validate.positive_float("tau", tau)
    first_spike_time = validate.positive_int("first_spike_time", first_spike_time, minimum=0)
    validate.positive_float("epsilon", epsilon)
    validate.boolean("linear", linear)
    validate.boolean("normalize", normalize)
    if first_spike_time > num_steps - 1:
        raise ValueError(f"first_spike_time must be in [0, num_steps-1={num_steps - 1}], got {first_spike_time}")
    return num_steps, first_spike_time


def _times(data, num_steps, threshold, tau, first_spike_time, linear, normalize, epsilon):
    if linear:
        if normalize:
            tau = num_steps - 1 - first_spike_time
        return torch.clamp_max(tau * (1 - data), tau * (1 - threshold)) + first_spike_time
    x = data.clamp_min(threshold + epsilon)
    t = tau * torch.log(x / (x - threshold)) + first_spike_time
    if normalize and t.numel():
        t = (t - first_spike_time) * (num_steps - first_spike_time - 1) / torch.max(t - first_spike_time) + first_spike_time
    return t


def spike_times(data: torch.Tensor, num_steps: int, threshold: float = 0.01, tau: float = 1.0,
                first_spike_time: int = 0, linear: bool = False, normalize: bool = False,
                epsilon: float = 1e-7) -> torch.Tensor:
    r"""Continuous firing times (arguments and checks as :func:`latency`).

    log (RC-circuit charging to ``threshold``): :math:`t = \tau \ln\frac{x}{x - \theta}` with
    :math:`x \leftarrow \max(x, \theta + \epsilon)`; linear: :math:`t = \min(\tau (1 - x), \tau (1 - \theta))`.
    Both are shifted by ``first_spike_time``. ``normalize`` stretches the times so the latest one lands on
    ``num_steps - 1``: linear sets ``tau = num_steps - 1 - first_spike_time`` (each input on its own); log divides
    by the largest time in the whole tensor, as ``snntorch.spikegen.latency`` does, so one sample's times then
    depend on the others in the batch, and an input below ``threshold`` (taken as ``threshold + epsilon``, time
    about ``tau * ln(threshold / epsilon)``) sets that largest time and squeezes every other input towards 0.
    For per-sample codes of data with zeros use ``linear=True`` (with ``clip=True`` in :func:`latency`).
    """
    num_steps, first_spike_time = _check(data, num_steps, threshold, tau, first_spike_time, linear, normalize,
                                         epsilon)
    return _times(data, num_steps, threshold, tau, first_spike_time, linear, normalize, epsilon)


def latency(data: torch.Tensor, num_steps: int, threshold: float = 0.01, tau: float = 1.0,
            first_spike_time: int = 0, linear: bool = False, normalize: bool = False, clip: bool = False,
            epsilon: float = 1e-7) -> torch.Tensor:
    """One spike per input at ``round(spike_times(...))``; returns float spikes ``[T, B, ...]``.

    Args:
        data: intensities in [0, 1], shape ``[B, ...]``. float64 data is timed in float64, any other dtype in
            float32 (the spikes are float32, or float64 for float64 data).
        num_steps: T >= 1. A spike time past ``T - 1`` is an error (use ``normalize=True`` or a smaller
            ``tau``); nothing is dropped silently. With ``clip=True`` only the inputs that keep their spike count.
        threshold: in (0, 1); inputs below it fire last (or never with ``clip=True``).
        tau: time constant > 0.  linear: linear instead of logarithmic code.
        normalize: see :func:`spike_times` (the log code normalises over the whole tensor, linear per input).
    """
    num_steps, first_spike_time = _check(data, num_steps, threshold, tau, first_spike_time, linear, normalize,
                                         epsilon)
    clip = validate.boolean("clip", clip)
    x = data if data.dtype == torch.float64 else data.float()
    t = _times(x, num_steps, threshold, tau, first_spike_time, linear, normalize, epsilon)
    step = torch.round(t).long()
    if clip:  # a clipped input's time may lie past T-1: it fires nowhere, so it needs no step
        keep = data >= threshold
        step = torch.where(keep, step, torch.zeros_like(step))
    latest = int(step.max()) if step.numel() else 0
    if latest > num_steps - 1:
        raise ValueError(
            f"latency code needs {latest + 1} steps but num_steps={num_steps}: spike times must be in "
            f"[0, num_steps-1]; set normalize=True, lower tau or raise num_steps"
        )
    out = torch.zeros((num_steps,) + tuple(data.shape), dtype=x.dtype, device=data.device)
    out.scatter_(0, step.unsqueeze(0), 1.0)
    return out * keep.to(out.dtype) if clip else out
