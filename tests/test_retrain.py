"""Scheduled retraining: skip unchanged data, drift report, reuse of the champion's params, status."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from tests.conftest import demo_rows, make_config, write_csv
from tuneflow.cli import app
from tuneflow.config import RetrainConfig
from tuneflow.judging.drift import drift_report, oov_rate, psi
from tuneflow.store import registered, tracking


def test_drift_signals() -> None:
    labels = ["a"] * 50 + ["b"] * 50
    assert psi(labels, labels) == pytest.approx(0.0, abs=1e-9)
    assert psi(labels, ["a"] * 90 + ["b"] * 10) > 0.2
    assert oov_rate(["the cat sat"], ["the dog sat"]) == pytest.approx(1 / 3)
    texts = ["short text"] * 100
    same = drift_report(RetrainConfig(), texts, labels, texts, labels, [0.9] * 100, [0.9] * 100)
    assert not same.drifted and [s.name for s in same.signals] == [
        "label_psi",
        "length_ks",
        "oov_rate",
        "confidence_drop",
    ]
    longer = ["a much longer text about entirely different matters indeed"] * 100
    shifted = drift_report(RetrainConfig(), texts, labels, longer, ["a"] * 100, [0.9] * 100, [0.5] * 100)
    assert shifted.drifted and all(s.drifted for s in shifted.signals)
    assert "DRIFT detected" in shifted.to_markdown()


SPACE = {"train.lr": {"type": "categorical", "choices": [3e-3, 1e-3]}}


def test_retrain_skips_unchanged_data_then_retrains_changed_data(
    tmp_path: Path, tiny_model: str, prefect_harness: None
) -> None:
    from tuneflow.flows.finetune import finetune
    from tuneflow.flows.retrain import retrain

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    rows = demo_rows("train")
    random.Random(0).shuffle(rows)
    train = write_csv(tmp_path / "train.csv", rows[:300])
    cfg = make_config(
        tmp_path,
        tiny_model,
        name="retrain-me",
        train_file=train,
        tracking={"tracking_uri": uri},
        gates={
            "max_train_val_gap": None,
            "max_val_degradation": None,
            "max_class_regression": None,
            "significance": "none",
        },
        search={
            "enabled": False,
            "n_trials": 2,
            "space": SPACE,
            "storage": f"sqlite:///{tmp_path}/optuna.db",
        },
        train={"lr": 3e-3, "max_epochs": 2},
    )
    first = finetune(str(cfg), ["train.lr=0.001"])  # the champion was trained with lr 1e-3
    assert first.promotion.promote
    client = MlflowClient(tracking_uri=tracking.configure(uri))

    skipped = retrain(str(cfg))
    assert skipped.check.decision == "skip" and "data unchanged since champion v1" in skipped.check.reason
    assert registered.count_versions("retrain-me") == 1

    write_csv(train, rows[:300] + rows[300:400])  # new data arrives in the same file
    again = retrain(str(cfg))
    assert again.check.decision == "train" and "data changed since champion v1" in again.check.reason
    assert again.finetune.model.version == "2"
    run = client.get_run(again.finetune.run_id)
    if "no drift" in again.check.reason:  # the champion's hyperparameters are reused instead of the config's
        assert float(run.data.params["train.lr"]) == pytest.approx(1e-3)
    check = client.get_run(again.check.run_id)
    assert check.data.tags["tuneflow.retrain.decision"].startswith("trained")
    assert {"drift/label_psi", "drift/length_ks", "drift/oov_rate", "drift/confidence_drop"} <= set(
        check.data.metrics
    )
    assert "Drift report" in tracking.read_text(again.check.run_id, "drift/report.md")
    promotion = again.finetune.promotion
    assert promotion.champion_version == "1" and promotion.gates  # gates were applied against v1

    result = CliRunner().invoke(app, ["status", "retrain-me", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert "champion        v" in result.output and "last retrain" in result.output
    assert "trained" in result.output and "data changed" in result.output
    listing = CliRunner().invoke(app, ["status", "--tracking-uri", uri])
    assert listing.exit_code == 0 and "retrain-me" in listing.output and "champion v" in listing.output
