"""Open and close the parent MLflow run of a flow run."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from tasks.common import run_dir
from tuneflow import tracking
from tuneflow.config import PipelineConfig, flatten
from tuneflow.training import LAST_CHECKPOINT


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def open_run(
    cfg: PipelineConfig, resume: bool = False, stage: str = "finetune", log_config: bool = True
) -> dict[str, str | None]:
    """Start the parent run (or reopen an interrupted one); log config and tags.

    Args:
        cfg: the experiment.
        resume: finetune: continue the newest interrupted run of this config from its last checkpoint.
        stage: ``finetune`` or ``tune``. A tune run always reattaches to an unfinished tune run of the same
            config, so a resumed (or multi-machine) study keeps its trials under one parent.
        log_config: log the flattened config as params now (a search logs the tuned config later).

    Returns ``{"run_id", "resume_from"}``; ``resume_from`` is the last checkpoint to continue from.
    """
    tracking.configure(cfg.tracking.tracking_uri)
    config_hash = cfg.fingerprint()
    if stage == "tune":
        previous = tracking.find_resumable_run(cfg.experiment_name, config_hash, stage="tune")
        if previous is not None:
            tracking.reopen_run(previous.info.run_id)
            print(f"continuing the study under MLflow run {previous.info.run_id}")
            return {"run_id": previous.info.run_id, "resume_from": None}
    elif resume:
        previous = tracking.find_resumable_run(cfg.experiment_name, config_hash)
        if previous is not None:
            ckpt = run_dir(cfg, previous.info.run_id) / LAST_CHECKPOINT
            if ckpt.exists():
                tracking.reopen_run(previous.info.run_id)
                tracking.set_tags(previous.info.run_id, {"tuneflow.resumed_from": str(ckpt)})
                print(f"resuming MLflow run {previous.info.run_id} from {ckpt}")
                return {"run_id": previous.info.run_id, "resume_from": str(ckpt)}
        print("--resume: no interrupted run of this config with a checkpoint; starting a new run")
    tags = {
        tracking.TAG_STAGE: stage,
        tracking.TAG_CONFIG_HASH: config_hash,
        "tuneflow.task": cfg.task,
        "tuneflow.base_model": cfg.model.name,
        "tuneflow.git_commit": _git_commit(),
        "prefect.flow_run_id": str(flow_run.get_id() or "none"),
        "prefect.flow_run_name": str(flow_run.get_name() or "none"),
    }
    run_id = tracking.start_run(cfg.experiment_name, run_name=flow_run.get_name(), tags=tags)
    if log_config:
        record_config(cfg, run_id)
    return {"run_id": run_id, "resume_from": None}


def record_config(cfg: PipelineConfig, run_id: str, artifact: str = "config/resolved.yaml") -> None:
    """Log the flattened config as params and the resolved YAML as an artifact."""
    tracking.configure(cfg.tracking.tracking_uri)
    tracking.log_params(run_id, flatten(cfg.model_dump(mode="json")))
    tracking.log_text(run_id, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), artifact)


@task(cache_policy=NO_CACHE)
def close_run(cfg: PipelineConfig, run_id: str, status: str) -> None:
    """Mark the parent run FINISHED, FAILED or KILLED."""
    tracking.configure(cfg.tracking.tracking_uri)
    tracking.end_run(run_id, status)


@contextmanager
def closing_run(cfg: PipelineConfig, run_id: str) -> Iterator[None]:
    """Close the parent run when the block ends: FINISHED, FAILED on an error, KILLED on Ctrl-C."""
    try:
        yield
    except KeyboardInterrupt:
        close_run(cfg, run_id, "KILLED")
        raise
    except BaseException:
        close_run(cfg, run_id, "FAILED")
        raise
    close_run(cfg, run_id, "FINISHED")


def artifact_key(prefix: str, cfg: PipelineConfig) -> str:
    """A Prefect artifact key (lower-case letters, digits and dashes only)."""
    return f"{prefix}-{cfg.name.lower().replace('_', '-').replace('.', '-')}"
