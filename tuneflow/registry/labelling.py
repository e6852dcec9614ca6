"""The next labelling round (``tuneflow label``): candidates from an unlabelled file and from a served
model's unsure answers, the registered model's probabilities and sentence vectors for each, the picks
(:mod:`tuneflow.data.selection`), and the file a person labels.

A round's file is a data file in the config's own columns: once its label column is filled in, listing it
under ``data.labelled`` adds it to train on the next ``tuneflow run`` or ``tuneflow retrain`` (with its
lineage logged). ``.json`` output is a Label Studio task list with the model's guess as a pre-annotation,
and the labelling config (``.xml``) beside it; Label Studio's CSV export reads back unchanged.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tuneflow.config import PipelineConfig
from tuneflow.data.readers import TEXT
from tuneflow.data.selection import PREFILTER, Strategy, margins, pick
from tuneflow.data.validation import normalize
from tuneflow.judging.calibration import softmax
from tuneflow.registry import requestlog
from tuneflow.registry.scoring import ModelUnloadable, ScoringError, read_scoring_input

TASK = "sequence_classification"  # single-label: margins need one distribution over the labels
FEATURES = "mean_pooled"  # the sentence vector the bundled MiniLM was pre-trained to produce
EXTRA = ("suggested", "confidence", "margin", "source", "where", "copies")  # columns after text and label


class LabellingError(ValueError):
    """Bad labelling input (a file, a column, a model of another task); the message names it."""


@dataclass
class Round:
    """One labelling round: what was picked and written, and from how many candidates."""

    picks: pd.DataFrame
    written: list[Path]
    candidates: int
    from_served: int
    already_labelled: int
    notes: list[str] = field(default_factory=list)


def pool_candidates(path: Path, column: str) -> tuple[pd.DataFrame, str | None]:
    """An unlabelled file's texts (``text``, ``source``, ``where``); empty texts are skipped, noted."""
    try:
        frame, note = read_scoring_input(path, column, skip_empty=True)
    except ScoringError as exc:
        raise LabellingError(str(exc).replace("--column", "--column (the --pool column)")) from None
    first = 2 if path.suffix.lower() in (".csv", ".tsv") else 1
    out = pd.DataFrame(
        {
            TEXT: frame[column].astype(str).str.strip(),
            "source": "pool",
            "where": [f"{path.name}:{int(i) + first}" for i in frame.index],
        }
    )
    return out, note


def served_candidates(path: Path, below: float) -> pd.DataFrame:
    """The served model's fallback answers and answers scored below ``below``, from its request log."""
    try:
        log = requestlog.read_requests(path)
    except requestlog.RequestLogError as exc:
        raise LabellingError(str(exc)) from None
    if log.empty:
        return pd.DataFrame(columns=[TEXT, "source", "where", "answered"])
    if "score" not in log.columns:
        raise LabellingError(f"{path}: the logged answers have no 'score': not a classifier's request log")
    unsure = pd.to_numeric(log["score"], errors="coerce").fillna(0.0) < below
    if "in_scope" in log.columns:
        unsure |= log["in_scope"].eq(False)
    log = log[unsure]
    return pd.DataFrame(
        {
            TEXT: log[TEXT].str.strip(),
            "source": "served",
            "where": [f"{path.name}:{line}" for line in log["line"]],
            "answered": log.get("label", pd.Series(index=log.index, dtype=object)),
        }
    )


def labelled_texts(cfg: PipelineConfig) -> set[str]:
    """The normalized texts the config's data already holds (train, validation, test, rounds): never
    offered again."""
    raw = cfg.kind.data.load_raw(cfg.data)
    if raw.problems:
        raise LabellingError(f"the config's data cannot be read: {raw.problems[0]}")
    return {normalize(t) for df in raw.frames.values() for t in df[TEXT].dropna().astype(str)}


