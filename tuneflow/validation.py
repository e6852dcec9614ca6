"""Data-quality checks run before any training (pure: frames in, report out).

Errors stop the pipeline before training; warnings are logged and reported. Every finding names the file,
line and column it is about, so a user can open the file and fix it.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from tuneflow.config import PipelineConfig
from tuneflow.readers import LABEL, LINE, TAGS, TEXT, Problem, RawData
from tuneflow.splits import Splits, split_dataset

TAG_PATTERN = re.compile(r"^(O|[BI]-.+)$")

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

    def to_json(self) -> str:
        return json.dumps({"ok": self.ok, **asdict(self)}, indent=2, default=str)

    def to_markdown(self) -> str:
        out = [f"# Data validation: {'passed' if self.ok else 'FAILED'}", ""]
        for title, items in (("Errors", self.errors), ("Warnings", self.warnings)):
            out += [f"## {title} ({len(items)})", ""] + [f"- {i}" for i in items] + [""]
        out += ["## Statistics", "", "| statistic | value |", "| --- | --- |"]
        out += [f"| {k} | {v} |" for k, v in self.stats.items()]
        return "\n".join(out) + "\n"


def _lines(df: pd.DataFrame, mask: pd.Series) -> str:
    lines = sorted(df.loc[mask, LINE].tolist())
    shown = ", ".join(map(str, lines[:MAX_LINES_LISTED]))
    return f"line(s) {shown}" + (
        f" and {len(lines) - MAX_LINES_LISTED} more" if len(lines) > MAX_LINES_LISTED else ""
    )


def normalize(text: str) -> str:
    """Normalization used for duplicate/leakage detection: case-folded, punctuation-free, single-spaced."""
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text.casefold())).strip()


def _check_cells(name: str, source: str, df: pd.DataFrame, cfg: PipelineConfig) -> list[Problem]:
    not_text = df[TEXT].map(lambda t: t is not None and not isinstance(t, str) and t == t)
    checks = (
        (
            not_text,
            "non-text value(s) (numbers, lists or objects where text is expected)",
            cfg.data.text_column,
        ),
        (
            df[TEXT].map(lambda t: t is None or (isinstance(t, str) and not t.strip()) or t != t),
            "empty or whitespace-only text(s)",
            cfg.data.text_column,
        ),
        (df[LABEL].isna(), "missing (NaN/empty) label(s)", cfg.data.label_column),
    )
    problems = [
        Problem(f"{int(mask.sum())} {what} in {name} at {_lines(df, mask)}", file=source, column=column)
        for mask, what, column in checks
        if mask.any()
    ]
    if df.empty:
        problems.append(Problem(f"{name} has no rows", file=source))
    return problems


def validate_dataset(
    raw: RawData, cfg: PipelineConfig, tokenizer: Any | None = None
) -> tuple[ValidationReport, Splits | None]:
    """Check raw data, then split it and check the splits against each other.

    Args:
        raw: frames as read by :func:`tuneflow.data.load_raw` (with the reading problems it found).
        cfg: the pipeline config (columns, thresholds, max_length, seed).
        tokenizer: when given, the share of texts truncated at ``model.max_length`` is measured with it.

    Returns:
        The report and, when there are no errors, the cleaned splits ready for training.
    """
    if cfg.task != "sequence_classification":
        return _validate_sequences(raw, cfg, tokenizer)
    report = ValidationReport(errors=[str(p) for p in raw.problems])
    vcfg = cfg.validation
    for name, df in raw.frames.items():
        report.errors += [str(p) for p in _check_cells(name, raw.sources[name], df, cfg)]
    train = raw.frames.get("train")
    if train is not None:
        counts = train[LABEL].value_counts()
        source = raw.sources["train"]
        if len(counts) < 2:
            report.errors.append(
                str(
                    Problem(
                        f"train has {len(counts)} class(es); at least 2 are needed",
                        file=source,
                        column=cfg.data.label_column,
                    )
                )
            )
        small = counts[counts < vcfg.min_examples_per_class]
        if len(small):
            listed = ", ".join(f"'{k}' ({v})" for k, v in small.items())
            report.errors.append(
                str(
                    Problem(
                        "class(es) with fewer than validation.min_examples_per_class="
                        f"{vcfg.min_examples_per_class} "
                        f"train examples: {listed}",
                        file=source,
                        column=cfg.data.label_column,
                    )
                )
            )
        known = set(counts.index)
        for name, df in raw.frames.items():
            if name == "train":
                continue
            unseen = df[LABEL].notna() & ~df[LABEL].isin(known)
            if unseen.any():
                labels = ", ".join(repr(x) for x in sorted(df.loc[unseen, LABEL].unique())[:MAX_LINES_LISTED])
                report.errors.append(
                    str(
                        Problem(
                            f"label(s) never seen in train: {labels} at {_lines(df, unseen)}",
                            file=raw.sources[name],
                            column=cfg.data.label_column,
                        )
                    )
                )
    elif not raw.problems:
        report.errors.append("no training data (data.train or a hub dataset 'train' split is required)")
    if not report.ok:
        return report, None

    splits = split_dataset(raw, cfg.data, cfg.train.seed)
    _warn_and_describe(report, splits, cfg, tokenizer)
    return report, splits


def _validate_sequences(
    raw: RawData, cfg: PipelineConfig, tokenizer: Any | None
) -> tuple[ValidationReport, Splits | None]:
    """Checks for NER, seq2seq and chat data (classes and imbalance do not apply; structure does)."""
    report = ValidationReport(errors=[str(p) for p in raw.problems])
    for name, df in raw.frames.items():
        source = raw.sources[name]
        if df.empty:
            report.errors.append(str(Problem(f"{name} has no usable rows", file=source)))
            continue
        empty = df[TEXT].map(lambda t: not isinstance(t, str) or not t.strip())
        if empty.any():
            report.errors.append(
                str(Problem(f"{int(empty.sum())} empty input(s) in {name} at {_lines(df, empty)}", source))
            )
        if "target" in df.columns:
            no_target = df["target"].isna()
            if no_target.any():
                report.errors.append(
                    str(
                        Problem(
                            f"{int(no_target.sum())} empty target(s) in {name} at {_lines(df, no_target)}",
                            source,
                            column=cfg.data.target_column,
                        )
                    )
                )
    if cfg.task == "token_classification" and "train" in raw.frames:
        known = {t for tags in raw.frames["train"][TAGS] for t in tags}
        for name, df in raw.frames.items():
            problems = check_tags(name, raw.sources[name], df, None if name == "train" else known)
            report.errors += [str(p) for p in problems[:MAX_LINES_LISTED]]
            if len(problems) > MAX_LINES_LISTED:
                report.errors.append(
                    f"{raw.sources[name]}: ... and {len(problems) - MAX_LINES_LISTED} more tag problem(s)"
                )
    if "train" not in raw.frames and not raw.problems:
        report.errors.append("no training data (data.train is required)")
    if not report.ok:
        return report, None
    splits = split_dataset(raw, cfg.data, cfg.train.seed)
    _duplicates_and_leakage(report, splits, cfg)
    stats: dict[str, Any] = {f"rows_{n}": len(df) for n, df in splits.frames().items()}
    frames = splits.frames()
    if cfg.task == "token_classification":
        for name in ("train", "validation", "test"):
            counts = pd.Series(
                [t for tags in frames[name][TAGS] for t, _, _ in entities(tags)]
            ).value_counts()
            stats[f"entities_{name}"] = int(counts.sum())
            if name == "train":
                stats.update({f"train_entities_{k}": int(v) for k, v in counts.items()})
        stats["num_tags"] = len(splits.labels)
        if tokenizer is not None:
            for name in ("train", "validation", "test"):
                share = truncated_share(tokenizer, frames[name]["tokens"].tolist(), cfg.model.max_length)
                _truncation(report, stats, name, share, "sentences", cfg)
    elif tokenizer is not None:
        for name in ("train", "validation", "test"):
            texts = frames[name][TEXT].tolist()
            n_tokens = [len(ids) for ids in tokenizer(texts, truncation=False)["input_ids"]] if texts else []
            share = sum(n > cfg.model.max_length for n in n_tokens) / max(len(n_tokens), 1)
            stats[f"tokens_p95_{name}"] = int(pd.Series(n_tokens).quantile(0.95)) if n_tokens else 0
            _truncation(report, stats, name, share, "inputs", cfg)
        if cfg.task == "seq2seq":
            targets = frames["train"]["target"].tolist()
            n_target = [len(ids) for ids in tokenizer(text_target=targets, truncation=False)["input_ids"]]
            share = sum(n > cfg.model.max_target_length for n in n_target) / max(len(n_target), 1)
            stats["truncated_share_train_targets"] = round(share, 4)
            if share > cfg.validation.max_truncated_share:
                report.warnings.append(
                    f"{share:.1%} of train targets are longer than model.max_target_length="
                    f"{cfg.model.max_target_length} tokens and will be truncated"
                )
    lengths = splits.train[TEXT].str.split().str.len()
    stats.update(train_words_mean=round(float(lengths.mean()), 1), train_words_max=int(lengths.max()))
    report.stats = stats
    return report, splits


def _truncation(
    report: ValidationReport, stats: dict[str, Any], name: str, share: float, what: str, cfg: PipelineConfig
) -> None:
    stats[f"truncated_share_{name}"] = round(share, 4)
    if share > cfg.validation.max_truncated_share:
        report.warnings.append(
            f"{share:.1%} of {name} {what} are longer than model.max_length={cfg.model.max_length} "
            f"tokens and will be truncated (threshold {cfg.validation.max_truncated_share:.0%})"
        )


def _duplicates_and_leakage(report: ValidationReport, splits: Splits, cfg: PipelineConfig) -> None:
    vcfg, frames = cfg.validation, splits.frames()
    normalized = {name: df[TEXT].map(normalize) for name, df in frames.items()}
    for name, norm in normalized.items():
        dup = norm.duplicated(keep="first")
        if dup.any():
            report.warnings.append(
                f"{splits.sources.get(name, name)}: {int(dup.sum())} duplicate text(s) in {name} "
                f"at {_lines(frames[name], dup)}"
            )
    train_set = set(normalized["train"])
    for name in ("validation", "test", *splits.extra):
        leaked = normalized[name].isin(train_set)
        if leaked.any():
            msg = (
                f"{splits.sources.get(name, name)}: {int(leaked.sum())} {name} text(s) also in train "
                f"(leakage, {leaked.mean():.1%}) at {_lines(frames[name], leaked)}"
            )
            if vcfg.fail_on_leakage and name in ("validation", "test"):
                report.errors.append(msg)
            else:
                report.warnings.append(msg)


def _warn_and_describe(
    report: ValidationReport, splits: Splits, cfg: PipelineConfig, tokenizer: Any | None
) -> None:
    _duplicates_and_leakage(report, splits, cfg)
    vcfg, frames = cfg.validation, splits.frames()
    counts = splits.train[LABEL].value_counts()
    ratio = float(counts.max() / counts.min())
    if ratio > vcfg.max_imbalance_ratio:
        report.warnings.append(
            f"class imbalance: largest/smallest train class = {ratio:.1f} "
            f"('{counts.idxmax()}' {counts.max()} vs '{counts.idxmin()}' {counts.min()}), "
            f"above validation.max_imbalance_ratio={vcfg.max_imbalance_ratio}"
        )
    stats: dict[str, Any] = {f"rows_{n}": len(df) for n, df in frames.items()}
    stats.update(
        num_classes=len(splits.labels),
        imbalance_ratio=round(ratio, 2),
        min_class_count=int(counts.min()),
        max_class_count=int(counts.max()),
    )
    lengths = splits.train[TEXT].str.split().str.len()
    stats.update(train_words_mean=round(float(lengths.mean()), 1), train_words_max=int(lengths.max()))
    if tokenizer is not None:
        limit = cfg.model.max_length
        for name in ("train", "validation", "test"):
            n_tokens = [
                len(ids) for ids in tokenizer(frames[name][TEXT].tolist(), truncation=False)["input_ids"]
            ]
            share = sum(n > limit for n in n_tokens) / max(len(n_tokens), 1)
            stats[f"truncated_share_{name}"] = round(share, 4)
            stats[f"tokens_p95_{name}"] = int(pd.Series(n_tokens).quantile(0.95)) if n_tokens else 0
            if share > vcfg.max_truncated_share:
                report.warnings.append(
                    f"{share:.1%} of {name} texts are longer than model.max_length={limit} "
                    f"tokens and will be truncated (threshold {vcfg.max_truncated_share:.0%})"
                )
    report.stats = stats


# ------------------------------------------------------------------------------------ NER tag checks


def bio_errors(tags: list[str]) -> list[str]:
    """What is wrong with one sentence's BIO tags: malformed tags, ``I-X`` not continuing ``B-X``/``I-X``."""
    out = []
    previous = "O"
    for i, tag in enumerate(tags):
        if not TAG_PATTERN.match(tag):
            out.append(f"word {i + 1}: tag {tag!r} is not O, B-<type> or I-<type>")
        elif tag.startswith("I-") and previous[2:] != tag[2:]:
            out.append(
                f"word {i + 1}: {tag} follows {previous} (an I- tag must continue a B-/I- of its type)"
            )
        previous = tag
    return out


