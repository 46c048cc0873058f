"""Spiking transformers and research models (installed as ``neurosim.models``).

Research models of issue 8: :class:`BTSPFormer` (BTSP-plastic attention), its spiking variant
:class:`SpikingBTSPFormer`, and the STC-LIF moving-digits frame predictor. Importing this package registers
them with the trainer's registry (``neurosim train --model btspformer``) when :mod:`neurosim.training` provides
one.
"""
from .btsp import BTSPPlasticity, asymmetric_kernel, btsp_update
from .btspformer import AsymmetricPositionEmbedding, BTSPFormer, SpikingBTSPFormer, asymmetric_envelope
from .moving_digits import FramePredictor, moving_digits

__all__ = ["BTSPFormer", "SpikingBTSPFormer", "BTSPPlasticity", "AsymmetricPositionEmbedding", "btsp_update",
           "asymmetric_kernel", "asymmetric_envelope", "FramePredictor", "moving_digits"]

from . import registration as _registration  # noqa: E402,F401  (registers the models above)
