"""The resolved config as MLflow params: what tells fine-tunings apart, portable across machines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneflow import config
from tuneflow.config import PipelineConfig, flatten
from tuneflow.tasktypes import unused_config

NOT_PARAMS = (
    "tracking.",
    "retrain.",
    "gates.",
    "output_dir",
    "search.storage",
    "search.heartbeat_interval",
    "search.max_retry",
    "train.rdzv_endpoint",
    "train.log_every_n_steps",
    "train.num_workers",
    "train.gradient_checkpointing",
)
"""Settings that say where a run is stored, when it reruns, how it is promoted, how it is spread over
processes or how much memory a step holds (the same gradients, tested), not what it trains:
``config/resolved.yaml`` keeps them; params stay what tells fine-tunings apart (the MLflow UI lists every
param in one flat picker)."""


_FILE_DEFAULTS = {k: f.default for k, f in config.FileSpec.model_fields.items() if k != "path"}


def portable_path(path: str) -> str:
    """A data file as a param: its folder and name (``chatbot_intents/train.csv``), never this machine's
    absolute path, so the same data reads the same from every machine (its content is the run's
    ``tuneflow.data_fingerprint`` tag; the full path is in ``config/resolved.yaml``)."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def portable_model(name: str) -> str:
    """A model name as recorded: a hub id as it is, a local folder by :func:`portable_path`."""
    return portable_path(name) if Path(name).is_absolute() else name


def readable(value: Any) -> Any:
    """A float at 4 significant digits (``3.185e-05``, ``0.1196``), as the MLflow UI's narrow columns and a
    console line can show it whole; anything else as it is. The exact values stay in ``config/resolved.yaml``
    and in the Optuna study."""
    if isinstance(value, float) and value == value and abs(value) != float("inf"):
        return float(f"{value:.4g}")
    return value


def run_params(cfg: PipelineConfig) -> dict[str, Any]:
    """The config as MLflow params: what defines the fine-tuning, resolved, for its task type, nothing empty.

    Keys the task type does not use, :data:`NOT_PARAMS`, file options left at their defaults, empty values
    and the search space (logged on the search run) are left out; a search's settings are one ``search``
    param (``n_trials=6; sampler=tpe; ...``); data paths and a local model's path are
    :func:`portable_path` (``config/resolved.yaml`` keeps the full paths).
    Floats are :func:`readable`. The whole resolved config is logged as ``config/resolved.yaml`` next to
    them.
    """
    unused = unused_config(cfg.kind)
    out: dict[str, Any] = {}
    searched: list[str] = []
    for key, value in flatten(cfg.recorded()).items():
        if value is None or value == "" or value == [] or value == {}:
            continue
        if key.startswith(unused) or key.startswith(NOT_PARAMS) or key.startswith("search.space."):
            continue
        if key.startswith("search."):
            if cfg.searching and key != "search.enabled":
                searched.append(f"{key.removeprefix('search.')}={readable(value)}")
            continue
        leaf = key.rsplit(".", 1)[-1]
        if key.startswith("data.") and leaf in _FILE_DEFAULTS and value == _FILE_DEFAULTS[leaf]:
            continue
        if key == "model.name":
            out[key] = portable_model(value)
        elif key.startswith("data.") and leaf == "path":
            out[key] = portable_path(value)
        else:
            out[key] = readable(value)
    if cfg.searching:
        searched = [f"metric={cfg.search_metric}", *(s for s in searched if not s.startswith("metric="))]
        # One param, not one per setting: compared with a run without a search, MLflow's param diff would
        # open on a dozen blank search rows.
        out["search"] = "; ".join(searched)
    return out
