"""The tune flow: validate -> Optuna search, one HPO parent run whose nested runs are the trials."""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from tuneflow.config import ConfigError, redact_secrets
from tuneflow.fitting.search import StudySummary
from tuneflow.flows.deployments import guard_deployment_run
from tuneflow.store import tracking
from tuneflow.store.params import readable
from tuneflow.tasks.search import search
from tuneflow.tasks.tracking import artifact_key, closing_run, describe_run, open_run
from tuneflow.tasks.validate import validate_data
from tuneflow.tasktypes.resolve import load_config


@dataclass(frozen=True)
class TuneResult:
    """What a tune flow run produced: the HPO parent run and the study summary."""

    run_id: str
    tracking_uri: str
    experiment: str
    search: StudySummary


def search_markdown(name: str, summary: StudySummary, uri: str) -> str:
    """A short report of a study for the Prefect UI."""
    params = "\n".join(f"| `{k}` | {readable(v)} |" for k, v in summary.best_params.items())
    best = "none" if summary.best_value is None else f"{summary.best_value:.4f}"
    return (
        f"# Search `{name}`\n\n- Study `{summary.study_name}` in `{summary.storage}`\n"
        f"- MLflow HPO run: [`{summary.run_id}`]({redact_secrets(tracking.run_url(summary.run_id, uri))}) "
        f"({redact_secrets(uri)}); best trial {summary.best_trial} "
        f"(run `{summary.best_run_id}`)\n"
        f"- Best {summary.metric}: **{best}** ({summary.direction})\n"
        f"- Trials: {summary.n_complete} complete, {summary.n_pruned} pruned, "
        f"{summary.n_failed} failed ({summary.trials_run_now} run now); "
        f"{summary.epochs_total:g} training epochs in all\n\n"
        f"| parameter | best value |\n| --- | --- |\n{params}\n"
    )


@flow(name="tune", log_prints=True)
def tune(config_path: str, overrides: list[str] | None = None, workers: int | str = "auto") -> TuneResult:
    """Run (or resume) the config's hyperparameter search.

    Args:
        config_path: the experiment YAML; it needs a ``search:`` section.
        overrides: ``dotted.key=value`` strings applied to the config.
        workers: local worker processes sharing the study.

    Returns:
        The HPO parent run and the study summary.
    """
    guard_deployment_run(config_path, overrides or [])
    cfg = load_config(config_path, overrides or [])
    if cfg.search is None:
        raise ConfigError(config_path, [("search", "missing: add a search: section (see configs/demo.yaml)")])
    uri = tracking.configure(cfg.tracking.tracking_uri)
    run_id = open_run(cfg, stage="tune").run_id
    with closing_run(cfg, run_id):
        validate_data(cfg, run_id)
        summary = search(cfg, run_id, workers)
        best = f"best trial {summary.best_trial}" if summary.best_trial is not None else "no complete trial"
        counts = f"{summary.n_complete} complete, {summary.n_pruned} pruned, {summary.n_failed} failed"
        describe_run(cfg, run_id, [], summary.metric, [f"study `{summary.study_name}`: {best}; {counts}"])
    experiment_id = tracking.get_run(run_id).info.experiment_id
    runs = redact_secrets(tracking.experiment_url(experiment_id, uri))
    create_markdown_artifact(
        key=artifact_key("tune", cfg),
        markdown=search_markdown(cfg.name, summary, uri)
        + f"\nCompare the trials: [runs of `{cfg.experiment_name}`]({runs})\n",
        description="tuneflow hyperparameter search summary",
    )
    return TuneResult(run_id, uri, cfg.experiment_name, summary)
