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


HUB_TIMEOUT_S = 2.5  # one request to the Hub, no retries: an unreachable Hub is known within this


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def go_offline() -> None:
    """Load from the local cache only, as ``HF_HUB_OFFLINE=1`` would: in this process (whether or not the Hub
    client is imported yet) and in the processes it starts."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import sys

    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True


def hub_answer(name: str, timeout_s: float = HUB_TIMEOUT_S) -> str:
    """Ask the Hugging Face Hub once about model ``name``: ``found``, ``missing`` (404/401: no such model, or
    private/gated without a token) or ``unreachable`` (no answer within ``timeout_s``, DNS included).

    One request in a thread, never retried: without a network the Hub client's own retries take a minute
    (24 "Retrying in Ns" lines) before a load fails.
    """
    import threading
    import urllib.error
    import urllib.parse
    import urllib.request

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    request = urllib.request.Request(f"{endpoint}/api/models/{urllib.parse.quote(name)}", method="HEAD")
    if token := os.environ.get("HF_TOKEN"):
        request.add_header("Authorization", f"Bearer {token}")
    answer = ["unreachable"]

    def ask() -> None:
        try:
            urllib.request.urlopen(request, timeout=timeout_s).close()
            answer[0] = "found"
        except urllib.error.HTTPError as exc:
            answer[0] = "missing" if exc.code in (401, 403, 404) else "found"  # 5xx: the Hub is there
        except (urllib.error.URLError, OSError, ValueError):
            pass

    # Name resolution is not covered by urlopen's timeout: the thread is abandoned if it takes longer.
    asker = threading.Thread(target=ask, daemon=True)
    asker.start()
    asker.join(timeout_s)
    return answer[0]


def _cached(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except ValueError:  # not a valid repo id either
        return False


def _check_hub_cache(name: str) -> list[str]:
    """A hub id: in the local cache when the machine is offline (``HF_HUB_OFFLINE``, or the Hub does not
    answer within :data:`HUB_TIMEOUT_S`, which then turns offline mode on), or known to the Hub. Otherwise
    loading would fail only after Prefect, a run and torch have started, a minute of retries later."""
    fix = f"give the local path of a model directory (shorthands: {DEFAULT_MODEL}, {SMOLLM2_MODEL})"
    if _offline():
        if _cached(name):
            return []
        return [
            f"model.name: '{name}' is neither a local directory nor in the Hugging Face cache, and "
            f"HF_HUB_OFFLINE is set (no downloads); check the name, download it once online, or {fix}"
        ]
    answer = hub_answer(name)
    if answer == "unreachable":
        if _cached(name):
            go_offline()  # the cached copy, without the Hub client's retries against a missing network
            return []
        return [
            f"model.name: '{name}' is not in the Hugging Face cache and the Hub did not answer within "
            f"{HUB_TIMEOUT_S:g} s (no network?); download it once online, or {fix}"
        ]
    if answer == "missing" and not _cached(name):
        return [
            f"model.name: the Hugging Face Hub has no model '{name}' (or it is private or gated: set "
            f"HF_TOKEN); check the name, or {fix}"
        ]
    return []


def preflight(cfg: PipelineConfig) -> None:
    """Read every data file and look at the model directory; raise :class:`PreflightError` on problems.

    Raises:
        PreflightError: ``kind="data"`` (exit 3) or ``kind="model"`` (exit 4), listing every problem.
    """
    kind = cfg.kind
    report, _ = validate_dataset(kind.data.load_raw(cfg.data), cfg, kind, tokenizer=None)
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
    kind = cfg.kind
    raw = kind.data.load_raw(cfg.data)
    report, _ = validate_dataset(raw, cfg, kind, tokenizer=None)
    if not report.ok:
        return report
    check_model(cfg)
    from tuneflow.backbone.pretrained import load_tokenizer

    return validate_dataset(raw, cfg, kind, load_tokenizer(cfg.model.name))[0]


def _weight_shapes(name: str) -> dict[str, list[int]]:
    """Tensor names and shapes of a model's safetensors files (local, bundled or in the Hub cache) from their
    headers alone; empty when there are none to read (GGUF, not downloaded yet)."""
    from tuneflow.backbone.pretrained import resolve_model_path

    if name == SMOLLM2_MODEL or name.endswith(".gguf"):
        return {}
    folder = Path(resolve_model_path(name)).expanduser()
    if not folder.is_dir():
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(name, "config.json")
        except ValueError:
            return {}
        if not isinstance(cached, str):
            return {}
        folder = Path(cached).parent
    shapes: dict[str, list[int]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        shapes.update({k: v["shape"] for k, v in header.items() if k != "__metadata__"})
    return shapes


def check_lora_targets(cfg: PipelineConfig) -> list[str]:
    """``model.lora.target_modules`` as a list must name modules the model has (peft's rule: a module whose
    name is a target or ends with ``.target``); otherwise peft refuses the model only once the run has
    started, from inside a Prefect task, with two tracebacks."""
    lora = cfg.model.lora
    if lora is None or not isinstance(lora.target_modules, list):
        return []
    shapes = _weight_shapes(cfg.model.name)
    modules = {n.rsplit(".", 1)[0] for n in shapes}
    targets = lora.target_modules
    if not shapes or any(m == t or m.endswith(f".{t}") for m in modules for t in targets):
        return []
    weights = [n for n, shape in shapes.items() if n.endswith(".weight") and len(shape) == 2]
    linear = sorted({n.split(".")[-2] for n in weights if "embed" not in n})  # embeddings are 2-D too
    return [
        f"model.lora.target_modules: {', '.join(targets)} name no module of {cfg.model.name}; its linear "
        f"layers are named {', '.join(linear)} (or use target_modules: all-linear)"
    ]


def check_model(cfg: PipelineConfig) -> None:
    """Raise :class:`PreflightError` (``kind="model"``) when the model directory cannot load, when
    ``model.max_length`` is longer than the model can read, or LoRA targets name no module of it."""
    problems = check_model_dir(cfg.model.name)
    problems += [] if problems else check_lora_targets(cfg)
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
            with open(path, "r+b") as fh:  # opened for writing, nothing written
                head = fh.read(100)
        except OSError as exc:
            return f"{setting}: {shown}: cannot write {path} ({exc.strerror or exc}); {fix}"
        if broken := _sqlite_damage(head, path.stat().st_size):
            return f"{setting}: {shown}: {path} {broken}; restore it from a backup or point at another store"
    return None


def _sqlite_damage(head: bytes, size: int) -> str | None:
    """What is wrong with an SQLite file from its 100-byte header and its size (an empty file is a new
    database), or None: MLflow would otherwise fail deep in its migrations with two tracebacks."""
    if size == 0:
        return None
    if not head.startswith(b"SQLite format 3\x00"):
        return "is not an SQLite database file"
    if len(head) < 100:
        return f"is truncated ({size} bytes)"
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(head[28:32], "big")
    # The header's page count is valid when its "version-valid-for" number equals the change counter.
    if head[92:96] == head[24:28] and pages and size < pages * page_size:
        return f"is truncated ({size} bytes of the {pages * page_size} its header declares)"
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
