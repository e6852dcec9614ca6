"""Optuna hyperparameter search over dotted config keys; every trial is a nested MLflow run.

Parallelism is Optuna's own: N worker processes (or N machines) run :func:`optimize` against one study in
shared RDB storage. Heartbeats let a live worker fail the trials of a dead one; the stale-trial callback
re-queues them and marks their MLflow runs KILLED. Data are read and tokenized once per worker process,
not once per trial (:class:`EncodingCache`).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import optuna
from optuna.trial import FrozenTrial, TrialState

from tuneflow import names
from tuneflow.config import ConfigError, ParamSpec, PipelineConfig, SearchConfig, apply_params, redact_secrets
from tuneflow.data.encoding import EncodedData
from tuneflow.data.splits import Splits
from tuneflow.fitting.callbacks import CrashPoint, EpochCounter, MLflowMetricsLogger
from tuneflow.fitting.crossval import cross_validate
from tuneflow.fitting.fidelity import build_pruner, build_sampler, plan_workers, usable_cores
from tuneflow.fitting.model import load_pretrained, load_tokenizer
from tuneflow.fitting.search_report import (
    EPOCHS_ATTR,
    LATENCY_ATTR,
    RUN_ATTR,
    TrialProgress,
    best_so_far,
    describe_best,
    short_params,
    trials_table,
    write_plots,
)
from tuneflow.fitting.training import fit, keep_best
from tuneflow.judging.evaluation import LEARNING_CURVES, plot_learning_curves, save_table
from tuneflow.judging.metrics import time_single
from tuneflow.store import tracking
from tuneflow.store.params import run_params
from tuneflow.store.tracking import TAG_STAGE, ChildRun, RunRecorder
from tuneflow.store.ui import trial_run_name

FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
TAG_TRIAL, TAG_STATE, TAG_STUDY = "optuna.trial_number", "optuna.state", "optuna.study_name"
LATENCY_EXAMPLES = 30
KEPT = "kept"  # under the search's work folder: the best trials' checkpoints, until the flow decides


class SearchError(RuntimeError):
    """A search that cannot run or produced no usable trial."""


def _quiet() -> None:
    # Experimental-API warnings (heartbeats, matplotlib plots) and Lightning's per-Trainer banner would
    # drown the one line per trial a person wants to read.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the head re-initialization report, once per trial
    hf_logging.disable_progress_bar()


# ------------------------------------------------------------------------------------------- the study


def suggest(trial: optuna.Trial, space: dict[str, ParamSpec]) -> dict[str, Any]:
    """Sample one value per dotted key of ``space``."""
    params: dict[str, Any] = {}
    for key, spec in space.items():
        if spec.type == "categorical":
            params[key] = trial.suggest_categorical(key, spec.choices)
        elif spec.type == "int":
            step = int(spec.step or 1)
            params[key] = trial.suggest_int(key, int(spec.low), int(spec.high), step=step, log=spec.log)
        else:
            params[key] = trial.suggest_float(key, spec.low, spec.high, step=spec.step, log=spec.log)
    return params


def trial_evals_per_epoch(cfg: PipelineConfig) -> int:
    """Validations (pruning reports) per trial epoch: ``search.evals_per_epoch``, or 1 with cross-validation
    (a cross-validated trial reports once per fold)."""
    assert cfg.search is not None
    return 1 if cfg.train.cv_folds else cfg.search.evals_per_epoch


class ReportValidations(pl.Callback):
    """Reports every validation of a trial to Optuna (step = validations so far) and prunes on its verdict.

    Used with ``evals_per_epoch > 1`` and with the rung-based pruners: optuna-integration's
    ``PyTorchLightningPruningCallback`` (the median pruner's) reports with the 0-based epoch as the step, so a
    second validation within an epoch would be dropped as a duplicate step, and successive halving's first
    rung (step 1) would come after the second epoch, not the first.
    """

    def __init__(self, trial: optuna.Trial, monitor: str):
        self.trial, self.monitor, self.step = trial, monitor, 0

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        self.step += 1
        value = float(trainer.callback_metrics[self.monitor])
        self.trial.report(value, step=self.step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after validation {self.step} ({self.monitor} {value:.4f})")


class StaleTrialCallback(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """Re-queue a trial whose worker died; mark its MLflow run KILLED rather than RUNNING forever."""

    def __init__(self, max_retry: int | None, recorder: RunRecorder | None):
        super().__init__(max_retry=max_retry)
        self.recorder = recorder

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        try:
            if self.recorder is not None:
                # A worker killed between creating the run and recording its id: find the run by its tags.
                self.recorder.kill_running(
                    {TAG_STUDY: study.study_name, TAG_TRIAL: str(trial.number)},
                    {TAG_STATE: "FAIL", "tuneflow.failure": "worker stopped heartbeating"},
                    {trial.user_attrs.get(RUN_ATTR)} - {None},
                )
        except Exception as exc:  # the retry matters more than the bookkeeping
            print(f"could not mark the MLflow run of stale trial {trial.number}: {exc}")
        print(f"trial {trial.number}: its worker stopped heartbeating; marked failed and re-queued")
        super().__call__(study, trial)


def build_storage(scfg: SearchConfig, recorder: RunRecorder | None = None) -> optuna.storages.RDBStorage:
    """RDB storage with heartbeats; SQLite files get a lock timeout so a few local workers can share one."""
    url, engine_kwargs = scfg.storage, {}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 120}}
    try:
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=scfg.heartbeat_interval,
            grace_period=scfg.grace_period,
            heartbeat_stale_trial_callback=StaleTrialCallback(scfg.max_retry, recorder),
        )
    except Exception as exc:
        raise SearchError(
            f"cannot open Optuna storage {redact_secrets(url)!r} (search.storage): {exc}"
        ) from exc


def direction(cfg: PipelineConfig) -> str:
    """The search metric's direction: the config's, else the task type's metric spec decides."""
    assert cfg.search is not None
    return cfg.search.direction or cfg.kind.metrics.direction(cfg.search_metric)


def directions(cfg: PipelineConfig) -> list[str]:
    assert cfg.search is not None
    return [direction(cfg)] + (["minimize"] if cfg.search.latency_objective else [])


def open_study(cfg: PipelineConfig, recorder: RunRecorder | None = None) -> optuna.Study:
    """Create the config's study, or load it when it exists (a rerun resumes it).

    ``recorder`` lets the stale-trial callback mark a dead worker's MLflow run KILLED.
    """
    assert cfg.search is not None
    _quiet()
    scfg = cfg.search
    storage = build_storage(scfg, recorder)
    try:
        study = optuna.create_study(
            study_name=cfg.study_name,
            storage=storage,
            directions=directions(cfg),
            sampler=build_sampler(scfg, cfg.train.seed),
            pruner=build_pruner(scfg, scfg.max_epochs or cfg.train.max_epochs, trial_evals_per_epoch(cfg)),
            load_if_exists=True,
        )
    except optuna.exceptions.OptunaError as exc:
        raise SearchError(
            f"cannot open study {cfg.study_name!r} in {redact_secrets(scfg.storage)}: {exc}"
        ) from exc
    wanted = [optuna.study.StudyDirection[d.upper()] for d in directions(cfg)]
    if study.directions != wanted:
        raise SearchError(
            f"study {cfg.study_name!r} in {redact_secrets(scfg.storage)} optimizes "
            f"{[d.name for d in study.directions]}, "
            f"the config asks for {[d.name for d in wanted]}: set search.study_name to start a new study"
        )
    return study


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED_STATES))


