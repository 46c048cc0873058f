"""Name -> builder registries for models and datasets used by the trainer and the ``neurosim`` command.

Register with one call::

    from neurosim.training.registry import register_model, register_dataset
    register_model("est", build_est)            # build_est(info: DataInfo, cfg: TrainConfig) -> nn.Module
    register_dataset("shd", build_shd)          # build_shd(cfg: TrainConfig) -> DataInfo

A builder may carry ``builder.upgrade(config: dict, version: int) -> dict``: what a config saved in an older
checkpoint format ``version`` meant under today's defaults (see :func:`upgrade_config`).

The built-ins ("spiking_mlp"; "digits", "damped_sine") are registered on first use. A name not found is
looked up again after importing :mod:`neurosim.models` (and :mod:`neurosim.hardware` is never needed), so
model packages can register themselves when imported; neurosim core itself never imports them eagerly.
"""
from __future__ import annotations

import importlib
from typing import Callable

_MODELS: dict[str, Callable] = {}
_DATASETS: dict[str, Callable] = {}
_BUILTINS_LOADED = False
# Packages imported (once) when a name is unknown; models/datasets defined there register themselves.
PLUGIN_PACKAGES = ("neurosim.models",)
_PLUGINS_TRIED: set[str] = set()


def _register(table: dict, kind: str, name: str, builder: Callable, overwrite: bool) -> Callable:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{kind} name must be a non-empty string, got {name!r}")
    if not callable(builder):
        raise ValueError(f"{kind} builder for {name!r} must be callable, got {type(builder).__name__}")
    if name in table and table[name] is not builder and not overwrite:
        raise ValueError(f"{kind} {name!r} is already registered; pass overwrite=True to replace it")
    table[name] = builder
    return builder


def register_model(name: str, builder: Callable, overwrite: bool = False) -> Callable:
    """Register ``builder(info, cfg) -> nn.Module`` under ``name``; returns the builder."""
    return _register(_MODELS, "model", name, builder, overwrite)


def register_dataset(name: str, builder: Callable, overwrite: bool = False) -> Callable:
    """Register ``builder(cfg) -> DataInfo`` under ``name``; returns the builder."""
    return _register(_DATASETS, "dataset", name, builder, overwrite)


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        importlib.import_module("neurosim.training.data")
        importlib.import_module("neurosim.training.spiking_mlp")


def _load_plugins() -> None:
    for pkg in PLUGIN_PACKAGES:
        if pkg in _PLUGINS_TRIED:
            continue
        _PLUGINS_TRIED.add(pkg)
        try:
            importlib.import_module(pkg)
        except ImportError as err:  # an optional plugin package that is absent must not break the core
            if getattr(err, "name", None) != pkg:
                raise


def _get(table: dict, kind: str, name: str) -> Callable:
    _load_builtins()
    if name not in table:
        _load_plugins()
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; registered {kind}s: {', '.join(sorted(table)) or '(none)'}")
    return table[name]


def get_model(name: str) -> Callable:
    return _get(_MODELS, "model", name)


def get_dataset(name: str) -> Callable:
    return _get(_DATASETS, "dataset", name)


def list_models() -> list[str]:
    _load_builtins()
    _load_plugins()
    return sorted(_MODELS)


def list_datasets() -> list[str]:
    _load_builtins()
    _load_plugins()
    return sorted(_DATASETS)


def upgrade_config(config: dict, version: int) -> dict:
    """The config of a checkpoint written in format ``version``, as today's builders must read it to rebuild the
    same model: the model builder's ``upgrade`` when it has one (a default that has changed since, a setting it
    now refuses because it never used it), else ``config`` unchanged (also for a model that is not registered)."""
    try:
        builder = get_model(config.get("model"))
    except (ValueError, TypeError):
        return config
    upgrade = getattr(builder, "upgrade", None)
    return upgrade(dict(config), version) if upgrade is not None else config
