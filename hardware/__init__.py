"""Hardware export: Lava-DL NetX files (run on Lava's Loihi simulator), NIR graphs, and the Loihi mode.

* :func:`export_lava` / :func:`run_lava` / :class:`LoihiNetwork` (quantized Loihi-mode simulation);
* :func:`export_nir` / :func:`import_nir`;
* :func:`cli_main` for ``neurosim export``, and :func:`save_exportable` / :func:`load_exportable` /
  :func:`register_builder` for the checkpoints it reads that name the function building their model.

Heavy dependencies (h5py, nir, the Lava environment) are imported only when used.
"""
from importlib import import_module

_EXPORTS = {
    "export_lava": "export",
    "run_lava": "lava_sim",
    "run_lava_many": "lava_sim",
    "LavaError": "lava_sim",
    "LoihiNetwork": "loihi",
    "pad_steps": "loihi",
    "quantize": "loihi",
    "read_netx": "netx",
    "ExportError": "graph",
    "lower": "graph",
    "export_nir": "nir_io",
    "import_nir": "nir_io",
    "cli_main": "cli",
    "save_exportable": "cli",
    "load_exportable": "cli",
    "register_builder": "cli",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
