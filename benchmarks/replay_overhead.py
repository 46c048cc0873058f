"""One model's plain forward against its replayed metered forward, or against a one-shot ``profile``
(``--what profile``) (issue 5): wall time and the host thread's CPU time, a line of output. Run by
``replay_ab.sh`` in one process per code tree, so that two trees are compared in the same session, alternately
(on the GPU machine a process's plain forward alone varies up to 2x from one process to the next, BENCHMARKS.md
energy run 15).

    python benchmarks/replay_overhead.py --backend fused --case "EST 4x384" --tag new

Each round: ``--forwards`` plain forwards (checks deferred), then under a new EnergyMeter the recording, a first
replay and ``--forwards`` replayed forwards (``--what profile``: ``--forwards`` calls of ``profile(model, x)``, each
with its own meter and report); median of ``--rounds`` rounds after one warm-up round. The host time is
``time.thread_time()`` until the last forward returns (before the device synchronisation).
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

from neurosim import validate  # noqa: E402
from neurosim.energy import EnergyMeter, profile  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="fused", choices=("torch", "fused", "snntorch"), help="LIF backend")
    ap.add_argument("--case", required=True, help="a model of energy_overhead.cases (the first of a name)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--forwards", type=int, default=10)
    ap.add_argument("--tag", default="", help="printed with the result (which code tree)")
    ap.add_argument("--what", default="replayed", choices=("replayed", "profile"), help="what is timed against plain")
    args = ap.parse_args(argv)
    E.BACKEND = args.backend
    torch.manual_seed(0)
    (_, model, shape, _), = E.named_cases([args.case])
    device = torch.device(args.device)
    model = model.to(device).eval()
    x = (torch.rand(*shape, device=device) < 0.2).float()

    def loop(fn=model):
        E.sync(device)
        wall, cpu = time.perf_counter(), time.thread_time()
        for _ in range(args.forwards):
            fn(x)
        cpu = time.thread_time() - cpu
        E.sync(device)
        return (time.perf_counter() - wall) / args.forwards, cpu / args.forwards

    plain, replayed = [], []
    with torch.no_grad():
        for r in range(args.rounds + 1):
            with validate.deferred_checks():
                p = loop()
            if args.what == "profile":
                q = loop(lambda v: profile(model, v))
            else:
                with EnergyMeter(model) as meter:
                    model(x)
                    model(x)
                    q = loop()
                    assert meter.replayed == args.forwards + 1, meter._templates
            if r:
                plain.append(p)
                replayed.append(q)
    pw, pc = (statistics.median(t[i] for t in plain) for i in (0, 1))
    rw, rc = (statistics.median(t[i] for t in replayed) for i in (0, 1))
    print(f"RESULT {args.tag} {args.backend} {args.case!r}: wall plain {pw * 1e3:.3f} {args.what} {rw * 1e3:.3f} "
          f"({(rw / pw - 1) * 100:+.1f}%) | host cpu plain {pc * 1e3:.3f} {args.what} {rc * 1e3:.3f} "
          f"({(rc / pc - 1) * 100:+.1f}%)")


if __name__ == "__main__":
    main()
