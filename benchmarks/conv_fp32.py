"""The EST's token-axis convolution in strict float32 on the GPU (TF32 off, as energy_overhead.py and anyone who
wants fp32 results run it): cuDNN's pick vs neurosim's matrix-product path (``neurosim.layers.conv.Conv1d``), the
convolution alone and the whole 4-layer EST forward (dim 384, 64 tokens, batch 16, torch LIF). Median of 10 calls,
synchronised. Also the TF32 cuDNN time for reference (a different precision).

    python benchmarks/conv_fp32.py [--out results.json]      (needs CUDA)
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import energy_overhead as E  # noqa: E402

from neurosim import validate  # noqa: E402
from neurosim.layers import conv as NC  # noqa: E402


def median_ms(f, device, n=10):
    """Median of ``n`` synchronised calls after 2 warm-up calls, in ms."""
    return round(statistics.median(E.interleaved([f], device, n, 2)[0]) * 1e3, 3)


def precision(tf32: bool):
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    _, est = E.transformers(128, 384, 64)
    est = est.to(dev).eval()
    x = (torch.rand(16, 64, 128, device=dev) < 0.2).float()
    conv = est.layers[0].attn.block.w_q.conv
    y = torch.rand(4 * 16, 384, 64 + 2, device=dev)   # what the layer feeds it: [T*B, C, N + k - 1]

    def est_fwd():
        with torch.no_grad(), validate.deferred_checks():
            est(x)

    ours = NC.Conv1d.forward
    rows = []
    for label, tf32, fwd in [("cuDNN, TF32 (reference)", True, ours), ("cuDNN, strict fp32 (before)", False,
                                                                        nn.Conv1d.forward),
                             ("matrix product, strict fp32 (now)", False, ours)]:
        precision(tf32)
        NC.Conv1d.forward = fwd
        with torch.no_grad():
            c = median_ms(lambda: conv(y), dev)
        rows.append({"path": label, "conv_ms": c, "est_forward_ms": median_ms(est_fwd, dev)})
        print(rows[-1], flush=True)
    NC.Conv1d.forward = ours
    precision(False)
    with torch.no_grad():
        err = (conv(y).double() - nn.functional.conv1d(y.double(), conv.weight.double())).abs().max().item()
    env = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
           "conv": str(conv), "conv_input": list(y.shape), "est_input": list(x.shape), "gemm_max_abs_err_vs_fp64": err}
    print(json.dumps(env))
    if args.out:
        Path(args.out).write_text(json.dumps({"env": env, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
