"""Registration stage: log the pyfunc model and create a registered model version."""

from __future__ import annotations

import time
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tuneflow import tracking
from tuneflow.config import PipelineConfig
from tuneflow.lora import dir_size, read_meta


def registration(mv: Any) -> dict[str, str]:
    """What registration returns for an existing version: ``decided`` is its promotion verdict, if any."""
    decided = (mv.tags or {}).get("tuneflow.promotion", "")
    return {"model_uri": mv.source, "name": mv.name, "version": str(mv.version), "decided": decided}


@task(cache_policy=NO_CACHE)  # no retries: a retry after a partial success could create a second version
def register(cfg: PipelineConfig, run_id: str, export_dir: str, data_fingerprint: str) -> dict[str, str]:
    """Log the model on ``run_id`` and register it as a new version of the config's registered model.

    Idempotent per run: a run that already has a version (a resumed run killed after registering) gets
    that version back, with ``decided`` telling whether it already has a promotion decision.
    """
    tracking.configure(cfg.tracking.tracking_uri)
    name = cfg.registered_model_name
    existing = tracking.version_of_run(name, run_id)
    if existing is not None:
        print(f"run {run_id} already registered {name} v{existing.version}: reusing it")
        return registration(existing)
    start = time.perf_counter()
    model_uri = tracking.log_model(run_id, export_dir, cfg.task)
    meta = read_meta(export_dir)
    tags = {
        "tuneflow.config_hash": cfg.fingerprint(),
        "tuneflow.data_fingerprint": data_fingerprint,
        "tuneflow.base_model": cfg.model.name,
        "tuneflow.task": cfg.task,
    }
    if meta.get("lora"):
        # The adapter registry: what `tuneflow adapters` lists and what loading checks against.
        tags.update(
            {
                tracking.TAG_ADAPTER: "true",
                "tuneflow.base_hash": meta["base_hash"],
                "tuneflow.tokenizer_hash": meta["tokenizer_hash"],
                "tuneflow.adapter_bytes": str(dir_size(export_dir, "adapter_model.*")),
            }
        )
    version = tracking.register_model(model_uri, name, run_id, tags=tags)
    tracking.set_tags(run_id, {tracking.TAG_REGISTERED: version})
    tracking.log_metrics(run_id, {"time_register_s": time.perf_counter() - start})
    return {"model_uri": model_uri, "name": name, "version": version, "decided": ""}
