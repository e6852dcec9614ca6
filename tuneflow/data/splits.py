"""Cleaning, splitting and fingerprinting the frames read by :mod:`tuneflow.data.readers` (no torch).

Every stage after validation calls :func:`load_splits` and so sees exactly the same seeded splits.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from tuneflow.config import DataConfig
from tuneflow.data.readers import LABEL, LINE, ROUND_PREFIX, TEXT, RawData, Reader, is_round, load_raw


def clean_text(series: pd.Series) -> pd.Series:
    """Strip surrounding whitespace (GLUE/UCI files carry trailing spaces)."""
    return series.map(lambda t: t.strip() if isinstance(t, str) else t)


@dataclass
class Splits:
    """Cleaned train/validation/test frames plus extra evaluation sets and the label order."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    extra: dict[str, pd.DataFrame]
    labels: list[str]
    sources: dict[str, str]
    # The labelled rounds (data.labelled) by name, as read: already part of ``train``; kept for lineage.
    rounds: dict[str, pd.DataFrame] = field(default_factory=dict)

    def frames(self) -> dict[str, pd.DataFrame]:
        return {"train": self.train, "validation": self.validation, "test": self.test, **self.extra}

    @property
    def label2id(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}


def _stratified_take(df: pd.DataFrame, size: float | int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    from sklearn.model_selection import train_test_split

    # Stratify only when every class can appear on both sides; otherwise (and for tasks without a
    # sentence label) fall back to a random split.
    stratify = df[LABEL] if LABEL in df.columns and df[LABEL].value_counts().min() >= 2 else None
    try:
        rest, taken = train_test_split(df, test_size=size, random_state=seed, stratify=stratify)
    except ValueError:
        rest, taken = train_test_split(df, test_size=size, random_state=seed)
    return rest.reset_index(drop=True), taken.reset_index(drop=True)


LabelSet = Callable[[pd.DataFrame], list[str]]
"""A task type's label set of a training frame, in the order its head's outputs take."""


def split_dataset(raw: RawData, cfg: DataConfig, seed: int, label_set: LabelSet) -> Splits:
    """Clean the raw frames and carve missing validation/test splits out of train, stratified and seeded;
    the label set is the task type's ``label_set`` of the train split.

    Labelled rounds join train after the carving: validation and test stay the same examples whatever the
    rounds add, so rounds are compared on one held-out set (and uncertainty-picked examples, which are
    not a random sample, never become test data).
    """
    frames = {
        name: df.assign(**{TEXT: clean_text(df[TEXT])}).reset_index(drop=True)
        for name, df in raw.frames.items()
    }
    rounds = {name.removeprefix(ROUND_PREFIX): frames.pop(name) for name in list(frames) if is_round(name)}
    train = frames["train"]
    sources = dict(raw.sources)
    if cfg.max_train_examples and len(train) > cfg.max_train_examples:
        _, train = _stratified_take(train, cfg.max_train_examples, seed)
    if "test" not in frames:
        train, frames["test"] = _stratified_take(train, cfg.test_size, seed)
        sources["test"] = f"{sources['train']} (stratified {cfg.test_size:.0%} split, seed {seed})"
    if "validation" not in frames:
        train, frames["validation"] = _stratified_take(train, cfg.validation_size, seed + 1)
        sources["validation"] = (
            f"{sources['train']} (stratified {cfg.validation_size:.0%} split, seed {seed + 1})"
        )
    if rounds:
        train = pd.concat([train, *rounds.values()], ignore_index=True)
    labels = label_set(train)
    extra = {name.split(":", 1)[1]: df for name, df in frames.items() if name.startswith("extra:")}
    sources = {name.removeprefix("extra:"): src for name, src in sources.items()}  # rounds: labelled:NAME
    return Splits(train, frames["validation"], frames["test"], extra, labels, sources, rounds)


class DataChangedError(ValueError):
    """A data file became unreadable or empty after it was validated (written to while a run started)."""


def load_splits(
    cfg: DataConfig,
    seed: int,
    read: Reader,
    label_set: LabelSet,
    hub: bool = False,
    task: str = "",
) -> Splits:
    """Read and split already-validated data: every stage after validation sees exactly the same splits.

    Raises:
        DataChangedError: a file that passed validation cannot be read now, or has no rows.
    """
    raw = load_raw(cfg, read, hub, task)
    gone = [str(p) for p in raw.problems] + [
        f"{raw.sources.get(name, name)}: no rows" for name, df in raw.frames.items() if df.empty
    ]
    if gone:
        raise DataChangedError(
            f"{'; '.join(gone)} -- the data changed after this run validated it; rerun once it is complete"
        )
    return split_dataset(raw, cfg, seed, label_set)


def round_lineage(splits: Splits) -> pd.DataFrame:
    """Which train examples came from which labelled round: ``round``, ``file``, ``line`` and the example
    columns, one row per round example (empty without rounds)."""
    parts = [
        df.assign(round=name, file=splits.sources.get(ROUND_PREFIX + name, ""))
        .rename(columns={LINE: "line"})
        .loc[:, ["round", "file", "line", *content_columns(df)]]
        for name, df in splits.rounds.items()
    ]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["round", "file", "line"])


def content_columns(df: pd.DataFrame) -> list[str]:
    """The columns that make up an example (everything but the source line number)."""
    return [c for c in df.columns if c != LINE]


def fingerprint(splits: Splits) -> str:
    """Content hash of all splits (every example column): identifies the exact data a model was trained on."""
    h = hashlib.sha256()
    for name, df in sorted(splits.frames().items()):
        h.update(name.encode())
        cols = content_columns(df)
        # Lists (tokens, tags, messages, references) are hashed through their JSON form.
        flat = df[cols].map(lambda v: json.dumps(v, sort_keys=True) if isinstance(v, list | dict) else v)
        h.update(pd.util.hash_pandas_object(flat, index=False).values.tobytes())
    return h.hexdigest()[:16]
