"""The finetune flow: validate -> train -> evaluate -> register, one MLflow parent run per flow run."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.deployments import guard_deployment_run
from flows.tune import search_markdown
from tasks.crossval import cross_validate
from tasks.evaluate import evaluate
from tasks.promote import promote
from tasks.registry import register, registration
from tasks.search import search
from tasks.tracking import (
    artifact_key,
    closing_run,
    open_run,
    record_config,
    recorded_config,
    remove_checkpoints,
)
from tasks.train import train
from tasks.validate import validate_data
from tuneflow import tracking
from tuneflow.config import PipelineConfig, load_config, redact_secrets
from tuneflow.faults import crash_point
from tuneflow.search import best_config
from tuneflow.tasktypes import HEADLINE


@flow(name="finetune", log_prints=True)
def finetune(
    config_path: str, overrides: list[str] | None = None, resume: bool = False, workers: int = 1
) -> dict:
    """Fine-tune the model described by a YAML config and register it in MLflow.

    With an enabled ``search:`` section the study runs first (nested ``search`` run, trials nested under
    it) and the model is then retrained from the pre-trained weights with the best trial's parameters.

    Args:
        config_path: the experiment YAML.
        overrides: ``dotted.key=value`` strings applied to the config.
        resume: continue the newest interrupted run of the same config from its last checkpoint.
        workers: local worker processes for the search.

    Returns:
        ``run_id``, ``metrics``, ``model`` (registered name/version/uri, or None when not registered),
        ``fit``, ``search`` (the study summary or None), ``cv`` (cross-validation metrics or None) and
        ``promotion`` (the champion/challenger decision, or None when not registered or not asked).
    """
    guard_deployment_run(config_path, overrides or [])
    cfg = load_config(config_path, overrides or [])
    uri = tracking.configure(cfg.tracking.tracking_uri)
    opened = open_run(cfg, resume, log_config=not cfg.searching)
    run_id = opened["run_id"]
    searched = cv = None
    fitted: dict = {"epochs": 0, "stopped_early": False}
    with closing_run(cfg, run_id):
        if opened["registered_version"]:
            # Killed after registration: the model is in the registry; only its decision may be missing.
            final, model, metrics = _registered_state(cfg, run_id)
            remove_checkpoints(final, run_id)  # killed before it could delete them
        else:
            data = validate_data(cfg, run_id)
            final = cfg
            if cfg.searching:
                searched = search(cfg, run_id, workers, nested=True)
                final = best_config(cfg, searched["best_params"])
                record_config(final, run_id)
                tracking.set_tags(run_id, {"tuneflow.search_run_id": searched["run_id"]})
            if final.train.cv_folds:
                cv = cross_validate(final, run_id)
            fitted = train(final, run_id, opened["resume_from"])
            metrics = evaluate(final, run_id, fitted["export_dir"])
            model = (
                register(final, run_id, fitted["export_dir"], data["data_fingerprint"])
                if final.tracking.register_after_eval
                else None
            )
            crash_point("register")
            # Registered: the store holds the model, the local checkpoints (~270 MB for MiniLM) can go.
            remove_checkpoints(final, run_id, keep_export=model is None)
        promotion = None
        if model and final.gates.promote:
            if model["decided"]:  # a resumed run whose decision was taken before the kill: never twice
                print(f"v{model['version']} already has a promotion decision: {model['decided']}")
            else:
                promotion = promote(final, model["version"])
    rows = "\n".join(f"| {k} | {metrics[k]:.4f} |" for k in HEADLINE[cfg.task] if k in metrics)
    registered = f"`{model['name']}` version **{model['version']}**" if model else "not registered"
    cv_line = ""
    if cv:
        key = f"cv_{final.train.monitor}"
        cv_line = (
            f"- Cross-validation {final.train.monitor}: {cv[key + '_mean']:.4f} +- {cv[key + '_std']:.4f}\n"
        )
    create_markdown_artifact(
        key=artifact_key("finetune", cfg),
        markdown=(
            f"# Fine-tuning `{cfg.name}`\n\n- MLflow run: `{run_id}` ({redact_secrets(uri)})\n"
            f"- Model: {registered}\n"
            f"- Epochs: {fitted['epochs']} (early stop: {fitted['stopped_early']})\n{cv_line}\n"
            f"| metric | value |\n| --- | --- |\n{rows}\n"
            + (f"\n{search_markdown(cfg.name, searched, uri)}" if searched else "")
        ),
        description="tuneflow fine-tuning summary",
    )
    return {
        "run_id": run_id,
        "tracking_uri": redact_secrets(uri),
        "experiment": cfg.experiment_name,
        "metrics": metrics,
        "model": model,
        "fit": fitted,
        "search": searched,
        "cv": cv,
        "promotion": promotion,
    }


def _registered_state(cfg: PipelineConfig, run_id: str) -> tuple[PipelineConfig, dict, dict[str, float]]:
    """Config, registered version and metrics of a run that registered its model before it was killed."""
    final = recorded_config(run_id, cfg.tracking.tracking_uri, f"runs:/{run_id}/config/resolved.yaml")
    mv = tracking.version_of_run(final.registered_model_name, run_id)
    if mv is None:
        raise LookupError(
            f"run {run_id} is tagged as registered but {final.registered_model_name} has no version of it"
        )
    return final, registration(mv), tracking.run_metrics(run_id)
