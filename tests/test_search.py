"""Optuna search on a tiny model: nested MLflow runs, pruning, plots, resume, parallel workers, bad spaces."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from tests.conftest import make_config
from tuneflow import tracking
from tuneflow.config import load_config
from tuneflow.search import RUN_ATTR, open_study, run_study

pytestmark = pytest.mark.integration

# lr 1e-8 never learns: with the median pruner those trials fall below the median after the first epoch.
SPACE = {
    "train.lr": {"type": "categorical", "choices": [3e-3, 1e-8]},
    "model.dropout": {"type": "float", "low": 0.0, "high": 0.3},
}


def search_config(tmp: Path, tiny_model: str, n_trials: int = 4, **search: object) -> Path:
    uri = f"sqlite:///{tmp}/mlflow.db"
    return make_config(
        tmp,
        tiny_model,
        name="tiny-search",
        tracking={"tracking_uri": uri},
        train={"max_epochs": 3},
        search={
            "n_trials": n_trials,
            "storage": f"sqlite:///{tmp}/optuna.db",
            "sampler": "random",
            "startup_trials": 1,
            "warmup_epochs": 0,
            "heartbeat_interval": 1,
            "grace_period": 3,
            "space": SPACE,
            **search,
        },
    )


def _study(tmp: Path, tiny_model: str, workers: int = 1, n_trials: int = 4, **search: object):
    cfg = load_config(search_config(tmp, tiny_model, n_trials, **search))
    uri = tracking.configure(cfg.tracking.tracking_uri)
    parent = tracking.start_run(cfg.experiment_name, "hpo", tags={tracking.TAG_STAGE: "tune"})
    summary = run_study(cfg, parent, tmp / "work", workers=workers)
    return cfg, summary, parent, MlflowClient(tracking_uri=uri)


def _trial_runs(client: MlflowClient, cfg, parent: str) -> list:
    exp = client.get_experiment_by_name(cfg.experiment_name)
    return client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'", max_results=500
    )


def test_study_nests_trials_in_mlflow_with_states(tmp_path: Path, tiny_model: str) -> None:
    cfg, summary, parent, client = _study(tmp_path, tiny_model)
    study = open_study(cfg)
    trials = study.trials
    assert (
        len(
            [
                t
                for t in trials
                if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
            ]
        )
        == 4
    )
    runs = {r.info.run_id: r for r in _trial_runs(client, cfg, parent)}
    assert len(runs) == 4
    for t in trials:
        run = runs[t.user_attrs[RUN_ATTR]]
        assert run.data.tags["optuna.trial_number"] == str(t.number)
        assert run.data.tags["optuna.state"] == t.state.name
        assert run.info.status == "FINISHED"
        assert float(run.data.params["train.lr"]) == pytest.approx(t.params["train.lr"])
        assert len(client.get_metric_history(run.info.run_id, "val_f1_macro")) == t.user_attrs["epochs"]
    assert summary.n_pruned >= 1, "lr=1e-8 trials should be pruned"
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert all(t.user_attrs["epochs"] < 3 for t in pruned)
    assert summary.best_params["train.lr"] == pytest.approx(3e-3)
    out = tmp_path / "work" / "summary"
    for name in ("optimization_history.png", "param_importances.png", "intermediate_values.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
