"""Scoring with a registered model outside a server (``tuneflow predict``): the inputs checked before the
model loads, the model loaded once, texts or a whole file scored in batches."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tuneflow.tasktypes import task_type


class ScoringError(ValueError):
    """Bad scoring input or a model that cannot score it; the message names the file, row or setting."""


class ModelUnloadable(ScoringError):
    """The model's files cannot be loaded (missing, truncated, not a model): the CLI's exit 4."""


def check_output(output: Path) -> None:
    """``--output`` is checked before the model loads: a missing folder is not found after every row."""
    if output.is_dir():
        raise ScoringError(f"--output {output} is a directory; give a file name")
    if not output.parent.is_dir():
        raise ScoringError(f"--output {output}: folder {output.parent} does not exist")


def parse_params(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; values read as YAML scalars (``32`` an int, ``true`` a bool, ``0.7`` a float)."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ScoringError(f"--param {item}: expected KEY=VALUE")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _read_table(path: Path, column: str) -> pd.DataFrame:
    # keep_default_na=False: the texts "NaN", "null", "N/A" are texts, not missing values.
    readers = {
        ".csv": lambda p: pd.read_csv(p, keep_default_na=False, dtype={column: str}),
        ".tsv": lambda p: pd.read_csv(p, sep="\t", keep_default_na=False, dtype={column: str}),
        ".parquet": pd.read_parquet,
    }
    read = readers.get(path.suffix.lower(), lambda p: pd.read_json(p, lines=True, dtype=False))
    if path.is_dir():
        raise ScoringError(f"--input {path} is a directory; give a file")
    try:
        return read(path)
    except Exception as exc:  # pandas raises many parser errors; all mean "unreadable"
        raise ScoringError(f"cannot read {path}: {exc}") from None


def read_scoring_input(path: Path, column: str, skip_empty: bool = False) -> tuple[pd.DataFrame, str | None]:
    """The rows of ``path`` to score, and a note on the empty texts skipped (``skip_empty``).

    Raises:
        ScoringError: unreadable file, missing column, or empty texts (with their lines) without
            ``skip_empty``.
    """
    frame = _read_table(path, column)
    if column not in frame.columns:
        found = ", ".join(map(str, frame.columns))
        raise ScoringError(f"{path} has no column '{column}' (it has: {found}); pick one with --column")
    texts = frame[column]
    empty = texts.isna() | texts.map(lambda t: not str(t).strip())
    if not empty.any():
        return frame, None
    # Rows as a person finds them: CSV/TSV lines count the header, JSONL lines do not.
    first = 2 if path.suffix.lower() in (".csv", ".tsv") else 1
    rows = [int(i) + first for i in frame.index[empty]]
    shown = ", ".join(map(str, rows[:10])) + (f" and {len(rows) - 10} more" if len(rows) > 10 else "")
    where = "line" if path.suffix.lower() != ".parquet" else "row"
    if not skip_empty:
        raise ScoringError(
            f"{path}: {len(rows)} empty '{column}' value(s), {where} {shown}; fill them, or pass "
            "--skip-empty to leave them without a prediction"
        )
    return frame[~empty], f"skipping {len(rows)} empty text(s), {where} {shown}"


def adapter_uri(adapter: str) -> str:
    """``NAME`` (its champion), ``NAME/VERSION`` or ``NAME@ALIAS`` as a ``models:/`` URI."""
    if adapter.startswith("models:/"):
        return adapter
    if "@" in adapter or "/" in adapter:
        return f"models:/{adapter}"
    return f"models:/{adapter}@champion"


@dataclass
class Scorer:
    """A loaded model: ``run(texts)`` -> the task type's prediction frame (the CLI prints it:
    :func:`tuneflow.summaries.prediction_line`, :func:`tuneflow.summaries.csv_cells`)."""

    accepted: set[str]
    run: Callable[[list[str]], pd.DataFrame]
    _keep: list[Any] = field(default_factory=list)  # what must outlive the call (a temporary folder)


def load_scorer(model: str, adapter: str | None, params: dict[str, Any]) -> Scorer:
    """Load a registered model (``models:/...``, ``runs:/...``, a local pyfunc folder), or a registered
    ``adapter`` on the base model ``model``; ``params`` must be settings the model takes.

    Raises:
        ScoringError: the model cannot load, or ``params`` holds a setting it does not take.
    """
    try:
        scorer = _load_adapter(adapter, model, params) if adapter else _load_pyfunc(model, params)
    except ScoringError:
        raise
    except Exception as exc:  # MLflow, transformers, peft, ONNX Runtime raise many kinds: all "cannot load"
        missing = getattr(exc, "filename", None)
        why = f"{type(exc).__name__}: {str(exc).strip() or 'no message'}" + (
            f" (missing or unreadable: {missing})" if missing and str(missing) not in str(exc) else ""
        )
        raise ModelUnloadable(
            f"cannot load model '{adapter or model}': {why}. Its files may be missing or damaged: register "
            "it again (tuneflow run), or predict with another version"
        ) from exc
    unknown = sorted(set(params) - scorer.accepted)
    if unknown:
        takes = f"it takes: {', '.join(sorted(scorer.accepted))}" if scorer.accepted else "it takes none"
        raise ScoringError(f"--param {', '.join(unknown)}: not a setting of this model ({takes})")
    return scorer


def _load_adapter(adapter: str, base: str, params: dict[str, Any]) -> Scorer:
    from tuneflow.fitting.export import load_predictor, read_meta
    from tuneflow.store import registered

    tmp = tempfile.TemporaryDirectory()
    export = registered.download_export(adapter_uri(adapter), tmp.name)
    meta = read_meta(export)
    kind = task_type(meta["task"])
    predictor = load_predictor(export, base=base)
    return Scorer(
        set(kind.serving.serving_params(meta)),
        lambda batch: predictor.predict(kind.serving.to_inputs(batch), **params),
        [tmp],
    )


def _load_pyfunc(model: str, params: dict[str, Any]) -> Scorer:
    from tuneflow.store import registered

    pyfunc = registered.load_pyfunc(model)
    schema = pyfunc.metadata.get_params_schema()
    return Scorer(
        {p.name for p in schema.params} if schema else set(),
        lambda batch: pyfunc.predict(batch, params=params) if params else pyfunc.predict(batch),
    )


def score_frame(
    scorer: Scorer,
    frame: pd.DataFrame,
    column: str,
    batch: int = 256,
    advance: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Predict ``frame[column]`` in batches (``advance(n)`` after each); the input rows and their
    predictions (``predicted_*`` columns)."""
    texts = frame[column].astype(str).tolist()
    parts = []
    for start in range(0, len(texts), batch):
        parts.append(scorer.run(texts[start : start + batch]))
        if advance is not None:
            advance(min(batch, len(texts) - start))
    predictions = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    return pd.concat([frame.reset_index(drop=True), predictions.add_prefix("predicted_")], axis=1)
