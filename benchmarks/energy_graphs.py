"""Metering many batches with a CUDA graph (issue 5): ``profile_batches(..., cuda_graph=True)`` against plain
forwards, eager and graph-replayed.

The models and inputs of ``energy_overhead.py`` (same seeds), ``--batches`` different spike batches per round.
Per batch, median over rounds (runs interleaved, device synchronised before each clock read):

* plain eager: ``model(x)`` under ``torch.no_grad()`` and ``validate.deferred_checks()`` (as the meter runs the
  layers' NaN/inf checks);
* plain graph: the same forward captured once in a CUDA graph and replayed (the fastest a plain forward gets);
* metered replay: the metered forward captured once by ``EnergyMeter.graphed`` and replayed (steady state;
  timed in a second interleaved set beside the plain graph again, its reference);
* ``profile_batches``: one whole call over the batches per round (warm-up forwards, capture, replays, report),
  with ``cuda_graph=True`` and with ``cuda_graph=False`` (every batch eager under the meter);

and whether the graphed report's counts equal the eager one's (every integer count of every layer).

    python benchmarks/energy_graphs.py [--backend torch|fused] [--batches 20] [--repeats 10] [--out results.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import energy_overhead as E  # noqa: E402

from neurosim import validate  # noqa: E402
from neurosim.energy import EnergyMeter, profile_batches  # noqa: E402


def plain_eager(model, xs):
    def run():
        with torch.no_grad(), validate.deferred_checks():
            for x in xs:
                model(x)
    return run


def plain_graph(model, x):
    """``model`` captured on ``x`` (checks deferred: a check read back mid-forward cannot be captured)."""
    static = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(stream), validate.deferred_checks():
        for _ in range(2):
            model(static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), validate.deferred_checks() as checks:
        with torch.cuda.graph(graph):
            model(static)
        checks._items.clear()  # the captured checks' values are never read here
    return static, graph


def counts(report):
    """Every integer count of every layer (the float figures are sums whose order differs)."""
    return [(r.name, r.calls, r.dense, r.macs, r.synops, r.acs, r.neuron_updates, r.in_nnz, r.out_nnz, r.in_numel)
            for r in report.layers]


def bench(model, xs, repeats):
    device = xs[0].device
    static, graph = plain_graph(model, xs[0])

    def graph_plain():
        for x in xs:
            static.copy_(x)
            graph.replay()

    plain, gplain, pb_graph, pb_eager = E.interleaved(
        [plain_eager(model, xs), graph_plain, lambda: profile_batches(model, xs, cuda_graph=True, progress=False),
         lambda: profile_batches(model, xs, cuda_graph=False, progress=False)], device, repeats, 2, per=len(xs))
    # the metered replays need their meter open, whose hooks would meter an eager forward too: the plain graph
    # (a replay runs no Python, so no hook) is timed again beside them
    meter = EnergyMeter(model)
    with torch.no_grad(), meter:
        run = meter.graphed(xs[0])

        def replay_metered():
            for x in xs:
                run(x)

        gplain2, gmeter = E.interleaved([graph_plain, replay_metered], device, repeats, 2, per=len(xs))
    return plain, gplain, gplain2, gmeter, pb_graph, pb_eager


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--backend", default="torch", choices=("torch", "fused"))
    ap.add_argument("--quick", action="store_true", help="tiny shapes")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    device, env = E.start("cuda", args.backend, batches=args.batches, repeats=args.repeats)
    results = []
    for name, model, shape, _ in E.cases(args.quick):
        model = model.eval().to(device)
        g = torch.Generator().manual_seed(1)
        xs = [(torch.rand(shape, generator=g) < 0.2).float().to(device) for _ in range(args.batches)]
        times = bench(model, xs, args.repeats)
        eager = profile_batches(model, xs, cuda_graph=False, progress=False)
        graphed = profile_batches(model, xs, cuda_graph=True, progress=False)
        plain, gplain, gplain2, gmeter, pbg, pbe = (statistics.median(t) * 1e3 for t in times)
        row = {"model": name, "input": list(shape), "plain_eager_ms": plain, "plain_graph_ms": gplain,
               "plain_graph_beside_replay_ms": gplain2, "metered_replay_ms": gmeter,
               "replay_vs_plain_graph_pct": (gmeter / gplain2 - 1) * 100,
               "replay_vs_plain_eager_pct": (gmeter / plain - 1) * 100, "profile_batches_graph_ms": pbg,
               "profile_batches_graph_vs_eager_pct": (pbg / plain - 1) * 100, "profile_batches_eager_ms": pbe,
               "profile_batches_eager_vs_eager_pct": (pbe / plain - 1) * 100,
               "graphed_counts_equal_eager": counts(graphed) == counts(eager),
               "synops": graphed.totals()["synops"]}
        results.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"env": env, "results": results}, indent=1))
    print(f"\nLIF backend {args.backend}, {args.batches} batches a round, ms a batch")
    print("| model | input | plain eager | plain graph | metered replay (vs plain graph; vs plain eager) | "
          "profile_batches, graph (vs plain eager) | profile_batches, eager (vs plain eager) | same report |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for r in results:
        print(f"| {r['model']} | {r['input']} | {r['plain_eager_ms']:.3f} | {r['plain_graph_ms']:.3f} | "
              f"{r['metered_replay_ms']:.3f} ({r['replay_vs_plain_graph_pct']:+.1f}%; "
              f"{r['replay_vs_plain_eager_pct']:+.1f}%) | {r['profile_batches_graph_ms']:.3f} "
              f"({r['profile_batches_graph_vs_eager_pct']:+.1f}%) | {r['profile_batches_eager_ms']:.3f} "
              f"({r['profile_batches_eager_vs_eager_pct']:+.1f}%) | {r['graphed_counts_equal_eager']} |")


if __name__ == "__main__":
    main()
