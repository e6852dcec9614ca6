"""The benchmark harness runs on a tiny case (it measures; it never asserts on speed)."""

from __future__ import annotations

import argparse

import pytest

from bench import overhead, speed
from bench.pipeline import run_pipeline
from tests.conftest import make_config


def test_pipeline_runner_reports_metrics_and_timings(tmp_path, tiny_model):
    cfg = make_config(tmp_path, tiny_model, train={"max_epochs": 1})
    run = run_pipeline(cfg, [], tmp_path / "store")
    w = run["wall"]
    assert run["registered"]["version"] == "1" and 0 <= run["metrics"]["test/accuracy"] <= 1
    assert w["timing/fit_s"] > 0 and w["timing/evaluate_s"] > 0 and w["prefect_start_s"] >= 0
    assert w["flow_s"] >= w["training_and_evaluation_s"] and 0 < w["overhead_share"] < 1
    assert w["process_s"] > w["flow_s"]
    row = overhead.row("tiny", run, "tiny")
    assert row["target"] == "<= 2%" and "Prefect start-up" in row["result"]
    assert w["prefect_boot_wait_s"] >= 0 and w["prefect_start_s"] >= w["prefect_boot_wait_s"]
    # The store existed before the flow (its creation reported apart); calibration counts as model work.
    assert w["mlflow_store_init_s"] > 0 and "MLflow store existing" in row["result"]
    assert "fit+calibration+eval" in row["result"]
    assert w["training_and_evaluation_s"] == pytest.approx(
        w["timing/fit_s"] + w["timing/after_export_s"] + w["timing/evaluate_s"]
    )


def _speed_args(tmp_path, tiny_model, **kw) -> argparse.Namespace:
    base = dict(
        train=120,
        epochs=1,
        threads=1,
        pairs=1,
        model=tiny_model,
        config=make_config(tmp_path, tiny_model),
        suite="pairs",
        arms=None,
        target=0.5,
    )
    return argparse.Namespace(**{**base, **kw})


def test_speed_suite_runs_tuneflow_against_both_trainer_anchors(tmp_path, tiny_model):
    out = speed.run(_speed_args(tmp_path, tiny_model))
    runs = {r["arm"]: r for r in out["runs"]}
    assert set(runs) == {"tuneflow", "trainer_best", "trainer_defaults"}
    assert len({r["samples"] for r in out["runs"]}) == 1  # same examples x epochs in every arm
    for r in out["runs"]:
        assert r["seconds"] > 0 and 0 <= r["accuracy"] <= 1 and r["peak_rss_mb"] > 0
    assert (
        runs["trainer_best"]["precision"] == "bf16-mixed"
        and runs["trainer_defaults"]["precision"] == "32-true"
    )
    assert "fused" in runs["trainer_defaults"]["optimizer"]  # the anchor uses its own default optimizer
    targets = [row["target"] for row in out["rows"]]
    assert ">= 1.2x the Trainer's best flags" in targets and len(out["rows"]) == 3


def test_time_to_accuracy_scores_every_epoch_outside_the_timed_training(tmp_path, tiny_model):
    args = _speed_args(
        tmp_path, tiny_model, suite="tta", epochs=2, arms=["tuneflow", "trainer_best"], target=0.0
    )
    out = speed.run(args)
    for r in out["runs"]:
        assert [p["epoch"] for p in r["curve"]] == [1, 2]
        assert 0 < r["curve"][0]["train_s"] < r["curve"][1]["train_s"] <= r["seconds"]
        assert r["time_to_target_s"] == r["curve"][0]["train_s"]  # target 0: reached after the first epoch
    assert speed.result_name(args) == "speed-tta-120x2ep"


def test_step_profile_splits_a_step_into_its_phases():
    from bench import step

    setting = step.SETTINGS["bf16 autocast, AdamW fused, both (tuneflow default)"]
    out = step.measure(setting, steps=7, threads=1)
    assert all(out[f"{phase}_ms"] > 0 for phase in ("forward", "backward", "optimizer"))
    assert out["total_s"] > 0 and out["steady_samples_per_s"] > 0


def test_overhead_rows_take_each_quality_run_from_its_latest_measurement(tmp_path, monkeypatch):
    import json

    def write(name, date, runs):
        payload = {"machine": {"date": date}, "runs": {k: {"wall": {"flow_s": v}} for k, v in runs.items()}}
        (tmp_path / name).write_text(json.dumps(payload))

    write("quality.json", "2026-11-25T12:00:00+00:00", {"banking77": 524.0, "sst2": 333.0})
    write("quality-banking77.json", "2026-11-30T20:00:00+00:00", {"banking77": 300.0})
    monkeypatch.setattr(overhead, "RESULTS", tmp_path)
    latest = overhead.quality_runs()
    assert latest["banking77"][0]["wall"]["flow_s"] == 300.0 and latest["banking77"][1].startswith(
        "2026-11-30"
    )
    assert latest["sst2"][0]["wall"]["flow_s"] == 333.0


