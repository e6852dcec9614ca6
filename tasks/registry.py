"""Registration stage: a thin wrapper around :func:`tuneflow.registry.registration.register_export`."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tuneflow.config import PipelineConfig
from tuneflow.registry.registration import Registration, register_export
from tuneflow.tasks.common import stage


@task(cache_policy=NO_CACHE)  # no retries: a retry after a partial success could create a second version
def register(cfg: PipelineConfig, run_id: str, export_dir: str, data_fingerprint: str) -> Registration:
    """Log the model on ``run_id`` and register it (idempotent per run)."""
    with stage("register") as note:
        registration = register_export(cfg, run_id, export_dir, data_fingerprint)
        reused = " (registered before the run was interrupted: reused)" if registration.reused else ""
        note(f"{registration.name} v{registration.version}{reused}")
    return registration
