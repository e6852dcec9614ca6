"""The promote and rollback flows: decide by hand on a registered version, or move the champion back."""

from __future__ import annotations

from prefect import flow

from tuneflow.fitting.runs import recorded_config
from tuneflow.judging.promotion import Decision
from tuneflow.registry.champion import Rollback
from tuneflow.store import registered, tracking
from tuneflow.tasks.promote import promote as promote_task
from tuneflow.tasks.promote import rollback as rollback_task


@flow(name="promote", log_prints=True)
def promote(
    model: str, version: str, force: bool = False, reason: str = "", tracking_uri: str | None = None
) -> Decision:
    """Re-run the champion/challenger comparison for ``model`` version ``version``.

    The version's own resolved config (logged with its run) gives the gates and the frozen test set.
    """
    uri = tracking.configure(tracking_uri)
    mv = registered.model_version(model, version)
    cfg = recorded_config(mv.run_id, uri, f"models:/{model}/{version} config/resolved.yaml")
    return promote_task(cfg, str(version), force, reason)


@flow(name="rollback", log_prints=True)
def rollback(model: str, tracking_uri: str | None = None) -> Rollback:
    """Move ``champion`` back to ``previous-champion``."""
    tracking.configure(tracking_uri)
    return rollback_task(model, tracking_uri)
