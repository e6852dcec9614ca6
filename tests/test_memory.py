"""Resident memory stays level from epoch to epoch under the allocator ``tuneflow run`` gives itself.

Freed pages an allocator never hands back add up when tensor sizes vary from step to step (batches grouped
by length): with jemalloc told to keep every freed page, a BANKING77 run grew ~1.5 GB per epoch until the
OOM killer ended it. This test trains a small model on texts of very different lengths for several epochs in
a process started exactly as ``tuneflow run`` starts itself (it restarts under the same allocator settings),
and reads the RSS the run logged at the end of each epoch (``memory/rss_mb``).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, demo_rows, make_config, save_bert, write_csv

EPOCHS = 6
MAX_GROWTH = 0.10  # RSS at the last epoch over RSS at epoch 2 (the bound)


@pytest.fixture(scope="module")
def small_model(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny model's tokenizer with a BERT wide enough (hidden 256, FFN 1024) that a step's activations
    are megabytes, as in a real fine-tune, not kilobytes."""
    import shutil

    out = tmp_path_factory.mktemp("small-bert")
    for f in Path(tiny_model).iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab")):
            shutil.copy(f, out / f.name)
    save_bert(out, 600, hidden=256, ffn=1024, heads=4, positions=256)
    return str(out)


def _varied_lengths(tmp_path: Path) -> Path:
    """Demo intents, each text repeated 1 to 12 times: inputs from ~8 to ~200 tokens."""
    rng = random.Random(0)
    rows = [(" ".join([text] * rng.randint(1, 12)), intent) for text, intent in demo_rows()]
    return write_csv(tmp_path / "train.csv", rows)


@pytest.mark.integration
def test_rss_stays_level_across_epochs_under_the_default_allocator(tmp_path: Path, small_model: str) -> None:
    from mlflow import MlflowClient

    from tuneflow.allocator import SWITCH

    cfg = make_config(
        tmp_path,
        small_model,
        train_file=_varied_lengths(tmp_path),
        model={"name": small_model, "max_length": 192},
        train={"max_epochs": EPOCHS, "early_stopping_patience": EPOCHS, "batch_size": 32, "lr": 1e-3},
        gates={"max_val_degradation": None},
        eval={"latency_examples": 2, "worst_examples": 5, "behavior_checks": False},
    )
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    env = {k: v for k, v in os.environ.items() if k not in (SWITCH, "LD_PRELOAD", "MALLOC_CONF")}
    env.update(MLFLOW_TRACKING_URI=uri, PREFECT_HOME=str(tmp_path / "prefect"), HF_HUB_OFFLINE="1")
    env.pop("PREFECT_API_URL", None)
    # As a user starts it: `tuneflow run` picks its allocator and restarts itself under it.
    run = subprocess.run(
        [sys.executable, "-m", "tuneflow.cli", "run", str(cfg)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny-intents")
    (parent,) = [
        r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" not in r.data.tags
    ]
    rss = [
        m.value
        for m in sorted(client.get_metric_history(parent.info.run_id, "memory/rss_mb"), key=lambda m: m.step)
    ]
    assert len(rss) == EPOCHS, rss
    growth = rss[-1] / rss[1] - 1
    assert growth <= MAX_GROWTH, f"RSS per epoch (MB): {[round(x) for x in rss]}: +{growth:.0%} after epoch 2"
    assert "resident memory grows" not in run.stdout
    for stage in ("train", "evaluate"):
        assert parent.data.metrics[f"memory/peak_{stage}_mb"] >= rss[0] * 0.5


def test_a_fit_keeps_freed_pages_and_hands_them_back_past_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """jemalloc keeps what the steps free for the whole fit (a finite decay hands MB-sized blocks back at
    once: 1.7x slower chat epochs) and purges when resident memory passes the largest step seen after a
    purge by 20 % (256 MB at least): batches of varied shapes no longer grow memory without bound. The
    default decay comes back when the fit ends."""
    from tuneflow.fitting import callbacks

    decays: list[int] = []
    purges: list[float] = []
    rss = [1000.0, 1100.0, 1300.0, 1050.0, 1200.0, 1400.0, 1500.0, 1700.0]
    now = {"mb": 0.0}
    monkeypatch.setattr(callbacks, "paced", lambda: True)
    monkeypatch.setattr(callbacks, "set_decay_ms", lambda ms: decays.append(ms) or True)
    monkeypatch.setattr(callbacks, "release_free_memory", lambda: purges.append(now["mb"]))
    reuse = callbacks.BoundedReuse()
    reuse.on_train_start(None, None)  # type: ignore[arg-type]
    assert decays == [-1] and len(purges) == 1  # the fit starts from a purge
    for mb in rss:
        now["mb"] = mb
        monkeypatch.setattr(callbacks, "resident_mb", lambda mb=mb: mb)
        reuse.on_train_batch_end(None, None)  # type: ignore[arg-type]
    # The first step ends at 1000 MB: bound 1256 (the 256 MB minimum); 1300 is past it: purge. The step
    # after the purge ends at 1050, the floor's new largest: bound 1306; 1400 is past it: purge. The next
    # step, of a larger batch, ends at 1500: bound 1800, and 1700 is kept.
    assert purges[1:] == [1300.0, 1400.0]
    assert reuse.floor == 1500.0 and reuse.bound == pytest.approx(1800.0)
    reuse.teardown(None, None, "fit")  # type: ignore[arg-type]
    assert decays == [-1, callbacks.DEFAULT_DECAY_MS]


def test_the_bound_is_left_alone_without_jemalloc(monkeypatch: pytest.MonkeyPatch) -> None:
    from tuneflow.fitting import callbacks

    monkeypatch.setattr(callbacks, "paced", lambda: False)
    monkeypatch.setattr(callbacks, "set_decay_ms", lambda ms: pytest.fail("decay set without jemalloc"))
    monkeypatch.setattr(callbacks, "release_free_memory", lambda: pytest.fail("purged without jemalloc"))
    reuse = callbacks.BoundedReuse()
    reuse.on_train_start(None, None)  # type: ignore[arg-type]
    reuse.on_train_batch_end(None, None)  # type: ignore[arg-type]
    reuse.teardown(None, None, "fit")  # type: ignore[arg-type]