def gather(frames: list[pd.DataFrame], known: set[str]) -> tuple[pd.DataFrame, int]:
    """One row per distinct text (``copies``: how often it came), without texts already labelled; and how
    many distinct texts were dropped as labelled."""
    frame = pd.concat(frames, ignore_index=True)
    frame = frame[frame[TEXT].str.len() > 0]
    key = frame[TEXT].map(normalize)
    copies = key.map(key.value_counts())
    frame = frame.assign(copies=copies.values, _key=key.values).drop_duplicates("_key")
    seen = frame["_key"].isin(known)
    return frame[~seen].drop(columns="_key").reset_index(drop=True), int(seen.sum())


def probabilities(predictor: Any, texts: list[str]) -> np.ndarray:
    """Calibrated class probabilities of ``texts`` (rows, labels)."""
    if not texts:
        return np.zeros((0, len(predictor.labels)))
    return softmax(predictor.forward_kinds(texts)[0], predictor.temperature)


def sentence_vectors(predictor: Any, texts: list[str]) -> np.ndarray:
    """The mean-pooled sentence vector of each of ``texts`` (rows, hidden)."""
    return predictor.forward_kinds(texts, kinds=(FEATURES,))[1][FEATURES]


def load_classifier(model_uri: str, tmp: str) -> Any:
    """The registered model's predictor (probabilities and features, not only answers), or an error naming
    what it is instead of a single-label classifier."""
    from tuneflow.fitting.export import load_predictor, read_meta
    from tuneflow.store import registered

    try:
        export = registered.download_export(model_uri, tmp)
        task = read_meta(export)["task"]
    except Exception as exc:  # MLflow and the file system raise many kinds: all mean "cannot load"
        raise ModelUnloadable(f"cannot load model '{model_uri}': {type(exc).__name__}: {exc}") from exc
    if task != TASK:
        raise LabellingError(
            f"{model_uri} is a {task} model: tuneflow label picks texts for {TASK} (one label per text)"
        )
    return load_predictor(export)


def choose(
    predictor: Any, candidates: pd.DataFrame, n: int, seed: int = 0, strategy: Strategy = "uncertain-diverse"
) -> pd.DataFrame:
    """The ``n`` candidates most worth labelling, most uncertain first, with the model's guess (an unknown
    ``strategy`` is :func:`tuneflow.data.selection.pick`'s ValueError)."""
    texts = candidates[TEXT].tolist()
    proba = probabilities(predictor, texts)
    if strategy == "uncertain-diverse" and len(texts) > n:
        # Sentence vectors only for the prefiltered candidates: a pool of a million texts needs its
        # probabilities (rows x labels), not a million vectors of 384 floats (1.5 GB).
        kept = pick(proba, None, PREFILTER * n, strategy="uncertain")
        vectors = sentence_vectors(predictor, [texts[i] for i in kept])
        rows = kept[pick(proba[kept], vectors, n, seed, prefilter=PREFILTER)]
    else:
        rows = pick(proba, None, n, seed, strategy)
    chosen = proba[rows]
    return candidates.iloc[rows].assign(
        suggested=np.asarray(predictor.labels, dtype=object)[chosen.argmax(1)],
        confidence=chosen.max(1).round(4),
        margin=margins(chosen).round(4),
    )


def round_file(picks: pd.DataFrame, cfg: PipelineConfig) -> pd.DataFrame:
    """The picks in the config's own columns, the label column empty for the annotator."""
    data = cfg.data
    return pd.DataFrame(
        {
            data.text_column: picks[TEXT].values,
            data.label_column: "",
            **{c: picks[c].values for c in EXTRA if c in picks.columns},
        }
    )


