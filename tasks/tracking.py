"""Open and close the parent MLflow run of a flow run."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from tuneflow import names
from tuneflow.config import PipelineConfig
from tuneflow.fitting import runs
from tuneflow.fitting.runs import OpenedRun, run_dir
from tuneflow.store import gc, tracking, ui
from tuneflow.tasks.common import TRANSIENT_RETRIES


@task(cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
def open_run(
    cfg: PipelineConfig, resume: bool = False, stage: str = "finetune", log_config: bool = True
) -> OpenedRun:
    """Start the parent run, or continue an interrupted one (:func:`tuneflow.fitting.runs.open_run`)."""
    origin_tags = {
        "prefect.flow_run_id": str(flow_run.get_id() or "none"),
        "prefect.flow_run_name": str(flow_run.get_name() or "none"),
    }
    return runs.open_run(
        cfg, resume, stage, log_config, (f"Prefect flow run {flow_run.get_name()}", origin_tags)
    )


@task(cache_policy=NO_CACHE)
def close_run(cfg: PipelineConfig, run_id: str, status: str) -> None:
    """Mark the parent run FINISHED, FAILED or KILLED; its liveness tags (host, pid, heartbeat) go: they only
    tell a RUNNING run's state."""
    tracking.configure(cfg.tracking.tracking_uri)
    tracking.end_run(run_id, status)
    tracking.clear_liveness(run_id)


@contextmanager
def closing_run(cfg: PipelineConfig, run_id: str) -> Iterator[None]:
    """Heartbeat the parent run while the block runs; close it FINISHED, FAILED on an error, KILLED on
    Ctrl-C. A ``kill -9`` closes nothing: the stopped heartbeat lets the next run mark it KILLED."""
    status = "FINISHED"
    try:
        with tracking.Heartbeat(run_id, cfg.tracking.heartbeat_interval):
            yield
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:  # after the heartbeat's last beat, so no beat comes after its tags are cleared
        close_run(cfg, run_id, status)


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
