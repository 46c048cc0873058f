"""Reusable spiking layers. Tensors are ``[T, B, ...]`` (time leading); token layers take ``[T, B, N, D]``."""
from .astro_attention import AstroAttention, AstroMixing
from .attention import AstroSpikingAttention, SpikingAttentionBlock, SpikingSelfAttention
from .conv import CausalConv1d
from .masking import RandomSpikeMask, random_spike_mask
from .mlp import SpikingMLP
from .neuron import NeuronSpec
from .norm import SpikeBatchNorm
from .ops import Add, MatMul, Mean
from .positional import (CPGPositionalEncoding, LearnedPositionalEncoding, SinusoidalPositionalEncoding,
                         positional_encoding, sinusoidal_table)
from .residual import SEWConnect, SpikeResidual, sew_connect
from .temporal import TemporalProcessingUnit
from .time_distributed import TimeDistributed

__all__ = ["Add", "MatMul", "Mean", "NeuronSpec", "SpikeBatchNorm", "CausalConv1d", "RandomSpikeMask", "random_spike_mask",
           "SpikingSelfAttention", "SpikingAttentionBlock", "AstroSpikingAttention", "AstroAttention",
           "AstroMixing", "SpikingMLP", "TemporalProcessingUnit", "SEWConnect", "SpikeResidual",
           "sew_connect", "CPGPositionalEncoding", "SinusoidalPositionalEncoding", "LearnedPositionalEncoding",
           "positional_encoding", "sinusoidal_table", "TimeDistributed"]
