"""Open and close the parent MLflow run of a flow run."""

from __future__ import annotations

import contextlib
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
from tuneflow.tasks.common import TRANSIENT_RETRIES, is_stop


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
    tracking.end_run(run_id, status)
    tracking.clear_liveness(run_id)


STOP_CLOSE_S = 3.0
"""How long a stopped run waits to mark its MLflow run KILLED before it leaves that to the next run."""


@contextmanager
def closing_run(cfg: PipelineConfig, run_id: str) -> Iterator[None]:
    """Heartbeat the parent run while the block runs; close it FINISHED, FAILED on an error, KILLED on
    Ctrl-C or ``kill PID``. A ``kill -9`` closes nothing: the next run sees the process gone (or the
    heartbeat stopped) and marks it KILLED."""
    status = "FINISHED"
    try:
        with tracking.Heartbeat(run_id, cfg.tracking.heartbeat_interval):
            yield
    except BaseException as exc:
        status = "KILLED" if is_stop(exc) else "FAILED"
        raise
    finally:  # after the heartbeat's last beat, so no beat comes after its tags are cleared
        if status == "KILLED":
            _close_within(cfg, run_id, STOP_CLOSE_S)
        else:
            close_run(cfg, run_id, status)


def _close_within(cfg: PipelineConfig, run_id: str, seconds: float) -> None:
    """Mark a stopped run KILLED, waiting at most ``seconds``: a stop signal can land in the middle of a
    store write and leave an SQLite write lock held until the process ends; closing would then wait out the
    store's busy timeout (20 s, twice) instead of stopping at once. What is not closed in time, the next run
    closes (its pid is gone)."""
    import threading

    def close() -> None:
        with contextlib.suppress(Exception):
            tracking.end_run(run_id, "KILLED")
            tracking.clear_liveness(run_id)

    closer = threading.Thread(target=close, name=f"close-{run_id[:8]}", daemon=True)
    closer.start()
    closer.join(seconds)


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
    monitor = names.best(monitor)
    value = tracking.run_metrics(run_id).get(monitor)
    best = (monitor, value) if value is not None else None
    tracking.set_description(run_id, ui.run_description(headline, best, notes))


def artifact_key(prefix: str, cfg: PipelineConfig) -> str:
    """A Prefect artifact key (lower-case letters, digits and dashes only)."""
    return f"{prefix}-{cfg.name.lower().replace('_', '-').replace('.', '-')}"
