"""ONNX Runtime for the int8 servables: sessions per thread count and dynamic int8 quantization.

Two graphs are served through ONNX Runtime: the quantized model (``export.quantize: int8``,
:mod:`tuneflow.fitting.quantize`) and, beside it, the kNN out-of-scope bank's similarity search
(:mod:`tuneflow.judging.outofscope`). Both are made and quantized the same way, here.

May import: nothing of tuneflow (a leaf that both judging and fitting use).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any


class Sessions:
    """ONNX Runtime sessions of one graph, one per thread count.

    A session's threads are fixed when it is made; callers set torch's thread count to say how many a call
    may use (single-query latency is measured on one), so each count gets its own session, made on first use.
    """

    def __init__(self, graph: str | Path | bytes):
        self.graph = str(graph) if isinstance(graph, Path) else graph
        self._by_threads: dict[int, Any] = {}

    def get(self) -> Any:
        """The session for torch's current thread count."""
        import onnxruntime as ort
        import torch

        threads = torch.get_num_threads()
        if threads not in self._by_threads:
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            options.log_severity_level = 3  # warnings about unused initializers are not the user's business
            session = ort.InferenceSession(self.graph, options, providers=["CPUExecutionProvider"])
            self._by_threads[threads] = session
        return self._by_threads[threads]


def quantize_int8(fp32: Path, out: Path, reduce_range: bool = False) -> Path:
    """Quantize ``fp32``'s weights to int8 per output channel (activations are quantized per call).

    Args:
        fp32: the fp32 ONNX graph.
        out: the int8 graph to write.
        reduce_range: 7-bit weights. CPUs without VNNI multiply uint8 x int8 in pairs summed into int16,
            which saturates with full-range weights (the kNN bank's distances were off by up to 0.07; 0.003
            with 7 bits).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()  # onnxruntime advises shape pre-processing on the root logger: not here
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        # Per-channel scales: each output row keeps its own range (a per-tensor scale lost ~1 point of
        # accuracy on BANKING77; see bench/RESULTS.md).
        quantize_dynamic(fp32, out, weight_type=QuantType.QInt8, per_channel=True, reduce_range=reduce_range)
    finally:
        root.setLevel(level)
    return Path(out)
