"""Loading an experiment config with its task type's defaults and checks (the entry point stages use).

:mod:`tuneflow.config` holds the schema and knows no task type; the registry fills in what depends on one
(``train.monitor`` and ``gates.metric`` defaults) and rejects settings that do not apply to it.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from tuneflow import config
from tuneflow.config import PipelineConfig
from tuneflow.tasktypes import TASK_TYPES, task_type


class _RegistryRules:
    """:class:`tuneflow.config.TaskRules` answered by the task-type registry."""

    def unknown_task(self, task: Any) -> str | None:
        if task in TASK_TYPES:
            return None
        return f"unknown task type {task!r}; registered: {', '.join(TASK_TYPES)}"

    def resolve(self, cfg: PipelineConfig) -> tuple[PipelineConfig, list[tuple[str, str]]]:
        kind = task_type(cfg.task)
        spec = kind.metrics
        if cfg.train.monitor is None or cfg.gates.metric is None:
            cfg = cfg.model_copy(
                update={
                    "train": cfg.train.model_copy(update={"monitor": cfg.train.monitor or spec.monitors[0]}),
                    "gates": cfg.gates.model_copy(
                        update={"metric": cfg.gates.metric or spec.gate_metrics[0]}
                    ),
                }
            )
        cfg = cfg.resolved(kind)
        return cfg, kind.config_problems(cfg)


RULES = _RegistryRules()


_LOADED: dict[tuple[Any, ...], PipelineConfig] = {}
_KEEP = 8


def load_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Load, override and validate a YAML experiment config, resolved for its task type (``cfg.kind``).

    Parsed once per process: the CLI's check before Prefect starts and the flow it then runs share one
    config object (frozen), handed down with its task type to every stage and, pickled, to search workers
    and DDP ranks. The key is the file's bytes, the overrides, the environment variables the file names
    (``${VAR}``), the tracking-URI variable and the working directory: an edited file is read again.

    Raises:
        tuneflow.config.ConfigError: listing every problem, each by dotted key.
    """
    key = _load_key(Path(path), overrides or [])
    if key is not None and key in _LOADED:
        return _LOADED[key]
    cfg = config.read_config(path, overrides, RULES)
    if key is not None:
        while len(_LOADED) >= _KEEP:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = cfg
    return cfg


def _load_key(path: Path, overrides: list[str]) -> tuple[Any, ...] | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None  # read_config says what is wrong with the path
    text = data.decode("utf-8", "replace") + "\n".join(overrides)
    env = tuple((n, os.environ.get(n)) for n in sorted(set(re.findall(r"\$\{(\w+)\}", text))))
    return (
        str(path.resolve()),
        hashlib.sha256(data).hexdigest(),
        tuple(overrides),
        env,
        os.environ.get("MLFLOW_TRACKING_URI"),
        os.getcwd(),
    )


def config_from_dict(raw: dict[str, Any], source: str = "<dict>") -> PipelineConfig:
    """Validate an already-parsed config mapping (absolute paths), resolved for its task type."""
    return config.validate_config(raw, source, RULES)
