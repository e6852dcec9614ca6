"""Data-quality checks run before any training (pure: frames in, report out), the same for every task type.

:func:`validate_dataset` is the skeleton: reading problems, the task type's checks of each frame and against
train, then the split, duplicates and leakage, and the task type's statistics and warnings. Errors stop the
pipeline before training; warnings are logged and reported. Every finding names the file, line and column
it is about, so a user can open the file and fix it. Torch-free: the pre-flight check runs it in < 1 s.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from tuneflow.config import PipelineConfig
from tuneflow.data.readers import LINE, TEXT, Problem, RawData, blank
from tuneflow.data.splits import Splits, split_dataset

MAX_LINES_LISTED = 10


class DataValidationError(ValueError):
    """Raised when a dataset has validation errors; the message lists them."""

    def __init__(self, report: ValidationReport):
        self.report = report
        lines = "\n".join(f"  - {e}" for e in report.errors)
        super().__init__(f"data validation failed ({len(report.errors)} error(s)):\n{lines}")


@dataclass
class ValidationReport:
    """Outcome of :func:`validate_dataset`."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        """One line for the console: rows per split, classes or tags, warnings (the full report is logged)."""
        s = self.stats
        rows = ", ".join(f"{s[k]} {k.removeprefix('rows_')}" for k in s if k.startswith("rows_"))
        kinds = next((f"{s[k]} {k.removeprefix('num_')}" for k in ("num_classes", "num_tags") if k in s), "")
        parts = [f"{rows} rows", kinds, f"{len(self.warnings)} warning(s)"]
        return "; ".join(p for p in parts if p) + " (report: validation/report.md in the run)"

    def to_json(self) -> str:
        return json.dumps({"ok": self.ok, **asdict(self)}, indent=2, default=str)

    def to_markdown(self) -> str:
        out = [f"# Data validation: {'passed' if self.ok else 'FAILED'}", ""]
        for title, items in (("Errors", self.errors), ("Warnings", self.warnings)):
            out += [f"## {title} ({len(items)})", ""] + [f"- {i}" for i in items] + [""]
        out += ["## Statistics", "", "| statistic | value |", "| --- | --- |"]
        out += [f"| {k} | {v} |" for k, v in self.stats.items()]
        return "\n".join(out) + "\n"


@dataclass(frozen=True)
class ValidatedData:
    """What the validation stage hands on: the data's fingerprint and the report's summary."""

    data_fingerprint: str
    warnings: int
    stats: dict[str, Any]


def lines_of(df: pd.DataFrame, mask: pd.Series) -> str:
    lines = sorted(df.loc[mask, LINE].tolist())
    shown = ", ".join(map(str, lines[:MAX_LINES_LISTED]))
    return f"line(s) {shown}" + (
        f" and {len(lines) - MAX_LINES_LISTED} more" if len(lines) > MAX_LINES_LISTED else ""
    )


def normalize(text: str) -> str:
    """Normalization used for duplicate/leakage detection: case-folded, punctuation-free, single-spaced."""
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text.casefold())).strip()


def validate_dataset(
    raw: RawData, cfg: PipelineConfig, task: Any, tokenizer: Any | None = None
) -> tuple[ValidationReport, Splits | None]:
    """Check raw data, then split it and check the splits against each other.

    Args:
        raw: frames as read by the task type's ``load_raw`` (with the reading problems it found).
        cfg: the pipeline config (columns, thresholds, max_length, seed).
        task: the task type (from :func:`tuneflow.tasktypes.task_type`): its checks and statistics.
        tokenizer: when given, the share of inputs truncated at ``model.max_length`` is measured with it.

    Returns:
        The report and, when there are no errors, the cleaned splits ready for training.
    """
    report = ValidationReport(errors=[str(p) for p in raw.problems])
    for name, df in raw.frames.items():
        report.errors += [str(p) for p in task.data.check_frame(name, raw.sources[name], df, cfg)]
    if "train" in raw.frames:
        report.errors += [str(p) for p in task.data.check_against_train(raw, cfg)]
    elif not raw.problems:
        report.errors.append("no training data (data.train, or a hub dataset's 'train' split, is required)")
    if not report.ok:
        return report, None
    splits = split_dataset(raw, cfg.data, cfg.train.seed, task.data.label_set)
    duplicates_and_leakage(report, splits, cfg)
    report.stats = {f"rows_{n}": len(df) for n, df in splits.frames().items()}
    if splits.rounds:  # part of rows_train: the labelled rounds' share of it
        report.stats["rows_labelled"] = sum(len(df) for df in splits.rounds.values())
    report.errors += batch_problems(cfg, len(splits.train))
    if not report.ok:
        return report, None
    task.data.describe(report, splits, cfg, tokenizer)
    lengths = splits.train[TEXT].str.split().str.len()
    report.stats.update(train_words_mean=round(float(lengths.mean()), 1), train_words_max=int(lengths.max()))
    return report, splits


def batch_problems(cfg: PipelineConfig, train_rows: int) -> list[str]:
    """A batch larger than the training set is a typo, not a setting: every epoch would be one step."""
    size = cfg.train.batch_size
    if size <= train_rows:
        return []
    return [
        f"train.batch_size {size} is larger than the training set ({train_rows} rows): every epoch would be "
        f"a single step; set it to at most {train_rows} (8 to 64 is usual)"
    ]


def text_problems(name: str, source: str, df: pd.DataFrame, column: str) -> list[Problem]:
    """Non-text values and empty or whitespace-only texts in ``df``'s text column (``column`` in the file)."""
    not_text = df[TEXT].map(lambda t: t is not None and not isinstance(t, str) and t == t)
    empty = df[TEXT].map(lambda t: t is None or t != t or (isinstance(t, str) and blank(t)))
    checks = (
        (not_text, "non-text value(s) (numbers, lists or objects where text is expected)"),
        (empty, "empty or whitespace-only text(s)"),
    )
    return [
        Problem(f"{int(mask.sum())} {what} in {name} at {lines_of(df, mask)}", file=source, column=column)
        for mask, what in checks
        if mask.any()
    ]


