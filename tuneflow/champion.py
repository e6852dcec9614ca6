"""The champion/challenger decision applied to the MLflow registry: one decision at a time per model.

:mod:`tuneflow.promotion` holds the gates (pure); this module takes the lease, scores both models on the
challenger's frozen test split, applies the gates, moves the aliases and records the decision (version tags,
report artifacts). The Prefect tasks in ``tasks/promote.py`` only wrap it.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pandas as pd

from tuneflow import tracking
from tuneflow.config import PipelineConfig, TrackingConfig
from tuneflow.data import LABEL, TEXT, load_splits
from tuneflow.faults import crash_point
from tuneflow.locks import default_lock_url, lease
from tuneflow.promotion import Decision, decide, decide_on_scores
from tuneflow.tasktypes import load_predictor, score_predictor

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous-champion"


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


def _predict(model_uri: str, texts: list[str]) -> list[str]:
    return [str(x) for x in tracking.load_pyfunc(model_uri).predict(texts)["label"]]


def _score(cfg: PipelineConfig, model_uri: str, test: pd.DataFrame) -> float:
    """``gates.metric`` of a registered model on the frozen test set (NER, seq2seq, causal LM)."""
    with tempfile.TemporaryDirectory() as tmp:
        predictor = load_predictor(tracking.download_export(model_uri, tmp))
        return score_predictor(cfg, predictor, test)


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
    tracking.configure(cfg.tracking.tracking_uri)
    name = cfg.registered_model_name
    mv = tracking.model_version(name, version)
    test = load_splits(cfg.data, cfg.train.seed, cfg.task).test
    classify = cfg.task == "sequence_classification"
    if classify:
        texts, y_true = test[TEXT].tolist(), [str(x) for x in test[LABEL]]
        challenger_pred = _predict(f"models:/{name}/{version}", texts)
    else:
        challenger_value = _score(cfg, f"models:/{name}/{version}", test)
    with decision_lock(name, cfg.tracking, notify) as still_held:
        tracking.set_alias(name, CHALLENGER, version)
        crash_point("promote")
        champion = tracking.alias_version(name, CHAMPION)
        if champion == str(version):
            champion = None  # re-deciding the current champion: absolute gates only
        run_metrics = tracking.run_metrics(mv.run_id)
        if classify:
            champion_pred = _predict(f"models:/{name}/{champion}", texts) if champion else None
            decision = decide(
                cfg.gates,
                name,
                str(version),
                y_true,
                challenger_pred,
                run_metrics,
                champion,
                champion_pred,
                seed=cfg.train.seed,
            )
        else:
            champion_value = _score(cfg, f"models:/{name}/{champion}", test) if champion else None
            decision = decide_on_scores(
                cfg.gates,
                name,
                str(version),
                challenger_value,
                run_metrics,
                champion,
                champion_value,
                n_examples=len(test),
            )
        if force and not decision.promote:
            decision.promote, decision.forced = True, True
            decision.note = f"Forced by hand despite failed gates: {reason or 'no reason given'}."
        still_held()  # never move aliases on a lease that expired during a slow decision
        if decision.promote:
            if champion:
                tracking.set_alias(name, PREVIOUS, champion)
            tracking.set_alias(name, CHAMPION, version)
    tracking.set_version_tags(
        name,
        version,
        {
            "tuneflow.promotion": decision.verdict,
            "tuneflow.promotion_failed_gates": ", ".join(g.name for g in decision.failed) or "none",
            "tuneflow.promotion_compared_with": champion or "none",
        },
    )
    tracking.log_metrics(mv.run_id, {"time_promote_s": time.perf_counter() - start})
    tracking.log_text(mv.run_id, decision.to_markdown(), f"promotion/v{version}-report.md")
    tracking.log_text(mv.run_id, decision.to_json(), f"promotion/v{version}-report.json")
    return decision


def rollback_champion(
    model: str, tracking_uri: str | None = None, notify: Callable[[str], None] = print
) -> dict[str, str]:
    """Move ``champion`` back to the ``previous-champion`` version (under the model's lease)."""
    tracking.configure(tracking_uri)
    with decision_lock(model, TrackingConfig(tracking_uri=tracking_uri), notify):
        previous = tracking.alias_version(model, PREVIOUS)
        current = tracking.alias_version(model, CHAMPION)
        if previous is None:
            raise LookupError(
                f"registered model '{model}' has no '{PREVIOUS}' alias: nothing to roll back to"
            )
        tracking.set_alias(model, CHAMPION, previous)
        tracking.delete_alias(model, PREVIOUS)
        if current:
            tracking.set_version_tags(model, current, {"tuneflow.promotion": "rolled back"})
    return {"model": model, "champion": previous, "demoted": current or "none"}
