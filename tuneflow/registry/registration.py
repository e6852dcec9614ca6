"""Registration: log an export as the run's MLflow model and make it a version of the registered model."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneflow import names
from tuneflow.config import PipelineConfig
from tuneflow.fitting.export import dir_size, read_meta
from tuneflow.registry import packaging
from tuneflow.store import registered, tracking

TAG_PROMOTION = "tuneflow.promotion"


@dataclass(frozen=True)
class Registration:
    """A registered version: its model URI, name and number; ``decided`` = its promotion verdict, if any."""

    model_uri: str
    name: str
    version: str
    decided: str = ""
    reused: bool = False  # the run had registered it before (a resumed run)

    @classmethod
    def of(cls, mv: Any) -> Registration:
        """The registration of an existing model version."""
        decided = (mv.tags or {}).get(TAG_PROMOTION, "")
        return cls(mv.source, mv.name, str(mv.version), decided, reused=True)


def describe(
    cfg: PipelineConfig, run_id: str, metrics: dict[str, float], experiment_id: str, run_name: str = ""
) -> str:
    """A version's one-line description: the run's headline test ``metrics``, task, base model and a link to
    its run, by name (relative: it opens in whichever MLflow UI shows the registry, in the model-training
    view)."""
    scores = ", ".join(
        f"{k.removeprefix(names.TEST)} {metrics[k]:.4f}"
        for k in cfg.kind.metrics.headline
        if k.startswith(names.TEST) and k in metrics
    )
    base = Path(cfg.model.name).name if Path(cfg.model.name).is_absolute() else cfg.model.name
    lora = " (LoRA adapter)" if cfg.model.lora else ""
    # Scores first: the registry's list of versions shows only the description's first ~25 characters.
    link = tracking.run_link(experiment_id, run_id)
    label = (run_name or run_id).replace("[", "(").replace("]", ")")
    return f"test {scores or 'not evaluated'}; {cfg.task} from {base}{lora}; MLflow run [{label}]({link})"


def register_export(cfg: PipelineConfig, run_id: str, export_dir: str, data_fingerprint: str) -> Registration:
    """Log the export on ``run_id`` as a pyfunc model and register it as a new version.

    Idempotent per run: a run that already has a version (a resumed run killed after registering) gets
    that version back, with ``decided`` telling whether it already has a promotion decision.
    """
    name = cfg.registered_model_name
    existing = registered.version_of_run(name, run_id)
    if existing is not None:
        return Registration.of(existing)
    start = time.perf_counter()
    model_uri = packaging.log_model(run_id, export_dir, cfg.task)
    meta = read_meta(export_dir)
    # One config hash per run: the version carries its run's (the config as given, which --resume matches);
    # after a search the tuned config differs, and its own hash is kept beside it.
    run = tracking.get_run(run_id)  # tags and metrics, read once
    recorded = run.data
    run_hash = recorded.tags.get(tracking.TAG_CONFIG_HASH, cfg.fingerprint())
    tags = {
        tracking.TAG_CONFIG_HASH: run_hash,
        "tuneflow.trained_config_hash": cfg.fingerprint(),
        "tuneflow.data_fingerprint": data_fingerprint,
        "tuneflow.base_model": cfg.model.name,
        "tuneflow.task": cfg.task,
    }
    if meta.get("lora"):
        # The adapter registry: what `tuneflow adapters` lists and what loading checks against.
        tags.update(
            {
                tracking.TAG_ADAPTER: "true",
                "tuneflow.base_hash": meta["base_hash"],
                "tuneflow.tokenizer_hash": meta["tokenizer_hash"],
                "tuneflow.adapter_bytes": str(dir_size(export_dir, "adapter_model.*")),
            }
        )
    version = registered.register_model(
        model_uri,
        name,
        run_id,
        tags=tags,
        description=describe(cfg, run_id, recorded.metrics, run.info.experiment_id, run.info.run_name),
    )
    tracking.set_tags(run_id, {tracking.TAG_REGISTERED: version})
    tracking.log_metrics(run_id, {f"{names.TIMING}register_s": time.perf_counter() - start})
    return Registration(model_uri, name, version)


def pick_adapters(found: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One version per adapter name (``found`` is newest first): its champion, else the newest."""
    chosen: dict[str, dict[str, Any]] = {}
    for a in found:
        if a["name"] not in chosen or "champion" in a["aliases"]:
            chosen[a["name"]] = a
    return chosen


def register_adapter_set(name: str, found: list[dict[str, Any]]) -> tuple[str, dict[str, dict[str, Any]]]:
    """Register model ``name`` serving every adapter in ``found`` on their shared base; returns the version
    and the adapter versions chosen (:func:`pick_adapters`).

    Raises:
        tuneflow.backbone.lora.AdapterMismatchError: the adapters do not share one base, tokenizer and task
            (checked before any run or version exists).
    """
    import tempfile

    from tuneflow.registry.serving import check_adapter_set

    chosen = pick_adapters(found)
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {
            n: str(registered.download_export(f"models:/{n}/{a['version']}", Path(tmp) / n))
            for n, a in chosen.items()
        }
        check_adapter_set({n: read_meta(d) for n, d in dirs.items()})
        task = read_meta(next(iter(dirs.values())))["task"]
        run_id = tracking.start_run(name, run_name="adapter-set", tags={tracking.TAG_STAGE: "adapter-set"})
        tracking.log_params(run_id, {f"adapter.{n}": f"v{a['version']}" for n, a in chosen.items()})
        uri = packaging.log_adapter_set(run_id, dirs, task)
        first = next(iter(chosen.values()))
        listed = ", ".join(f"{n} (v{a['version']})" for n, a in chosen.items())
        version = registered.register_model(
            uri,
            name,
            run_id,
            tags={
                "tuneflow.task": task,
                "tuneflow.base_model": first["base_model"],
                "tuneflow.base_hash": first["base_hash"],
                "tuneflow.adapters": ", ".join(f"{n}/v{a['version']}" for n, a in chosen.items()),
            },
            description=f"{task} adapter set on {first['base_model']}: {listed}; pick one with "
            "params={'adapter': NAME}",
        )
        tracking.end_run(run_id)
    return version, chosen
