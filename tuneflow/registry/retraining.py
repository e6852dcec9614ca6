"""The retraining decision: has the data changed since the champion was trained, and has it drifted?

Scheduled retraining runs this first: unchanged data skips the run; changed data is compared with the
champion's reference sample (drift), and drift may call for a fresh search instead of reusing the
champion's hyperparameters. The Prefect task in ``tasks/retrain.py`` only wraps it.
"""

from __future__ import annotations

import io
import json
import tempfile
from dataclasses import dataclass
from typing import Any

import pandas as pd
import yaml

from tuneflow.config import PipelineConfig
from tuneflow.data.readers import TEXT
from tuneflow.data.splits import fingerprint
from tuneflow.fitting.export import load_predictor
from tuneflow.judging.drift import DriftReport, drift_report
from tuneflow.registry.champion import CHAMPION
from tuneflow.store import registered, tracking

TAG_DECISION, TAG_REASON = "tuneflow.retrain.decision", "tuneflow.retrain.reason"


@dataclass(frozen=True)
class RetrainCheck:
    """The outcome of :func:`check_data` (also tagged on its ``retrain-check`` run)."""

    run_id: str
    decision: str  # "skip" or "train"
    reason: str
    data_fingerprint: str
    drifted: bool
    search: bool  # run a fresh search (else reuse the champion's hyperparameters)
    champion: str | None
    champion_run_id: str | None


def champion_overrides(cfg: PipelineConfig, champion_run_id: str) -> list[str]:
    """``--set`` strings giving the searched keys the champion's values (reuse instead of a new search)."""
    if cfg.search is None:
        return []
    champion_cfg = yaml.safe_load(tracking.read_text(champion_run_id, "config/resolved.yaml"))
    out = []
    for key in cfg.search.space:
        node = champion_cfg
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            out.append(f"{key}={json.dumps(node)}")
    return out


def measure_drift(cfg: PipelineConfig, kind: Any, champion_run_id: str, train: pd.DataFrame) -> DriftReport:
    """The champion's logged training sample against a sample of the new training data (and the champion's
    confidence on both, where the task type has one)."""
    ref = pd.read_json(
        io.StringIO(tracking.read_text(champion_run_id, tracking.REFERENCE_SAMPLE)), lines=True
    )
    new = train.sample(n=min(len(ref), len(train)), random_state=cfg.train.seed)
    uri = f"models:/{cfg.registered_model_name}@{CHAMPION}"
    with tempfile.TemporaryDirectory() as tmp:
        ref_conf, new_conf = kind.judging.drift_confidences(
            lambda: load_predictor(registered.download_export(uri, tmp)), ref, new
        )
    return drift_report(
        cfg.retrain,
        ref[TEXT].astype(str).tolist(),
        kind.judging.drift_labels(ref),
        new[TEXT].tolist(),
        kind.judging.drift_labels(new),
        ref_conf,
        new_conf,
    )


def check_data(cfg: PipelineConfig, force: bool = False) -> RetrainCheck:
    """Fingerprint the configured data against the champion's; if it changed, measure drift.

    Logs a ``retrain-check`` run (decision, reason, drift report) and returns the decision: ``skip``, or
    ``train`` with whether to run a fresh search and which champion to reuse hyperparameters from.
    """
    kind = cfg.kind
    name = cfg.registered_model_name
    splits = kind.data.load_splits(cfg.data, cfg.train.seed)
    data_fp = fingerprint(splits)
    run_id = tracking.start_run(
        cfg.experiment_name,
        run_name="retrain-check",
        tags={
            tracking.TAG_STAGE: "retrain",
            "tuneflow.registered_model": name,
            tracking.TAG_DATA_FP: data_fp,
        },
    )
    champion = registered.alias_version(name, CHAMPION)
    champion_run_id = None
    search, drifted = cfg.searching, False  # with no champion, the config decides
    if champion is None:
        decision, reason = "train", "no champion yet"
    else:
        mv = registered.model_version(name, champion)
        champion_run_id = mv.run_id
        same = mv.tags.get(tracking.TAG_DATA_FP) == data_fp
        if same and not force:
            decision = "skip"
            reason = f"data unchanged since champion v{champion} was trained (fingerprint {data_fp})"
        else:
            report = measure_drift(cfg, kind, mv.run_id, splits.train)
            tracking.log_text(run_id, report.to_markdown(), "drift/report.md")
            tracking.log_text(run_id, report.to_json(), "drift/report.json")
            tracking.log_metrics(run_id, report.metrics())
            drifted = report.drifted
            # No drift: the champion's hyperparameters still fit the data; drift may call for a new search.
            search = drifted and cfg.retrain.search_on_drift and cfg.search is not None
            why = "forced (data unchanged)" if same else f"data changed since champion v{champion}"
            how = "fresh search" if search else "reusing the champion's hyperparameters"
            decision, reason = "train", f"{why}; {'drift' if drifted else 'no drift'} -> {how}"
    tracking.set_tags(
        run_id, {TAG_DECISION: decision, TAG_REASON: reason, "tuneflow.retrain.drifted": drifted}
    )
    tracking.end_run(run_id)
    return RetrainCheck(run_id, decision, reason, data_fp, drifted, search, champion, champion_run_id)
