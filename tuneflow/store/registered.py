"""The MLflow model registry: registered models, versions, aliases and their tags (every registry call
goes through here, as every run call goes through :mod:`tuneflow.store.tracking`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from tuneflow import names
from tuneflow.store.tracking import (
    TAG_ADAPTER,
    TAG_ALIASES,
    TAG_DATA_FP,
    TAG_STAGE,
    client,
    runs_link,
    set_tags,
)

# The runs table's aliases column is narrow: what serves first ("champion, challenger", not "challenger, c…").
_ALIAS_ORDER = ("champion", "challenger", "previous-champion")


def _alias_rank(alias: str) -> tuple[int, str]:
    return (_ALIAS_ORDER.index(alias) if alias in _ALIAS_ORDER else len(_ALIAS_ORDER), alias)


def registry_description(name: str, experiment_id: str | None = None) -> str:
    """What the registered model's page says about its aliases and tags (shown in the MLflow UI), with a
    relative link to the fine-tunings' runs table (it opens in whichever UI shows the registry)."""
    runs = (
        f" Compare the fine-tunings: [runs of experiment {experiment_id}]({runs_link(experiment_id)})."
        if experiment_id
        else ""
    )
    return (
        "Fine-tuned by tuneflow. Aliases: `champion` is the version that passed the promotion gates and "
        f"serves (`models:/{name}@champion`); `challenger` is the latest version put to those gates; "
        f"`previous-champion` is what `tuneflow rollback {name}` restores. Each version's tags give its "
        "task, base model, config hash, data fingerprint and promotion decision (`tuneflow.promotion`)."
        + runs
    )


def register_model(
    model_uri: str,
    name: str,
    run_id: str,
    tags: dict[str, str] | None = None,
    description: str | None = None,
) -> str:
    """Create a new version of registered model ``name`` (``description``: the version's, shown in the
    registry's list of versions); returns the version number."""
    c = client()
    try:
        c.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        experiment_id = c.get_run(run_id).info.experiment_id
        c.create_registered_model(name, description=registry_description(name, experiment_id))
    # Linked to the logged model (models:/m-...), so its page shows the version instead of "Register model".
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    mv = c.create_model_version(
        name, model_uri, run_id=run_id, tags=tags or {}, model_id=model_id, description=description
    )
    if model_id:
        entry = [{"name": name, "version": str(mv.version)}]
        try:
            existing = c.get_logged_model(model_id).tags.get("mlflow.modelVersions")
            entry = (json.loads(existing) if existing else []) + entry
            c.set_logged_model_tags(model_id, {"mlflow.modelVersions": json.dumps(entry)})
        except mlflow.exceptions.MlflowException:  # the version exists either way
            pass
    return str(mv.version)


def version_of_run(name: str, run_id: str) -> Any | None:
    """The version of ``name`` already registered from ``run_id`` (registration is once per run), or None."""
    try:
        found = client().search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except mlflow.exceptions.MlflowException:
        return None
    return min(found, key=lambda mv: int(mv.version)) if found else None


