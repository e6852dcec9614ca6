"""Evaluation stage: test metrics, reports, plots, latency; all logged to the parent run."""

from __future__ import annotations

import time
from dataclasses import replace

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tuneflow import names
from tuneflow.config import PipelineConfig
from tuneflow.fitting.export import load_predictor, read_meta
from tuneflow.fitting.runs import run_dir
from tuneflow.judging.evaluation import EvaluationResult
from tuneflow.judging.evaluation import evaluate as evaluate_model
from tuneflow.judging.overfitting import validation_degradation
from tuneflow.registry.champion import keep_evidence
from tuneflow.store import tracking
from tuneflow.tasks.common import stage


@task(cache_policy=NO_CACHE)
def evaluate(cfg: PipelineConfig, run_id: str, export_dir: str) -> EvaluationResult:
    """Evaluate the exported model the task type's way; log metrics and reports to the run."""
    with stage("evaluate", run_id) as note:
        result = _evaluate(cfg, run_id, export_dir)
        shown = [k for k in cfg.kind.metrics.headline if k in result.metrics][:3]
        note(", ".join(f"{k} {result.metrics[k]:.4f}" for k in shown))
    return result


def _evaluate(cfg: PipelineConfig, run_id: str, export_dir: str) -> EvaluationResult:
    start, kind, monitor = time.perf_counter(), cfg.kind, cfg.train.monitor
    splits = kind.data.load_splits(cfg.data, cfg.train.seed)
    history = tracking.metric_history(run_id, dict.fromkeys((*kind.metrics.history, monitor)))
    out = run_dir(cfg, run_id) / "eval"
    # An int8 export is scored as it will be served; its fp32 weights only for what quantization cost.
    fp32 = load_predictor(export_dir, quantized=False) if read_meta(export_dir).get("quantize") else None
    result = evaluate_model(kind, load_predictor(export_dir), splits, out, cfg, history, fp32)
    # Overfitting from the validation curve of the monitored metric (what the promotion gate reads).
    result = result.with_metrics(
        validation_degradation(history[monitor], kind.metrics.lower_better(monitor), monitor)
    )
    for warning in result.warnings:
        get_run_logger().warning(warning)
    tracking.log_metrics(run_id, {**result.metrics, f"{names.TIMING}evaluate_s": time.perf_counter() - start})
    # At the top of the run's artifacts: MLflow's compare view shows top-level files side by side only.
    tracking.log_artifacts(run_id, out)
    tracking.set_tags(run_id, {"tuneflow.overfit_warning": bool(result.metrics[names.OVERFIT_WARNING])})
    if result.evidence is not None:
        keep_evidence(run_id, cfg, splits.test, result.evidence)
    return replace(result, evidence=None)  # the per-example evidence stays in the run, not in the flow
