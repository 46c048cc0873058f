"""Small deployment demo pieces shared by the example notebook and the tests: rate-coded scikit-learn digits,
two exportable classifiers (MLP and conv net) and a short surrogate-gradient training loop."""
from __future__ import annotations

import torch
from torch import nn

from neurosim import validate
from neurosim.layers import TimeDistributed
from neurosim.neurons.lif import LIF


def digits_spikes(num_steps: int = 12, seed: int = 0, test_fraction: float = 0.2, image: bool = False):
    """Rate-coded sklearn ``load_digits``: returns ``(x_train, y_train, x_test, y_test)``.

    ``x`` is binary ``[T, N, 64]`` (or ``[T, N, 1, 8, 8]`` with ``image=True``): pixel ``p`` (0..16) spikes
    with probability ``p/16`` at every step, from a fixed-seed generator; the split is a fixed permutation.
    """
    from sklearn.datasets import load_digits

    num_steps = validate.positive_int("num_steps", num_steps)
    validate.in_range("test_fraction", test_fraction, 0.0, 1.0, lo_open=True, hi_open=True)
    data = load_digits()
    g = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.as_tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=g)
    x, y = x[perm], y[perm]
    spikes = (torch.rand((num_steps, *x.shape), generator=g) < x).float()
    if image:
        spikes = spikes.reshape(num_steps, -1, 1, 8, 8)
    n_test = int(round(len(y) * test_fraction))
    return spikes[:, n_test:], y[n_test:], spikes[:, :n_test], y[:n_test]


def digits_mlp(hidden: int = 64, beta: float = 0.9, threshold: float = 1.0) -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, hidden), LIF(beta=beta, threshold=threshold, reset="zero"),
                         nn.Linear(hidden, 10), LIF(beta=beta, threshold=threshold, reset="zero"))


def digits_convnet(channels: int = 8, beta: float = 0.9, threshold: float = 1.0) -> nn.Sequential:
    """Conv(1->c, 3x3) -> LIF -> AvgPool 2 -> Conv(c->2c, 3x3) -> LIF -> AvgPool 2 -> Flatten -> Linear -> LIF."""
    c = validate.positive_int("channels", channels)
    return nn.Sequential(
        TimeDistributed(nn.Conv2d(1, c, 3, padding=1)), LIF(beta=beta, threshold=threshold, reset="zero"),
        TimeDistributed(nn.AvgPool2d(2)),
        TimeDistributed(nn.Conv2d(c, 2 * c, 3, padding=1)), LIF(beta=beta, threshold=threshold, reset="zero"),
        TimeDistributed(nn.AvgPool2d(2)), TimeDistributed(nn.Flatten()),
        nn.Linear(2 * c * 2 * 2, 10), LIF(beta=beta, threshold=threshold, reset="zero"))


def train_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 5, batch_size: int = 64,
                     lr: float = 5e-3, seed: int = 0, progress: bool = True) -> list:
    """Adam on cross-entropy of the output spike counts (BPTT with the surrogate gradient); returns epoch losses."""
    from tqdm.auto import tqdm

    epochs = validate.positive_int("epochs", epochs)
    batch_size = validate.positive_int("batch_size", batch_size)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    n = x.shape[1]
    for _ in tqdm(range(epochs), desc="training", disable=not progress):
        perm = torch.randperm(n)
        total = 0.0
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            counts = model(x[:, idx]).sum(0)
            loss = nn.functional.cross_entropy(counts, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / n)
    return losses


def accuracy(spikes: torch.Tensor, y: torch.Tensor) -> float:
    """Percentage of samples whose most active output neuron (spike count over time) is the label; a sample whose
    top count is shared by ``k`` outputs, the label among them, counts ``1/k`` (the expected score of a random pick
    among the tied). Spike counts of a few steps tie often (about one digit in ten for the digits nets), and always
    taking the first tied output made the score depend on the label order: a float model and its quantized export
    differing only in which of two tied outputs comes first differed by points."""
    counts = spikes.sum(0)
    top = (counts == counts.max(-1, keepdim=True).values).float()
    return 100.0 * float((top.gather(-1, y[:, None]).squeeze(-1) / top.sum(-1)).mean())