"""Crash safety: leases that die with their holder, heartbeats and the reaper, resume choice, checkpoint
garbage collection, secrets kept out of every record, deployment allow-lists, weights-only checkpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, make_config
from tuneflow.config import ConfigError
from tuneflow.store import gc, locks, tracking
from tuneflow.tasktypes.resolve import load_config

# ----------------------------------------------------------------------------------------------- leases


def test_lease_excludes_others_and_names_its_holder(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/locks.db"
    heard: list[str] = []
    with locks.lease(url, "promote:m", "first decision", ttl=30):
        with (
            pytest.raises(locks.LockTimeout, match="held by .*first decision"),
            locks.lease(url, "promote:m", "second", ttl=30, timeout=1.5, notify=heard.append, poll=0.2),
        ):
            pass
        with locks.lease(url, "promote:other", "another model", ttl=30):
            pass  # other names are independent
    assert heard and "first decision" in heard[0] and "waiting up to" in heard[0]
    with locks.lease(url, "promote:m", "after release", ttl=30, timeout=1):
        pass  # released on exit


def test_lease_of_a_killed_holder_expires(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/locks.db"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from tuneflow.store import locks\n"
            f"with locks.lease({url!r}, 'promote:m', 'doomed', ttl=5):\n"
            "    print('held', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert holder.stdout.readline().strip() == "held"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert locks.holder_of(url, "promote:m") is not None  # the row outlives the process...
    start = time.monotonic()
    with locks.lease(url, "promote:m", "next", ttl=5, timeout=30, poll=0.2):
        waited = time.monotonic() - start
    assert waited <= 6  # ...but only for its ttl


def test_lost_lease_is_detected(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/locks.db"
    with locks.lease(url, "promote:m", "slow", ttl=30) as still_held:
        locks.release(url, "promote:m", locks.holder_of(url, "promote:m").holder)  # as if it had expired
        assert locks.try_acquire(url, "promote:m", "intruder", ttl=30)
        with pytest.raises(locks.LockLost):
            still_held()


# ---------------------------------------------------------------------------------- heartbeats, reaper


def test_reaper_kills_runs_whose_heartbeat_stopped_with_their_children(tracking_uri: str) -> None:
    tracking.configure(tracking_uri)
    dead = tracking.start_run("exp", tags={"tuneflow.stage": "finetune"})
    child = tracking.start_run("exp", run_name="search", parent_run_id=dead)
    alive = tracking.start_run("exp")
    legacy = tracking.start_run("exp")  # no heartbeat at all: left alone
    stale = time.time() - 10 * 30
    tracking.set_tags(dead, {tracking.TAG_HEARTBEAT: f"{stale:.0f}", tracking.TAG_HEARTBEAT_INTERVAL: 30})
    with tracking.Heartbeat(alive, interval=30):
        marked = tracking.reap_stale_runs("exp", by="test")
    assert set(marked) == {dead, child}
    for run_id in (dead, child):
        run = tracking.get_run(run_id)
        assert run.info.status == "KILLED"
        assert "no heartbeat since" in run.data.tags[tracking.TAG_KILLED]
    assert tracking.get_run(alive).info.status == "RUNNING"
    assert tracking.get_run(legacy).info.status == "RUNNING"


def test_a_stopped_run_closes_killed_without_waiting_on_a_store_lock(tracking_uri: str) -> None:
    """Ctrl-C or ``kill PID`` marks the run KILLED. A stop that lands in the middle of a store write can leave
    SQLite's write lock held: the run still stops within seconds (not after the store's 20 s busy timeout,
    twice) and is closed KILLED once the lock goes."""
    import sqlite3
    from types import SimpleNamespace

    from tuneflow.tasks.tracking import STOP_CLOSE_S, closing_run

    cfg = SimpleNamespace(tracking=SimpleNamespace(tracking_uri=tracking_uri, heartbeat_interval=30))
    tracking.configure(tracking_uri)
    stopped = tracking.start_run("exp")
    with pytest.raises(KeyboardInterrupt), closing_run(cfg, stopped):
        raise KeyboardInterrupt
    assert tracking.get_run(stopped).info.status == "KILLED"

    locked = tracking.start_run("exp")
    holder = sqlite3.connect(tracking_uri.removeprefix("sqlite:///"))
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt), closing_run(cfg, locked):
        holder.execute("BEGIN IMMEDIATE")  # what a write cut off by the signal leaves behind
        start = time.monotonic()
        raise KeyboardInterrupt
    waited = time.monotonic() - start
    assert tracking.get_run(locked).info.status == "RUNNING"  # reading is not blocked; closing was
    holder.rollback()
    holder.close()
    assert waited < STOP_CLOSE_S + 3, f"a stopped run waited {waited:.1f} s on the store lock"
    deadline = time.monotonic() + 30
    while tracking.get_run(locked).info.status == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert tracking.get_run(locked).info.status == "KILLED"


def test_resume_skips_a_newer_run_without_checkpoint(
    tmp_path: Path, tiny_model: str, tracking_uri: str
) -> None:
    from tuneflow.tasks.tracking import open_run

    cfg = load_config(make_config(tmp_path, tiny_model))
    tracking.configure(tracking_uri)
    tags = {tracking.TAG_STAGE: "finetune", tracking.TAG_CONFIG_HASH: cfg.fingerprint()}
    older = tracking.start_run(cfg.experiment_name, tags=tags)
    tracking.end_run(older, "KILLED")
    ckpt = Path(cfg.output_dir) / older / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    time.sleep(0.01)
    newer = tracking.start_run(cfg.experiment_name, tags=tags)  # killed in validation: no checkpoint
    tracking.end_run(newer, "KILLED")
    opened = open_run.fn(cfg, resume=True)
    assert opened.run_id == older and opened.resume_from == str(ckpt)
    assert tracking.get_run(older).info.status == "RUNNING"


# --------------------------------------------------------------------------------------------------- gc


def test_gc_keeps_only_what_can_still_be_used(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"

    def folder(name: str, files: dict[str, int]) -> None:
        for rel, size in files.items():
            (root / name / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / name / rel).write_bytes(b"0" * size)

    folder("registered", {"best.ckpt": 100, "export/model.safetensors": 50})
    folder("finished", {"last.ckpt": 100, "export/model.safetensors": 50})
    folder("old-killed", {"last.ckpt": 100})
    folder("new-killed", {"last.ckpt": 100})
    folder("running", {"last.ckpt": 100})
    folder("unknown", {"last.ckpt": 100})
    facts = {
        "registered": gc.RunFacts("FINISHED", False, True, "h", 1),
        "finished": gc.RunFacts("FINISHED", False, False, "h", 2),
        "old-killed": gc.RunFacts("KILLED", False, False, "h", 3),
        "new-killed": gc.RunFacts("FAILED", False, False, "h", 4),
        "running": gc.RunFacts("RUNNING", True, False, "h", 5),
    }
    actions = {a.folder.name: a for a in gc.plan(root, facts.get)}
    assert {k: a.action for k, a in actions.items()} == {
        "registered": "delete",
        "finished": "keep-export",
        "old-killed": "delete",
        "new-killed": "keep",
        "running": "keep",
        "unknown": "delete",
    }
    assert (root / "registered").exists()  # plan deletes nothing
    freed = gc.apply(list(actions.values()))
    assert freed == 150 + 100 + 100 + 100
    assert sorted(p.name for p in root.iterdir()) == ["finished", "new-killed", "running"]
    assert [p.name for p in (root / "finished").iterdir()] == ["export"]


# -------------------------------------------------------------------------------------------- secrets


def test_config_reads_secrets_from_the_environment_and_records_them_masked(
    tmp_path: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPTUNA_STORAGE_URL", "postgresql://tuner:hunter2@db:5432/optuna")
    search = {"n_trials": 2, "storage": "${OPTUNA_STORAGE_URL}", "space": {}}
    cfg = load_config(make_config(tmp_path, tiny_model, search=search))
    assert cfg.search.storage == "postgresql://tuner:hunter2@db:5432/optuna"
    assert "hunter2" not in yaml.safe_dump(cfg.recorded())
    assert cfg.recorded()["search"]["storage"] == "postgresql://tuner:***@db:5432/optuna"


def test_cli_moves_passwords_out_of_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    from tuneflow.terminal import hide_secrets as _hide_secrets

    out = _hide_secrets(["train.lr=0.1", "search.storage=postgresql://u:pw@h/db"])
    assert out[0] == "train.lr=0.1" and out[1] == "search.storage=${TUNEFLOW_SECRET_1}"
    assert os.environ["TUNEFLOW_SECRET_1"] == "postgresql://u:pw@h/db"
    monkeypatch.delenv("TUNEFLOW_SECRET_1")


def _postgres_url() -> str | None:
    try:
        import psycopg

        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", connect_timeout=3):
            return "postgresql+psycopg://postgres:Sup3rS3cretPW@127.0.0.1:5432/test"
    except Exception:
        return None


@pytest.mark.integration
def test_a_password_never_reaches_a_store(
    tmp_path: Path, tiny_model: str, tracking_uri: str, prefect_harness: None
) -> None:
    url = _postgres_url()
    if url is None:
        pytest.skip("no PostgreSQL server on 127.0.0.1:5432 (trust auth, database test)")
    from typer.testing import CliRunner

    from tuneflow import cli

    secret = "Sup3rS3cretPW"
    search = {
        "n_trials": 2,
        "max_epochs": 1,
        "study_name": f"secret-{os.getpid()}-{time.time_ns()}",
        "space": {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
    }
    path = make_config(tmp_path, tiny_model, search=search, train={"max_epochs": 1})
    result = CliRunner().invoke(cli.app, ["run", str(path), "--set", f"search.storage={url}"])
    assert result.exit_code == 0, result.output
    assert secret not in result.output
    hits = []
    for f in (tmp_path / "mlruns").rglob("*"):  # the MLflow database and every artifact
        if f.is_file() and secret.encode() in f.read_bytes():
            hits.append(str(f))
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL, PREFECT_HOME

    db_url = PREFECT_API_DATABASE_CONNECTION_URL.value() or ""
    prefect_files = [Path(db_url.split("///")[-1])] if "sqlite" in db_url else []
    prefect_files += [p for p in Path(PREFECT_HOME.value()).rglob("*.db*") if p.is_file()]
    for f in prefect_files:
        if f.is_file() and secret.encode() in f.read_bytes():
            hits.append(str(f))
    assert prefect_files, "the Prefect database was not found: the check would be empty"
    assert not hits, hits
    # The model is logged as code, not as a pickle.
    assert not list((tmp_path / "mlruns").rglob("python_model.pkl"))
    assert list((tmp_path / "mlruns").rglob("single_model.py"))


# ------------------------------------------------------------------------------------------ deployments


def test_deployment_runs_take_only_allowed_overrides() -> None:
    from tuneflow.flows.deployments import check_deployment_parameters

    check_deployment_parameters("configs/demo.yaml", ["train.lr=1e-4"], "finetune")
    check_deployment_parameters("/anywhere.yaml", ["data.train=/etc/passwd"], None)  # not a deployment run
    with pytest.raises(ConfigError) as err:
        check_deployment_parameters(
            "../../etc/x.yaml",
            ["data.train.path=/etc/passwd", "tracking.tracking_uri=http://evil"],
            "finetune",
        )
    keys = [k for k, _ in err.value.problems]
    assert keys == ["config_path", "data.train.path", "tracking.tracking_uri"]
    with pytest.raises(ConfigError, match="train.lr"):
        check_deployment_parameters("configs/demo.yaml", ["train.lr=1"], "retrain")  # retrain allows none
    assert all(
        "allowed_overrides" in d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    )


# ------------------------------------------------------------------------------------ weights-only loads


def test_every_checkpoint_loads_weights_only(tmp_path: Path, tiny_model: str) -> None:
    import torch

    from tuneflow.fitting.export import export_model
    from tuneflow.fitting.model import load_tokenizer
    from tuneflow.fitting.training import fit

    cfg = load_config(make_config(tmp_path, tiny_model, train={"max_epochs": 2}))
    kind = cfg.kind
    data = kind.training.encode(kind.data.load_splits(cfg.data, 0), load_tokenizer(tiny_model), cfg)
    result = fit(cfg, data, tmp_path / "ckpt", progress_bar=False)
    checkpoints = sorted((tmp_path / "ckpt").glob("*.ckpt"))
    assert len(checkpoints) >= 2
    for ckpt in checkpoints:
        torch.load(ckpt, map_location="cpu", weights_only=True)
    # Only last.ckpt is resumed from: it alone carries the optimizer state (the best one is exported only).
    best = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)
    last = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    assert "optimizer_states" not in best and last["optimizer_states"]
    assert set(best["state_dict"]) == set(last["state_dict"]) and best["hyper_parameters"]["labels"]
    export_model(result.best_checkpoint, tmp_path / "export", data.tokenizer, cfg)
    assert (tmp_path / "export" / "model.safetensors").exists()
