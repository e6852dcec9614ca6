"""What a served model was asked and what it answered, for the next labelling round (``tuneflow label
--served``). Off unless asked: nothing is written unless ``TUNEFLOW_REQUEST_LOG`` names a file in the
serving process's environment (``mlflow models serve``, ``tuneflow predict``, a Python process loading the
model); then every request's texts and answers are appended to it as JSON lines.

The file may hold personal data (the users' own words): put it where such data may live, and rotate or
delete it as your policy says. Several server workers may append to one file: each request's lines are
written in one locked append.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from tuneflow.data.readers import TEXT

ENV = "TUNEFLOW_REQUEST_LOG"
_LOCK = threading.Lock()


class RequestLogError(ValueError):
    """A request log cannot be read; the message names the file and line."""


def log_path() -> Path | None:
    """The request log this process writes (``TUNEFLOW_REQUEST_LOG``), or None: off."""
    value = os.environ.get(ENV, "").strip()
    return Path(value).expanduser() if value else None


def _plain(value: Any) -> Any:
    """A JSON-able form of one answer cell (numpy scalars and arrays, lists of spans)."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def append(path: Path, texts: list[str], answers: pd.DataFrame, task: str) -> None:
    """Append one JSON line per text: time (UTC), task, the text and every answer column."""
    import fcntl

    now = datetime.now(UTC).isoformat(timespec="seconds")
    records = answers.to_dict("records")
    lines = "".join(
        json.dumps({"time": now, "task": task, TEXT: text, **{k: _plain(v) for k, v in answer.items()}})
        + "\n"
        for text, answer in zip(texts, records, strict=True)
    )
    with _LOCK, path.open("a", encoding="utf-8") as out:
        fcntl.flock(out, fcntl.LOCK_EX)  # other server processes append to the same file
        out.write(lines)


def read_requests(path: Path) -> pd.DataFrame:
    """The logged requests of ``path`` as a frame (``text``, ``label``, ``score``, ``in_scope``, ``time``
    where logged), one row per line; a line that is not a JSON object with a text is an error naming it.

    Raises:
        RequestLogError: the file is missing or a line is damaged.
    """
    if not path.is_file():
        raise RequestLogError(f"{path}: no such request log (set {ENV}={path} where the model is served)")
    rows = []
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                # A server killed mid-write leaves a partial last line: that one is skipped, not fatal.
                if not line.endswith("\n"):
                    continue
                raise RequestLogError(f"{path}:{number}: not a JSON line ({exc.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get(TEXT), str):
                raise RequestLogError(f"{path}:{number}: a logged request needs a '{TEXT}' string")
            rows.append({**row, "line": number})
    return pd.DataFrame(rows)
