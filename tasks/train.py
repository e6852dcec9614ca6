"""Training stage: Lightning fine-tuning with per-step metrics in the parent MLflow run, then the export."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.common import run_dir, stage
from tuneflow.config import PipelineConfig
from tuneflow.training import Trained, train_and_export


@task(cache_policy=NO_CACHE)  # no retries: a failed fit is a bug or bad settings, not a transient fault
def train(cfg: PipelineConfig, run_id: str, resume_from: str | None = None) -> Trained:
    """Fine-tune and export the best checkpoint (see :func:`tuneflow.training.train_and_export`)."""
    t = cfg.train
    print(f"… train      {cfg.model.name}, up to {t.max_epochs} epochs, early stop on {t.monitor}")
    with stage("train") as note:
        trained = train_and_export(cfg, run_id, run_dir(cfg, run_id), resume_from)
        fit = trained.fit
        best = "n/a" if fit.best_score is None else f"{fit.best_score:.4f}"
        note(
            f"{fit.epochs} epoch(s){' (early stop)' if fit.stopped_early else ''}, best {fit.monitor} {best}"
        )
    return trained
