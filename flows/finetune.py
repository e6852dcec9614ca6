"""The finetune flow: validate -> train -> evaluate -> register, one MLflow parent run per flow run."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from tasks.evaluate import evaluate
from tasks.registry import register
from tasks.tracking import close_run, open_run
from tasks.train import train
from tasks.validate import validate_data
from tuneflow import tracking
from tuneflow.config import load_config

HEADLINE = ("test_accuracy", "test_f1_macro", "test_f1_weighted", "train_val_gap", "latency_p95_ms")


@flow(name="finetune", log_prints=True)
def finetune(config_path: str, overrides: list[str] | None = None, resume: bool = False) -> dict:
    """Fine-tune the model described by a YAML config and register it in MLflow.

    Args:
        config_path: the experiment YAML.
        overrides: ``dotted.key=value`` strings applied to the config.
        resume: continue the newest interrupted run of the same config from its last checkpoint.

    Returns:
        ``run_id``, ``metrics``, and ``model`` (registered name/version/uri, or None when not registered).
    """
    cfg = load_config(config_path, overrides or [])
    uri = tracking.configure(cfg.tracking.tracking_uri)
    opened = open_run(cfg, resume)
    run_id = opened["run_id"]
    try:
        data = validate_data(cfg, run_id)
        fitted = train(cfg, run_id, opened["resume_from"])
        metrics = evaluate(cfg, run_id, fitted["export_dir"])
        model = (
            register(cfg, run_id, fitted["export_dir"], data["data_fingerprint"])
            if cfg.tracking.register_after_eval
            else None
        )
    except KeyboardInterrupt:
        close_run(cfg, run_id, "KILLED")
        raise
    except BaseException:
        close_run(cfg, run_id, "FAILED")
        raise
    close_run(cfg, run_id, "FINISHED")
    rows = "\n".join(f"| {k} | {metrics[k]:.4f} |" for k in HEADLINE if k in metrics)
    registered = f"`{model['name']}` version **{model['version']}**" if model else "not registered"
    create_markdown_artifact(
        key=f"finetune-{cfg.name.lower().replace('_', '-')}",
        markdown=(
            f"# Fine-tuning `{cfg.name}`\n\n- MLflow run: `{run_id}` ({uri})\n- Model: {registered}\n"
            f"- Epochs: {fitted['epochs']} (early stop: {fitted['stopped_early']})\n\n"
            f"| metric | value |\n| --- | --- |\n{rows}\n"
        ),
        description="tuneflow fine-tuning summary",
    )
    return {
        "run_id": run_id,
        "tracking_uri": uri,
        "experiment": cfg.experiment_name,
        "metrics": metrics,
        "model": model,
        "fit": fitted,
    }
