"""The finetune flow: validate -> train -> evaluate -> register, one MLflow parent run per flow run."""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from tuneflow.config import PipelineConfig, redact_secrets
from tuneflow.faults import crash_point
from tuneflow.fitting.crossval import CVResult
from tuneflow.fitting.reuse import plan_final
from tuneflow.fitting.runs import OpenedRun, record_config, recorded_config
from tuneflow.fitting.search import StudySummary, best_config
from tuneflow.fitting.training import FitResult
from tuneflow.flows.deployments import guard_deployment_run
from tuneflow.flows.tune import search_markdown
from tuneflow.judging.promotion import Decision
from tuneflow.registry.registration import Registration
from tuneflow.store import registered, tracking
from tuneflow.tasks.crossval import cross_validate
from tuneflow.tasks.evaluate import evaluate
from tuneflow.tasks.promote import promote
from tuneflow.tasks.registry import register
from tuneflow.tasks.search import search
from tuneflow.tasks.tracking import (
    artifact_key,
    closing_run,
    describe_run,
    open_run,
    remove_checkpoints,
)
from tuneflow.tasks.train import train
from tuneflow.tasks.validate import validate_data
from tuneflow.tasktypes.resolve import load_config


@dataclass(frozen=True)
class FinetuneResult:
    """What a finetune flow run produced (the CLI and the Prefect artifact read its fields)."""

    run_id: str
    tracking_uri: str
    experiment: str
    task: str
    metrics: dict[str, float]
    model: Registration | None  # None when not registered
    fit: FitResult | None  # None for a resumed run whose model was registered before the kill
    search: StudySummary | None
    cv: CVResult | None
    promotion: Decision | None  # None when not registered, not asked, or decided before a kill
    headline: list[tuple[str, float]]  # the task type's headline metrics that this run has, in their order


@flow(name="finetune", log_prints=True)
def finetune(
    config_path: str, overrides: list[str] | None = None, resume: bool = False, workers: int | str = "auto"
) -> dict:
    """Fine-tune the model described by a YAML config and register it in MLflow.

    With an enabled ``search:`` section the study runs first (its trials nested under this flow's run) and
    the model is then retrained from the pre-trained weights with the best trial's parameters.

    Args:
        config_path: the experiment YAML.
        overrides: ``dotted.key=value`` strings applied to the config.
        resume: continue the newest interrupted run of the same config from its last checkpoint.
        workers: local worker processes for the search.

    Returns:
        The run, its metrics, the registered version, the fit, the search and cross-validation summaries
        and the promotion decision (each None when it did not happen).
    """
    guard_deployment_run(config_path, overrides or [])
    cfg = load_config(config_path, overrides or [])
    uri = tracking.configure(cfg.tracking.tracking_uri)
    opened = open_run(cfg, resume, log_config=not cfg.searching)
    run_id = opened.run_id
    with closing_run(cfg, run_id):
        done = _stages(cfg, opened, workers)
        promotion = _decide(done.final, done.model)
    headline = [(k, done.metrics[k]) for k in cfg.kind.metrics.headline if k in done.metrics]
    describe_run(done.final, run_id, headline, done.final.train.monitor, _notes(done.model, promotion))
    result = FinetuneResult(
        run_id,
        redact_secrets(uri),
        cfg.experiment_name,
        cfg.task,
        done.metrics,
        done.model,
        done.fitted,
        done.searched,
        done.cv,
        promotion,
        headline,
    )
    create_markdown_artifact(
        key=artifact_key("finetune", cfg),
        markdown=finetune_markdown(cfg.name, result, uri),
        description="tuneflow fine-tuning summary",
    )
    return result


@dataclass
class _Done:
    """What the stages of one fine-tuning produced (searched / cv / fitted are None when skipped)."""

    final: PipelineConfig
    model: Registration | None
    metrics: dict[str, float]
    searched: StudySummary | None = None
    cv: CVResult | None = None
    fitted: FitResult | None = None


