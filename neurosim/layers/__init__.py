"""Reusable spiking layers."""
from .ops import Add, MatMul
from .time_distributed import TimeDistributed

__all__ = ["Add", "MatMul", "TimeDistributed"]
