"""Open and close the parent MLflow run of a flow run."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from tasks.common import TRANSIENT_RETRIES, run_dir
from tuneflow import gc, names, tracking, ui
from tuneflow.config import PipelineConfig
from tuneflow.experiment import config_from_dict, run_params
from tuneflow.training import LAST_CHECKPOINT


@dataclass(frozen=True)
class OpenedRun:
    """The parent run of a flow run; ``resume_from`` / ``registered_version`` when it continues one."""

    run_id: str
    resume_from: str | None = None
    registered_version: str | None = None


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@task(cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
def open_run(
    cfg: PipelineConfig, resume: bool = False, stage: str = "finetune", log_config: bool = True
) -> OpenedRun:
    """Start the parent run (or reopen an interrupted one); log config and tags.

    Args:
        cfg: the experiment.
        resume: finetune: continue the newest interrupted run of this config from its last checkpoint.
        stage: ``finetune`` or ``tune``. A tune run always reattaches to an unfinished tune run of the same
            config, so a resumed (or multi-machine) study keeps its trials under one parent.
        log_config: log the flattened config as params now (a search logs the tuned config later).

    Returns the run; ``resume_from`` is the last checkpoint to continue from.
    """
    tracking.configure(cfg.tracking.tracking_uri)
    config_hash = cfg.fingerprint()
    reaped = tracking.reap_stale_runs(cfg.experiment_name, by=f"a new {stage} run of '{cfg.name}'")
    if reaped:
        print(f"marked {len(reaped)} run(s) whose process died KILLED (no heartbeat): {', '.join(reaped)}")
    if stage == "tune":
        previous = tracking.resumable_runs(cfg.experiment_name, config_hash, stage="tune", include_alive=True)
        if previous:
            run_id = previous[0].info.run_id
            tracking.reopen_run(run_id)
            print(f"continuing the study under MLflow run {run_id}")
            return OpenedRun(run_id)
    elif resume:
        # The newest interrupted run that can still be continued: one killed after registration (only the
        # promotion decision is missing) or one with a last checkpoint. A run killed in validation has
        # neither and must not hide an older one that has.
        for previous in tracking.resumable_runs(cfg.experiment_name, config_hash):
            run_id = previous.info.run_id
            version = previous.data.tags.get(tracking.TAG_REGISTERED)
            ckpt = run_dir(cfg, run_id) / LAST_CHECKPOINT
            if version or ckpt.exists():
                tracking.reopen_run(run_id)
                if version:
                    print(f"resuming MLflow run {run_id}: it registered v{version}; finishing its promotion")
                    return OpenedRun(run_id, registered_version=version)
                tracking.set_tags(run_id, {"tuneflow.resumed_from": str(ckpt)})
                print(f"resuming MLflow run {run_id} from {ckpt}")
                return OpenedRun(run_id, resume_from=str(ckpt))
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
    # A name a person recognizes in the run list: the config and when it started (Prefect's is a tag).
    name = f"{cfg.name} {time.strftime('%Y-%m-%d %H:%M')}" + ("" if stage == "finetune" else f" ({stage})")
    source = tracking.source_tags(f"tuneflow {stage} {cfg.name} (Prefect flow run {flow_run.get_name()})")
    run_id = tracking.start_run(cfg.experiment_name, run_name=name, tags={**source, **tags})
    ui.save_runs_view(cfg)  # the links this run prints open the experiment with this config's columns
    if log_config:
        record_config(cfg, run_id)
    return OpenedRun(run_id)


def record_config(cfg: PipelineConfig, run_id: str, artifact: str = "config/resolved.yaml") -> None:
    """Log the flattened config as params and the resolved YAML as an artifact (URL passwords masked)."""
    tracking.configure(cfg.tracking.tracking_uri)
    recorded = cfg.recorded()
    tracking.log_params(run_id, run_params(cfg))
    tracking.log_text(run_id, yaml.safe_dump(recorded, sort_keys=False), artifact)


def recorded_config(run_id: str, tracking_uri: str, source: str) -> PipelineConfig:
    """The config :func:`record_config` logged with a run, pointed at ``tracking_uri`` (the store it was
    found in: the recorded URI has any password masked)."""
    raw = yaml.safe_load(tracking.read_text(run_id, "config/resolved.yaml"))
    raw.setdefault("tracking", {})["tracking_uri"] = tracking_uri
    return config_from_dict(raw, source=source)


@task(cache_policy=NO_CACHE)
def close_run(cfg: PipelineConfig, run_id: str, status: str) -> None:
    """Mark the parent run FINISHED, FAILED or KILLED."""
    tracking.configure(cfg.tracking.tracking_uri)
    tracking.end_run(run_id, status)


@contextmanager
def closing_run(cfg: PipelineConfig, run_id: str) -> Iterator[None]:
    """Heartbeat the parent run while the block runs; close it FINISHED, FAILED on an error, KILLED on
    Ctrl-C. A ``kill -9`` closes nothing: the stopped heartbeat lets the next run mark it KILLED."""
    with tracking.Heartbeat(run_id, cfg.tracking.heartbeat_interval):
        try:
            yield
        except KeyboardInterrupt:
            close_run(cfg, run_id, "KILLED")
            raise
        except BaseException:
            close_run(cfg, run_id, "FAILED")
            raise
    close_run(cfg, run_id, "FINISHED")


def remove_checkpoints(cfg: PipelineConfig, run_id: str, keep_export: bool = False) -> int:
    """Delete a run's local checkpoints once nothing can use them; returns the bytes freed.

    After registration the model lives in the MLflow store, so the whole run folder goes; a finished run
    that was not registered keeps its export (the only copy of the model).
    """
    return gc.remove_run_files(run_dir(cfg, run_id), keep_export=keep_export)


@task(cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
def describe_run(
    cfg: PipelineConfig,
    run_id: str,
    headline: list[tuple[str, float]],
    monitor: str,
    notes: list[str] | None = None,
) -> None:
    """Write the run's description (the top of its page in the MLflow UI): headline scores first, then the
    best value of ``monitor`` (a validation curve) and ``notes``."""
    tracking.configure(cfg.tracking.tracking_uri)
    monitor = names.best(monitor)
    value = tracking.run_metrics(run_id).get(monitor)
    best = (monitor, value) if value is not None else None
    tracking.set_description(run_id, ui.run_description(headline, best, notes))


def artifact_key(prefix: str, cfg: PipelineConfig) -> str:
    """A Prefect artifact key (lower-case letters, digits and dashes only)."""
    return f"{prefix}-{cfg.name.lower().replace('_', '-').replace('.', '-')}"