# ------------------------------------------------------------------------------------------- one trial


def trial_overrides(cfg: PipelineConfig) -> dict[str, Any]:
    """Settings every trial gets: the search metric drives early stopping and checkpoints, and trials may
    have a smaller epoch budget than the final training."""
    assert cfg.search is not None
    out: dict[str, Any] = {"train.monitor": cfg.search_metric}
    if cfg.search.max_epochs:
        out["train.max_epochs"] = cfg.search.max_epochs
        out["train.min_epochs"] = min(cfg.train.min_epochs, cfg.search.max_epochs)
    if (evals := trial_evals_per_epoch(cfg)) > 1:
        out["train.evals_per_epoch"] = evals
    return out


def trial_config(cfg: PipelineConfig, params: dict[str, Any]) -> PipelineConfig:
    """The config a trial with ``params`` trains."""
    return apply_params(cfg, {**params, **trial_overrides(cfg)})


def kept_checkpoint(work_dir: str | Path, number: int) -> Path:
    """Where trial ``number``'s best checkpoint is kept when it was the study's best when it finished."""
    return Path(work_dir) / KEPT / f"trial-{number}.ckpt"


class EncodingCache:
    """Tokenized splits per (model, max_length): tokenization runs once per study, not once per trial."""

    def __init__(self, splits: Splits):
        self.splits = splits
        self._tokenizers: dict[str, Any] = {}
        self._encoded: dict[tuple[str, int, int, str], EncodedData] = {}

    def get(self, cfg: PipelineConfig) -> EncodedData:
        m = cfg.model
        key = (m.name, m.max_length, m.max_target_length, m.source_prefix)
        if key not in self._encoded:
            if m.name not in self._tokenizers:
                self._tokenizers[m.name] = load_tokenizer(m.name)
            self._encoded[key] = cfg.kind.training.encode(self.splits, self._tokenizers[m.name], cfg)
        return self._encoded[key]


