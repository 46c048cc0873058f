"""Energy and SynOps estimation, counted exactly from the spikes of one forward pass.

>>> report = neurosim.energy.profile(model, x, hardware="cmos45nm")   # x: [T, B, ...]
>>> print(report); report.to_csv("e.csv"); report.to_json("e.json"); report.plot("e.png")
>>> report = neurosim.energy.profile_batches(model, (x.cuda() for x, _ in loader))  # a whole set, one report

Per layer: the dense MACs an ANN of the same shape would do, SynOps (each input spike x its fan-out),
MACs (real-valued inputs), other ACs (residual additions, pooling), neuron updates, firing rates and
energy. Conventions: :mod:`neurosim.energy.counters`; hardware numbers and their sources:
:mod:`neurosim.energy.hardware`. New layer types: :func:`register_counter`; new neurons: set the class
attribute ``is_spiking_neuron = True`` (snnTorch, SpikingJelly and Norse neurons are recognised as they are;
a neuron's child modules that hold parameters, e.g. STC-LIF's circuits, are counted as synapses; the meter reads a
neuron's input to check it for NaN/inf unless its class sets ``checks_finite_input = True``, as neurosim's do, and
checks them itself). Modules no counter knows are listed as "not counted";
``profile(..., audit=True)`` also lists arithmetic done in plain torch calls outside every counted layer
(:mod:`neurosim.energy.audit`); without it (the default, for speed) the report says that this arithmetic was not
checked. ``neurosim energy`` audits unless ``--no-audit`` and prints what ``profile(..., audit=True)`` prints.
Under one :class:`EnergyMeter`, eager forwards after the first of an input signature are replayed from a recording
of it (same counts, less host work: :mod:`neurosim.energy.replay`).
"""
from .cli import add_arguments, cli_main
from .counters import Count, TensorStats, is_spiking_neuron, register_counter, spike_or_dense, stats
from . import elementwise  # noqa: F401  (registers the counters of activations, softmax, astrocyte terms)
from . import attention  # noqa: F401  (registers the counter of torch's multi-head attention)
from . import recurrent  # noqa: F401  (registers the counters of torch's RNN, GRU and LSTM layers and cells)
from . import other_layers  # noqa: F401  (bilinear, similarity, distance, LRN, LP/fractional pools, bags, fold)
from . import spike_layers  # noqa: F401  (registers the counters of neurosim's spike masking and SEW connect layers)
from .hardware import CMOS45NM, LOIHI, HardwareProfile, get_profile, list_profiles, register_profile
from .batches import profile_batches
from .meter import EnergyMeter, profile
from .report import EnergyReport, LayerReport

__all__ = ["profile", "profile_batches", "EnergyMeter", "EnergyReport", "LayerReport", "HardwareProfile",
           "CMOS45NM", "LOIHI", "get_profile", "list_profiles", "register_profile", "register_counter", "Count",
           "TensorStats", "stats", "spike_or_dense", "is_spiking_neuron", "cli_main", "add_arguments"]
