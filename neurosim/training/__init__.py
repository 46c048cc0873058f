"""Training: one trainer for classification and regression/forecasting, atomic resumable checkpoints,
torchrun/DDP support, CSV/TensorBoard logs, plots, and the model/dataset registry the CLI uses.

    from neurosim.training import TrainConfig, Trainer
    summary = Trainer(TrainConfig(model="spiking_mlp", dataset="digits", epochs=5)).fit()
"""
from .checkpoint import CheckpointError
from .config import TrainConfig, load_config_file
from .data import DataInfo, split_indices
from .registry import get_dataset, get_model, list_datasets, list_models, register_dataset, register_model
from .trainer import NonFiniteLoss, RunExists, Trainer

__all__ = ["Trainer", "TrainConfig", "load_config_file", "CheckpointError", "NonFiniteLoss", "RunExists",
           "DataInfo", "split_indices", "register_model", "register_dataset", "get_model", "get_dataset",
           "list_models", "list_datasets"]
