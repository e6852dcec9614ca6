"""The retrain flow: skip unchanged data, check drift, then the finetune flow (search on drift), promote."""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from tuneflow.flows.deployments import guard_deployment_run
from tuneflow.flows.finetune import FinetuneResult, finetune
from tuneflow.registry.retraining import TAG_DECISION, RetrainCheck, champion_overrides
from tuneflow.store import tracking
from tuneflow.tasks.retrain import check_data
from tuneflow.tasks.tracking import artifact_key
from tuneflow.tasktypes.resolve import load_config


@dataclass(frozen=True)
class RetrainResult:
    """The retraining decision and, when it trained, the finetune flow's result and its outcome."""

    check: RetrainCheck
    finetune: FinetuneResult | None = None

    @property
    def outcome(self) -> str:
        if self.finetune is None:
            return "skipped"
        return "promoted" if self.finetune.promotion and self.finetune.promotion.promote else "not promoted"


@flow(name="retrain", log_prints=True)
def retrain(
    config_path: str, overrides: list[str] | None = None, force: bool = False, workers: int | str = "auto"
) -> RetrainResult:
    """Retrain the config's model when its data changed (or ``force``), then let the gates decide.

    Args:
        config_path: the experiment YAML; its data paths may now hold new data.
        overrides: ``dotted.key=value`` strings applied to the config.
        force: retrain even when the data fingerprint equals the champion's.
        workers: local worker processes for a search.

    Returns:
        The check (``skip`` or ``train``, why, its run) and, for a retraining, the finetune flow's result.
    """
    overrides = list(overrides or [])
    guard_deployment_run(config_path, overrides)
    cfg = load_config(config_path, overrides)
    tracking.configure(cfg.tracking.tracking_uri)
    check = check_data(cfg, force)
    result = RetrainResult(check)
    if check.decision == "train":
        extra: list[str] = []
        if cfg.search is not None:
            extra.append(f"search.enabled={str(check.search).lower()}")
            if not check.search and check.champion_run_id:
                extra += champion_overrides(cfg, check.champion_run_id)
        result = RetrainResult(check, finetune(config_path, overrides + extra, workers=workers))
        model = result.finetune.model
        tracking.set_tags(
            check.run_id,
            {
                TAG_DECISION: f"trained ({result.outcome})",
                "tuneflow.retrain.finetune_run_id": result.finetune.run_id,
                "tuneflow.retrain.version": model.version if model else "none",
            },
        )
    lines = [f"# Retraining `{cfg.name}`: {check.decision}", "", f"- Reason: {check.reason}"]
    if result.finetune is not None:
        model = result.finetune.model
        lines.append(f"- New version: {f'v{model.version}' if model else 'not registered'}; {result.outcome}")
    create_markdown_artifact(
        key=artifact_key("retrain", cfg), markdown="\n".join(lines) + "\n", description="retraining decision"
    )
    return result
