"""Multi-fidelity search: where successive halving's rungs fall, through the real search."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

from tuneflow.config import SearchConfig
from tuneflow.config.search import rung_plan
from tuneflow.fitting.fidelity import build_pruner, build_sampler, plan_workers


@pytest.mark.parametrize(("epochs", "warmup"), [(1, 1), (2, 1), (3, 1), (6, 2), (10, 3)])
def test_the_first_rung_comes_after_a_third_of_the_budget(epochs: int, warmup: int) -> None:
    """One report per epoch; the first rung after a third of the trial's epochs, never inside epoch 1 (an
    earlier rung picked a trial at lr 6e-5 over one at 1.4e-4 on BANKING77)."""
    assert rung_plan(epochs) == {"evals_per_epoch": 1, "warmup_epochs": warmup}


def test_config_chooses_the_rungs() -> None:
    scfg = SearchConfig(pruner="successive_halving", warmup_epochs=0, reduction_factor=3)
    pruner = build_pruner(scfg, max_epochs=3, per_epoch=3)
    assert isinstance(pruner, optuna.pruners.SuccessiveHalvingPruner)
    assert (pruner._min_resource, pruner._reduction_factor) == (1, 3)  # first rung: a third of an epoch
    band = build_pruner(SearchConfig(pruner="hyperband", reduction_factor=4), max_epochs=3, per_epoch=2)
    assert (band._min_resource, band._max_resource, band._reduction_factor) == (2, 6, 4)
    assert type(build_sampler(SearchConfig(), 1)) is optuna.samplers.TPESampler
    assert isinstance(build_pruner(SearchConfig(), max_epochs=3), optuna.pruners.MedianPruner)


@pytest.mark.integration
def test_multi_fidelity_study_prunes_at_a_fraction_of_an_epoch(tmp_path: Path, tiny_model: str) -> None:
    """Successive halving from the first of 3 validations per epoch, through the real search: the
    weak trials are cut at a rung (after a third of the training set, or a whole epoch), the survivor
    trains the full budget and its value is the study's best."""
    from tests.test_search import FINISHED, _study
    from tuneflow.fitting.search import open_study

    cfg, summary, _, _ = _study(
        tmp_path,
        tiny_model,
        n_trials=4,
        evals_per_epoch=3,
        pruner="successive_halving",
        reduction_factor=3,
        max_epochs=2,
    )
    trials = [t for t in open_study(cfg).trials if t.state in FINISHED]
    assert len(trials) == 4
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned
    for t in pruned:  # stopped at a rung: the first validation (a third of an epoch) or 3x that
        assert len(t.intermediate_values) in (1, 3)
        assert t.user_attrs["epochs"] == pytest.approx(len(t.intermediate_values) / 3, abs=1e-3)
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert sorted(best.intermediate_values) == list(range(1, 7))
    assert summary.best_value == pytest.approx(best.value)
    assert summary.epochs_total < 4 * 2


def _machine(monkeypatch: pytest.MonkeyPatch, cores: int, free_gb: float, gpu: bool = False) -> None:
    import os

    import psutil
    import torch

    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(cores)), raising=False)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=int(free_gb * 2**30)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)


def _cfg(threads: int | None = None, latency: bool = False) -> SimpleNamespace:
    return SimpleNamespace(
        train=SimpleNamespace(torch_threads=threads), search=SimpleNamespace(latency_objective=latency)
    )


@pytest.mark.parametrize(
    ("cores", "free_gb", "remaining", "threads", "gpu", "latency", "workers"),
    [
        (2, 20, 6, None, False, False, 1),  # this machine: 2 x 1 thread was not faster in all
        (16, 100, 20, None, False, False, 8),  # one worker per 2 cores
        (16, 100, 3, None, False, False, 3),  # no idle worker: at most the trials left
        (16, 100, None, None, False, False, 8),  # a timeout budget: by cores
        (16, 7, 20, None, False, False, 2),  # 3 GiB per worker
        (16, 1, 20, None, False, False, 1),  # always at least one
        (4, 100, 20, 1, False, False, 4),  # train.torch_threads sets the share
        (16, 100, 20, None, True, False, 1),  # a GPU: one process per device
        (16, 100, 20, None, False, True, 1),  # latency objective: no neighbour skews the timings
    ],
)
def test_auto_workers_fill_the_cores_within_memory_and_trials(
    monkeypatch: pytest.MonkeyPatch,
    cores: int,
    free_gb: float,
    remaining: int | None,
    threads: int | None,
    gpu: bool,
    latency: bool,
    workers: int,
) -> None:
    _machine(monkeypatch, cores, free_gb, gpu)
    assert plan_workers("auto", remaining, _cfg(threads, latency)) == workers
    assert plan_workers(3, remaining, _cfg(threads, latency)) == 3  # a number is taken as given


def test_workers_option_takes_a_number_or_auto() -> None:
    from typer.testing import CliRunner

    from tuneflow.cli import app

    for bad in ("0", "-1", "two", "1.5"):
        result = CliRunner().invoke(app, ["tune", "configs/demo.yaml", "--workers", bad])
        assert result.exit_code == 2, result.output
        assert "--workers" in result.output and "number >= 1 or auto" in result.output
