"""Search stage: run the Optuna study (trials nested under the run in MLflow) and log its summary there."""

from __future__ import annotations

import shutil
from dataclasses import replace

from prefect import task
from prefect.cache_policies import NO_CACHE

from tuneflow import names
from tuneflow.config import PipelineConfig, redact_secrets
from tuneflow.fitting.runs import run_dir
from tuneflow.fitting.search import KEPT, TAG_STUDY, StudySummary, run_study
from tuneflow.store import tracking
from tuneflow.store.params import readable
from tuneflow.tasks.common import stage


def describe_space(cfg: PipelineConfig) -> str:
    """The searched space as one param a person can read: ``train.lr float [3e-05, 0.0003] log; ...``
    (one param: beside a run without a search, one blank row in MLflow's param diff, not one per key)."""
    out = []
    for key, spec in (cfg.search.space if cfg.search else {}).items():
        if spec.type == "categorical":
            out.append(f"{key} one of {spec.choices}")
        else:
            out.append(
                f"{key} {spec.type} [{spec.low}, {spec.high}]"
                + (" log" if spec.log else "")
                + (f" step {spec.step}" if spec.step else "")
            )
    return "; ".join(out)


def log_summary(run_id: str, summary: StudySummary, params: bool = True) -> None:
    """Best value and counts as metrics; best params as params (``best.*``, as first found) and as tags
    (``tuneflow.best.*``, kept current as a resumed study improves), the summary files."""
    metrics = {
        names.best(summary.metric): summary.best_value,
        f"{names.SEARCH}trials_complete": summary.n_complete,
        f"{names.SEARCH}trials_pruned": summary.n_pruned,
        f"{names.SEARCH}trials_failed": summary.n_failed,
        f"{names.SEARCH}epochs_total": summary.epochs_total,
    }
    if summary.best_latency_ms is not None:
        metrics[f"{names.SEARCH}best_latency_p50_ms"] = summary.best_latency_ms
    tracking.log_metrics(run_id, {k: v for k, v in metrics.items() if v is not None})
    tags = {f"tuneflow.best.{k}": readable(v) for k, v in summary.best_params.items()}
    tags.update(
        {
            TAG_STUDY: summary.study_name,
            "optuna.storage": redact_secrets(summary.storage),
            "tuneflow.best_trial": summary.best_trial,
            "tuneflow.best_trial_run_id": summary.best_run_id,
        }
    )
    tracking.set_tags(run_id, tags)
    if params:
        tracking.log_params(run_id, {f"best.{k}": readable(v) for k, v in summary.best_params.items()})
    tracking.log_artifacts(run_id, summary.summary_dir, "search")


@task(cache_policy=NO_CACHE)  # no retries: the study itself resumes on the next run
def search(
    cfg: PipelineConfig, run_id: str, workers: int | str = "auto", final_params: bool = False
) -> StudySummary:
    """Run the study's missing trials as runs nested directly under ``run_id`` and log the study there.

    One level of nesting: in the MLflow UI a run's trials are one click away, whether the run is a
    ``tuneflow tune`` study or a ``tuneflow run`` that trains the best configuration after its search.

    Args:
        final_params: a final model follows (the finetune flow): the run records the final (best) config as
            its params, so the best values are tags (``tuneflow.best.*``) only, not ``best.*`` params beside
            identical ones; and the best trials' checkpoints stay for ``search.final`` (a search alone
            deletes them).

    Returns:
        The study summary (best params and value, trial counts); its ``run_id`` is ``run_id``.
    """
    uri = tracking.current_uri()
    tracking.log_params(run_id, {"search.space": describe_space(cfg)})
    recorder = tracking.RunRecorder(uri, cfg.experiment_name, run_id)
    with stage("search", run_id) as note:
        work = run_dir(cfg, run_id) / "search"
        summary = run_study(cfg, recorder, work, workers)
        summary = replace(summary, run_id=run_id)
        if not final_params:  # no final model to adopt one of them
            shutil.rmtree(work / KEPT, ignore_errors=True)
        note(
            f"{summary.n_complete} complete, {summary.n_pruned} pruned, {summary.n_failed} failed; "
            f"best {summary.metric} {summary.best_value:.4f} (trial {summary.best_trial})"
        )
    log_summary(run_id, summary, params=not final_params)
    return summary
