"""Spiking transformers and research models (installed as ``neurosim.models``).

- :class:`EnhancedSpikingTransformer` (issue 6): conv spiking self-attention, CPG-PE, temporal processing units,
  spike-aware residuals and random spike masking, every component switchable (:func:`ablation_configs`), and the
  plain Spikformer-style baseline built from the same layers (:func:`spikformer`).
- Research models of issue 8: :class:`BTSPFormer` (BTSP-plastic attention), its spiking variant
  :class:`SpikingBTSPFormer`, and the STC-LIF moving-digits frame predictor.

Importing this package registers the energy counters of its layers and the models with the trainer's registry
(``neurosim train --model est|spikformer|btspformer``).
"""
from . import counters  # noqa: F401  (registers the energy counters of this package's layers)
from .btsp import BTSPPlasticity, asymmetric_kernel, btsp_update
from .btspformer import AsymmetricPositionEmbedding, BTSPFormer, SpikingBTSPFormer, asymmetric_envelope
from .est import ESTConfig, EnhancedSpikingTransformer, ablation_configs, spikformer, spikformer_config
from .moving_digits import FramePredictor, moving_digits

__all__ = ["ESTConfig", "EnhancedSpikingTransformer", "ablation_configs", "spikformer", "spikformer_config",
           "BTSPFormer", "SpikingBTSPFormer", "BTSPPlasticity", "AsymmetricPositionEmbedding", "btsp_update",
           "asymmetric_kernel", "asymmetric_envelope", "FramePredictor", "moving_digits"]

from . import registration as _registration  # noqa: E402,F401  (registers the models above)