def measure_latency_ms(cfg: PipelineConfig, data: EncodedData, inputs: list[Any]) -> float:
    """Median single-example latency of the trial's architecture at its max_length (weights do not matter)."""
    kind = cfg.kind
    model, _ = load_pretrained(cfg.task, cfg.model.name, data.labels)
    meta = {"labels": data.labels, **kind.serving.inference_settings(cfg)}
    predictor = kind.serving.predictor(model.eval(), data.tokenizer, meta)
    return time_single(predictor.predict, inputs[:LATENCY_EXAMPLES], LATENCY_EXAMPLES)[
        f"{names.SERVING}latency_p50_ms"
    ]


class Objective:
    """Trains one configuration per trial under a nested MLflow run; returns the best validation score."""

    def __init__(self, cfg: PipelineConfig, recorder: RunRecorder, work_dir: Path, splits: Splits):
        assert cfg.search is not None
        self.cfg, self.recorder = cfg, recorder
        self.work_dir, self.cache = work_dir, EncodingCache(splits)
        self.metric = cfg.search_metric
        self.pruning = cfg.search.pruner != "none"
        # search.final may adopt the best trial's weights: keep them (cross-validated trials have none).
        self.keep = cfg.search.final != "retrain" and not cfg.train.cv_folds

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        params = suggest(trial, self.cfg.search.space)
        tags = {
            TAG_STAGE: "trial",
            TAG_TRIAL: str(trial.number),
            TAG_STUDY: self.cfg.study_name,
            TAG_STATE: "RUNNING",
        }
        counter = EpochCounter(trial_evals_per_epoch(self.cfg))
        label = f"trial {trial.number}"  # Optuna's number: the same in run names, tags, trials.csv and plots
        print(f"{label} started: {short_params(params)}")
        name = trial_run_name(trial.number, params)
        with self.recorder.child(name, tags, finished_on=(optuna.TrialPruned,)) as run:
            trial.set_user_attr(RUN_ATTR, run.run_id)  # a retried trial inherits the old id: overwrite it
            state, error = "COMPLETE", None
            try:
                cfg = trial_config(self.cfg, params)
                run.log_params({k: v for k, v in run_params(cfg).items() if not k.startswith("search.")})
                value = self._score(trial, cfg, run, counter)
                metrics = {names.best(self.metric): value, f"{names.SEARCH}objective": value}
                if self.cfg.search.latency_objective:
                    texts = self.cache.splits.validation["text"].tolist()
                    latency = measure_latency_ms(cfg, self.cache.get(cfg), texts)
                    trial.set_user_attr(LATENCY_ATTR, latency)
                    metrics[names.LATENCY_P50] = latency
                run.log_metrics(metrics)
                best = describe_best(trial, value)
                print(f"{label} complete: {self.metric} {value:.4f} after {counter.epochs} epoch(s); {best}")
                return (value, metrics[names.LATENCY_P50]) if self.cfg.search.latency_objective else value
            except optuna.TrialPruned:
                state = "PRUNED"
                print(f"{label} pruned after {counter.epochs} epoch(s); {describe_best(trial)}")
                raise
            except BaseException as exc:
                state, error = "FAIL", exc
                why = "invalid parameter combination: " if isinstance(exc, ConfigError) else ""
                print(f"{label} failed: {why}{type(exc).__name__}: {exc}".splitlines()[0])
                raise
            finally:
                trial.set_user_attr(EPOCHS_ATTR, counter.epochs)
                failure = {"tuneflow.failure": f"{type(error).__name__}: {error}"[:5000]} if error else {}
                run.set_tags({TAG_STATE: state, **failure})
                if state != "COMPLETE":  # the run list shows pruned and failed trials for what they are
                    run.rename(trial_run_name(trial.number, params, state))
                run.log_metrics({f"{names.FIT}epochs_trained": counter.epochs})
                if error is None or isinstance(error, Exception):  # not on Ctrl-C or a kill
                    self._log_curves(run)
                shutil.rmtree(self.work_dir / f"trial-{trial.number}", ignore_errors=True)

    def _log_curves(self, run: ChildRun) -> None:
        """The trial's learning curves as ``learning_curves.png``, the name the final training uses too, so
        the UI's Compare view shows the trials' curves side by side. Pruned trials included."""
        keys = self.cfg.kind.metrics.history
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / LEARNING_CURVES
            if plot_learning_curves(run.history(keys), keys, path):
                run.log_artifact(path)

    def _score(self, trial: optuna.Trial, cfg: PipelineConfig, run: ChildRun, counter: EpochCounter) -> float:
        data = self.cache.get(cfg)
        trial_dir = self.work_dir / f"trial-{trial.number}"
        if cfg.train.cv_folds:

            def report(fold: int, scores: list[float]) -> None:
                if self.pruning:  # (never for two objectives: Optuna cannot prune those)
                    trial.report(sum(scores) / len(scores), step=fold)
                    if trial.should_prune():
                        raise optuna.TrialPruned(f"pruned after fold {fold}")

            result = cross_validate(
                cfg,
                data,
                run.nested(),
                trial_dir,
                run_name=f"trial-{trial.number}-",
                tags={TAG_TRIAL: str(trial.number), TAG_STUDY: cfg.study_name},
                on_fold=report,
                counter=counter,
            )
            run.log_metrics(result.metrics())
            return result.mean
        from optuna_integration import PyTorchLightningPruningCallback

        callbacks = [counter, CrashPoint("trial"), TrialProgress(trial.number, self.metric)]
        # Steps count validations from 1 (successive halving's first rung is the first validation with
        # warmup_epochs 0); the median pruner keeps the library callback's epoch steps it was measured with.
        if self.pruning and (cfg.train.evals_per_epoch > 1 or self.cfg.search.pruner != "median"):
            callbacks.append(ReportValidations(trial, self.metric))
        elif self.pruning:
            callbacks.append(PyTorchLightningPruningCallback(trial, monitor=self.metric))
        result = fit(
            cfg,
            data,
            trial_dir,
            logger=MLflowMetricsLogger(run.run_id, run.tracking_uri),
            callbacks=callbacks,
            progress_bar=False,
            resumable=False,
        )
        if result.best_score is None or math.isnan(result.best_score):
            raise SearchError(f"trial {trial.number} produced no {self.metric} value")
        multi = len(trial.study.directions) > 1  # any Pareto-optimal trial may be picked: keep each
        if self.keep and (
            multi or best_so_far(trial, result.best_score) == (result.best_score, trial.number)
        ):
            keep_best(result, kept_checkpoint(self.work_dir, trial.number))
        return result.best_score