@pytest.mark.slow  # ~1 min: two whole tuned fine-tunings
def test_e2e_suite_runs_tuneflow_run_against_trainer_hyperparameter_search(tmp_path, tiny_model):
    from bench import e2e

    flags = {"train": 1600, "trials": 2, "epochs": 1, "startup": 1, "threads": 1}
    args = e2e.parse([f"--{k}={v}" for k, v in flags.items()])
    args.seeds, args.model = "7", tiny_model
    out = e2e.run(args)
    runs = {r["arm"]: r for r in out["runs"]}
    assert set(runs) == {"tuneflow", "trainer"}
    for r in runs.values():
        assert r["seconds"] > 0 and 0 <= r["test_accuracy"] <= 1 and r["peak_rss_mb"] > 0
        assert r["seed"] == 7
        # Time-to-quality: the running best validation score, rising, within the arm's wall time.
        times, values = zip(*r["curve"], strict=True)
        assert list(times) == sorted(times) and list(values) == sorted(values)
        assert 0 < times[-1] < r["seconds"]
    # The trials train the final budget: tuneflow registers the best trial instead of training again.
    assert runs["tuneflow"]["final"].startswith("reuse: trial ")
    assert len(runs["tuneflow"]["trials"]) == 2 and set(runs["trainer"]["best_params"]) == {
        "learning_rate",
        "weight_decay",
    }
    assert out["rows"][0]["target"].startswith(">= 1.5x") and "2 trials" in out["rows"][0]["data"]
    assert "seeds 7" in out["rows"][0]["data"] and e2e.result_name(args) == "e2e-1600x2t1ep-s7"


def test_open_intent_folders_keep_every_unknown_intent_text_out_until_the_test(tmp_path):
    """The open-intent protocol: the known intents are a seeded draw; train and test hold known intents only,
    and every test question of another intent is in oos_test.csv, labelled with the open class."""
    import pandas as pd
    import pytest

    from bench.open_intents import DATA, OPEN, known_intents, open_metrics, write_folder

    if not (DATA / "banking77").is_dir():
        pytest.skip(f"no {DATA / 'banking77'} (the shared data sets sit beside the checkout)")
    labels = [f"intent_{i}" for i in range(77)]
    assert known_intents(labels, 0.25, 1) == known_intents(labels, 0.25, 1) != known_intents(labels, 0.25, 2)
    assert len(known_intents(labels, 0.5, 0)) == 38
    meta = write_folder("banking77", 0.25, 0, tmp_path)
    known = set(meta["known"])
    train, test = pd.read_csv(tmp_path / "train.csv"), pd.read_csv(tmp_path / "test.csv")
    unknown = pd.read_csv(tmp_path / "oos_test.csv")
    assert set(train["label"]) == set(test["label"]) == known and len(known) == 19
    assert set(unknown["label"]) == {OPEN} and len(test) + len(unknown) == 3080  # every test question
    assert not set(unknown["text"]) & set(train["text"])
    # The ADB paper's metrics: accuracy and macro F1 over the known classes + the open one.
    m = open_metrics(["a", "b", OPEN, OPEN], ["a", OPEN, OPEN, "a"], ["a", "b"])
    assert m["accuracy"] == 50.0 and m["f1_open"] == 50.0 and m["f1_known"] == pytest.approx(100 / 3)


def test_time_to_quality_plot_draws_each_arm_and_seed(tmp_path, monkeypatch):
    """bench.e2e_plot: one step curve per arm and seed (best validation so far), a star at each arm's end."""
    import json

    from bench import e2e_plot

    runs = [
        {
            "arm": arm,
            "seed": seed,
            "seconds": 300.0 + seed,
            "test_accuracy": 0.8,
            "curve": [[60.0, 0.5], [200.0, 0.7]],
        }
        for arm in ("tuneflow", "trainer")
        for seed in (1, 2)
    ]
    monkeypatch.setattr(e2e_plot, "RESULTS", tmp_path)
    monkeypatch.setattr(e2e_plot, "ASSETS", tmp_path / "assets")
    (tmp_path / "e2e-x.json").write_text(json.dumps({"runs": runs}))
    (tmp_path / "e2e-old.json").write_text(json.dumps({"runs": [{"arm": "tuneflow", "seconds": 1}]}))
    e2e_plot.main([])  # only results with curves
    assert [p.name for p in (tmp_path / "assets").iterdir()] == ["e2e-x.png"]
    assert (tmp_path / "assets" / "e2e-x.png").read_bytes()[:4] == b"\x89PNG"


def test_label_loop_reports_the_labels_the_loop_needs_to_reach_random_labelling(tmp_path):
    """The headline: the labels at which the loop's curve first reaches random's final accuracy (interpolated
    between rounds), as a share of random's final labels; never reached is reported, not hidden."""
    import pandas as pd

    from bench.label_loop import labels_to_reach, rows_for, write_start

    assert labels_to_reach([(100, 50.0), (200, 70.0), (300, 80.0)], 75.0) == 250.0
    assert labels_to_reach([(100, 80.0)], 75.0) == 100.0 and labels_to_reach([(100, 50.0)], 75.0) is None
    results = [
        {"dataset": "banking77", "seed": 0, "arm": arm, "labels": x, "test_accuracy": y}
        for arm, curve in {
            "loop": [(100, 50.0), (200, 80.0), (300, 85.0)],
            "random": [(100, 50.0), (200, 70.0), (300, 80.0)],
        }.items()
        for x, y in curve
    ]
    (row,) = rows_for(results)
    assert row["result"].startswith("67% of random's labels") and "85.00 vs 80.00" in row["result"]
    pool, classes = write_start("banking77", 5, 0, tmp_path)
    drawn = set(pd.read_csv(tmp_path / "train.csv")["text"])
    assert classes == 77 and len(drawn) == 385 and not drawn & set(pool["text"])