def check_tags(name: str, source: str, df: pd.DataFrame, known: set[str] | None) -> list[Problem]:
    """BIO problems per sentence, and (for evaluation splits) tags never seen in train."""
    problems = []
    for line, tags in zip(df[LINE], df[TAGS], strict=True):
        problems += [Problem(f"invalid BIO in {name}: {e}", source, line) for e in bio_errors(tags)]
        if known is not None:
            unknown = sorted(set(tags) - known)
            if unknown:
                problems.append(Problem(f"tag(s) never seen in train: {', '.join(unknown)}", source, line))
    return problems


def entities(tags: list[str]) -> list[tuple[str, int, int]]:
    """``(type, first word, last word)`` of each entity in a BIO sequence (seqeval's reading of it)."""
    from seqeval.metrics.sequence_labeling import get_entities

    return [(t, s, e) for t, s, e in get_entities(tags)]


def truncated_share(tokenizer: Any, sentences: list[list[str]], max_length: int) -> float:
    """Share of sentences whose sub-tokens (with special tokens) exceed ``max_length``: their tail is lost."""
    if not sentences:
        return 0.0
    ids = tokenizer(sentences, is_split_into_words=True, truncation=False)["input_ids"]
    return sum(len(x) > max_length for x in ids) / len(ids)


# --------------------------------------------------------------------------------------------- alignment
