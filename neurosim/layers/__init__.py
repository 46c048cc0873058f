"""Reusable spiking layers."""
from .ops import Add, MatMul

__all__ = ["Add", "MatMul"]
