#!/usr/bin/env bash
# Issue 3 on one GPU, in one device call: trainer throughput of the demo model (fp32 and bf16), the demo on
# CUDA (fp32 and bf16), and the resume-after-SIGKILL / checkpoint tests with device "auto" (= CUDA there).
#   run from the repository root:  WHEELS=<dir of extra wheels> OUT=<results dir> bash benchmarks/gpu_training.sh
# Multi-GPU (nvidia-h200-x2): benchmarks/ddp_scaling.sh.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/neurosim-gpu-out}"
mkdir -p "$OUT"
source benchmarks/gpu_wheels.sh   # only what the GPU image lacks
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, snntorch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'snntorch', snntorch.__version__)" | tee -a "$OUT/gpu.txt"

python3 benchmarks/train_throughput.py --device cuda --batch-sizes 64,256,1024 --precisions fp32,bf16 --epochs 5 \
  --steps 50 --out "$OUT/gpu_throughput.json" 2>&1 | tee "$OUT/gpu_throughput.txt"

for prec in fp32 bf16; do
  flag=""; [ "$prec" = bf16 ] && flag="--bf16"
  ( time python3 -m neurosim.cli demo --device cuda $flag --no-progress --out-dir /tmp/demo_$prec ) 2>&1 | tee -a "$OUT/demo.txt"
  cp /tmp/demo_$prec/summary.json "$OUT/demo_${prec}_summary.json"
done

python3 -m pytest -q -p no:cacheprovider tests/test_training_resume.py tests/test_training_checkpoint.py 2>&1 \
  | tee "$OUT/pytest_gpu.txt"
