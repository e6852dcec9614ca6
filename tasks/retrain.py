"""Retrain check stage: a thin wrapper around :func:`tuneflow.registry.retraining.check_data`."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tuneflow.config import PipelineConfig
from tuneflow.registry.retraining import RetrainCheck
from tuneflow.registry.retraining import check_data as check_retraining
from tuneflow.tasks.common import TRANSIENT_RETRIES


@task(cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
def check_data(cfg: PipelineConfig, force: bool = False) -> RetrainCheck:
    """Skip or train, and whether to search (see :func:`tuneflow.registry.retraining.check_data`)."""
    check = check_retraining(cfg, force)
    print(f"retrain check: {check.decision} ({check.reason})")
    return check
