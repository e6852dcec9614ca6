"""Evaluation stage: test metrics, reports, plots, latency; all logged to the parent run."""

from __future__ import annotations

import time

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.common import run_dir
from tuneflow import tracking
from tuneflow.config import PipelineConfig
from tuneflow.data import load_splits
from tuneflow.overfitting import validation_degradation
from tuneflow.tasktypes import HISTORY_KEYS, evaluate_for, load_predictor


@task(cache_policy=NO_CACHE)
def evaluate(cfg: PipelineConfig, run_id: str, export_dir: str) -> dict[str, float]:
    """Evaluate the exported model; returns the metrics (also logged to MLflow with the artifacts)."""
    tracking.configure(cfg.tracking.tracking_uri)
    splits = load_splits(cfg.data, cfg.train.seed, cfg.task)
    start = time.perf_counter()
    predictor = load_predictor(export_dir)
    out = run_dir(cfg, run_id) / "eval"
    history = tracking.metric_history(run_id, HISTORY_KEYS)  # every train.monitor choice is among them
    result = evaluate_for(cfg, predictor, splits, out, history)
    logger = get_run_logger()
    for warning in result.warnings:
        logger.warning(warning)
    # Overfitting from the validation curve of the monitored metric (what the promotion gate reads).
    curve = validation_degradation(history[cfg.train.monitor], cfg.train.monitor)
    result.metrics.update(curve)
    tracking.log_metrics(run_id, {**result.metrics, "time_evaluate_s": time.perf_counter() - start})
    tracking.log_artifacts(run_id, out, "evaluation")
    tracking.set_tags(run_id, {"tuneflow.overfit_warning": bool(result.metrics["overfit_warning"])})
    return result.metrics
