"""The parent MLflow run of a fine-tuning: where its files go, which interrupted run to continue (the resume
policy), and its config recorded with it so that the run can be repeated or promoted later."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from tuneflow.config import PipelineConfig
from tuneflow.fitting.training import LAST_CHECKPOINT
from tuneflow.store import tracking, ui
from tuneflow.store.params import portable_model, run_params
from tuneflow.tasktypes.resolve import config_from_dict


@dataclass(frozen=True)
class OpenedRun:
    """The parent run of a flow run; ``resume_from`` / ``registered_version`` when it continues one."""

    run_id: str
    resume_from: str | None = None
    registered_version: str | None = None


def run_dir(cfg: PipelineConfig, run_id: str) -> Path:
    """Checkpoints, the exported model and evaluation outputs of one MLflow run."""
    return Path(cfg.output_dir) / run_id


def git_commit() -> str:
    """The checkout's commit (``unknown`` outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def continue_run(
    cfg: PipelineConfig, stage: str, resume: bool, notify: Callable[[str], None]
) -> OpenedRun | None:
    """The interrupted run to continue, reopened, or None.

    A tune run always reattaches to an unfinished tune run of the same config, so a resumed (or
    multi-machine) study keeps its trials under one parent. ``resume`` (finetune) continues the newest
    interrupted run that can be continued: one killed after registration (only the promotion decision is
    missing) or one with a last checkpoint. A run killed in validation has neither and must not hide an
    older one that has.
    """
    config_hash = cfg.fingerprint()
    if stage == "tune":
        previous = tracking.resumable_runs(cfg.experiment_name, config_hash, stage="tune", include_alive=True)
        if not previous:
            return None
        run_id = previous[0].info.run_id
        tracking.reopen_run(run_id)
        notify(f"continuing the study under MLflow run {run_id}")
        return OpenedRun(run_id)
    if not resume:
        return None
    for previous in tracking.resumable_runs(cfg.experiment_name, config_hash):
        run_id = previous.info.run_id
        version = previous.data.tags.get(tracking.TAG_REGISTERED)
        ckpt = run_dir(cfg, run_id) / LAST_CHECKPOINT
        if not (version or ckpt.exists()):
            continue
        tracking.reopen_run(run_id)
        if version:
            notify(f"resuming MLflow run {run_id}: it registered v{version}; finishing its promotion")
            return OpenedRun(run_id, registered_version=version)
        tracking.set_tags(run_id, {"tuneflow.resumed_from": str(ckpt)})
        notify(f"resuming MLflow run {run_id} from {ckpt}")
        return OpenedRun(run_id, resume_from=str(ckpt))
    notify("--resume: no interrupted run of this config with a checkpoint; starting a new run")
    return None


def open_run(
    cfg: PipelineConfig,
    resume: bool = False,
    stage: str = "finetune",
    log_config: bool = True,
    origin: tuple[str, dict[str, str]] = ("", {}),
    notify: Callable[[str], None] = print,
) -> OpenedRun:
    """Start the parent run (or continue an interrupted one, :func:`continue_run`); log config and tags.

    Args:
        cfg: the experiment.
        resume: finetune: continue the newest interrupted run of this config from its last checkpoint.
        stage: ``finetune`` or ``tune``.
        log_config: log the flattened config as params now (a search logs the tuned config later).
        origin: what started it (e.g. "Prefect flow run X") and its tags (the flow run's id and name).
        notify: where the lines about reaped and resumed runs go.
    """
    reaped = tracking.reap_stale_runs(cfg.experiment_name, by=f"a new {stage} run of '{cfg.name}'")
    if reaped:
        notify(f"marked {len(reaped)} run(s) whose process died KILLED (no heartbeat): {', '.join(reaped)}")
    continued = continue_run(cfg, stage, resume, notify)
    if continued is not None:
        return continued
    started_by, origin_tags = origin
    tags = {
        tracking.TAG_STAGE: stage,
        tracking.TAG_CONFIG_HASH: cfg.fingerprint(),
        "tuneflow.task": cfg.task,
        "tuneflow.base_model": portable_model(cfg.model.name),  # no machine's path in the run's tags
        "tuneflow.git_commit": git_commit(),
        **origin_tags,
    }
    name = run_name(cfg, stage)
    source = tracking.source_tags(f"tuneflow {stage} {cfg.name}" + (f" ({started_by})" if started_by else ""))
    run_id = tracking.start_run(cfg.experiment_name, run_name=name, tags={**source, **tags})
    ui.save_runs_view(cfg)  # the links this run prints open the experiment with this config's columns
    if log_config:
        record_config(cfg, run_id)
    return OpenedRun(run_id)


def run_name(cfg: PipelineConfig, stage: str) -> str:
    """A parent run's name that tells it apart in the run list's ~24 visible characters: when it started
    (to the second), what it did, then the config (``12-06 18:31:05 search 6t · banking77``); the
    experiment already names the config, Prefect's flow run name is a tag."""
    if stage != "finetune":
        what = stage
    elif cfg.searching and cfg.search is not None:
        what = f"search {cfg.search.n_trials}t"
    else:
        what = "fine-tune"
    if cfg.model.lora is not None:
        what += " LoRA"
    return f"{time.strftime('%m-%d %H:%M:%S')} {what} · {cfg.name}"


def record_config(cfg: PipelineConfig, run_id: str, artifact: str = "config/resolved.yaml") -> None:
    """Log the flattened config as params and the resolved YAML as an artifact (URL passwords masked)."""
    tracking.log_params(run_id, run_params(cfg))
    tracking.log_text(run_id, yaml.safe_dump(cfg.recorded(), sort_keys=False), artifact)


def recorded_config(run_id: str, tracking_uri: str, source: str) -> PipelineConfig:
    """The config :func:`record_config` logged with a run, pointed at ``tracking_uri`` (the store it was
    found in: the recorded URI has any password masked)."""
    raw = yaml.safe_load(tracking.read_text(run_id, "config/resolved.yaml"))
    raw.setdefault("tracking", {})["tracking_uri"] = tracking_uri
    return config_from_dict(raw, source=source)
