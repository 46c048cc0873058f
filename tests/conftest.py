import os

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
os.environ.setdefault("NEUROSIM_NOTEBOOK_FAST", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)
