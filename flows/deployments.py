"""Deployments built from the project's own ``prefect.yaml`` (used by ``tuneflow serve`` and the tests)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml

from tuneflow.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def definitions(path: str | Path = ROOT / "prefect.yaml") -> list[dict[str, Any]]:
    """The ``deployments:`` entries of prefect.yaml."""
    return yaml.safe_load(Path(path).read_text())["deployments"]


def load_flow(entrypoint: str) -> Any:
    """``flows/retrain.py:retrain`` -> the flow object."""
    file, name = entrypoint.split(":")
    module = importlib.import_module(file.removesuffix(".py").replace("/", "."))
    return getattr(module, name)


def build(config_path: str | None = None, path: str | Path = ROOT / "prefect.yaml") -> list[Any]:
    """RunnerDeployments for ``flow.serve``-style serving, one per prefect.yaml entry.

    Args:
        config_path: config every deployment runs (default: the one in prefect.yaml). The retrain schedule
            comes from its ``retrain.schedule`` (null = no schedule).
        path: the prefect.yaml to read.
    """
    out = []
    for spec in definitions(path):
        params = dict(spec.get("parameters") or {})
        if config_path:
            params["config_path"] = config_path
        kwargs: dict[str, Any] = {
            "name": spec["name"],
            "parameters": params,
            "description": spec.get("description"),
        }
        if spec.get("schedules"):
            retrain = load_config(ROOT / params["config_path"]).retrain
            if retrain.schedule:
                from prefect.schedules import Cron

                kwargs["schedule"] = Cron(retrain.schedule, timezone=retrain.timezone)
        out.append(load_flow(spec["entrypoint"]).to_deployment(**kwargs))
    return out
