"""Spike encoders. Every encoder returns float 0/1 spike tensors with time leading: ``[T, B, ...]``."""
from .cpg import cpg, cpg_code, default_periods
from .delta import delta
from .latency import latency, spike_times
from .rate import rate

__all__ = ["rate", "latency", "spike_times", "delta", "cpg", "cpg_code", "default_periods"]
