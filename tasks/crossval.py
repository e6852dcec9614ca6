"""Cross-validation stage: k nested fold runs; mean and std of the best validation score on the parent."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.common import run_dir
from tuneflow import tracking
from tuneflow.config import PipelineConfig
from tuneflow.crossval import CVResult
from tuneflow.crossval import cross_validate as cross_validate_folds
from tuneflow.model import load_tokenizer
from tuneflow.tasktypes import task_type


@task(cache_policy=NO_CACHE)
def cross_validate(cfg: PipelineConfig, run_id: str) -> CVResult:
    """Score the config by ``train.cv_folds``-fold cross-validation before the final training."""
    uri = tracking.configure(cfg.tracking.tracking_uri)
    kind = task_type(cfg.task)
    data = kind.encode(kind.load_splits(cfg.data, cfg.train.seed), load_tokenizer(cfg.model.name), cfg)
    recorder = tracking.RunRecorder(uri, cfg.experiment_name, run_id)
    result = cross_validate_folds(cfg, data, recorder, run_dir(cfg, run_id) / "cv")
    tracking.log_metrics(run_id, result.metrics())
    folds = len(result.scores)
    print(f"cross-validation: {result.metric} {result.mean:.4f} +- {result.std:.4f} over {folds} folds")
    return result
