"""Optuna search on a tiny model: nested MLflow runs, pruning, plots, resume, parallel workers, bad spaces."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState
from typer.testing import CliRunner

from tests.conftest import ROOT, make_config
from tuneflow.cli import app
from tuneflow.fitting.search import RUN_ATTR, open_study, run_study
from tuneflow.store import tracking
from tuneflow.tasktypes.resolve import load_config

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
PG_URL = os.environ.get("TUNEFLOW_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")

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
    summary = run_study(
        cfg, tracking.RunRecorder(uri, cfg.experiment_name, parent), tmp / "work", workers=workers
    )
    return cfg, summary, parent, MlflowClient(tracking_uri=uri)


def _trial_runs(client: MlflowClient, cfg, parent: str) -> list:
    exp = client.get_experiment_by_name(cfg.experiment_name)
    return client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'", max_results=500
    )


def test_study_nests_trials_in_mlflow_with_states(
    tmp_path: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuneflow.tasktypes.classification import ClassificationTraining

    calls = []
    real_encode = ClassificationTraining.encode
    monkeypatch.setattr(ClassificationTraining, "encode", lambda *a: calls.append(a) or real_encode(*a))
    cfg, summary, parent, client = _study(tmp_path, tiny_model)
    assert len(calls) == 1  # data tokenized once for the 4 trials of the study
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
        assert len(client.get_metric_history(run.info.run_id, "val/f1_macro")) == t.user_attrs["epochs"]
        # A name that reads in the run list's narrow column: Optuna's number, the state when not complete,
        # the sampled values; and the same learning-curve file as every other trial (Compare).
        state = "" if t.state == TrialState.COMPLETE else f" {t.state.name.lower()}"
        assert run.info.run_name.startswith(f"t{t.number}{state} ")
        assert f"lr={t.params['train.lr']:.2g}" in run.info.run_name.split()
        assert "learning_curves.png" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert summary.n_pruned >= 1, "lr=1e-8 trials should be pruned"
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert all(t.user_attrs["epochs"] < 3 for t in pruned)
    assert summary.best_params["train.lr"] == pytest.approx(3e-3)
    out = tmp_path / "work" / "summary"
    for name in ("optimization_history.png", "param_importances.png", "intermediate_values.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_two_workers_share_the_study_exactly(tmp_path: Path, tiny_model: str) -> None:
    cfg, summary, parent, client = _study(tmp_path, tiny_model, workers=2, n_trials=4)
    trials = open_study(cfg).trials
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) == 4 and len(trials) == 4
    numbers = [t.number for t in trials]
    assert len(set(numbers)) == len(numbers)
    runs = _trial_runs(client, cfg, parent)
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in runs) == sorted(numbers)
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {t.user_attrs[RUN_ATTR] for t in trials} == {r.info.run_id for r in runs}


WORKER = """
import sys
from tuneflow.store import tracking
from tuneflow.tasktypes.resolve import load_config
from tuneflow.fitting.search import run_study
cfg = load_config(sys.argv[1])
uri = tracking.configure(cfg.tracking.tracking_uri)
run_study(cfg, tracking.RunRecorder(uri, cfg.experiment_name, sys.argv[2]), sys.argv[3])
"""


def test_killed_worker_is_failed_retried_and_resume_runs_only_missing_trials(
    tmp_path: Path, tiny_model: str
) -> None:
    cfg_path = search_config(tmp_path, tiny_model, n_trials=4, pruner="none")
    cfg = load_config(cfg_path)
    uri = tracking.configure(cfg.tracking.tracking_uri)
    parent = tracking.start_run(cfg.experiment_name, "hpo")
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(cfg_path), parent, str(tmp_path / "work")],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    study = open_study(cfg)
    while time.time() < deadline:  # kill the worker in the middle of its third trial
        trials = study.get_trials(deepcopy=False)
        running = [t for t in trials if t.state == TrialState.RUNNING and RUN_ATTR in t.user_attrs]
        if sum(t.state in FINISHED for t in trials) >= 2 and running:
            break
        assert proc.poll() is None, "worker ended before it could be killed"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = open_study(cfg).trials
    killed = next(t for t in at_kill if t.state == TrialState.RUNNING)
    finished_at_kill = sum(t.state in FINISHED for t in at_kill)
    time.sleep(cfg.search.grace_period + 1)  # let its heartbeat go stale

    recorder = tracking.RunRecorder(uri, cfg.experiment_name, parent)
    summary = run_study(cfg, recorder, tmp_path / "work")  # the same command again

    trials = open_study(cfg).trials
    assert sum(t.state in FINISHED for t in trials) == 4
    assert summary.trials_run_now == 4 - finished_at_kill  # only the missing trials ran
    assert trials[killed.number].state == TrialState.FAIL
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retry) == 1 and retry[0].params == killed.params and retry[0].state in FINISHED
    client = MlflowClient(tracking_uri=uri)
    dead = client.get_run(killed.user_attrs[RUN_ATTR])
    assert dead.info.status == "KILLED" and dead.data.tags["optuna.state"] == "FAIL"
    assert not [r for r in _trial_runs(client, cfg, parent) if r.info.status == "RUNNING"]


def test_latency_is_a_second_objective(tmp_path: Path, tiny_model: str) -> None:
    cfg, summary, _, _ = _study(tmp_path, tiny_model, n_trials=2, pruner="none", latency_objective=True)
    assert len(open_study(cfg).directions) == 2
    assert summary.best_latency_ms is not None and summary.best_latency_ms > 0
    assert (tmp_path / "work" / "summary" / "pareto_front.png").exists()


def _postgres_reachable() -> bool:
    try:
        import psycopg

        psycopg.connect(PG_URL, connect_timeout=2).close()
        return True
    except Exception:
        return False


@pytest.mark.skipif(not _postgres_reachable(), reason=f"no PostgreSQL server reachable at {PG_URL}")
def test_postgresql_storage_works_unchanged(tmp_path: Path, tiny_model: str) -> None:
    name = f"tuneflow-test-{os.getpid()}-{int(time.time())}"
    try:
        cfg, summary, _, _ = _study(tmp_path, tiny_model, n_trials=2, storage=PG_URL, study_name=name)
        assert sum(t.state in FINISHED for t in open_study(cfg).trials) == 2
        assert summary.storage.startswith("postgresql://")
    finally:
        optuna.delete_study(study_name=name, storage=PG_URL)


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ({"train.nope": {"type": "float", "low": 0.1, "high": 0.2}}, "search.space.train.nope"),
        ({"train.lr": {"type": "float", "low": 0.1, "high": 0.01}}, "low (0.1) must be <= high (0.01)"),
        ({"train.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, "log scale needs low > 0"),
        ({"train.batch_size": {"type": "categorical", "choices": []}}, "non-empty 'choices'"),
        ({"model.dropout": {"type": "float", "low": 0.1, "high": 1.5}}, "value 1.5 is rejected"),
        ({"data.train": {"type": "categorical", "choices": ["x.csv"]}}, "search.space.data.train"),
    ],
)
def test_invalid_space_fails_before_any_trial(
    tmp_path: Path, tiny_model: str, space: dict, expected: str
) -> None:
    cfg_path = search_config(tmp_path, tiny_model)
    raw = yaml.safe_load(cfg_path.read_text())
    raw["search"]["space"] = space
    cfg_path.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["tune", str(cfg_path)])
    assert result.exit_code == 2, result.output
    assert expected in " ".join(result.output.split())
    assert not (tmp_path / "optuna.db").exists()  # no study was created


def test_tune_without_search_section_exits_2(tmp_path: Path, tiny_model: str) -> None:
    cfg_path = make_config(tmp_path, tiny_model)
    result = CliRunner().invoke(app, ["tune", str(cfg_path)])
    assert result.exit_code == 2 and "no search: section" in result.output


def test_failed_trials_are_recorded_and_the_study_goes_on(tmp_path: Path, tiny_model: str) -> None:
    # Each value passes the schema on its own; min_epochs 2 with max_epochs 1 is an invalid combination
    # that only a trial can discover (the seeded sampler draws it).
    space = {
        "train.max_epochs": {"type": "categorical", "choices": [1, 2]},
        "train.min_epochs": {"type": "categorical", "choices": [2]},
    }
    cfg = load_config(search_config(tmp_path, tiny_model, n_trials=3, space=space, pruner="none"))
    uri = tracking.configure(cfg.tracking.tracking_uri)
    parent = tracking.start_run(cfg.experiment_name, "hpo")
    summary = run_study(cfg, tracking.RunRecorder(uri, cfg.experiment_name, parent), tmp_path / "work")
    trials = open_study(cfg).trials
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed and all(t.params["train.max_epochs"] == 1 for t in failed)
    # A failed trial uses up one attempt of this run but is not "finished": a rerun tops the study up.
    assert summary.n_complete + summary.n_failed == 3 and summary.n_failed == len(failed)
    client = MlflowClient(tracking_uri=uri)
    for t in failed:
        run = client.get_run(t.user_attrs[RUN_ATTR])
        assert run.info.status == "FAILED" and run.data.tags["optuna.state"] == "FAIL"
        assert "min_epochs (2) must be <= max_epochs (1)" in run.data.tags["tuneflow.failure"]


def test_timeout_budget_stops_the_study(tmp_path: Path, tiny_model: str) -> None:
    cfg, summary, _, _ = _study(tmp_path, tiny_model, n_trials=None, timeout=1)
    assert 1 <= summary.n_complete + summary.n_pruned <= 2  # the trial running at the deadline finishes


def test_several_validations_per_epoch_let_the_pruner_stop_a_trial_within_its_first_epoch(
    tmp_path: Path, tiny_model: str
) -> None:
    """evals_per_epoch 4: every validation is a report (steps 1, 2, 3, ...), the never-learning trial is
    pruned after a quarter epoch, and the epochs consumed are counted in quarters."""
    cfg, summary, parent, client = _study(
        tmp_path, tiny_model, n_trials=4, evals_per_epoch=4, pruner="median", max_epochs=2
    )
    trials = [t for t in open_study(cfg).trials if t.state in FINISHED]
    assert len(trials) == 4
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert all(sorted(t.intermediate_values) == list(range(1, 9)) for t in complete)  # 4 per epoch x 2
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, "lr=1e-8 trials should be pruned"
    assert any(t.user_attrs["epochs"] < 1 for t in pruned)  # stopped before its first epoch ended
    for t in pruned:
        assert t.user_attrs["epochs"] == pytest.approx(len(t.intermediate_values) / 4)
    assert summary.epochs_total == pytest.approx(sum(t.user_attrs["epochs"] for t in trials))


def test_the_progress_line_counts_the_trial_that_just_completed() -> None:
    """A trial's "complete" line runs before Optuna records it: a new best must still read as the best."""
    from tuneflow.fitting.search_report import describe_best as _best

    for direction, worse, better in (("maximize", 0.5, 0.8733), ("minimize", 0.9, 0.1)):
        study = optuna.create_study(direction=direction)
        first = study.ask()
        assert _best(first) == "no complete trial yet"
        assert _best(first, 0.3) == "best 0.3000 (trial 0)"  # Optuna's numbering, as in run names and tags
        study.tell(first, 0.3 if direction == "minimize" else 0.87)
        running = study.ask()
        kept = "best 0.3000 (trial 0)" if direction == "minimize" else "best 0.8700 (trial 0)"
        assert _best(running) == kept and _best(running, worse) == kept
        assert _best(running, better) == f"best {better:.4f} (trial 1)"
