"""Spiking neurons: LIF and current-based LIF with snnTorch, Norse, fused and reference backends."""
from .backends import BACKENDS
from .functional import CubaLIFParameters, CubaLIFState, LIFParameters, LIFState, cuba_lif_step, lif_step
from .lif import LIF, CubaLIF
from .recording import firing_rates, record_spikes, spiking_neurons
from .surrogate import SURROGATES, Surrogate

__all__ = ["LIF", "CubaLIF", "BACKENDS", "SURROGATES", "Surrogate", "LIFParameters", "CubaLIFParameters",
           "LIFState", "CubaLIFState", "lif_step", "cuba_lif_step", "record_spikes", "firing_rates",
           "spiking_neurons"]
