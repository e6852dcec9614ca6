"""The tune flow and `tuneflow run` with a search section, end to end through Prefect and MLflow."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from tests.test_search import search_config
from tuneflow import names
from tuneflow.cli import app
from tuneflow.fitting.search import open_study
from tuneflow.store import tracking
from tuneflow.tasktypes.resolve import load_config

pytestmark = pytest.mark.integration


def _children(client: MlflowClient, experiment: str, parent: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'", max_results=500
    )


def test_run_with_search_and_cv_retrains_best_params(
    tmp_path: Path, tiny_model: str, prefect_harness: None
) -> None:
    from tuneflow.flows.finetune import finetune

    cfg_path = search_config(tmp_path, tiny_model, n_trials=2, max_epochs=2)
    result = finetune(str(cfg_path), ["train.cv_folds=2"])
    cfg = load_config(cfg_path)
    client = MlflowClient(tracking_uri=tracking.configure(cfg.tracking.tracking_uri))
    parent = client.get_run(result.run_id)
    best = result.search.best_params
    # The final training used the best trial's parameters, and says so in its params (at 4 significant
    # digits: the exact values are in config/resolved.yaml).
    assert float(parent.data.params["train.lr"]) == pytest.approx(best["train.lr"], rel=5e-4)
    assert float(parent.data.params["model.dropout"]) == pytest.approx(best["model.dropout"], rel=5e-4)
    assert parent.data.params["train.max_epochs"] == "3"  # the trial budget (2) is not the final one
    assert result.model.version == "1"
    children = _children(client, cfg.experiment_name, result.run_id)
    stages = sorted(r.data.tags["tuneflow.stage"] for r in children)
    assert stages == ["fold", "fold", "trial", "trial"]  # final-config CV folds + the trials, one level down
    assert {"cv/f1_macro_mean", "cv/f1_macro_std"} <= set(parent.data.metrics)
    # The final-config folds' out-of-fold probabilities feed the label-quality check (nothing relabeled).
    issues = parent.data.metrics["label_quality/issues"]
    assert 0 <= parent.data.metrics["label_quality/issue_share"] <= 1
    table = client.download_artifacts(result.run_id, "validation/label_issues.csv", str(tmp_path))
    assert len(pd.read_csv(table)) == issues
    # The study is logged on the run itself (no run in between): its summary, plots and best values.
    assert parent.data.tags["tuneflow.best_trial"] == str(result.search.best_trial)
    assert "search/trials_complete" in parent.data.metrics
    assert "model.dropout float [0.0, 0.3]" in parent.data.params["search.space"]
    assert not any(k.startswith("best.") for k in parent.data.params)  # the params are the best values
    trials = [r for r in children if r.data.tags["tuneflow.stage"] == "trial"]
    assert len(trials) == 2
    for trial in trials:  # with cv_folds every trial is the mean over its own nested fold runs
        folds = _children(client, cfg.experiment_name, trial.info.run_id)
        if trial.data.tags["optuna.state"] == "COMPLETE":
            assert len(folds) == 2 and "cv/f1_macro_mean" in trial.data.metrics
        assert all(f.info.status == "FINISHED" for f in folds)


def test_tune_logs_study_summary_and_cli_rerun_resumes(
    tmp_path: Path, tiny_model: str, prefect_harness: None
) -> None:
    from prefect.artifacts import Artifact

    from tuneflow.flows.tune import tune

    cfg_path = search_config(tmp_path, tiny_model, n_trials=3)
    result = tune(str(cfg_path))
    cfg = load_config(cfg_path)
    client = MlflowClient(tracking_uri=tracking.configure(cfg.tracking.tracking_uri))
    hpo = client.get_run(result.run_id)
    assert hpo.data.tags["tuneflow.stage"] == "tune" and hpo.info.status == "FINISHED"
    assert hpo.data.metrics["search/trials_complete"] + hpo.data.metrics["search/trials_pruned"] == 3
    assert "tuneflow.best.train.lr" in hpo.data.tags and "tuneflow.best.model.dropout" in hpo.data.tags
    trials = _children(client, cfg.experiment_name, hpo.info.run_id)
    assert len(trials) == 3 and {r.data.tags["tuneflow.stage"] for r in trials} == {"trial"}
    local = Path(client.download_artifacts(hpo.info.run_id, "search", str(tmp_path / "dl")))
    table = pd.read_csv(local / "trials.csv")
    assert len(table) == 3 and set(table["mlflow_run_id"]) == {r.info.run_id for r in trials}
    assert (local / "optimization_history.png").exists() and (local / "best.json").exists()
    assert hpo.info.run_id in Artifact.get("tune-tiny-search").data
    assert not list(Path(cfg.output_dir).rglob("*.ckpt"))  # no final model follows: no checkpoint kept

    # The same command again (from the CLI): the study is complete, nothing new runs.
    again = CliRunner().invoke(app, ["tune", str(cfg_path)])
    assert again.exit_code == 0, again.output
    out = " ".join(again.output.split())
    assert "best val/f1_macro" in out and "tuneflow run" in out
    assert len(open_study(cfg).trials) == 3


def test_run_reuses_the_best_trial_instead_of_training_again(
    tmp_path: Path, tiny_model: str, prefect_harness: None
) -> None:
    """search.final: reuse_best (the default) with trials that train the final config: no second training;
    the registered model is the best trial's, and scores what that trial scored."""
    from tuneflow.flows.finetune import finetune

    cfg_path = search_config(tmp_path, tiny_model, n_trials=2, pruner="none")
    result = finetune(str(cfg_path), ["train.precision=32-true"])
    cfg = load_config(cfg_path)
    client = MlflowClient(tracking_uri=tracking.configure(cfg.tracking.tracking_uri))
    parent = client.get_run(result.run_id)
    best = result.search.best_trial
    assert parent.data.tags["tuneflow.final"] == f"reuse: trial {best} trained this exact config"
    trial = client.get_run(result.search.best_run_id)
    metric = cfg.search_metric
    best_key = names.best(metric)
    assert parent.data.metrics[best_key] == trial.data.metrics[best_key]
    assert parent.data.metrics[best_key] == pytest.approx(result.search.best_value, rel=1e-6)
    assert result.fit.epochs == trial.data.metrics["fit/epochs_trained"]
    # The registered model, scored again by the evaluation, gets the validation accuracy the trial had at
    # its best (checkpointed) validation.
    curve = client.get_metric_history(trial.info.run_id, metric)
    at = max(curve, key=lambda m: (m.value, -m.step)).step  # the first best: the one checkpointed
    accuracy = {m.step: m.value for m in client.get_metric_history(trial.info.run_id, "val/accuracy")}
    assert parent.data.metrics["fit/gap_val_accuracy"] == pytest.approx(accuracy[at], abs=1e-6)
    assert "timing/train_tokens_per_s" not in parent.data.metrics  # nothing was trained
    # The run shows the trial's curves (the final training's, since they are the same training).
    assert [m.value for m in client.get_metric_history(result.run_id, metric)] == [
        m.value for m in client.get_metric_history(trial.info.run_id, metric)
    ]
    assert result.model.version == "1"


