"""What comparing a meter's layer settings costs (issue 5; BENCHMARKS.md energy run 21b): the full comparison a block
makes when it starts (``EnergyMeter._stamp_now``) against the quick one made before each forward
(``meter._settings_moved``), median of ``--repeats`` calls, for the 4-layer EST of ``energy_overhead.transformers``.

    OMP_NUM_THREADS=1 python benchmarks/energy_settings_check.py [--dim 32] [--repeats 500]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import energy_overhead as E  # noqa: E402

from neurosim.energy import EnergyMeter  # noqa: E402
from neurosim.energy import meter as M  # noqa: E402


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=500)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    _, est = E.transformers(16, args.dim, 8, heads=4, depth=4)
    est.eval()
    x = (torch.rand(2, 1, 8, 16) < 0.2).float()
    meter = EnergyMeter(est)
    with torch.no_grad(), meter:
        est(x)
        full = median_ms(meter._stamp_now, args.repeats)
        meter._check_stamp()  # (notes what the quick check compares)
        quick = median_ms(lambda: M._settings_moved(meter._quick), args.repeats)
        assert not M._settings_moved(meter._quick)
    print(f"EST 4x{args.dim}, {len(meter._walked)} wrapped layers: full settings comparison {full:.3f} ms, "
          f"quick check before a forward {quick:.3f} ms")


if __name__ == "__main__":
    main()