def _stages(cfg: PipelineConfig, opened: OpenedRun, workers: int | str) -> _Done:
    """validate -> search (optional) -> cross-validate (optional) -> train -> evaluate -> register."""
    run_id = opened.run_id
    if opened.registered_version:
        # Killed after registration: the model is in the registry; only its decision may be missing.
        final, model, metrics = _registered_state(cfg, run_id)
        remove_checkpoints(final, run_id)  # killed before it could delete them
        return _Done(final, model, metrics)
    data = validate_data(cfg, run_id)
    final, searched, cv, start = cfg, None, None, None
    if cfg.searching:
        searched = search(cfg, run_id, workers, final_params=True)
        final = best_config(cfg, searched.best_params)
        record_config(final, run_id)
        start = plan_final(cfg, final, searched)
    if final.train.cv_folds:
        cv = cross_validate(final, run_id)
    trained = train(final, run_id, None if start and start.mode == "reuse" else opened.resume_from, start)
    metrics = evaluate(final, run_id, trained.export_dir).metrics
    model = None
    if final.tracking.register_after_eval:
        model = register(final, run_id, trained.export_dir, data.data_fingerprint)
    crash_point("register")
    # Registered: the store holds the model, the local checkpoints (~270 MB for MiniLM) can go.
    remove_checkpoints(final, run_id, keep_export=model is None)
    return _Done(final, model, metrics, searched, cv, trained.fit)


def _decide(final: PipelineConfig, model: Registration | None) -> Decision | None:
    """The promotion decision on the registered version (never twice for a resumed run), or None."""
    if not (model and final.gates.promote):
        return None
    if model.decided:  # a resumed run whose decision was taken before the kill
        print(f"v{model.version} already has a promotion decision: {model.decided}")
        return None
    return promote(final, model.version)


def _notes(model: Registration | None, promotion: Decision | None) -> list[str]:
    notes = [f"registered as `{model.name}` v{model.version}"] if model else []
    if promotion is not None:
        notes.append(
            "promoted to champion" if promotion.promote else "not promoted: see the promotion report"
        )
    return notes


def finetune_markdown(name: str, result: FinetuneResult, uri: str) -> str:
    """A short report of a fine-tuning for the Prefect UI."""
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in result.headline)
    model = result.model
    registered = f"`{model.name}` version **{model.version}**" if model else "not registered"
    url = redact_secrets(tracking.run_url(result.run_id, uri))
    runs = redact_secrets(tracking.experiment_url(tracking.get_run(result.run_id).info.experiment_id, uri))
    lines = [
        f"# Fine-tuning `{name}`",
        "",
        f"- MLflow run: [`{result.run_id}`]({url}) ({redact_secrets(uri)}; a local store: run `tuneflow ui`)",
        f"- Compare with the other fine-tunings: [runs of `{result.experiment}`]({runs})",
        f"- Model: {registered}",
    ]
    if result.fit:
        lines.append(f"- Epochs: {result.fit.epochs} (early stop: {result.fit.stopped_early})")
    if result.cv:
        lines.append(f"- Cross-validation {result.cv.metric}: {result.cv.mean:.4f} +- {result.cv.std:.4f}")
    text = "\n".join(lines) + f"\n\n| metric | value |\n| --- | --- |\n{rows}\n"
    return text + (f"\n{search_markdown(name, result.search, uri)}" if result.search else "")


def _registered_state(
    cfg: PipelineConfig, run_id: str
) -> tuple[PipelineConfig, Registration, dict[str, float]]:
    """Config, registered version and metrics of a run that registered its model before it was killed."""
    final = recorded_config(run_id, cfg.tracking.tracking_uri, f"runs:/{run_id}/config/resolved.yaml")
    mv = registered.version_of_run(final.registered_model_name, run_id)
    if mv is None:
        raise LookupError(
            f"run {run_id} is tagged as registered but {final.registered_model_name} has no version of it"
        )
    return final, Registration.of(mv), tracking.run_metrics(run_id)
