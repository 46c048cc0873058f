#!/usr/bin/env bash
# One device call for the GPU evidence of several issues (run from the repository root on the GPU machine):
#   fused-LIF GPU tests + kernel benchmark (issue 4), energy profiling overhead (issue 5),
#   EST training-step throughput fused vs snnTorch (issue 6).
# The GPU image has torch/triton but no network: the carried .whl/ wheels supply snntorch, norse, nir,
# spikingjelly; neurosim is assembled into /tmp/ns with the package_dir mapping of setup.py (an editable
# install needs network there).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/neurosim-gpu-out}"
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
rm -rf /tmp/ns && mkdir -p /tmp/ns
cp -r neurosim /tmp/ns/neurosim
for d in encoders models hardware; do cp -r "$d" "/tmp/ns/neurosim/$d"; done
cp -r tests benchmarks /tmp/ns/
export PYTHONPATH=/tmp/ns:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
cd /tmp/ns
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton, snntorch, norse, spikingjelly; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'snntorch', snntorch.__version__, 'norse', norse.__version__)"
} 2>&1 | tee "$OUT/versions.txt"
# PARTS picks what runs (default: tests lif energy): "tests" the fused-LIF and stats-kernel GPU tests, "lif" the
# kernel benchmark ("sweep" adds its launch-config sweep), "energy" the profile overhead with the torch and the
# fused LIF backend, "costs" where the profiler's overhead goes (energy_costs.py), "est" the EST training step,
# "graphs" the CUDA-graph meter: its GPU tests and energy_graphs.py with both LIF backends, "kernels" the counting
# read's device time (stats_kernel.py) and where a metered replay's extra device time goes (energy_replay_kernels.py).
PARTS=" ${PARTS:-tests lif energy} "
if [[ $PARTS == *" tests "* ]]; then
  timeout 150 python3 -m pytest -q -p no:cacheprovider -k "gpu" tests/test_fused_lif.py tests/test_energy_kernel.py 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"
fi
if [[ $PARTS == *" lif "* ]]; then
  SWEEP_ARG=""; [[ $PARTS == *" sweep "* ]] && SWEEP_ARG="--sweep"
  timeout "${LIF_TIMEOUT:-240}" python3 benchmarks/lif_kernels.py --shapes 3 $SWEEP_ARG --out "$OUT" 2>&1 | tail -60
fi
if [[ $PARTS == *" energy "* ]]; then
  for b in torch fused; do
    timeout 280 python3 benchmarks/energy_overhead.py --device cuda --backend "$b" --out "$OUT/energy_overhead_$b.json" 2>&1 | tail -20
  done
fi
if [[ $PARTS == *" graphs "* ]]; then
  timeout 200 python3 -m pytest -q -p no:cacheprovider -k "gpu" tests/test_energy_batches.py 2>&1 | tail -15 | tee "$OUT/gpu_tests_graphs.txt"
  for b in ${GRAPH_BACKENDS:-torch fused}; do
    timeout "${GRAPH_TIMEOUT:-280}" python3 benchmarks/energy_graphs.py --backend "$b" ${GRAPH_ARGS:-} --out "$OUT/energy_graphs_$b.json" 2>&1 | tail -12
  done
fi
if [[ $PARTS == *" kernels "* ]]; then
  timeout 120 python3 benchmarks/stats_kernel.py --out "$OUT/stats_kernel.json" 2>&1 | tail -10
  timeout 240 python3 benchmarks/energy_replay_kernels.py --backend fused > "$OUT/energy_replay_kernels_fused.txt" 2>&1
  grep -E "^===" "$OUT/energy_replay_kernels_fused.txt"
fi
if [[ $PARTS == *" costs "* ]]; then
  timeout 240 python3 benchmarks/energy_costs.py > "$OUT/energy_costs.txt" 2>&1; grep -E "^\{|^====|Self CUDA" "$OUT/energy_costs.txt"
fi
if [[ $PARTS == *" est "* ]]; then
  timeout 120 python3 benchmarks/est_step.py --device cuda --depth 4 --out "$OUT/est_step.json" 2>&1 | tail -20 | tee "$OUT/est_step.txt"
fi
