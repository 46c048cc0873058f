"""Train a small spiking MLP on scikit-learn's digits (rate-coded) and report test accuracy.

    python examples/digits_demo.py [--epochs N] [--out DIR]
"""
import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from torch import nn  # noqa: E402
from tqdm import tqdm  # noqa: E402

import neurosim  # noqa: E402
import neurosim.encoders as E  # noqa: E402


class SpikingMLP(nn.Module):
    def __init__(self, n_in=64, hidden=128, n_out=10, num_steps=16, backend="snntorch"):
        super().__init__()
        self.num_steps = num_steps
        self.fc1, self.lif1 = nn.Linear(n_in, hidden), neurosim.LIF(beta=0.9, backend=backend)
        self.fc2, self.lif2 = nn.Linear(hidden, n_out), neurosim.LIF(beta=0.9, backend=backend)

    def forward(self, x, generator=None):
        s = E.rate(x, self.num_steps, generator=generator)  # [T, B, 64]
        s = self.lif1(self.fc1(s))
        return self.lif2(self.fc2(s)).sum(0)  # spike counts [B, 10]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--out", default="outputs/demo")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed))
    n_train = int(0.8 * len(x))
    tr, te = perm[:n_train], perm[n_train:]
    model = SpikingMLP()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in tqdm(range(args.epochs), desc="training"):
        for idx in torch.randperm(n_train).split(64):
            b = tr[idx]
            loss = nn.functional.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    with torch.no_grad():
        acc = (model(x[te]).argmax(1) == y[te]).float().mean().item()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "model.pt")
    fig, ax = plt.subplots()
    ax.plot(losses)
    ax.set(xlabel="step", ylabel="cross-entropy", title="Spiking MLP on digits: training loss")
    fig.savefig(out / "loss_curve.png", dpi=100)
    (out / "summary.json").write_text(json.dumps({"test_accuracy": acc, "epochs": args.epochs}, indent=2))
    print(f"test accuracy: {acc:.3f}")
    print(f"outputs: {out.resolve()} (model.pt, loss_curve.png, summary.json)")
    return acc


if __name__ == "__main__":
    main()