def alias_version(name: str, alias: str) -> str | None:
    """The version behind ``alias`` of registered model ``name``, or None."""
    try:
        return str(client().get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


def set_alias(name: str, alias: str, version: str) -> None:
    """Point ``alias`` at ``version``; the runs of the versions it leaves and reaches say so (TAG_ALIASES)."""
    before = alias_version(name, alias)
    client().set_registered_model_alias(name, alias, str(version))
    _mark_aliases(name, {before, str(version)})


def delete_alias(name: str, alias: str) -> None:
    before = alias_version(name, alias)
    client().delete_registered_model_alias(name, alias)
    _mark_aliases(name, {before})


def _mark_aliases(name: str, versions: set[str | None]) -> None:
    """Tag each version's run with the aliases the version holds now: the runs table's champion column
    (the registry keeps aliases on versions, which the runs table cannot show)."""
    for version in sorted(v for v in versions if v):
        try:
            mv = client().get_model_version(name, version)
            if mv.run_id:
                set_tags(mv.run_id, {TAG_ALIASES: ", ".join(sorted(mv.aliases, key=_alias_rank)) or "-"})
        except mlflow.exceptions.MlflowException:  # a run in another store, or deleted: the alias stands
            continue


def set_version_tags(name: str, version: str, tags: dict[str, Any]) -> None:
    for key, value in tags.items():
        client().set_model_version_tag(name, str(version), key, str(value))


def model_version(name: str, version: str) -> Any:
    """The registry entry (run id, tags, aliases); raises a clear error when it does not exist."""
    try:
        return client().get_model_version(name, str(version))
    except mlflow.exceptions.MlflowException as exc:
        raise LookupError(f"registered model '{name}' has no version {version}") from exc


def registered_models() -> dict[str, dict[str, str]]:
    """Every registered model's aliases (``{name: {alias: version}}``)."""
    return {
        m.name: {a: str(v) for a, v in (m.aliases or {}).items()} for m in client().search_registered_models()
    }


def adapter_versions(base: str | None = None) -> list[dict[str, Any]]:
    """Registered LoRA adapter versions (optionally of one base model id), newest first per model."""
    out = []
    for mv in client().search_model_versions(f"tags.`{TAG_ADAPTER}` = 'true'"):
        tags = mv.tags or {}
        if base is not None and tags.get("tuneflow.base_model") != base:
            continue
        out.append(
            {
                "name": mv.name,
                "version": str(mv.version),
                "aliases": list(mv.aliases or []),
                "task": tags.get("tuneflow.task"),
                "base_model": tags.get("tuneflow.base_model"),
                "base_hash": tags.get("tuneflow.base_hash"),
                "tokenizer_hash": tags.get("tuneflow.tokenizer_hash"),
                "adapter_bytes": int(tags.get("tuneflow.adapter_bytes") or 0),
                "run_id": mv.run_id,
            }
        )
    return sorted(out, key=lambda a: (a["base_model"] or "", a["name"], -int(a["version"])))


def download_export(model_uri: str, dest: str | Path) -> Path:
    """The exported model directory inside a logged tuneflow pyfunc model (e.g. an adapter)."""
    root = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dest)))
    found = [p.parent for p in root.glob("artifacts/*/tuneflow.json")]
    if not found:
        raise LookupError(f"{model_uri} holds no tuneflow export (artifacts/*/tuneflow.json)")
    return found[0]


def check_registry(name: str, version: str | None = None, alias: str | None = None) -> None:
    """Raise LookupError (saying what exists) unless registered model ``name`` exists, with ``version``
    and ``alias`` when given: registry commands check this before anything heavy starts."""
    c = client()
    try:
        model = c.get_registered_model(name)
    except mlflow.exceptions.MlflowException as exc:
        known = sorted(m.name for m in c.search_registered_models(max_results=50))
        listed = f"registered: {', '.join(known)}" if known else "the store has no registered model yet"
        raise LookupError(f"no registered model '{name}' ({listed})") from exc
    if version is not None:
        model_version(name, version)
    if alias is not None and alias not in (model.aliases or {}):
        what = "nothing to roll back to" if alias == "previous-champion" else "no such alias"
        raise LookupError(f"registered model '{name}' has no '{alias}' alias: {what}")


def model_status(name: str) -> dict[str, Any]:
    """Champion, its metrics, data fingerprint and age; other aliases; the last retraining decision."""
    c = client()
    try:
        model = c.get_registered_model(name)
    except mlflow.exceptions.MlflowException as exc:
        raise LookupError(f"no registered model '{name}'") from exc
    out: dict[str, Any] = {"model": name, "aliases": {a: str(v) for a, v in (model.aliases or {}).items()}}
    champion = out["aliases"].get("champion")
    if champion:
        mv = c.get_model_version(name, champion)
        run = c.get_run(mv.run_id)
        out["champion"] = {
            "version": champion,
            "run_id": mv.run_id,
            "age_days": (time.time() * 1000 - mv.creation_timestamp) / 86_400_000,
            "data_fingerprint": mv.tags.get(TAG_DATA_FP),
            "promotion": mv.tags.get("tuneflow.promotion"),
            "metrics": {
                k: v
                for k, v in run.data.metrics.items()
                if k.startswith(
                    ("test/", "ood/", names.SERVING, names.OOS, names.CALIBRATION, names.BEHAVIOR)
                )
            },
        }
        runs = c.search_runs(
            [run.info.experiment_id],
            filter_string=f"tags.`{TAG_STAGE}` = 'retrain' and tags.`tuneflow.registered_model` = '{name}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if runs:
            tags = runs[0].data.tags
            out["last_retrain"] = {
                "run_id": runs[0].info.run_id,
                "when": pd.Timestamp(runs[0].info.start_time, unit="ms").isoformat(timespec="seconds"),
                "decision": tags.get("tuneflow.retrain.decision"),
                "reason": tags.get("tuneflow.retrain.reason"),
            }
    return out


def count_versions(name: str) -> int:
    try:
        return len(client().search_model_versions(f"name = '{name}'"))
    except mlflow.exceptions.MlflowException:
        return 0


def load_pyfunc(model_uri: str) -> Any:
    return mlflow.pyfunc.load_model(model_uri)
