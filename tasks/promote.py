"""Promotion stage: the champion/challenger decision (tuneflow.champion) as Prefect tasks."""

from __future__ import annotations

import re

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tuneflow.config import PipelineConfig
from tuneflow.judging.promotion import Decision
from tuneflow.registry.champion import CHAMPION, Rollback, promote_version, rollback_champion

__all__ = ["CHAMPION", "promote", "rollback"]


@task(cache_policy=NO_CACHE)  # no retries: a decision must not be taken twice
def promote(cfg: PipelineConfig, version: str, force: bool = False, reason: str = "") -> Decision:
    """Decide on ``version`` (:func:`tuneflow.registry.champion.promote_version`); report it in Prefect."""
    logger = get_run_logger()
    decision = promote_version(cfg, version, force, reason, notify=logger.warning)
    name = cfg.registered_model_name
    create_markdown_artifact(
        key=f"promotion-{re.sub(r'[^a-z0-9-]', '-', name.lower())}",
        markdown=decision.to_markdown(),
        description=f"promotion decision for {name} v{version}",
    )
    failed = ", ".join(g.name for g in decision.failed)
    print(f"✓ promote    v{version}: {decision.verdict}" + (f" (failed: {failed})" if failed else ""))
    return decision


@task(cache_policy=NO_CACHE)
def rollback(model: str, tracking_uri: str | None = None) -> Rollback:
    """Move ``champion`` back to the ``previous-champion`` version."""
    return rollback_champion(model, tracking_uri, notify=get_run_logger().warning)
