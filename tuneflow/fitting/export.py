"""The exported-model format: writing it, reading its metadata, loading a model and its predictor back.

An export is a plain Hugging Face directory (weights or a LoRA adapter, tokenizer) plus ``tuneflow.json``:
the task type, labels, base model id, inference settings and, for adapters, the hashes of the base weights
and tokenizer it was trained on. Training writes it; evaluation, registration, serving, promotion and the
benchmarks read it, all through this module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tuneflow.backbone.lora import check_compatible, tokenizer_hash, weights_hash
from tuneflow.backbone.pretrained import NO_HUB_KERNELS, load_tokenizer
from tuneflow.config import PipelineConfig
from tuneflow.fitting.loading import load_pretrained
from tuneflow.tasktypes import task_type

META_FILE = "tuneflow.json"
ADAPTER_CONFIG = "adapter_config.json"


def is_adapter(model_dir: str | Path) -> bool:
    """True for a LoRA adapter export (it needs its base model to run)."""
    return (Path(model_dir) / ADAPTER_CONFIG).is_file()


def read_meta(model_dir: str | Path) -> dict[str, Any]:
    """The export's ``tuneflow.json`` (task, labels, base model id and hashes, settings), plus ``model_dir``
    (where it was read from: files beside the weights, such as the out-of-scope detector, load from there)."""
    path = Path(model_dir) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} is not a tuneflow export: it has no {META_FILE}")
    return {**json.loads(path.read_text()), "model_dir": str(model_dir)}


def weights_bytes(model_dir: str | Path) -> int:
    """Bytes a deployment ships for this export: the adapter alone for LoRA, else the model weights."""
    pattern = "adapter_model.*" if is_adapter(model_dir) else "model*.safetensors"
    return dir_size(model_dir, pattern)


def dir_size(path: str | Path, pattern: str = "*") -> int:
    """Bytes of the files matching ``pattern`` in a directory."""
    return sum(p.stat().st_size for p in Path(path).glob(pattern) if p.is_file())


def export_model(checkpoint: str | Path, out_dir: str | Path, tokenizer: Any, cfg: PipelineConfig) -> Path:
    """Write the checkpoint as a plain Hugging Face directory (+ tokenizer, labels, ``tuneflow.json``).

    The export is what evaluation, the MLflow pyfunc model and ``tuneflow predict`` load: no Lightning needed.
    With LoRA it holds only the adapter (and task head); ``tuneflow.json`` then names the base model and the
    hashes of its weights and tokenizer, checked whenever the adapter is loaded.

    Args:
        checkpoint: a Lightning checkpoint written by :func:`fit`.
        out_dir: the export directory.
        tokenizer: the tokenizer used in training (saved with the model).
        cfg: the run's config: its task type decides the inference settings stored in ``tuneflow.json``
            (max_length, generation, ...).
    """
    task = cfg.task
    out_dir = Path(out_dir)
    from tuneflow.fitting.model import load_module  # Lightning: only where a checkpoint is exported

    module = load_module(checkpoint)
    hp = dict(module.hparams)
    drop_gguf_marker(module.model)
    module.model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    labels = list(hp["labels"])
    meta: dict[str, Any] = {
        "task": task,
        "labels": labels,
        "base_model": hp["model_name"],
        "lora": hp.get("lora"),
        **cfg.kind.serving.inference_settings(cfg),
    }
    if hp.get("pooling", "cls") != "cls":
        meta["pooling"] = hp["pooling"]
    if hp.get("lora"):
        meta["base_hash"] = module.base_hash
        meta["tokenizer_hash"] = tokenizer_hash(load_tokenizer(hp["model_name"]))
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2))
    # Readable by whoever serves it (safetensors writes its files 0600).
    for path in [out_dir, *out_dir.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return out_dir


def drop_gguf_marker(model: Any) -> None:
    """A model loaded from a GGUF file holds ordinary float weights (transformers dequantized them) but keeps
    transformers' GGUF quantizer marker, which refuses ``save_pretrained``. Drop it (and the quantization
    config, so the export reloads as a plain model) once no weight is left in GGUF blocks."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None or "gguf" not in type(quantizer).__name__.lower():
        return
    if all(p.is_floating_point() for p in model.parameters()):
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config