def optimize(
    cfg: PipelineConfig,
    recorder: RunRecorder,
    work_dir: str,
    n_trials: int | None,
    worker: int = 0,
    threads: int | None = None,
) -> int:
    """One worker: run up to ``n_trials`` trials of the study (until its timeout); returns trials run.

    Runs in a spawned process (the config arrives pickled, with its resolved task type: not parsed again)
    or in-process for a single worker.
    """
    assert cfg.search is not None
    _quiet()
    if threads and not cfg.train.torch_threads:
        import torch

        torch.set_num_threads(threads)  # N workers share the cores instead of each taking them all
    study = open_study(cfg, recorder)
    # Distinct seeds per worker and per resume, so parallel or resumed workers do not replay one sequence.
    study.sampler = build_sampler(cfg.search, cfg.train.seed + 1000 * worker + len(study.trials))
    splits = cfg.kind.data.load_splits(cfg.data, cfg.train.seed)
    objective = Objective(cfg, recorder, Path(work_dir), splits)
    callbacks = []
    if cfg.search.n_trials:
        # Another machine on the same study may finish the budget first: stop when the study has enough.
        callbacks.append(optuna.study.MaxTrialsCallback(cfg.search.n_trials, states=FINISHED_STATES))
    before = len(study.trials)
    study.optimize(
        objective,
        n_trials=n_trials,
        timeout=cfg.search.timeout,
        catch=(Exception,),
        callbacks=callbacks,
        gc_after_trial=True,
    )
    return len(study.trials) - before


