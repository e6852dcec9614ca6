"""Scale-out and fault tolerance: DDP on 2 CPU processes, and --resume after a hard kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import make_config
from tuneflow.fitting.model import FineTuner, load_tokenizer
from tuneflow.fitting.training import fit
from tuneflow.store import registered, tracking
from tuneflow.tasktypes.resolve import load_config

pytestmark = pytest.mark.integration


def test_dropout_is_active_during_training(tiny_model: str) -> None:
    module = FineTuner(tiny_model, ["a", "b"], dropout=0.3)
    assert all(m.training for m in module.model.modules())
    assert module.model.config.hidden_dropout_prob == 0.3


def _fit(cfg_path: Path, out: Path):
    cfg = load_config(cfg_path)
    kind = cfg.kind
    splits = kind.data.load_splits(cfg.data, cfg.train.seed)
    data = kind.training.encode(splits, load_tokenizer(cfg.model.name), cfg)
    return fit(cfg, data, out, progress_bar=False), splits, cfg


def test_ddp_two_cpu_processes(tmp_path: Path, tiny_model: str) -> None:
    single_cfg = make_config(tmp_path, tiny_model, name="single", train={"max_epochs": 1})
    ddp_cfg = make_config(
        tmp_path,
        tiny_model,
        name="ddp",
        train={"max_epochs": 1, "strategy": "ddp_spawn", "devices": 2, "accelerator": "cpu"},
    )
    single, splits, cfg = _fit(single_cfg, tmp_path / "single")
    ddp, _, _ = _fit(ddp_cfg, tmp_path / "ddp")
    # Each of the 2 ranks sees half of the data: half the optimizer steps of one process.
    n_batches = -(-len(splits.train) // cfg.train.batch_size)
    assert single.global_step == n_batches
    assert ddp.global_step == -(-len(splits.train) // (2 * cfg.train.batch_size))
    assert Path(ddp.best_checkpoint).is_file() and Path(ddp.last_checkpoint).is_file()


def test_resume_after_kill_continues_same_run(tmp_path: Path, tiny_model: str) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    epochs = 25
    cfg = make_config(
        tmp_path,
        tiny_model,
        name="resumable",
        tracking={"tracking_uri": uri},
        train={"max_epochs": epochs, "early_stopping_patience": 100},
    )
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "tuneflow.cli", "run", str(cfg)]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    ckpts = tmp_path / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and not list(ckpts.glob("*/last.ckpt")):
        assert proc.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # a hard kill: no cleanup code runs
    proc.wait()
    tracking.configure(uri)
    c = MlflowClient(tracking_uri=uri)
    exp_id = c.get_experiment_by_name("resumable").experiment_id
    (killed,) = c.search_runs([exp_id])
    assert killed.info.status == "RUNNING"
    epochs_before = len(c.get_metric_history(killed.info.run_id, "val/f1_macro"))
    assert epochs_before < epochs

    done = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = c.search_runs([exp_id])
    assert [r.info.run_id for r in runs] == [killed.info.run_id]  # the same MLflow run, not a new one
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["tuneflow.resumed_from"].endswith("last.ckpt")
    assert run.data.metrics["fit/epochs_trained"] == epochs
    val_steps = {m.step for m in c.get_metric_history(run.info.run_id, "val/f1_macro")}
    assert len(val_steps) == epochs  # continued from the checkpoint: one validation per epoch overall
    assert registered.count_versions("resumable") == 1
