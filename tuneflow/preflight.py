"""Checks that run before anything heavy starts (Prefect, torch, a tokenizer): bad input fails in seconds.

Only pandas and the standard library are imported here (no torch, no tokenizer). The data checks are the
validation stage's own (:func:`tuneflow.data.validation.validate_dataset`) minus the truncation statistics,
which need the model's tokenizer and only ever warn: every data *error* is reported here, in a second or
two. The flow's validation stage runs them all again and logs the report with the run.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

from tuneflow.backbone.pretrained import model_positions
from tuneflow.config import (
    DEFAULT_MODEL,
    SMOLLM2_MODEL,
    PipelineConfig,
    redact_secrets,
    resolve_tracking_uri,
    sqlite_path,
)
from tuneflow.data.validation import ValidationReport, validate_dataset
from tuneflow.tasktypes import task_type

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model", "vocab.json")


STORE_TIMEOUT_S = 3.0  # a store that does not answer in this long fails the pre-flight


class PreflightError(ValueError):
    """Problems found before the run started; ``kind`` is ``data``, ``model`` or ``store``."""

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
        if looks_local:
            return [f"model.name: directory {name} does not exist"]
        return _check_hub_cache(name)
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


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _check_hub_cache(name: str) -> list[str]:
    """A hub id without network access (``HF_HUB_OFFLINE``) must already be in the local cache: otherwise
    loading fails only after Prefect, a run and torch have started. Online, the hub answers when loading."""
    if not _offline():
        return []
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name, "config.json")
    except ValueError:  # not a valid repo id either
        cached = None
    if isinstance(cached, str):
        return []
    return [
        f"model.name: '{name}' is neither a local directory nor in the Hugging Face cache, and "
        "HF_HUB_OFFLINE is set (no downloads); check the name, download it once online, or give the "
        f"local path of a model directory (shorthands: {DEFAULT_MODEL}, {SMOLLM2_MODEL})"
    ]


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


def validation_report(cfg: PipelineConfig) -> ValidationReport:
    """``tuneflow validate``: every data check on the fast path first (pandas only: data errors never wait
    for a tokenizer), then, once the data passes, the model check and the truncation statistics.

    Raises:
        PreflightError: ``kind="model"`` when the model directory cannot load.
        tuneflow.backbone.pretrained.ModelLoadError: the tokenizer cannot load.
    """
    kind = task_type(cfg.task)
    raw = kind.load_raw(cfg.data)
    report, _ = validate_dataset(raw, cfg, kind, tokenizer=None)
    if not report.ok:
        return report
    check_model(cfg)
    from tuneflow.backbone.pretrained import load_tokenizer

    return validate_dataset(raw, cfg, kind, load_tokenizer(cfg.model.name))[0]


def check_model(cfg: PipelineConfig) -> None:
    """Raise :class:`PreflightError` (``kind="model"``) when the model directory cannot load, or when
    ``model.max_length`` is longer than the model can read."""
    problems = check_model_dir(cfg.model.name)
    positions = None if problems else model_positions(cfg.model.name)
    if positions is not None and cfg.model.max_length > positions:
        problems.append(
            f"model.max_length {cfg.model.max_length} is more than {cfg.model.name} can read ({positions} "
            f"positions): set model.max_length to at most {positions}"
        )
    if problems:
        raise PreflightError("model", problems)


def tracking_setting(configured: str | None = None) -> str:
    """Which setting chose the MLflow store, for messages."""
    if configured:
        return "tracking.tracking_uri"
    return "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "the default MLflow store"


def check_store(setting: str, uri: str) -> str | None:
    """One cheap probe of a store a run will write to (SQLite file, SQL database or MLflow server), within
    :data:`STORE_TIMEOUT_S`; a message naming ``setting`` and the fix, or None when it is usable.

    This is what turns an unwritable store into a one-line error instead of MLflow's retry loop (minutes
    of "retried in 0.1 ... 51.1 s" per call). Other schemes (a Databricks workspace, a file store) pass."""
    scheme = uri.split(":", 1)[0].lower()
    shown = redact_secrets(uri)
    if (db := sqlite_path(uri)) is not None:
        return _check_sqlite(setting, shown, db)
    if scheme in ("http", "https"):
        return _check_server(setting, uri, shown)
    if scheme.split("+", 1)[0] in ("postgresql", "postgres", "mysql", "mssql"):
        return _check_database(setting, uri, shown)
    return None


def _writable_dir(directory: Path) -> str | None:
    """Why a file cannot be created in ``directory`` (a real write and delete), or None."""
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".tuneflow-write-check-"):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _check_sqlite(setting: str, shown: str, path: Path) -> str | None:
    fix = "point it at a writable location"
    if path.is_dir():
        return f"{setting}: {shown}: {path} is a directory, not a database file; {fix}"
    folder = path.parent
    while not folder.exists() and folder != folder.parent:  # created on first use
        folder = folder.parent
    if not folder.is_dir():
        return f"{setting}: {shown}: {folder} is a file, so {path.parent} cannot be created; {fix}"
    why = _writable_dir(folder)
    if why:
        return f"{setting}: {shown}: cannot write in {folder} ({why}); {fix}"
    if path.exists():
        try:
            with open(path, "r+b"):  # opened for writing, nothing written
                pass
        except OSError as exc:
            return f"{setting}: {shown}: cannot write {path} ({exc.strerror or exc}); {fix}"
    return None


def _check_server(setting: str, uri: str, shown: str) -> str | None:
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=STORE_TIMEOUT_S).close()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        why = getattr(exc, "reason", None) or exc
        return (
            f"{setting}: the MLflow server {shown} did not answer ({why}) within {STORE_TIMEOUT_S:g} s; "
            "start it (`mlflow server ...`) or point the setting at a running one"
        )
    return None


def _check_database(setting: str, uri: str, shown: str) -> str | None:
    try:
        import sqlalchemy

        timeout = {} if uri.startswith("mssql") else {"connect_timeout": int(STORE_TIMEOUT_S)}
        engine = sqlalchemy.create_engine(uri, connect_args=timeout, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect():
            pass
    except ModuleNotFoundError as exc:
        return f"{setting}: {shown} needs the database driver `{exc.name}`, which is not installed"
    except Exception as exc:  # a refused port, bad credentials, an unknown database: all end the run
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        return f"{setting}: cannot connect to {shown} within {STORE_TIMEOUT_S:g} s: {first}"
    return None


def check_output_dir(output_dir: str) -> list[str]:
    """``output_dir`` (checkpoints, exports) can be created and written, checked with a real write."""
    path = Path(output_dir).expanduser()
    folder = path
    while not folder.exists() and folder != folder.parent:  # created on first use
        folder = folder.parent
    if not folder.is_dir():
        return [f"output_dir: {folder} is a file, so {path} cannot be created; choose another folder"]
    why = _writable_dir(folder)
    return [f"output_dir: cannot write in {folder} ({why}); choose a writable folder"] if why else []


def check_stores(cfg: PipelineConfig) -> None:
    """Raise :class:`PreflightError` (``kind="store"``) when the MLflow store, the lease store, the Optuna
    storage of a searching config or the output folder cannot be written."""
    t = cfg.tracking
    stores = [(tracking_setting(t.tracking_uri), resolve_tracking_uri(t.tracking_uri))]
    if t.lock_url:
        stores.append(("tracking.lock_url", t.lock_url))
    if cfg.searching and cfg.search is not None:
        stores.append(("search.storage", cfg.search.storage))
    problems = [p for setting, uri in stores if (p := check_store(setting, uri))]
    problems += check_output_dir(cfg.output_dir)
    if problems:
        raise PreflightError("store", problems)