def _worker(
    cfg: PipelineConfig, recorder: RunRecorder, work_dir: str, n_trials: int | None, worker: int, threads: int
) -> int:
    """A spawned search worker's entry: it starts unconfigured, so it points itself at the store first."""
    tracking.configure(recorder.tracking_uri)
    return optimize(cfg, recorder, work_dir, n_trials, worker, threads)


def shares(remaining: int | None, workers: int) -> list[int | None]:
    """Split the missing trials between workers so that together they run exactly ``remaining``."""
    if remaining is None:
        return [None] * workers
    base, extra = divmod(remaining, workers)
    return [n for n in (base + (1 if i < extra else 0) for i in range(workers)) if n > 0]


@dataclass(frozen=True)
class StudySummary:
    """What a search produced: plain values for Prefect and the CLI."""

    study_name: str
    storage: str
    metric: str
    direction: str
    best_value: float | None
    best_params: dict[str, Any]
    best_trial: int | None
    best_run_id: str | None
    n_complete: int
    n_pruned: int
    n_failed: int
    trials_run_now: int  # trials that finished (complete or pruned) during this call
    epochs_total: float
    best_latency_ms: float | None = None
    summary_dir: str = ""
    run_id: str = ""  # the HPO run the trials are nested under (set by the caller that opened it)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_study(
    cfg: PipelineConfig, recorder: RunRecorder, work_dir: str | Path, workers: int | str = 1
) -> StudySummary:
    """Run the missing trials of the config's study with ``workers`` processes and summarize the study.

    Args:
        cfg: config with an enabled ``search`` section.
        recorder: records each trial as a run nested under the HPO parent run.
        work_dir: trial checkpoints (removed after scoring) and the summary files.
        workers: local worker processes (1 runs in this process), or ``"auto"``
            (:func:`~tuneflow.fitting.fidelity.plan_workers`).

    Returns:
        The study summary; plots and the trials table are written to ``work_dir/summary``.
    """
    if cfg.search is None:
        raise SearchError("the config has no search: section")
    study = open_study(cfg, recorder)
    optuna.storages.fail_stale_trials(study)  # a worker killed last time: fail and re-queue its trials now
    done = finished_count(study)
    remaining = None if cfg.search.n_trials is None else max(cfg.search.n_trials - done, 0)
    workers = plan_workers(workers, remaining, cfg)
    print(
        f"study {cfg.study_name!r} ({redact_secrets(cfg.search.storage)}): {done} finished trial(s), "
        f"{'until timeout' if remaining is None else f'{remaining} to run'} on {workers} worker(s)"
    )
    plan = shares(remaining, workers)
    args = (cfg, recorder, str(work_dir))
    if len(plan) == 1:
        optimize(*args, plan[0], 0)
    elif plan:
        threads = max(1, usable_cores() // len(plan))
        with ProcessPoolExecutor(max_workers=len(plan), mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_worker, *args, n, i, threads) for i, n in enumerate(plan)]
            errors = [f.exception() for f in futures]
        failed = [e for e in errors if e is not None]
        if failed:
            raise SearchError(
                f"{len(failed)} of {len(plan)} search worker(s) failed: {failed[0]!r}"
            ) from failed[0]
    study = open_study(cfg, recorder)
    return summarize(study, cfg, Path(work_dir) / "summary", trials_run_now=finished_count(study) - done)


