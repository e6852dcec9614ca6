"""The tune flow and `tuneflow run` with a search section, end to end through Prefect and MLflow."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from tests.test_search import search_config
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
    from flows.finetune import finetune

    cfg_path = search_config(tmp_path, tiny_model, n_trials=2, max_epochs=2)
    result = finetune(str(cfg_path), ["train.cv_folds=2"])
    cfg = load_config(cfg_path)
    client = MlflowClient(tracking_uri=tracking.configure(cfg.tracking.tracking_uri))
    parent = client.get_run(result.run_id)
    best = result.search.best_params
    # The final training used the best trial's parameters, and says so in its params.
    assert float(parent.data.params["train.lr"]) == pytest.approx(best["train.lr"])
    assert float(parent.data.params["model.dropout"]) == pytest.approx(best["model.dropout"])
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
    assert "search/trials_complete" in parent.data.metrics and "space.train.lr" in parent.data.params
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

    from flows.tune import tune

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

    # The same command again (from the CLI): the study is complete, nothing new runs.
    again = CliRunner().invoke(app, ["tune", str(cfg_path)])
    assert again.exit_code == 0, again.output
    out = " ".join(again.output.split())
    assert "best val/f1_macro" in out and "tuneflow run" in out
    assert len(open_study(cfg).trials) == 3
