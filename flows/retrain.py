"""The retrain flow: skip unchanged data, check drift, then the finetune flow (search on drift), promote."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.deployments import guard_deployment_run
from flows.finetune import finetune
from tasks.retrain import TAG_DECISION, champion_overrides, check_data
from tasks.tracking import artifact_key
from tuneflow import tracking
from tuneflow.config import load_config


@flow(name="retrain", log_prints=True)
def retrain(
    config_path: str, overrides: list[str] | None = None, force: bool = False, workers: int = 1
) -> dict:
    """Retrain the config's model when its data changed (or ``force``), then let the gates decide.

    Args:
        config_path: the experiment YAML; its data paths may now hold new data.
        overrides: ``dotted.key=value`` strings applied to the config.
        force: retrain even when the data fingerprint equals the champion's.
        workers: local worker processes for a search.

    Returns:
        ``decision`` (``skip`` or ``train``), ``reason``, ``check_run_id``, and for a retraining the
        finetune flow's result under ``finetune``.
    """
    overrides = list(overrides or [])
    guard_deployment_run(config_path, overrides)
    cfg = load_config(config_path, overrides)
    tracking.configure(cfg.tracking.tracking_uri)
    check = check_data(cfg, force)
    result: dict = {"decision": check["decision"], "reason": check["reason"], "check_run_id": check["run_id"]}
    if check["decision"] == "train":
        extra: list[str] = []
        if cfg.search is not None:
            extra.append(f"search.enabled={str(check['search']).lower()}")
            if not check["search"] and check["champion_run_id"]:
                extra += champion_overrides(cfg, check["champion_run_id"])
        fitted = finetune(config_path, overrides + extra, workers=workers)
        promotion = fitted.get("promotion") or {}
        outcome = "promoted" if promotion.get("promote") else "not promoted"
        result.update(finetune=fitted, outcome=outcome)
        tracking.set_tags(
            check["run_id"],
            {
                TAG_DECISION: f"trained ({outcome})",
                "tuneflow.retrain.finetune_run_id": fitted["run_id"],
                "tuneflow.retrain.version": (fitted.get("model") or {}).get("version", "none"),
            },
        )
    lines = [f"# Retraining `{cfg.name}`: {result['decision']}", "", f"- Reason: {result['reason']}"]
    if "finetune" in result:
        lines.append(f"- New version: {result['finetune']['model']}; {result['outcome']}")
    create_markdown_artifact(
        key=artifact_key("retrain", cfg), markdown="\n".join(lines) + "\n", description="retraining decision"
    )
    return result
