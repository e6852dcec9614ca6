"""What the MLflow UI gets from tuneflow, without a browser: the saved runs view, the served page, params,
trial names, run descriptions, alias tags and the report files (tests/test_ui_browser.py opens them)."""

from __future__ import annotations

import glob
from pathlib import Path

import matplotlib
import numpy as np
import optuna
import pandas as pd
import pytest

from tests.conftest import ROOT
from tuneflow.judging.evaluation import plot_confusion, save_table
from tuneflow.store import mlflow_app, tracking, ui
from tuneflow.store.params import run_params
from tuneflow.tasktypes.resolve import load_config


@pytest.mark.parametrize(
    "path", sorted(glob.glob(str(ROOT / "configs" / "*.yaml"))), ids=lambda p: Path(p).stem
)
def test_params_are_few_and_portable(path: str) -> None:
    """The UI lists params in one flat picker: what tells fine-tunings apart, no machine's paths."""
    cfg = load_config(path)
    params = run_params(cfg)
    assert len(params) <= 70, sorted(params)
    assert not [k for k, v in params.items() if str(v).startswith("/")]
    assert not any(k.startswith(("tracking.", "retrain.", "gates.", "search.")) for k in params)
    # A search is one param (a blank row, not a dozen, in the diff against a run without one).
    assert ("search" in params) == cfg.searching
    if cfg.searching:
        assert params["search"].startswith(f"metric={cfg.search_metric}; ")


def test_params_are_floats_a_narrow_column_shows_whole() -> None:
    cfg = load_config(
        ROOT / "configs" / "demo.yaml", ["train.lr=3.18508062455e-05", "model.dropout=0.1195955"]
    )
    params = run_params(cfg)
    assert params["train.lr"] == 3.185e-05 and str(params["train.lr"]) == "3.185e-05"
    assert params["model.dropout"] == 0.1196


def test_demo_params_name_data_files_by_folder_and_name() -> None:
    params = run_params(load_config(ROOT / "configs" / "demo.yaml"))
    assert params["data.train.path"] == "chatbot_intents/train.csv"
    assert "data.train.format" not in params and "data.train.header" not in params  # defaults


def test_runs_view_columns_and_chart_order() -> None:
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    columns = ui.runs_view_columns(cfg)
    assert columns[0] == "metrics.`val/best_f1_macro`"  # the monitored (= searched) metric first
    assert {"metrics.`test/accuracy`", "metrics.`test/f1_macro`"} <= set(columns)
    assert {"params.`train.lr`", "params.`train.batch_size`", "params.`model.dropout`"} <= set(columns)
    assert "tags.`tuneflow.data_fingerprint`" in columns and "tags.`tuneflow.aliases`" in columns
    state = ui.runs_view_state(cfg)
    sections = [s["name"] for s in state["compareRunSections"]]
    assert sections == ["learning curves", "test"] and state["isAccordionReordered"]
    curves = [c["metricKey"] for c in state["compareRunCharts"] if c["type"] == "LINE"]
    assert curves[0] == "val/f1_macro" and {"train/loss", "val/loss", "train/lr"} <= set(curves)


def test_saved_view_round_trips_and_links_use_it(tmp_path: Path) -> None:
    """The tag is what MLflow's UI reads (envelope + deflate'd state); links carry its key once it exists."""
    import json

    uri = tracking.configure(f"sqlite:///{tmp_path}/m.db")
    cfg = load_config(ROOT / "configs" / "demo.yaml").model_copy(update={"name": "view-test"})
    experiment_id = tracking.ensure_experiment(cfg.experiment_name)
    assert "viewStateShareKey" not in tracking.experiment_url(experiment_id, uri)
    ui.save_runs_view(cfg)
    raw = json.loads(tracking.client().get_experiment(experiment_id).tags["mlflow.sharedViewState.tuneflow"])
    assert set(raw) == {"name", "createdAt", "updatedAt", "state"} and raw["state"].startswith("deflate;")
    assert tracking.read_runs_view(experiment_id) == ui.runs_view_state(cfg)
    created = raw["createdAt"]
    # A later run without a search rewrites the view in place (its creation time kept) and keeps the
    # searched parameters' columns for the runs before it.
    plain = cfg.model_copy(update={"search": cfg.search.model_copy(update={"enabled": False})})
    ui.save_runs_view(plain)
    columns = tracking.read_runs_view(experiment_id)["selectedColumns"]
    assert set(ui.runs_view_columns(plain)) < set(columns)
    # ... grouped by kind, as the table shows them: the version and aliases first (on screen at 1600 px),
    # the kept searched param among the params, after the scores.
    assert columns[:2] == ["attributes.`Models`", "tags.`tuneflow.aliases`"]
    assert columns.index("params.`model.dropout`") > columns.index("metrics.`test/accuracy`")
    again = json.loads(
        tracking.client().get_experiment(experiment_id).tags["mlflow.sharedViewState.tuneflow"]
    )
    assert again["createdAt"] == created
    url = tracking.experiment_url(experiment_id, uri)
    assert url == (
        f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs"
        "?workflowType=machine_learning&viewStateShareKey=tuneflow"
    )


