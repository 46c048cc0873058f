"""Hardware energy profiles: energy per operation, each number with its source.

A profile turns the operation counts of :func:`neurosim.energy.profile` into energy:

``E = e_mac * MACs + e_ac * (SynOps + ACs) + e_neuron * neuron_updates``

``e_mac = None`` means the target has no multiply-accumulate unit (real-valued layers run elsewhere); the
report then lists those MACs as "not costed" instead of pricing them at zero.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, fields


@dataclass(frozen=True)
class HardwareProfile:
    """Energy per operation in picojoules.

    Attributes:
        name: key used by ``profile(..., hardware=name)``.
        e_mac_pj: one multiply-accumulate on real values (``None``: not available on this target).
        e_ac_pj: one accumulate driven by a spike (a synaptic operation) or one addition.
        e_neuron_pj: one neuron state update (one neuron, one time step).
        source: citation of the numbers.
    """

    name: str
    e_mac_pj: float | None
    e_ac_pj: float
    e_neuron_pj: float = 0.0
    source: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        for field in ("e_ac_pj", "e_neuron_pj") + (("e_mac_pj",) if self.e_mac_pj is not None else ()):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{field} must be a finite number >= 0 (picojoules), got {v!r}")

    def to_dict(self) -> dict:
        return asdict(self)


# 45 nm CMOS, 0.9 V, 32-bit floating point: M. Horowitz, "Computing's energy problem (and what we can do
# about it)", ISSCC 2014, Fig. 1.1.9: FP add 0.9 pJ, FP mult 3.7 pJ -> MAC = 3.7 + 0.9 = 4.6 pJ, AC = 0.9 pJ.
# These are the figures Spikformer (Zhou et al., ICLR 2023) and the Spike-driven Transformer (Yao et al.,
# NeurIPS 2023) use. Those papers do not price neuron updates; neither does this profile (e_neuron = 0).
CMOS45NM = HardwareProfile(
    name="cmos45nm",
    e_mac_pj=4.6,
    e_ac_pj=0.9,
    e_neuron_pj=0.0,
    source="Horowitz, ISSCC 2014 (45 nm, fp32): E_MAC = 3.7 + 0.9 = 4.6 pJ, E_AC = 0.9 pJ; neuron updates not "
    "priced (Spikformer / Spike-driven Transformer convention)",
)

# Intel Loihi (14 nm): M. Davies et al., "Loihi: A Neuromorphic Manycore Processor with On-Chip Learning",
# IEEE Micro 38(1), 2018, Table 2 ("Loihi pre-silicon performance and energy measurements", p. 96): energy per
# synaptic spike op (min) 23.6 pJ; energy per neuron update (active / inactive) 81 pJ / 52 pJ. We do not know
# which updates Loihi counts as inactive, so every update is priced as active (81 pJ): an upper bound, at most
# 81/52 = 1.56x the neuron energy of an all-inactive network. Also in that table, not used for inference:
# within-tile spike energy 1.7 pJ, energy per tile hop 3.0 / 4.0 pJ (E-W / N-S), synaptic update (pairwise STDP)
# 120 pJ. (An earlier version read 52 pJ as the active figure.)
# Loihi has no MAC unit: real-valued (first-layer) products are left unpriced and reported as such.
LOIHI = HardwareProfile(
    name="loihi",
    e_mac_pj=None,
    e_ac_pj=23.6,
    e_neuron_pj=81.0,
    source="Davies et al., IEEE Micro 2018, Table 2: 23.6 pJ per synaptic spike op (min), 81 pJ per active "
    "neuron update (52 pJ inactive; every update priced as active, an upper bound); no MAC unit",
)

_PROFILES: dict[str, HardwareProfile] = {p.name: p for p in (CMOS45NM, LOIHI)}


def register_profile(profile: HardwareProfile, overwrite: bool = False) -> HardwareProfile:
    """Make ``profile`` available by name to :func:`neurosim.energy.profile` and the command line."""
    if not isinstance(profile, HardwareProfile):
        raise ValueError(f"profile must be a HardwareProfile, got {type(profile).__name__}")
    if profile.name in _PROFILES and _PROFILES[profile.name] != profile and not overwrite:
        raise ValueError(f"hardware profile {profile.name!r} is already registered; pass overwrite=True")
    _PROFILES[profile.name] = profile
    return profile


def get_profile(hardware) -> HardwareProfile:
    """A profile from its name, a :class:`HardwareProfile`, or a dict of its fields (user-defined)."""
    if isinstance(hardware, HardwareProfile):
        return hardware
    if isinstance(hardware, dict):
        names = [f.name for f in fields(HardwareProfile)]
        required = [f.name for f in fields(HardwareProfile) if f.default is MISSING]
        unknown = [k for k in hardware if k not in names]
        missing = [k for k in required if k not in hardware]
        if unknown or missing:
            raise ValueError(f"hardware: a profile dict takes the fields {names} ({', '.join(required)} required); "
                             + "; ".join(p for p in (f"unknown {unknown}" if unknown else "",
                                                     f"missing {missing}" if missing else "") if p))
        return HardwareProfile(**hardware)
    if not isinstance(hardware, str) or hardware not in _PROFILES:
        raise ValueError(f"hardware must be a profile name (one of {sorted(_PROFILES)}), a HardwareProfile or a "
                         f"dict of its fields; got {hardware!r}")
    return _PROFILES[hardware]


def list_profiles() -> list[str]:
    return sorted(_PROFILES)
