"""Validation stage: read the data, check it, log the report; fail the flow on errors."""

from __future__ import annotations

import json
import time

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tuneflow import names
from tuneflow.config import PipelineConfig
from tuneflow.data.readers import LABEL, ROUND_PREFIX
from tuneflow.data.splits import Splits, content_columns, fingerprint, round_lineage
from tuneflow.data.validation import DataValidationError, ValidatedData, validate_dataset
from tuneflow.faults import crash_point
from tuneflow.fitting.model import load_tokenizer
from tuneflow.store import tracking
from tuneflow.tasks.common import TRANSIENT_RETRIES


def _flat(df: pd.DataFrame) -> pd.DataFrame:
    """The example columns with lists (tokens, tags, messages) as JSON text: MLflow datasets want scalars."""
    cols = content_columns(df)
    return df[cols].map(lambda v: json.dumps(v) if isinstance(v, list | dict) else v)


def _log_rounds(run_id: str, cfg: PipelineConfig, splits: Splits) -> None:
    """Lineage of the labelled rounds in train: each round an MLflow input of its own (context
    ``train:ROUND``), its examples with file and line in ``data/rounds.csv``, their sizes in a tag."""
    if not splits.rounds:
        return
    for name, df in splits.rounds.items():
        tracking.log_dataset(
            run_id,
            _flat(df),
            name=f"{cfg.name}-{name}",
            source=splits.sources.get(ROUND_PREFIX + name, name),
            context=f"train:{name}",
            targets=LABEL if LABEL in df.columns else None,
        )
    tracking.log_text(run_id, round_lineage(splits).to_csv(index=False), "data/rounds.csv")
    sizes = ", ".join(f"{name} ({len(df)})" for name, df in splits.rounds.items())
    tracking.set_tags(run_id, {"tuneflow.labelled_rounds": sizes})


@task(cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
def validate_data(cfg: PipelineConfig, run_id: str) -> ValidatedData:
    """Validate the configured data; returns the data fingerprint and the report's stats.

    Raises:
        DataValidationError: when the report has errors (after logging the report to MLflow).
    """
    logger = get_run_logger()
    start = time.perf_counter()
    tokenizer = load_tokenizer(cfg.model.name)
    kind = cfg.kind
    report, splits = validate_dataset(kind.data.load_raw(cfg.data), cfg, kind, tokenizer)
    tracking.log_text(run_id, report.to_json(), "validation/report.json")
    tracking.log_text(run_id, report.to_markdown(), "validation/report.md")
    for warning in report.warnings:
        logger.warning(warning)
    crash_point("validate")
    if not report.ok:
        tracking.set_tags(run_id, {"tuneflow.validation": "failed"})
        raise DataValidationError(report)
    data_fp = fingerprint(splits)
    tracking.set_tags(
        run_id,
        {
            "tuneflow.validation": "passed",
            tracking.TAG_DATA_FP: data_fp,
            "tuneflow.validation_warnings": len(report.warnings),
        },
    )
    for name, df in splits.frames().items():
        context = name if name in ("train", "validation", "test") else f"eval:{name}"
        tracking.log_dataset(
            run_id,
            _flat(df),
            name=f"{cfg.name}-{name}",
            source=splits.sources.get(name, name),
            context=context,
            targets=LABEL if LABEL in df.columns else None,
        )
    _log_rounds(run_id, cfg, splits)
    tracking.log_text(run_id, json.dumps({"labels": splits.labels}, indent=2), "validation/labels.json")
    # A sample of the training data travels with the run: the drift reference once this model is champion.
    n = min(cfg.retrain.reference_sample, len(splits.train))
    sample = splits.train[content_columns(splits.train)].sample(n=n, random_state=cfg.train.seed)
    tracking.log_text(run_id, sample.to_json(orient="records", lines=True), tracking.REFERENCE_SAMPLE)
    tracking.log_metrics(run_id, {f"{names.TIMING}validate_s": time.perf_counter() - start})
    print(f"✓ validate   {time.perf_counter() - start:6.1f} s  {report.summary()}")
    return ValidatedData(data_fp, len(report.warnings), report.stats)