def test_served_page_stores_the_links_view_before_the_app_starts() -> None:
    page = '<!doctype html><html><head><meta charset="utf-8"/><script src="main.js"></script></head></html>'
    served = mlflow_app.inject(page)
    assert served.index(mlflow_app.SCRIPT) < served.index("main.js")
    assert "mlflow.workflowType_v1" in mlflow_app.SCRIPT and '"machine_learning"' in mlflow_app.SCRIPT
    assert mlflow_app.ui_args("sqlite:///x.db")[-2:] == ["--app-name", "tuneflow"]


def test_the_app_serves_mlflows_ui_with_the_script() -> None:
    """The factory `mlflow ui --app-name tuneflow` calls: MLflow's app, its page carrying the script."""
    from fastapi.testclient import TestClient

    client = TestClient(mlflow_app.create_app(), base_url="http://127.0.0.1:5000")
    page = client.get("/").text
    assert page.startswith("<!doctype html>") and mlflow_app.SCRIPT in page
    assert client.get("/health").status_code == 200


def test_trial_names_read_in_a_narrow_column() -> None:
    params = {"train.lr": 0.000234567, "train.batch_size": 16, "model.dropout": 0.1234}
    assert ui.trial_run_name(5, params, "PRUNED") == "t5 pruned lr=0.00023 bs=16 do=0.12"
    assert ui.trial_run_name(0, params, "COMPLETE") == "t0 lr=0.00023 bs=16 do=0.12"


def test_run_description_puts_the_scores_first() -> None:
    text = ui.run_description(
        [("test/accuracy", 0.98889), ("test/f1_macro", 0.9798)],
        ("val/best_f1_macro", 1.0),
        ["registered as `m` v2", "promoted to champion"],
    )
    first, *rest = text.split("\n\n")
    assert first == "**test/accuracy** 0.9889 · **test/f1_macro** 0.9798"
    # The verdict before "Show more" cuts the description.
    assert rest == [
        "registered as `m` v2 · promoted to champion",
        "best validation score: val/best_f1_macro 1.0000",
    ]


def test_report_tables_round_floats(tmp_path: Path) -> None:
    save_table(pd.DataFrame({"label": ["a"], "f1": [8 / 9]}), tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text().splitlines() == ["label,f1", "a,0.8889"]


def test_optuna_plots_leave_no_grid_for_the_confusion_matrix(tmp_path: Path) -> None:
    """Optuna's plots switch pyplot to ggplot (a white grid over everything): the search keeps that to its
    own plots, so the confusion matrix drawn later in the same process has no lines across its counts."""
    from tuneflow.fitting.search import write_plots

    study = optuna.create_study()
    study.optimize(lambda t: t.suggest_float("x", 0, 1) ** 2, n_trials=3)
    write_plots(study, "val/loss", tmp_path)
    assert not matplotlib.rcParams["axes.grid"]
    plot_confusion(np.array([[3, 1], [0, 4]]), ["a", "b"], tmp_path / "cm.png")
    assert (tmp_path / "optimization_history.png").exists() and (tmp_path / "cm.png").exists()


def test_mlflow_samples_the_machine_while_a_model_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")  # MLflow's own override
    tracking.configure(f"sqlite:///{tmp_path}/m.db")
    run_id = tracking.start_run("sampled", "fit")
    with tracking.system_metrics(run_id):
        time.sleep(1.5)
    metrics = tracking.run_metrics(run_id)
    assert (
        "system/cpu_utilization_percentage" in metrics and "system/system_memory_usage_megabytes" in metrics
    )
