r"""Enhanced Spiking Transformer (EST) and a plain Spikformer-style baseline, built from :mod:`neurosim.layers`.

Data layout: a sequence batch ``[B, N, F]`` (N positions, F features, e.g. from a DataLoader) becomes N
*tokens*; the SNN runs a separate time axis of ``num_steps`` timesteps over which the real input is repeated
(direct encoding), giving ``[T, B, N, F]``. Spike input already shaped ``[T, B, N, F]`` (e.g. rate-coded) is
used as is. With ``causal=True`` every layer that mixes tokens is causal along N (causal Q/K convolutions,
attention masked to keys ``j <= i``; ``attention="astro"``: astrocyte-modulated attention on spike Q/K/V,
masked the same way), so the prediction for position ``i`` uses positions ``<= i`` only
(BatchNorm in eval mode); everything is causal along T by construction (neurons, the TPU's causal time
convolution).

Per layer ``l``: ``x <- R(SSA_l)(x)``, ``x <- R(TPU)(x)`` (if ``tpu``), ``x <- R(MLP)(x)`` where ``R`` is the
spike-aware residual (``residual``) and random spike masking with ratio ``rsm_ratio[l]`` drops spikes entering
SSA and MLP, by default in evaluation too (``rsm_mode="always"``: the seed's masking, whose SynOps saving is real at
deployment; RESULTS.md measured masking in training only to be worse at inference and to raise SynOps). The
readout applies a Linear to the final spikes at each timestep and averages over T (``readout="tokens"``:
``[B, N, out]``; ``"pool"``: averaged over tokens too, ``[B, out]``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from neurosim import validate
from neurosim.layers import (AstroSpikingAttention, Mean, NeuronSpec, RandomSpikeMask, SpikeBatchNorm,
                             SpikeResidual, SpikingMLP, SpikingSelfAttention, TemporalProcessingUnit,
                             positional_encoding)
from neurosim.layers.neuron import as_spec
from neurosim.layers.residual import MODES as RESIDUALS
from neurosim.layers.masking import MODES as RSM_MODES
from neurosim.layers.positional import PE_KINDS


ATTENTIONS = ("conv", "linear", "astro")


@dataclass
class ESTConfig:
    """Every EST component is a field, so each one can be switched off for an ablation."""

    in_features: int
    out_features: int
    dim: int = 32
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 2.0
    num_steps: int = 4
    max_len: int = 64
    attention: str = "conv"            # "conv": causal conv Q/K (convolutional SSA); "linear": Spikformer SSA;
                                       # "astro": astrocyte-modulated attention on spike Q/K/V (linear Q/K)
    astro_alpha: float = 0.25          # presynaptic exponent of the astro attention
    kernel_sizes: tuple = (3, 5, 7)    # Q/K kernel per layer (the last one repeats)
    causal: bool = True
    pos_encoding: str = "cpg"          # "cpg", "cpg_lv2024", "sin", "learned", "none" (neurosim.layers.positional.PE_KINDS)
    pe_dim: int = 16
    tpu: bool = True
    tpu_kernel: int = 3
    residual: str = "membrane"         # "membrane", "sew_add", "sew_and", "sew_iand"
    rsm_ratio: float | tuple = 0.0     # one ratio, or one per layer
    rsm_mode: str = "always"           # "always": masks at inference too (the seed, MST); "train": in training only
    rsm_seed: int | None = 0
    readout: str = "tokens"            # "tokens" -> [B, N, out]; "pool" -> [B, out]
    neuron: NeuronSpec = field(default_factory=NeuronSpec)

    def __post_init__(self):
        for name in ("in_features", "out_features", "dim", "depth", "heads", "num_steps", "max_len", "pe_dim",
                     "tpu_kernel"):
            validate.positive_int(name, getattr(self, name))
        validate.positive_float("mlp_ratio", self.mlp_ratio)
        for name in ("causal", "tpu"):  # ("no" would be true)
            validate.boolean(name, getattr(self, name))
        if isinstance(self.kernel_sizes, int):
            raise ValueError(f"kernel_sizes must be a sequence of kernel sizes (one per layer, the last repeats), "
                             f"got {self.kernel_sizes!r}")
        validate.one_of("attention", self.attention, ATTENTIONS)
        validate.in_range("astro_alpha", self.astro_alpha, 0.0, 1.0, lo_open=True)
        validate.one_of("pos_encoding", self.pos_encoding, PE_KINDS)
        validate.one_of("residual", self.residual, RESIDUALS)
        validate.one_of("rsm_mode", self.rsm_mode, RSM_MODES)
        validate.one_of("readout", self.readout, ("tokens", "pool"))
        self.kernel_sizes = tuple(validate.positive_int("kernel_sizes", k) for k in self.kernel_sizes)
        if not self.kernel_sizes:
            raise ValueError("kernel_sizes must hold at least one kernel size")
        ratios = self.layer_rsm_ratios()
        if len(ratios) != self.depth:
            raise ValueError(f"rsm_ratio must be one number or {self.depth} (depth) numbers; got {self.rsm_ratio}")
        for r in ratios:
            validate.in_range("rsm_ratio", r, 0.0, 1.0, hi_open=True)
        if self.rsm_seed is not None:  # ("abc" failed at build; 1.7 was cut to 1)
            self.rsm_seed = validate.positive_int("rsm_seed", self.rsm_seed, minimum=0)
        self.neuron = as_spec(self.neuron)

    def layer_rsm_ratios(self) -> tuple:
        r = self.rsm_ratio
        return tuple(float(v) for v in r) if isinstance(r, (tuple, list)) else (float(r),) * self.depth

    def to_dict(self) -> dict:
        return asdict(self)


def spikformer_config(in_features: int, out_features: int, **overrides) -> ESTConfig:
    """The plain Spikformer-style baseline: linear SSA, no positional code, no TPU, SEW-ADD residual
    (Spikformer adds the spiking block output to its input), no spike masking."""
    base = dict(attention="linear", pos_encoding="none", tpu=False, residual="sew_add", rsm_ratio=0.0)
    base.update(overrides)
    return ESTConfig(in_features, out_features, **base)


def ablation_configs(cfg: ESTConfig) -> dict[str, ESTConfig]:
    """The full EST, one variant per component switched back to the baseline choice, and the full EST with
    astrocyte-modulated attention in place of the convolutional SSA ("astro attention", issue 8)."""
    return {
        "EST (full)": cfg,
        "- conv attention (linear SSA)": replace(cfg, attention="linear"),
        "astro attention": replace(cfg, attention="astro"),
        "- CPG-PE (no PE)": replace(cfg, pos_encoding="none"),
        "- TPU": replace(cfg, tpu=False),
        "- membrane shortcut (SEW-ADD)": replace(cfg, residual="sew_add"),
        "- RSM (ratio 0)": replace(cfg, rsm_ratio=0.0),
        "Spikformer baseline": spikformer_config(
            cfg.in_features, cfg.out_features, **{k: getattr(cfg, k) for k in (
                "dim", "depth", "heads", "mlp_ratio", "num_steps", "max_len", "causal", "readout", "neuron")}),
    }


class ESTLayer(nn.Module):
    def __init__(self, cfg: ESTConfig, index: int):
        super().__init__()
        ratio = cfg.layer_rsm_ratios()[index]
        seed = None if cfg.rsm_seed is None else cfg.rsm_seed + 1000 * index

        def rsm(offset):
            return RandomSpikeMask(ratio, cfg.rsm_mode, None if seed is None else seed + offset) if ratio > 0 else None

        kernel = cfg.kernel_sizes[min(index, len(cfg.kernel_sizes) - 1)]
        if cfg.attention == "astro":
            attn = AstroSpikingAttention(cfg.dim, cfg.heads, causal=cfg.causal, alpha=cfg.astro_alpha,
                                         max_len=cfg.max_len, neuron=cfg.neuron)
        else:
            attn = SpikingSelfAttention(cfg.dim, cfg.heads, qk=cfg.attention, kernel_size=kernel, causal=cfg.causal,
                                        neuron=cfg.neuron)
        self.attn = SpikeResidual(attn, cfg.residual, cfg.neuron, rsm(0))
        self.tpu = (SpikeResidual(TemporalProcessingUnit(cfg.dim, cfg.tpu_kernel, neuron=cfg.neuron), cfg.residual,
                                  cfg.neuron) if cfg.tpu else None)
        mlp = SpikingMLP(cfg.dim, max(1, int(round(cfg.dim * cfg.mlp_ratio))), neuron=cfg.neuron)
        self.mlp = SpikeResidual(mlp, cfg.residual, cfg.neuron, rsm(1))

    def forward(self, x):
        x = self.attn(x)
        if self.tpu is not None:
            x = self.tpu(x)
        return self.mlp(x)


class EnhancedSpikingTransformer(nn.Module):
    """EST built from an :class:`ESTConfig` (see the module docstring for layout and causality)."""

    def __init__(self, cfg: ESTConfig):
        super().__init__()
        if not isinstance(cfg, ESTConfig):
            raise ValueError(f"cfg must be an ESTConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.pe = positional_encoding(cfg.pos_encoding, cfg.max_len, cfg.pe_dim)
        in_f = cfg.in_features if self.pe is None else self.pe.out_features(cfg.in_features)
        self.embed = nn.Linear(in_f, cfg.dim)
        self.embed_bn = SpikeBatchNorm(cfg.dim)
        self.embed_sn = cfg.neuron.make() if cfg.residual != "membrane" else None
        self.layers = nn.ModuleList(ESTLayer(cfg, i) for i in range(cfg.depth))
        self.final_sn = cfg.neuron.make() if cfg.residual == "membrane" else None
        self.head = nn.Linear(cfg.dim, cfg.out_features)
        self.time_mean = Mean(0)                                     # the readout: rate over the time steps
        self.token_mean = Mean(1) if cfg.readout == "pool" else None

    def to_steps(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N, F]`` -> ``[T, B, N, F]`` (input repeated over the SNN timesteps); ``[T, B, N, F]`` unchanged."""
        validate.input_dtype("x", x, self.embed.weight)
        validate.finite("x", x)
        validate.rank_exactly("x", x, (3, 4), "[B, N, F] or [T, B, N, F]")
        if x.shape[-1] != self.cfg.in_features:
            raise ValueError(f"x must have in_features={self.cfg.in_features} in its last dim, got {tuple(x.shape)}")
        if x.shape[-2] == 0 or x.dim() == 4 and x.shape[0] == 0:  # (a pooled readout of no tokens was NaN)
            raise ValueError(f"x must hold at least one token (dim -2) and time step, got shape {tuple(x.shape)}")
        if x.dim() == 3:
            x = x.unsqueeze(0).expand(self.cfg.num_steps, *x.shape)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Final spikes ``[T, B, N, dim]`` (before the readout)."""
        x = self.to_steps(x)
        if self.pe is not None:
            x = self.pe(x)
        h = self.embed_bn(self.embed(x))
        h = self.embed_sn(h) if self.embed_sn is not None else h
        for layer in self.layers:
            h = layer(h)
        return self.final_sn(h) if self.final_sn is not None else h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.time_mean(self.head(self.features(x)))  # [B, N, out]
        return self.token_mean(y) if self.token_mean is not None else y


def spikformer(in_features: int, out_features: int, **overrides) -> EnhancedSpikingTransformer:
    return EnhancedSpikingTransformer(spikformer_config(in_features, out_features, **overrides))
