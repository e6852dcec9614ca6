"""Helpers shared by the tasks: where a run's files go, and the retry rule for IO-bound tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneflow.config import ConfigError, PipelineConfig
from tuneflow.model import ModelLoadError
from tuneflow.validation import DataValidationError

# Bad input never gets better by retrying; only transient IO (network, hub, tracking server) might.
PERMANENT_ERRORS = (ConfigError, DataValidationError, ModelLoadError, FileNotFoundError, KeyError, ValueError)


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry unless the failure is bad input."""
    try:
        state.result()
    except PERMANENT_ERRORS:
        return False
    except Exception:
        return True
    return True


def run_dir(cfg: PipelineConfig, run_id: str) -> Path:
    """Checkpoints, the exported model and evaluation outputs of one MLflow run."""
    return Path(cfg.output_dir) / run_id
