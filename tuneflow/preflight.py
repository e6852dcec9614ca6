"""Checks that run before anything heavy starts (Prefect, torch, a tokenizer): bad input fails in seconds.

Only pandas and the standard library are imported here (no torch, no tokenizer). The data checks are the
validation stage's own (:func:`tuneflow.validation.validate_dataset`) minus the truncation statistics,
which need the model's tokenizer and only ever warn: every data *error* is reported here, in a second or
two. The flow's validation stage runs them all again and logs the report with the run.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from tuneflow.config import DEFAULT_MODEL, SMOLLM2_MODEL, PipelineConfig
from tuneflow.tasktypes import task_type
from tuneflow.validation import validate_dataset

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model", "vocab.json")


class PreflightError(ValueError):
    """Problems found before the run started; ``kind`` is ``data`` or ``model``."""

    def __init__(self, kind: str, problems: list[str]):
        self.kind, self.problems = kind, problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} {kind} problem(s) found before training:\n{lines}")


def check_safetensors(path: Path) -> str | None:
    """A message when ``path`` is not a complete safetensors file (truncated, corrupt header)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return f"{path}: not a safetensors file ({size} bytes)"
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100_000_000):
            return f"{path}: corrupt safetensors header (declares {n} header bytes in a {size}-byte file)"
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return f"{path}: corrupt safetensors header (not JSON)"
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)]
    if ends and 8 + n + max(ends) > size:
        return f"{path}: truncated safetensors file ({size} bytes, its header needs {8 + n + max(ends)})"
    return None


def check_model_dir(name: str) -> list[str]:
    """Problems of a local model directory (hub ids and the bundled model are checked when loaded)."""
    if name in (DEFAULT_MODEL, SMOLLM2_MODEL):
        return []
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            return [f"model.name: GGUF file {name} does not exist"]
        with path.open("rb") as fh:
            magic = fh.read(4)
        return [] if magic == b"GGUF" else [f"model.name: {name} is not a GGUF file (no GGUF header)"]
    if not path.exists():
        looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1
        return [f"model.name: directory {name} does not exist"] if looks_local else []
    if not path.is_dir():
        return [f"model.name: {name} is a file; give the model's directory"]
    problems = []
    if not (path / "config.json").is_file():
        problems.append(f"model.name: {name} has no config.json (not a Hugging Face model directory)")
    if not any((path / f).is_file() for f in TOKENIZER_FILES) and not list(path.glob("*.gguf")):
        problems.append(f"model.name: {name} has no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    weights = sorted(path.glob("*.safetensors"))
    if not weights and list(path.glob("*.gguf")):
        return problems
    if not weights:
        pickled = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
        if pickled:
            problems.append(
                f"model.name: {name} holds only pickled weights ({', '.join(pickled)}); tuneflow loads "
                "safetensors only (a pickle can run code): convert with "
                "`AutoModel.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)` in a trusted "
                "environment"
            )
        else:
            problems.append(f"model.name: {name} has no model weights (*.safetensors)")
    for w in weights:
        bad = check_safetensors(w)
        if bad:
            problems.append(f"model.name: {bad}")
    return problems


def preflight(cfg: PipelineConfig) -> None:
    """Read every data file and look at the model directory; raise :class:`PreflightError` on problems.

    Raises:
        PreflightError: ``kind="data"`` (exit 3) or ``kind="model"`` (exit 4), listing every problem.
    """
    kind = task_type(cfg.task)
    report, _ = validate_dataset(kind.load_raw(cfg.data), cfg, kind, tokenizer=None)
    if not report.ok:
        raise PreflightError("data", report.errors)
    check_model(cfg)


def check_model(cfg: PipelineConfig) -> None:
    """Raise :class:`PreflightError` (``kind="model"``) when the model directory cannot load."""
    problems = check_model_dir(cfg.model.name)
    if problems:
        raise PreflightError("model", problems)
