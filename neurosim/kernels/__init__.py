"""GPU kernels (Triton), imported lazily: :mod:`neurosim.kernels.lif` is ``backend="fused"`` of
:class:`neurosim.LIF` / :class:`neurosim.CubaLIF`; :mod:`neurosim.kernels.triton_lif` holds the kernels."""
