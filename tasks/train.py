"""Training stage: Lightning fine-tuning with per-step metrics in the parent MLflow run, then the export."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.common import run_dir
from tuneflow.config import PipelineConfig
from tuneflow.training import Trained, train_and_export


@task(cache_policy=NO_CACHE)  # no retries: a failed fit is a bug or bad settings, not a transient fault
def train(cfg: PipelineConfig, run_id: str, resume_from: str | None = None) -> Trained:
    """Fine-tune and export the best checkpoint (see :func:`tuneflow.training.train_and_export`)."""
    return train_and_export(cfg, run_id, run_dir(cfg, run_id), resume_from)
