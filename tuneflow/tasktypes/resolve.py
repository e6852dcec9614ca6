"""Loading an experiment config with its task type's defaults and checks (the entry point stages use).

:mod:`tuneflow.config` holds the schema and knows no task type; the registry fills in what depends on one
(``train.monitor`` and ``gates.metric`` defaults) and rejects settings that do not apply to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneflow import config
from tuneflow.config import PipelineConfig
from tuneflow.tasktypes import TASK_TYPES, TaskType, task_type


class _RegistryRules:
    """:class:`tuneflow.config.TaskRules` answered by the task-type registry."""

    def unknown_task(self, task: Any) -> str | None:
        if task in TASK_TYPES:
            return None
        return f"unknown task type {task!r}; registered: {', '.join(TASK_TYPES)}"

    def resolve(self, cfg: PipelineConfig) -> tuple[PipelineConfig, list[tuple[str, str]]]:
        spec = task_type(cfg.task).metrics
        if cfg.train.monitor is None or cfg.gates.metric is None:
            cfg = cfg.model_copy(
                update={
                    "train": cfg.train.model_copy(update={"monitor": cfg.train.monitor or spec.monitors[0]}),
                    "gates": cfg.gates.model_copy(
                        update={"metric": cfg.gates.metric or spec.gate_metrics[0]}
                    ),
                }
            )
        return cfg, task_type(cfg.task).config_problems(cfg)


RULES = _RegistryRules()


def load_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Load, override and validate a YAML experiment config, resolved for its task type.

    Raises:
        tuneflow.config.ConfigError: listing every problem, each by dotted key.
    """
    return config.read_config(path, overrides, RULES)


def config_from_dict(raw: dict[str, Any], source: str = "<dict>") -> PipelineConfig:
    """Validate an already-parsed config mapping (absolute paths), resolved for its task type."""
    return config.validate_config(raw, source, RULES)


def task_of(cfg: PipelineConfig) -> TaskType:
    """The task type a config fine-tunes for."""
    return task_type(cfg.task)
