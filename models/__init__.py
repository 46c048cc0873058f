"""Spiking transformers and research models (installed as ``neurosim.models``)."""
from . import counters  # noqa: F401  (registers energy counters for masking and SEW connect functions)
from .est import (ESTConfig, EnhancedSpikingTransformer, ablation_configs, spikformer, spikformer_config)

__all__ = ["ESTConfig", "EnhancedSpikingTransformer", "ablation_configs", "spikformer", "spikformer_config"]
