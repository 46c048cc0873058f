"""One description of the spiking neuron used throughout a network, so every layer can run on any backend."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .. import validate
from ..neurons import BACKENDS, LIF


@dataclass(frozen=True)
class NeuronSpec:
    """Arguments of :class:`neurosim.LIF` shared by all neurons of a network (``make()`` builds one).

    ``backend`` picks who runs the time loop ("snntorch", "norse", "fused", "torch"); the backend checks the
    combination (e.g. "norse" needs ``reset="zero"`` and a fast_sigmoid/sigmoid surrogate).
    """

    beta: float = 0.5
    threshold: float = 1.0
    reset: str = "subtract"
    surrogate: str = "fast_sigmoid"
    slope: float | None = None
    backend: str = "snntorch"

    def __post_init__(self):
        validate.one_of("backend", self.backend, BACKENDS)

    def make(self, threshold: float | None = None) -> LIF:
        kw = asdict(self)
        if threshold is not None:
            kw["threshold"] = threshold
        return LIF(**kw)


def as_spec(neuron, name: str = "neuron") -> NeuronSpec:
    """Accept a :class:`NeuronSpec`, a dict of its fields, or ``None`` (defaults); ``name`` names ``neuron`` in
    errors (another key is a ValueError listing the fields, not a TypeError)."""
    if neuron is None:
        return NeuronSpec()
    if isinstance(neuron, NeuronSpec):
        return neuron
    allowed = [f.name for f in fields(NeuronSpec)]
    if not isinstance(neuron, dict):
        raise ValueError(f"{name} must be a NeuronSpec, a dict of its fields ({', '.join(allowed)}) or None; "
                         f"got {neuron!r}")
    unknown = [k for k in neuron if k not in allowed]
    if unknown:  # ({reset:zero} in YAML is the key 'reset:zero': a value needs a space after the colon)
        hint = " (YAML needs a space after the colon: {reset: zero})" if any(":" in str(k) for k in unknown) else ""
        raise ValueError(f"{name} has unknown key(s) {', '.join(map(repr, unknown))}{hint}; allowed keys: "
                         f"{', '.join(allowed)}")
    return NeuronSpec(**neuron)
