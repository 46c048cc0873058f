"""Where the energy profiler's overhead goes on a GPU (issue 5): the pieces behind BENCHMARKS.md "Run 5".

    python benchmarks/energy_costs.py            # needs CUDA

1. Host cost of one call: a Triton counting launch (``neurosim.kernels.stats.launch``), ``torch.count_nonzero``,
   a trivial torch op, and one row of the meter's count buffer (bookkeeping + launch), each the mean of 500
   calls without synchronisation.
2. Per benchmark model (``energy_overhead.cases``) and LIF backend: host time of a plain forward and of a forward
   under an EnergyMeter, with the counting launches and with them replaced by a no-op (the difference is the
   launches' host time; what is left over the plain forward is the hooks' Python).
   The fused backend also without the LIF kernel's own spike counts (``neurosim.spike_tally`` refused).
3. torch.profiler tables (top kernels by device time, and the summed device time) of a plain forward and of
   ``profile`` for the 4-layer Spikformer (batch 64 and 256) and the EST (batch 16), fused LIF.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity
from torch.profiler import profile as trace

sys.path.insert(0, str(Path(__file__).resolve().parent))
import energy_overhead as E  # noqa: E402

from neurosim import spike_tally  # noqa: E402
from neurosim.energy import EnergyMeter, profile  # noqa: E402
from neurosim.energy.device_counts import CountBuffer  # noqa: E402
from neurosim.kernels import stats as K  # noqa: E402


def sync():
    torch.cuda.synchronize()


def host_ms(f, n=20, warmup=3):
    """Median time until ``f`` returns (device idle before each call)."""
    for _ in range(warmup):
        f()
        sync()
    ts = []
    for _ in range(n):
        sync()
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
        sync()
    return round(statistics.median(ts) * 1e3, 3)


def per_call_us(f, n=500):
    f()
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        f()
    t = (time.perf_counter() - t0) / n * 1e6
    sync()
    return round(t, 1)


def main():
    dev = torch.device("cuda")
    x = (torch.rand(1 << 20, device=dev) < 0.2).float()
    row = torch.zeros(8, dtype=torch.int64, device=dev)
    buf = CountBuffer("kernel", capacity=4096)
    print(json.dumps({"triton_launch_us": per_call_us(lambda: K.launch(x, row)),
                      "count_nonzero_us": per_call_us(lambda: torch.count_nonzero(x)),
                      "trivial_op_us": per_call_us(lambda: row.add_(1)),
                      "buffer_row_us": per_call_us(lambda: buf.stats(x))}), flush=True)
    launch = K.launch
    for backend in ("torch", "fused"):
        E.BACKEND = backend
        for name, model, shape, _ in E.cases(False)[:4]:
            model = model.to(dev).eval()
            xs = (torch.rand(shape, device=dev) < 0.2).float()

            def plain():
                with torch.no_grad():
                    model(xs)

            def metered():
                with torch.no_grad(), EnergyMeter(model):
                    model(xs)

            r = {"backend": backend, "model": name, "plain_host_ms": host_ms(plain),
                 "meter_host_ms": host_ms(metered)}
            K.launch = lambda *a, **k: None
            try:
                r["meter_host_no_launch_ms"] = host_ms(metered)
            finally:
                K.launch = launch
            if backend == "fused":
                offer = spike_tally.row
                spike_tally.row = lambda x: None
                try:
                    r["meter_host_no_lif_counts_ms"] = host_ms(metered)
                finally:
                    spike_tally.row = offer
            print(json.dumps(r), flush=True)
    E.BACKEND = "fused"
    sf, est = E.transformers(128, 384, 64)
    for name, model, shape in (("Spikformer 4x384", sf, (64, 64, 128)), ("Spikformer 4x384", sf, (256, 64, 128)),
                               ("EST 4x384", est, (16, 64, 128))):
        model = model.to(dev).eval()
        xs = (torch.rand(shape, device=dev) < 0.2).float()
        for label, fn in (("plain", lambda: model(xs)), ("profile", lambda: profile(model, xs))):
            with torch.no_grad():
                fn()
                fn()
                sync()
                with trace(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
                    fn()
                    sync()
            device_ms = sum(e.self_device_time_total for e in p.key_averages()) / 1e3
            print(f"==== {name}, input {list(shape)}, {label}: device time {device_ms:.3f} ms", flush=True)
            print(p.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=70))
            if name.startswith("EST") and label == "plain":  # where its host time goes
                print(p.key_averages().table(sort_by="cpu_time_total", row_limit=25, max_name_column_width=70))


if __name__ == "__main__":
    main()
