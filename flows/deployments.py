"""Deployments built from the project's own ``prefect.yaml`` (used by ``tuneflow serve`` and the tests)."""

from __future__ import annotations

import fnmatch
import importlib
import os
from pathlib import Path
from typing import Any

import yaml

from tuneflow.config import ConfigError
from tuneflow.tasktypes.resolve import load_config

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ALLOWED = (
    "train.lr",
    "train.weight_decay",
    "train.warmup_ratio",
    "train.batch_size",
    "train.grad_accumulation",
    "train.max_epochs",
    "train.min_epochs",
    "train.early_stopping_patience",
    "train.seed",
    "model.dropout",
    "model.lora.*",
    "search.n_trials",
    "search.timeout",
)
"""What a flow run created through a deployment may override when its prefect.yaml entry declares no
``allowed_overrides``: training hyper-parameters, never data paths, model ids, stores or URIs."""


def enter_checkout(variable: str = "TUNEFLOW_HOME") -> dict[str, str]:
    """Prefect pull step: run the flow in *this worker's* checkout.

    Resolved when the worker pulls, not when ``prefect deploy`` runs (a ``{{ $TUNEFLOW_HOME }}`` template
    would bake the deploying machine's path into every deployment): ``$TUNEFLOW_HOME`` on the worker, else
    the checkout tuneflow is installed from.
    """
    home = os.environ.get(variable)
    directory = Path(home).expanduser() if home else ROOT
    if not (directory / "flows").is_dir():
        raise FileNotFoundError(f"{variable}={directory} is not a tuneflow checkout (no flows/ folder)")
    os.chdir(directory)
    return {"directory": str(directory)}


def check_deployment_parameters(
    config_path: str,
    overrides: list[str],
    deployment: str | None = None,
    default_config: str | None = None,
    path: str | Path = ROOT / "prefect.yaml",
) -> None:
    """Refuse a deployment run's parameters that reach beyond what its deployment allows.

    Anyone who can create a flow run through the Prefect API picks its parameters (Prefect has no auth by
    default), so a run started from a deployment may only use a config inside this checkout's ``configs/``
    (or the config its deployer set, ``tuneflow serve --config``) and override the keys on its
    ``allowed_overrides`` list (prefect.yaml, read from the worker's own checkout; Prefect ignores the key).
    Runs started directly (CLI, Python) are not restricted.

    Args:
        config_path: the ``config_path`` parameter.
        overrides: the ``overrides`` parameter (``key=value`` strings).
        deployment: the deployment's name; None (not a deployment run) skips every check.
        default_config: the deployment's own ``config_path`` (set by whoever deployed it): always allowed.
        path: the prefect.yaml holding the allow-lists.

    Raises:
        ConfigError: naming each refused parameter.
    """
    if deployment is None:
        return
    spec = next((d for d in definitions(path) if d.get("name") == deployment), {})
    allowed = spec.get("allowed_overrides", DEFAULT_ALLOWED)
    problems = []
    configs = (ROOT / "configs").resolve()
    resolved = (ROOT / config_path).resolve()
    chosen_by_deployer = default_config is not None and resolved == (ROOT / default_config).resolve()
    if not resolved.is_relative_to(configs) and not chosen_by_deployer:
        problems.append(
            ("config_path", f"{config_path!r} is outside {configs}: deployments run checked-in configs")
        )
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if not any(fnmatch.fnmatchcase(key, pattern) for pattern in allowed):
            problems.append(
                (key, f"not overridable through deployment '{deployment}' (allowed: {', '.join(allowed)})")
            )
    if problems:
        raise ConfigError(f"deployment '{deployment}' parameters", problems)


def guard_deployment_run(config_path: str, overrides: list[str]) -> None:
    """:func:`check_deployment_parameters` for the current flow run (a no-op outside deployments)."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    # The run's own record says whether a deployment started it (prefect.runtime.deployment.id would read
    # the flow run back from the API first: ~0.15 s per flow call).
    ctx = FlowRunContext.get()
    deployment_id = ctx.flow_run.deployment_id if ctx and ctx.flow_run else None
    if deployment_id is None:
        return
    with get_client(sync_client=True) as client:
        spec = client.read_deployment(deployment_id)
    default = (spec.parameters or {}).get("config_path")
    check_deployment_parameters(config_path, overrides, spec.name, default_config=default)


def definitions(path: str | Path = ROOT / "prefect.yaml") -> list[dict[str, Any]]:
    """The ``deployments:`` entries of prefect.yaml."""
    return yaml.safe_load(Path(path).read_text())["deployments"]


def load_flow(entrypoint: str) -> Any:
    """``flows/retrain.py:retrain`` (a file of the checkout) -> the flow object of the installed
    ``tuneflow.flows.retrain``."""
    file, name = entrypoint.split(":")
    module = importlib.import_module("tuneflow." + file.removesuffix(".py").replace("/", "."))
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
