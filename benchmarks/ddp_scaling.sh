#!/usr/bin/env bash
# Issue 3's multi-GPU evidence in one device call on a 2-GPU machine (device kind nvidia-h200-x2), from the
# repository root with the wheels carried:  OUT=<results dir> WHEELS=.gpuwhl bash benchmarks/ddp_scaling.sh
# 1. the DDP-vs-one-process test with NCCL (tests/test_training_ddp.py, its "gpu" case),
# 2. benchmarks/ddp_scaling.py: samples/s on 1 vs 2 GPUs for the demo model and a fused-LIF Spikformer.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/neurosim-gpu-out}"
mkdir -p "$OUT"
# NVLink multicast off (the lent hosts' rule: a program using it can take the shared GPUs out of service)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
PARTS=none OUT="$OUT" bash benchmarks/gpu_session.sh          # neurosim -> /tmp/ns, carried .whl/ -> /tmp/site
source benchmarks/gpu_wheels.sh                                # scikit-learn, matplotlib, pytest if missing
export PYTHONPATH="/tmp/ns:/tmp/site:${PYTHONPATH:-}"
cd /tmp/ns
{ nvidia-smi topo -m; python3 -c "import torch; print('GPUs', torch.cuda.device_count())"; } 2>&1 | tee "$OUT/topology.txt"
timeout 240 python3 -m pytest -q -p no:cacheprovider -k gpu tests/test_training_ddp.py 2>&1 | tail -15 \
  | tee "$OUT/ddp_test.txt"
timeout "${SCALING_TIMEOUT:-420}" python3 benchmarks/ddp_scaling.py --procs 1,2 --epochs "${EPOCHS:-8}" \
  --out "$OUT/ddp_scaling.json" 2>&1 | tail -20 | tee "$OUT/ddp_scaling.txt"
