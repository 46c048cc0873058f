"""Train the small spiking MLP on scikit-learn's digits (rate-coded) through neurosim's trainer and report the
validation accuracy and where the outputs went (summary JSON, CSV log, TensorBoard logs, loss curve,
checkpoints). Same as ``neurosim demo``; every flag of ``neurosim demo --help`` works here:

    python examples/digits_demo.py [--epochs N] [--out-dir DIR] [--device cpu|cuda] [--resume]
"""
import sys

from neurosim.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
