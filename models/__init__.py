"""Spiking transformers and research models (installed as ``neurosim.models``)."""
from .est import (ESTConfig, EnhancedSpikingTransformer, ablation_configs, spikformer, spikformer_config)

__all__ = ["ESTConfig", "EnhancedSpikingTransformer", "ablation_configs", "spikformer", "spikformer_config"]
