"""Retrain check: has the data changed since the champion was trained, and has it drifted?"""

from __future__ import annotations

import io
import json

import pandas as pd
import yaml
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.common import retry_transient
from tasks.validate import REFERENCE_SAMPLE
from tuneflow import tracking
from tuneflow.champion import CHAMPION
from tuneflow.config import PipelineConfig
from tuneflow.data import LABEL, TAGS, TEXT, fingerprint, load_splits
from tuneflow.drift import drift_report

TAG_DECISION, TAG_REASON = "tuneflow.retrain.decision", "tuneflow.retrain.reason"


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


def _labels_and_confidence(cfg: PipelineConfig, ref: pd.DataFrame, new: pd.DataFrame) -> tuple:
    """Label-distribution inputs (classes; every BIO tag for NER; none for generation) and, for classifiers,
    the champion's top-class probability on both samples."""
    if cfg.task == "sequence_classification":
        model = tracking.load_pyfunc(f"models:/{cfg.registered_model_name}@{CHAMPION}")
        return (
            ref[LABEL].astype(str).tolist(),
            new[LABEL].astype(str).tolist(),
            model.predict(ref[TEXT].astype(str).tolist())["score"].tolist(),
            model.predict(new[TEXT].tolist())["score"].tolist(),
        )
    if cfg.task == "token_classification":
        return [t for tags in ref[TAGS] for t in tags], [t for tags in new[TAGS] for t in tags], None, None
    return None, None, None, None


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10, retry_condition_fn=retry_transient)
def check_data(cfg: PipelineConfig, force: bool = False) -> dict:
    """Fingerprint the configured data against the champion's; if it changed, measure drift.

    Logs a ``retrain`` run (decision, reason, drift report) and returns the decision: ``skip``, or
    ``train`` with whether to run a fresh search and which champion to reuse hyperparameters from.
    """
    tracking.configure(cfg.tracking.tracking_uri)
    name = cfg.registered_model_name
    splits = load_splits(cfg.data, cfg.train.seed, cfg.task)
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
    out: dict = {"run_id": run_id, "data_fingerprint": data_fp, "champion": None, "champion_run_id": None}
    champion = tracking.alias_version(name, CHAMPION)
    search, drifted = cfg.searching, False  # with no champion, the config decides
    if champion is None:
        decision, reason = "train", "no champion yet"
    else:
        mv = tracking.model_version(name, champion)
        out.update(champion=champion, champion_run_id=mv.run_id)
        same = mv.tags.get(tracking.TAG_DATA_FP) == data_fp
        if same and not force:
            decision, reason = (
                "skip",
                f"data unchanged since champion v{champion} was trained (fingerprint {data_fp})",
            )
        else:
            ref = pd.read_json(io.StringIO(tracking.read_text(mv.run_id, REFERENCE_SAMPLE)), lines=True)
            new = splits.train.sample(n=min(len(ref), len(splits.train)), random_state=cfg.train.seed)
            ref_labels, new_labels, ref_conf, new_conf = _labels_and_confidence(cfg, ref, new)
            report = drift_report(
                cfg.retrain,
                ref[TEXT].astype(str).tolist(),
                ref_labels,
                new[TEXT].tolist(),
                new_labels,
                ref_conf,
                new_conf,
            )
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
    print(f"retrain check: {decision} ({reason})")
    return {**out, "decision": decision, "reason": reason, "drifted": drifted, "search": search}