def quantize_export(export_dir: str | Path) -> Path:
    """Add the int8 ONNX Runtime model to an export (``export.quantize: int8``); from then on it is what
    :func:`load_exported` serves. The fp32 weights stay beside it (``quantized=False`` loads them).

    A LoRA export is merged into its base first: the int8 graph is a whole model, whatever the adapter.
    """
    from tuneflow.fitting.quantize import QUANTIZED_FILE, write_onnx

    export_dir = Path(export_dir)
    model, tokenizer, meta = load_exported(export_dir, quantized=False)
    if meta.get("lora"):
        model = model.merge_and_unload()
    head = task_type(meta["task"]).serving.feature_head(model, meta)
    path = write_onnx(model, tokenizer, head, export_dir / QUANTIZED_FILE)
    path.chmod(0o644)
    saved = {k: v for k, v in meta.items() if k != "model_dir"}  # load_exported read it; no second read
    (export_dir / META_FILE).write_text(json.dumps({**saved, "quantize": "int8"}, indent=2))
    return path


def load_exported(
    model_dir: str | Path, base: str | None = None, quantized: bool = True
) -> tuple[Any, Any, dict[str, Any]]:
    """Load an export written by :func:`export_model` for inference.

    Args:
        model_dir: the export directory.
        base: for an adapter export, the base model to put it on (default: the one it records); its weights
            and tokenizer must hash to the recorded values.
        quantized: for a quantized export, load the int8 ONNX Runtime model (what is served); False loads
            the fp32 weights it was made from.

    Returns:
        The model in eval mode, its tokenizer and the export's metadata (``task``, ``labels``, ...).
    """
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # inference output (CLI, serving) should hold predictions only
    meta = read_meta(model_dir)
    meta.setdefault("task", "sequence_classification")
    if quantized and meta.get("quantize") == "int8":
        from tuneflow.fitting.quantize import QUANTIZED_FILE, OnnxModel

        model: Any = OnnxModel(Path(model_dir) / QUANTIZED_FILE)
    elif is_adapter(model_dir):
        model = load_adapter_model(model_dir, base)
    elif meta.get("pooling") == "mean":
        from tuneflow.backbone.pooling import MeanPooledClassifier

        model = MeanPooledClassifier.from_export(model_dir, len(meta["labels"]))
    else:
        loader = getattr(transformers, task_type(meta["task"]).training.auto_class)
        model = loader.from_pretrained(model_dir, **NO_HUB_KERNELS).eval()
    return model, transformers.AutoTokenizer.from_pretrained(model_dir), meta


def load_base(meta: dict[str, Any], base: str | None = None) -> tuple[torch.nn.Module, Any, str]:
    """Load the pre-trained base an adapter export names (or ``base``) and check it matches.

    Returns:
        The base model (with the task head the adapter expects), the base tokenizer and the base id used.
    """
    base_name = base or meta["base_model"]
    model, fresh = load_pretrained(meta["task"], base_name, meta.get("labels") or [], None)
    tokenizer = load_tokenizer(base_name)
    check_compatible(meta, base_name, weights_hash(model, fresh), tokenizer_hash(tokenizer))
    return model, tokenizer, base_name


def load_adapter_model(model_dir: str | Path, base: str | None = None) -> torch.nn.Module:
    """Base + adapter from an adapter export, in eval mode (the base is checked first)."""
    from peft import PeftModel

    meta = read_meta(model_dir)
    model, _, _ = load_base(meta, base)
    return PeftModel.from_pretrained(model, str(model_dir)).eval()


def load_predictor(model_dir: str | Path, base: str | None = None, quantized: bool = True) -> Any:
    """Load an export (full model, or adapter on its base) wrapped in its task type's predictor; a quantized
    export's int8 model unless ``quantized`` is False."""
    model, tokenizer, meta = load_exported(model_dir, base, quantized)
    return task_type(meta["task"]).serving.predictor(model, tokenizer, meta)
