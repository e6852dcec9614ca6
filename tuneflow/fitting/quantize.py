"""int8 serving (``export.quantize: int8``): a classifier export as an ONNX graph with dynamically quantized
weights, run by ONNX Runtime.

Why this way (``bench/quantize.py`` measures the alternatives side by side): on one CPU thread, for
all-MiniLM-L6-v2 on BANKING77 queries, ONNX Runtime with int8 weights answered a query about 4.5x faster than
fp32 PyTorch, torch's own dynamic quantization (``torch.ao.quantization.quantize_dynamic``) about 2x; and
``torch.ao.quantization`` is deprecated. Hugging Face Optimum wraps the same ONNX Runtime calls but pins
transformers < 4.58, so the export and quantization are done here with ``torch.onnx`` and
``onnxruntime.quantization`` directly.

The graph answers the logits and, for sequence classification, every feature the out-of-scope detector can
read (the head's input, the token mean of the last layer, the token mean averaged over layers), so the
fallback works unchanged. :class:`OnnxModel` is called like a transformers model (``model(**encoding)``
-> ``.logits``), which keeps the predictors the same for both formats.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuneflow.onnxrt import Sessions, quantize_int8

QUANTIZED_FILE = "model_int8.onnx"
FEATURE_OUTPUTS = ("head", "mean_pooled", "layer_mean")  # the predictor's feature kinds, in graph order
# The example the graph is traced with holds padding: transformers skips the attention mask when no token
# is padded, and a trace keeps whichever branch its example took.
TRACE_TEXTS = ["a short query", "a somewhat longer query, so that the first one is padded in the batch"]


class _Servable(torch.nn.Module):
    """What the graph computes: logits, and (``features``) the out-of-scope detector's features."""

    def __init__(self, model: torch.nn.Module, head: torch.nn.Module | None):
        super().__init__()
        self.model = model
        self.seen: list[torch.Tensor] = []
        self.features = head is not None
        self.hook = None if head is None else head.register_forward_hook(self._keep_input)

    def _keep_input(self, module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self.seen.append(inputs[0])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *extra: torch.Tensor) -> Any:
        from tuneflow.backbone.pooling import mean_pool

        kwargs = {"token_type_ids": extra[0]} if extra else {}
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=self.features, **kwargs
        )
        if not self.features:
            return out.logits
        head = self.seen.pop()
        last = mean_pool(out.hidden_states[-1], attention_mask)
        # hidden_states[0] is the embedding output, not a transformer layer
        layers = torch.stack([mean_pool(h, attention_mask) for h in out.hidden_states[1:]]).mean(0)
        return out.logits, head, last, layers


def write_onnx(
    model: torch.nn.Module, tokenizer: Any, head: torch.nn.Module | None, out_path: Path, int8: bool = True
) -> Path:
    """Export ``model`` to ONNX and quantize its weights to int8 (activations quantized per call).

    Args:
        model: the fp32 model in eval mode (a LoRA model merged into its base first).
        tokenizer: its tokenizer (decides the graph's inputs).
        head: the classification head's last linear layer, whose input is a feature (None: logits only,
            as for token classification).
        out_path: the ``.onnx`` file to write.
        int8: quantize (False: the fp32 graph, which the benchmark compares with).
    """
    inputs = _input_names(tokenizer)
    enc = tokenizer(TRACE_TEXTS, padding=True, return_tensors="pt")
    outputs = ["logits", *(FEATURE_OUTPUTS if head is not None else ())]
    dynamic = {name: {0: "batch", 1: "tokens"} for name in inputs} | {name: {0: "batch"} for name in outputs}
    if head is None:
        dynamic["logits"] = {0: "batch", 1: "tokens"}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "model.onnx" if int8 else Path(out_path)
        # The tracer warns about every data-dependent branch in transformers' masking code; the padded
        # example above takes the branches real batches take (tests/test_quantize.py checks both).
        servable = _Servable(model, head).eval()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                servable,
                tuple(enc[name] for name in inputs),
                str(fp32),
                input_names=inputs,
                output_names=outputs,
                dynamic_axes=dynamic,
                opset_version=17,
                dynamo=False,  # the TorchScript exporter: dynamic batch and length without shape hints
            )
        if servable.hook is not None:  # the model may serve on in this process (the benchmark's fp32 arm)
            servable.hook.remove()
        if int8:
            quantize_int8(fp32, Path(out_path))
    return Path(out_path)


def _input_names(tokenizer: Any) -> list[str]:
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in tokenizer.model_input_names]
    if names[:2] != ["input_ids", "attention_mask"]:
        raise ValueError(f"cannot export a model whose tokenizer gives {tokenizer.model_input_names}")
    return names


@dataclass
class OnnxOutput:
    """An ONNX Runtime answer shaped like transformers' (``logits`` a tensor) plus the graph's features."""

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    hidden_states: None = None


class OnnxModel:
    """An int8 ONNX graph run by ONNX Runtime, called like a transformers model.

    One session per thread count: the session's threads are fixed when it is made, and callers set
    torch's thread count to say how many a call may use (single-query latency is measured on one).
    """

    def __init__(self, path: str | Path, int8: bool = True):
        self.path = str(path)
        self.int8 = int8  # weights quantized (what ``export.quantize: int8`` serves); False: an fp32 graph
        self._sessions = Sessions(self.path)
        self.names = [i.name for i in self._session().get_inputs()]
        self.outputs = [o.name for o in self._session().get_outputs()]

    def _session(self) -> Any:
        return self._sessions.get()

    def eval(self) -> OnnxModel:
        return self

    def __call__(self, output_hidden_states: bool | None = None, **enc: Any) -> OnnxOutput:
        feed = {name: np.asarray(enc[name], dtype=np.int64) for name in self.names}
        values = self._session().run(self.outputs, feed)
        out = {name: torch.from_numpy(v) for name, v in zip(self.outputs, values, strict=True)}
        return OnnxOutput(out.pop("logits"), out)