def test_run_continues_from_the_best_trial_when_asked(
    tmp_path: Path, tiny_model: str, prefect_harness: None
) -> None:
    """search.final: continue with a final budget larger than the trials': the added epochs only, from the
    best trial's weights; a few-shot trial's pair phase is not run again, and the run still says the model
    went through it."""
    from tuneflow.flows.finetune import finetune

    cfg_path = search_config(tmp_path, tiny_model, n_trials=1, pruner="none", max_epochs=1, final="continue")
    few = ["model.pooling=mean", "fewshot.enabled=true", "fewshot.iterations=1"]
    result = finetune(str(cfg_path), ["train.max_epochs=3", *few])
    client = MlflowClient(tracking_uri=tracking.configure(load_config(cfg_path).tracking.tracking_uri))
    parent = client.get_run(result.run_id)
    assert parent.data.tags["tuneflow.final"].startswith("continue: trial 0's weights + 2 epoch(s)")
    assert parent.data.tags["tuneflow.fewshot"] == "True" and parent.data.metrics["fewshot/texts"] > 0
    assert not client.get_metric_history(result.run_id, "fewshot/loss")  # the trial's curve, not this run's
    assert result.fit.epochs == 2 and parent.data.params["train.max_epochs"] == "3"
    assert result.model.version == "1"


def test_final_start_says_why_it_retrains(tmp_path: Path, tiny_model: str) -> None:
    from tuneflow.fitting.reuse import plan_final
    from tuneflow.fitting.search import StudySummary, best_config, kept_checkpoint

    def plan(kept: bool = True, **search: object):
        cfg = load_config(search_config(tmp_path, tiny_model, n_trials=1, **search))
        summary = StudySummary(
            "s",
            "",
            cfg.search_metric,
            "maximize",
            0.5,
            {"train.lr": 3e-3},
            0,
            "run",
            1,
            0,
            0,
            1,
            3.0,
            summary_dir=str(tmp_path / "work" / "summary"),
        )
        ckpt = kept_checkpoint(tmp_path / "work", 0)
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        for path in (ckpt, ckpt.with_suffix(".json")):
            path.unlink(missing_ok=True)
            if kept:
                path.write_text("{}")
        return plan_final(cfg, best_config(cfg, summary.best_params), summary)

    assert plan().mode == "reuse" and plan(max_epochs=3).mode == "reuse"  # 3 = train.max_epochs
    assert plan(evals_per_epoch=4).mode == "reuse"  # finer validation, same training
    assert plan(final="retrain").reason == "search.final: retrain"
    assert "was not kept" in plan(kept=False).reason
    assert "continue would start from the best trial's weights" in plan(max_epochs=2).reason
    longer = plan(max_epochs=2, final="continue")
    assert (longer.mode, longer.added_epochs, longer.trial) == ("continue", 1, 0)
