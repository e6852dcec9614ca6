"""The champion/challenger decision applied to the MLflow registry: one decision at a time per model.

:mod:`tuneflow.judging.promotion` holds the gates (pure); this module takes the lease, scores both
models on the challenger's frozen test split, applies the gates, moves the aliases and records the
decision (version tags, report artifacts). The Prefect tasks in ``tasks/promote.py`` only wrap it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pandas as pd

from tuneflow import names
from tuneflow.config import PipelineConfig, TrackingConfig
from tuneflow.data.readers import LINE
from tuneflow.faults import crash_point
from tuneflow.fitting.export import load_predictor
from tuneflow.judging.promotion import Decision
from tuneflow.store import registered, tracking
from tuneflow.store.locks import default_lock_url, lease
from tuneflow.tasktypes import TaskType

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous-champion"
EVIDENCE_DIR = "promotion/evidence"


@contextmanager
def decision_lock(
    model: str, cfg_tracking: TrackingConfig | None = None, notify: Callable[[str], None] = print
) -> Iterator[Callable[[], None]]:
    """Hold the model's promotion lease for the whole decision; yields ``check()`` (raises if lost).

    Two flows promoting the same model queue here, so the second compares against the champion the first
    left behind, never a stale one. The lease is renewed while held and expires ``tracking.lock_ttl``
    seconds after its holder dies (``kill -9`` included), so a crash never blocks the model for good.
    A waiter prints who holds it, since when, and how long it will wait.
    """
    tcfg = cfg_tracking or TrackingConfig()
    url = tcfg.lock_url or default_lock_url(tracking.resolve_tracking_uri(tcfg.tracking_uri))
    with lease(
        url,
        f"promote:{model}",
        purpose=f"promotion decision for '{model}'",
        ttl=tcfg.lock_ttl,
        timeout=1800,
        notify=notify,
    ) as check:
        yield check


EVIDENCE_FORMAT = 1  # bump when what promotion_evidence measures changes: older caches are then ignored


def evidence_key(cfg: PipelineConfig, test: pd.DataFrame) -> str:
    """What a model's promotion evidence depends on besides the model: the frozen test examples, the gate
    metric and the generation sample size (the examples' file line numbers do not matter)."""
    settings = {
        "format": EVIDENCE_FORMAT,
        "task": cfg.task,
        "metric": cfg.gates.metric,
        "generated": cfg.eval.max_generation_examples,
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    digest.update(test.drop(columns=[LINE], errors="ignore").to_json(orient="records").encode())
    return digest.hexdigest()[:16]


def keep_evidence(run_id: str, cfg: PipelineConfig, test: pd.DataFrame, evidence: Any) -> None:
    """Keep what evaluation measured on the frozen test set as the run's promotion evidence.

    Evaluation has just predicted every test example with the exported model that is then registered, so
    promotion reads the challenger's evidence from the run instead of scoring the test set again.
    """
    tracking.log_text(run_id, json.dumps(evidence), f"{EVIDENCE_DIR}/{evidence_key(cfg, test)}.json")


def _evidence(
    kind: TaskType, cfg: PipelineConfig, name: str, version: str, test: pd.DataFrame, key: str
) -> Any:
    """What the task type judges a registered model on, measured on the frozen test set.

    A version's weights never change, so its evidence on a given test set is measured once and kept with its
    run (``promotion/evidence/<key>.json``): a champion is not re-scored by every challenger that meets it
    on the same test set (for a chat model that is a hundred generated replies).
    """
    run_id = registered.model_version(name, version).run_id
    path = f"{EVIDENCE_DIR}/{key}.json"
    cached = tracking.try_read_text(run_id, path)
    if cached is not None:
        return json.loads(cached)
    with tempfile.TemporaryDirectory() as tmp:
        predictor = load_predictor(registered.download_export(f"models:/{name}/{version}", tmp))
        evidence = kind.judging.promotion_evidence(predictor, test, cfg)
    try:
        tracking.log_text(run_id, json.dumps(evidence), path)
    except Exception as exc:  # a cache: a store that refuses the write only costs a re-score next time
        logging.getLogger(__name__).warning("could not cache the promotion evidence of v%s: %s", version, exc)
    return evidence


def promote_version(
    cfg: PipelineConfig,
    version: str,
    force: bool = False,
    reason: str = "",
    notify: Callable[[str], None] = print,
) -> Decision:
    """Make ``version`` the challenger, compare it with the champion, move aliases if the gates pass.

    Args:
        cfg: the challenger's config (its test split is the frozen test set both models are scored on).
        version: registered version of ``cfg.registered_model_name``.
        force: promote even when a gate fails (recorded as forced, with ``reason``).
        reason: why a forced promotion was made (kept in the report and the version's tags).
        notify: where waiting-for-the-lease messages go.

    Returns:
        The decision (every gate's value, threshold and verdict; the per-class table for classifiers).
    """
    start = time.perf_counter()
    name = cfg.registered_model_name
    mv = registered.model_version(name, version)
    kind = cfg.kind
    test = kind.data.load_splits(cfg.data, cfg.train.seed).test
    key = evidence_key(cfg, test)
    evidence = _evidence(kind, cfg, name, str(version), test, key)
    with decision_lock(name, cfg.tracking, notify) as still_held:
        registered.set_alias(name, CHALLENGER, version)
        crash_point("promote")
        champion = registered.alias_version(name, CHAMPION)
        if champion == str(version):
            champion = None  # re-deciding the current champion: absolute gates only
        run_metrics = tracking.run_metrics(mv.run_id)
        champion_evidence = _evidence(kind, cfg, name, champion, test, key) if champion else None
        decision = kind.judging.decide(
            cfg, name, str(version), test, evidence, run_metrics, champion, champion_evidence
        )
        if force and not decision.promote:
            decision = decision.forced_by_hand(reason)
        still_held()  # never move aliases on a lease that expired during a slow decision
        if decision.promote:
            if champion:
                registered.set_alias(name, PREVIOUS, champion)
            registered.set_alias(name, CHAMPION, version)
    registered.set_version_tags(
        name,
        version,
        {
            "tuneflow.promotion": decision.verdict,
            "tuneflow.promotion_failed_gates": ", ".join(g.name for g in decision.failed) or "none",
            "tuneflow.promotion_compared_with": champion or "none",
        },
    )
    tracking.log_metrics(mv.run_id, {f"{names.TIMING}promote_s": time.perf_counter() - start})
    tracking.log_text(mv.run_id, decision.to_markdown(), f"promotion/v{version}-report.md")
    tracking.log_text(mv.run_id, decision.to_json(), f"promotion/v{version}-report.json")
    return decision


@dataclass(frozen=True)
class Rollback:
    """A rollback: ``champion`` now points at the previous champion; ``demoted`` is the version it left."""

    model: str
    champion: str
    demoted: str | None


def rollback_champion(
    model: str, tracking_uri: str | None = None, notify: Callable[[str], None] = print
) -> Rollback:
    """Move ``champion`` back to the ``previous-champion`` version (under the model's lease)."""
    with decision_lock(model, TrackingConfig(tracking_uri=tracking_uri), notify):
        previous = registered.alias_version(model, PREVIOUS)
        current = registered.alias_version(model, CHAMPION)
        if previous is None:
            raise LookupError(
                f"registered model '{model}' has no '{PREVIOUS}' alias: nothing to roll back to"
            )
        registered.set_alias(model, CHAMPION, previous)
        registered.delete_alias(model, PREVIOUS)
        if current:
            registered.set_version_tags(model, current, {"tuneflow.promotion": "rolled back"})
    return Rollback(model, previous, current)
