"""Suite 2 on a GPU in bf16: tuneflow training samples/s and model FLOP utilization (MFU).

MFU = achieved model FLOP/s / peak FLOP/s, with model FLOPs = 6 x parameters x tokens (forward + backward
of a dense transformer) and the peak measured in the same run as the best of several large bf16 matmuls.
Without a CUDA GPU the suite records that it was skipped (not a failure). This path has not been executed on
the machines this project was developed on (none had a GPU when it was written).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any


def matmul_peak_tflops(n: int = 8192, repeats: int = 20) -> float:
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    best = 0.0
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        torch.cuda.synchronize()
        best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e12)
    return best


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        row = {
            "what": "GPU suite",
            "result": "skipped: no CUDA GPU on this machine",
            "target": "-",
            "data": "-",
        }
        return {"skipped": True, "rows": [row]}
    from bench.speed import _setup
    from tuneflow.training import fit

    peak = matmul_peak_tflops()
    cfg, _, data = _setup(args, args.config)
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"precision": "bf16-mixed"})})
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = fit(cfg, data, Path(tmp), progress_bar=False)
        seconds = time.perf_counter() - start
    tokens = sum(len(ids) for ids in data.train.ids) * result.epochs
    achieved = 6 * result.params_total * tokens / seconds / 1e12
    name = torch.cuda.get_device_name(0)
    rows = [
        {
            "what": "GPU bf16 training samples/s and MFU",
            "result": f"{len(data.train) * result.epochs / seconds:.0f} samples/s, {achieved:.1f} TFLOP/s = "
            f"{100 * achieved / peak:.1f}% of the measured bf16 matmul peak ({peak:.0f} TFLOP/s)",
            "target": "report",
            "data": f"{name}; BANKING77 {args.train} train x {args.epochs} epochs, batch 32 "
            "(validation included)",
        }
    ]
    return {"peak_tflops": peak, "seconds": seconds, "tokens": tokens, "rows": rows}
