"""neurosim: neuromorphic simulation toolkit.

Core (this package): neurons with interchangeable backends, layers, energy estimation, training, CLI.
Sub-packages mapped from the repository's top level: :mod:`neurosim.encoders`, :mod:`neurosim.models`,
:mod:`neurosim.hardware`. Heavy optional parts (Triton kernels, Lava, NIR) are imported only when used.
"""
from .neurons import BACKENDS, SURROGATES, CubaLIF, LIF, Surrogate

__version__ = "0.1.0"
__all__ = ["LIF", "CubaLIF", "Surrogate", "BACKENDS", "SURROGATES", "__version__"]
