"""The benchmark harness runs on a tiny case (it measures; it never asserts on speed)."""

from __future__ import annotations

import argparse

from bench import overhead, speed
from bench.pipeline import run_pipeline
from tests.conftest import make_config


def test_pipeline_runner_reports_metrics_and_timings(tmp_path, tiny_model):
    cfg = make_config(tmp_path, tiny_model, train={"max_epochs": 1})
    run = run_pipeline(cfg, [], tmp_path / "store")
    w = run["wall"]
    assert run["registered"]["version"] == "1" and 0 <= run["metrics"]["test/accuracy"] <= 1
    assert w["system/time_fit_s"] > 0 and w["system/time_evaluate_s"] > 0 and w["prefect_start_s"] >= 0
    assert w["flow_s"] >= w["training_and_evaluation_s"] and 0 < w["overhead_share"] < 1
    assert w["process_s"] > w["flow_s"]
    row = overhead.row("tiny", run, "tiny")
    assert row["target"] == "<= 3%" and "Prefect start-up" in row["result"]


def test_speed_suite_runs_both_arms(tmp_path, tiny_model):
    args = argparse.Namespace(
        train=120, epochs=1, threads=1, pairs=1, model=tiny_model, config=make_config(tmp_path, tiny_model)
    )
    out = speed.run(args)
    assert [r["arm"] for r in out["runs"]] == ["tuneflow", "trainer"]
    assert out["runs"][0]["samples"] == out["runs"][1]["samples"] > 0  # same examples x epochs in both arms
    for r in out["runs"]:
        assert r["seconds"] > 0 and 0 <= r["accuracy"] <= 1 and r["peak_rss_mb"] > 0
    assert out["rows"][0]["target"] == ">= 1.3x at equal accuracy"