# ------------------------------------------------------------------------------------------- summary


def pick_best(study: optuna.Study) -> FrozenTrial | None:
    """Best trial; for a multi-objective study the Pareto-optimal trial with the best primary value."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    if len(study.directions) == 1:
        return study.best_trial
    sign = 1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1
    return max(study.best_trials, key=lambda t: sign * t.values[0])


def summarize(study: optuna.Study, cfg: PipelineConfig, out: Path, trials_run_now: int = 0) -> StudySummary:
    """Write trials.csv, best.json and the plots to ``out`` and return the summary."""
    out.mkdir(parents=True, exist_ok=True)
    states = [t.state for t in study.trials]
    best = pick_best(study)
    summary = StudySummary(
        study_name=study.study_name,
        storage=redact_secrets(cfg.search.storage) if cfg.search else "",
        metric=cfg.search_metric,
        direction=direction(cfg),
        best_value=best.values[0] if best else None,
        best_params=dict(best.params) if best else {},
        best_trial=best.number if best else None,
        best_run_id=best.user_attrs.get(RUN_ATTR) if best else None,
        n_complete=states.count(TrialState.COMPLETE),
        n_pruned=states.count(TrialState.PRUNED),
        n_failed=states.count(TrialState.FAIL),
        trials_run_now=trials_run_now,
        epochs_total=sum(float(t.user_attrs.get(EPOCHS_ATTR, 0)) for t in study.trials),
        best_latency_ms=best.values[1] if best and len(best.values) > 1 else None,
        summary_dir=str(out),
    )
    save_table(trials_table(study), out / "trials.csv")
    write_plots(study, cfg.search_metric, out)
    (out / "best.json").write_text(json.dumps(summary.to_dict(), indent=2, default=str))
    if best is None:
        raise SearchError(
            f"study {study.study_name!r} has no completed trial ({summary.n_pruned} pruned, "
            f"{summary.n_failed} failed): see the failed trials' tuneflow.failure tag in MLflow"
        )
    return summary


def best_config(cfg: PipelineConfig, best_params: dict[str, Any]) -> PipelineConfig:
    """The config with the best trial's parameters (and the search metric as monitor) applied."""
    return apply_params(cfg, {**best_params, "train.monitor": cfg.search_metric})
