"""``kill -9`` of the whole process group at five points of a run, then the rerun a user would type.

After the rerun: exactly one registered version per run, no MLflow run left RUNNING, no Optuna trial left
RUNNING, the champion alias on the decided version, and a promotion killed inside its decision does not
block the next one beyond the lease time. Each scenario runs real ``tuneflow run`` processes (~1 min);
the promotion kill is in the default tier, the other four in the slow tier.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, make_config

LEASE_S = 5


def _tuneflow(args: list[str], home: Path, crash_at: str | None = None) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlruns/mlflow.db",
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    for var in ("TUNEFLOW_CRASH_AT", "PREFECT_API_URL", "PREFECT_PROFILES_PATH"):
        env.pop(var, None)
    if crash_at:
        env["TUNEFLOW_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "tuneflow.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        start_new_session=True,  # its own process group: the fault kills the group, Prefect's server included
    )


def _store(home: Path):  # noqa: ANN202
    from mlflow import MlflowClient

    uri = f"sqlite:///{home}/mlruns/mlflow.db"
    return MlflowClient(uri, registry_uri=uri)  # explicit: another test may have set a global registry URI


SCENARIOS = [
    pytest.param("promote", id="promote"),
    pytest.param("register", id="register", marks=pytest.mark.slow),
    pytest.param("train", id="train", marks=pytest.mark.slow),
    pytest.param("validate", id="validate", marks=pytest.mark.slow),
    pytest.param("trial", id="trial", marks=pytest.mark.slow),
]


@pytest.mark.integration
@pytest.mark.parametrize("point", SCENARIOS)
def test_kill_and_rerun(point: str, tmp_path: Path, tiny_model: str) -> None:
    sections: dict = {
        "tracking": {"heartbeat_interval": 1, "lock_ttl": LEASE_S},
        "gates": {"max_val_degradation": None},  # a tiny random model's validation curve is noise
        "train": {"max_epochs": 3, "early_stopping_patience": 3},
    }
    if point == "trial":
        sections["search"] = {
            "n_trials": 2,
            "max_epochs": 2,
            "heartbeat_interval": 1,
            "grace_period": 2,
            "storage": f"sqlite:///{tmp_path}/optuna.db",
            "space": {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
        }
    cfg = make_config(tmp_path, tiny_model, **sections)
    killed = _tuneflow(["run", str(cfg)], tmp_path, crash_at=point)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert f"SIGKILL at {point}" in killed.stdout + killed.stderr

    time.sleep(5)  # 4 missed heartbeats (1 s): the killed run now counts as dead; the lease has expired
    start = time.monotonic()
    rerun = _tuneflow(["run", str(cfg), "--resume"], tmp_path)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert time.monotonic() - start < 300

    client = _store(tmp_path)
    versions = client.search_model_versions("name = 'tiny-intents'")
    runs_with_versions = [v.run_id for v in versions]
    log = rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert len(runs_with_versions) == len(set(runs_with_versions)) == 1, log  # one version, from one run
    assert client.get_model_version_by_alias("tiny-intents", "champion").version == versions[0].version
    assert versions[0].tags.get("tuneflow.promotion") == "promoted"
    exp = client.get_experiment_by_name("tiny-intents")
    runs = client.search_runs([exp.experiment_id])
    assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"]
    if point in ("validate", "trial"):
        reaped = [r for r in runs if r.info.status == "KILLED" and "tuneflow.killed_reason" in r.data.tags]
        assert reaped, "the killed run was not marked KILLED by the rerun"
    if point in ("promote", "register"):  # the killed run itself was finished, not a new one started
        assert versions[0].run_id in rerun.stdout + rerun.stderr
    if point == "trial":
        import optuna

        study = optuna.load_study(study_name="tiny-intents", storage=f"sqlite:///{tmp_path}/optuna.db")
        assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    # Registered runs keep no checkpoints.
    leftovers = list((tmp_path / "checkpoints").rglob("*.ckpt"))
    assert not [p for p in leftovers if versions[0].run_id in str(p)]


def _started_training(home: Path, cfg: Path) -> tuple[subprocess.Popen, list[str]]:
    """``tuneflow run`` in its own process group, returned once its final training has begun."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlruns/mlflow.db",
        "PREFECT_HOME": str(home / "prefect"),
        "HF_HUB_OFFLINE": "1",
    }
    for var in ("TUNEFLOW_CRASH_AT", "PREFECT_API_URL", "PREFECT_PROFILES_PATH"):
        env.pop(var, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuneflow.cli", "run", str(cfg)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("… train"):
            return proc, lines
    raise AssertionError("the run ended before training:\n" + "".join(lines))


def _gone(pids: list[int], within_s: float) -> bool:
    import psutil

    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.integration
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm", "oom-kill"])
def test_a_stopped_run_stops_at_once_and_leaves_no_process(how: str, tmp_path: Path, tiny_model: str) -> None:
    """Ctrl-C (SIGINT to the process group) or ``kill PID`` 3 s into training: stopped within seconds, with
    one line saying how to resume, no traceback, and no process left (the temporary Prefect server
    included). A run the OOM killer ends (SIGKILL, no handler runs) leaves no server behind either."""
    import psutil

    train = {"max_epochs": 200, "early_stopping_patience": 200}
    cfg = make_config(tmp_path, tiny_model, train=train, gates={"max_val_degradation": None})
    proc, lines = _started_training(tmp_path, cfg)
    time.sleep(3)
    started = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    assert started, "no temporary Prefect server was started"
    signalled = time.monotonic()
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        os.kill(proc.pid, signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
    rest, _ = proc.communicate(timeout=60)
    output = "".join(lines) + rest
    assert time.monotonic() - signalled < 30, output  # about a second; was over 120 s (shared machines)
    assert _gone(started, within_s=5), f"left running: {started}"
    if how == "oom-kill":
        assert proc.returncode == -signal.SIGKILL
        return
    assert proc.returncode == (130 if how == "ctrl-c" else 143), output
    assert "Traceback" not in output and "Crash detected" not in output, output
    what = "Ctrl-C" if how == "ctrl-c" else "SIGTERM"
    assert f"interrupted ({what}): stopped; continue with: tuneflow run {cfg} --resume" in output, output
