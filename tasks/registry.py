"""Registration stage: log the pyfunc model and create a registered model version."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tuneflow import tracking
from tuneflow.config import PipelineConfig


@task(cache_policy=NO_CACHE)  # no retries: a retry after a partial success could create a second version
def register(cfg: PipelineConfig, run_id: str, export_dir: str, data_fingerprint: str) -> dict[str, str]:
    """Log the model on ``run_id`` and register it as a new version of the config's registered model."""
    tracking.configure(cfg.tracking.tracking_uri)
    model_uri = tracking.log_model(run_id, export_dir, input_example=["where is my order?"])
    version = tracking.register_model(
        model_uri,
        cfg.registered_model_name,
        run_id,
        tags={
            "tuneflow.config_hash": cfg.fingerprint(),
            "tuneflow.data_fingerprint": data_fingerprint,
            "tuneflow.base_model": cfg.model.name,
            "tuneflow.task": cfg.task,
        },
    )
    tracking.set_tags(run_id, {"tuneflow.registered_version": version})
    return {"model_uri": model_uri, "name": cfg.registered_model_name, "version": version}