def label_studio(table: pd.DataFrame, cfg: PipelineConfig, labels: list[str], model: str) -> tuple[str, str]:
    """Label Studio tasks (the model's guess as a pre-annotation) and the labelling config they need."""
    text, label = cfg.data.text_column, cfg.data.label_column
    tasks = [
        {
            "data": {text: row[text], "source": row["source"], "where": row["where"]},
            "predictions": [
                {
                    "model_version": model,
                    "score": float(row["confidence"]),
                    "result": [
                        {
                            "from_name": label,
                            "to_name": text,
                            "type": "choices",
                            "value": {"choices": [row["suggested"]]},
                        }
                    ],
                }
            ],
        }
        for row in table.to_dict("records")
    ]
    from xml.sax.saxutils import quoteattr

    choices = "\n".join(f"    <Choice value={quoteattr(x)}/>" for x in labels)
    xml = (
        f"<View>\n  <Text name={quoteattr(text)} value={quoteattr('$' + text)}/>\n"
        f'  <Choices name={quoteattr(label)} toName={quoteattr(text)} choice="single">\n{choices}\n'
        "  </Choices>\n</View>\n"
    )
    return json.dumps(tasks, indent=1, ensure_ascii=False), xml


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` whole or not at all (a file being labelled is never left half-written)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_round(
    picks: pd.DataFrame, output: Path, cfg: PipelineConfig, labels: list[str], model: str
) -> list[Path]:
    """``output`` as CSV, or as Label Studio tasks (``.json``) with their labelling config (``.xml``)."""
    table = round_file(picks, cfg)
    if output.suffix.lower() != ".json":
        write_atomic(output, table.to_csv(index=False))
        return [output]
    tasks, xml = label_studio(table, cfg, labels, model)
    config = output.with_suffix(".xml")
    write_atomic(output, tasks)
    write_atomic(config, xml)
    return [output, config]


def check_request(output: Path, pool: Path | None, served: Path | None, force: bool) -> None:
    """What is wrong with the request, found before any model loads."""
    if pool is None and served is None:
        raise LabellingError(
            "nothing to pick from: give --pool FILE (unlabelled texts), --served LOG or both"
        )
    if output.suffix.lower() not in (".csv", ".json"):
        raise LabellingError(f"--output {output}: write .csv (spreadsheets, Argilla) or .json (Label Studio)")
    if output.exists() and not force:
        raise LabellingError(f"--output {output} exists (it may be being labelled); --force replaces it")
    if not output.parent.is_dir():
        raise LabellingError(f"--output {output}: folder {output.parent} does not exist")
    for name, path in (("--pool", pool), ("--served", served)):
        if path is not None and not path.is_file():
            raise LabellingError(f"{name} {path}: no such file")


def plan_round(
    cfg: PipelineConfig,
    model_uri: str,
    output: Path,
    n: int,
    pool: tuple[Path, str] | None = None,
    served: tuple[Path, float] | None = None,
    seed: int = 0,
) -> Round:
    """Gather the candidates, score them with ``model_uri``, pick ``n`` and write them to ``output``.

    Args:
        cfg: the experiment whose data the round adds to (its columns; its texts are not offered again).
        model_uri: the model that scores the candidates (``models:/NAME@champion`` usually).
        output: ``.csv`` or ``.json`` (Label Studio).
        n: how many texts to pick.
        pool: an unlabelled file and its text column.
        served: a request log (``TUNEFLOW_REQUEST_LOG``) and the confidence below which an answer counts
            as unsure (fallback answers always do).
        seed: k-means' seed.
    """
    if cfg.task != TASK:
        raise LabellingError(f"{cfg.name} is a {cfg.task} experiment: tuneflow label picks texts for {TASK}")
    notes, frames = [], []
    if pool is not None:
        frame, note = pool_candidates(*pool)
        frames.append(frame)
        notes += [note] if note else []
    if served is not None:
        frames.append(served_candidates(*served))
    candidates, known = gather(frames, labelled_texts(cfg))
    if candidates.empty:
        where = " and ".join(f for f, given in (("--pool", pool), ("--served", served)) if given)
        raise LabellingError(
            f"nothing to pick: every text of {where} is already in the data ({known} found there)"
            + ("" if served is None else " or was answered confidently")
        )
    with tempfile.TemporaryDirectory() as tmp:
        predictor = load_classifier(model_uri, tmp)
        picks = choose(predictor, candidates, n, seed)
        written = write_round(picks, output, cfg, list(predictor.labels), model_uri)
    from_served = int((candidates["source"] == "served").sum()) if len(candidates) else 0
    return Round(picks, written, len(candidates), from_served, known, notes)