def count_problems(counts: pd.Series, noun: str, minimum: int, source: str, column: str) -> list[Problem]:
    """Fewer than 2 labels in train, and labels with fewer than ``minimum`` train examples (``counts``:
    examples per label; ``noun``: what a label is called, e.g. "class(es)")."""
    problems = []
    if len(counts) < 2:
        problems.append(
            Problem(f"train has {len(counts)} {noun}; at least 2 are needed", file=source, column=column)
        )
    small = counts[counts < minimum]
    if len(small):
        listed = ", ".join(f"'{k}' ({v})" for k, v in small.head(MAX_LINES_LISTED).items())
        more = f" and {len(small) - MAX_LINES_LISTED} more" if len(small) > MAX_LINES_LISTED else ""
        problems.append(
            Problem(
                f"{len(small)} {noun} with fewer than validation.min_examples_per_class={minimum} "
                f"train examples: {listed}{more}",
                file=source,
                column=column,
            )
        )
    return problems


def empty_inputs(name: str, source: str, df: pd.DataFrame) -> list[Problem]:
    """A frame without rows, or inputs that are empty."""
    if df.empty:
        return [Problem(f"{name} has no usable rows", file=source)]
    empty = df[TEXT].map(blank)
    if empty.any():
        return [Problem(f"{int(empty.sum())} empty input(s) in {name} at {lines_of(df, empty)}", source)]
    return []


def token_lengths(
    report: ValidationReport, splits: Splits, cfg: PipelineConfig, tokenizer: Any, what: str = "texts"
) -> None:
    """p95 token length and truncated share of the inputs of train, validation and test."""
    frames = splits.frames()
    limit = cfg.model.max_length
    for name in ("train", "validation", "test"):
        texts = frames[name][TEXT].tolist()
        n_tokens = [len(ids) for ids in tokenizer(texts, truncation=False)["input_ids"]] if texts else []
        share = sum(n > limit for n in n_tokens) / max(len(n_tokens), 1)
        report.stats[f"tokens_p95_{name}"] = int(pd.Series(n_tokens).quantile(0.95)) if n_tokens else 0
        warn_truncation(report, cfg, name, share, what)


def warn_truncation(
    report: ValidationReport, cfg: PipelineConfig, name: str, share: float, what: str, key: str = "max_length"
) -> None:
    """Record a truncated share (statistic ``truncated_share_<name>``) and warn above the threshold."""
    limit = getattr(cfg.model, key)
    threshold = cfg.validation.max_truncated_share
    report.stats[f"truncated_share_{name}"] = round(share, 4)
    if share > threshold:
        report.warnings.append(
            f"{share:.1%} of {name} {what} are longer than model.{key}={limit} "
            f"tokens and will be truncated (threshold {threshold:.0%})"
        )


def duplicates_and_leakage(report: ValidationReport, splits: Splits, cfg: PipelineConfig) -> None:
    """Warn about duplicate inputs within a split, and about inputs of other splits also in train."""
    vcfg, frames = cfg.validation, splits.frames()
    normalized = {name: df[TEXT].map(normalize) for name, df in frames.items()}
    for name, norm in normalized.items():
        dup = norm.duplicated(keep="first")
        if dup.any():
            report.warnings.append(
                f"{splits.sources.get(name, name)}: {int(dup.sum())} duplicate text(s) in {name} "
                f"at {lines_of(frames[name], dup)}"
            )
    train_set = set(normalized["train"])
    for name in ("validation", "test", *splits.extra):
        leaked = normalized[name].isin(train_set)
        if leaked.any():
            msg = (
                f"{splits.sources.get(name, name)}: {int(leaked.sum())} {name} text(s) also in train "
                f"(leakage, {leaked.mean():.1%}) at {lines_of(frames[name], leaked)}"
            )
            if vcfg.fail_on_leakage and name in ("validation", "test"):
                report.errors.append(msg)
            else:
                report.warnings.append(msg)
