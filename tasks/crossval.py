"""Cross-validation stage: k nested fold runs; mean and std of the best validation score on the parent."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.common import run_dir
from tuneflow import tracking
from tuneflow.config import PipelineConfig
from tuneflow.crossval import cross_validate as cross_validate_folds
from tuneflow.data import encode, load_splits
from tuneflow.model import load_tokenizer


@task(cache_policy=NO_CACHE)
def cross_validate(cfg: PipelineConfig, run_id: str) -> dict[str, float]:
    """Score the config by ``train.cv_folds``-fold cross-validation before the final training."""
    uri = tracking.configure(cfg.tracking.tracking_uri)
    splits = load_splits(cfg.data, cfg.train.seed, cfg.task)
    data = encode(splits, load_tokenizer(cfg.model.name), cfg.model.max_length)
    result = cross_validate_folds(cfg, data, run_id, run_dir(cfg, run_id) / "cv", uri)
    metrics = result.metrics()
    tracking.log_metrics(run_id, metrics)
    print(
        f"cross-validation: {cfg.train.monitor} {result.mean:.4f} +- {result.std:.4f} "
        f"over {len(result.scores)} folds"
    )
    return metrics
