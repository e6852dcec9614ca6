"""k-fold stratified cross-validation: the mean and spread of the best validation score over folds.

On small datasets one validation split is a noisy judge; the mean over k folds (train+validation pooled,
test untouched) is what the search optimizes and what ``tuneflow run`` reports when ``train.cv_folds`` is
set. Each fold is a nested MLflow run with its own learning curves.
"""

from __future__ import annotations

import shutil
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tuneflow import names
from tuneflow.config import PipelineConfig
from tuneflow.data.encoding import EncodedData
from tuneflow.fitting.callbacks import EpochCounter, MLflowMetricsLogger
from tuneflow.fitting.training import fit, predict_logits
from tuneflow.judging.calibration import softmax
from tuneflow.store.tracking import TAG_STAGE, RunRecorder


@dataclass(frozen=True)
class CVResult:
    """Best validation score of each fold and the epochs all folds consumed."""

    metric: str
    scores: list[float]
    epochs: int

    @property
    def mean(self) -> float:
        return statistics.fmean(self.scores)

    @property
    def std(self) -> float:
        return statistics.stdev(self.scores) if len(self.scores) > 1 else 0.0

    def metrics(self) -> dict[str, float]:
        return {
            f"{names.CV}{names.base(self.metric)}_mean": self.mean,
            f"{names.CV}{names.base(self.metric)}_std": self.std,
            f"{names.CV}folds": len(self.scores),
            f"{names.CV}epochs": self.epochs,
        }


def _fit_fold(
    cfg: PipelineConfig,
    data: EncodedData,
    train_part: Any,
    held_out: Any,
    fold_dir: Path,
    run: Any,
    counter: EpochCounter,
    oof: np.ndarray | None,
) -> float:
    """Fit one fold (logged on ``run``), keep its held-out probabilities in ``oof``; its best score."""
    fold = data.fold(train_part, held_out)
    try:
        result = fit(
            cfg,
            fold,
            fold_dir,
            logger=MLflowMetricsLogger(run.run_id, run.tracking_uri),
            callbacks=[counter],
            progress_bar=False,
            resumable=False,
        )
        if oof is not None:
            logits = predict_logits(result.best_checkpoint, fold.validation, data, cfg)
            oof[held_out] = softmax(logits)
    finally:
        shutil.rmtree(fold_dir, ignore_errors=True)  # scored: the fold's weights are not needed again
    return result.best_score if result.best_score is not None else float("nan")


def cross_validate(
    cfg: PipelineConfig,
    data: EncodedData,
    recorder: RunRecorder,
    work_dir: str | Path,
    run_name: str = "",
    tags: dict[str, str] | None = None,
    on_fold: Callable[[int, list[float]], None] | None = None,
    counter: EpochCounter | None = None,
    oof_path: str | Path | None = None,
) -> CVResult:
    """Fit one model per stratified fold (``cfg.train.cv_folds`` folds) and score each on its held-out part.

    Args:
        cfg: the config to evaluate (``train.monitor`` is the score).
        data: tokenized train/validation splits; they are pooled and re-split into folds.
        recorder: where the fold runs are recorded (each nested under its parent run).
        work_dir: fold checkpoints go here and are removed once the fold is scored.
        run_name: prefix of the fold run names.
        tags: extra tags of every fold run.
        on_fold: called with ``(fold_index, scores_so_far)`` after each fold; a search uses it to report the
            running mean to Optuna (and may raise ``optuna.TrialPruned``).
        counter: counts the epochs trained (a search's trial shares its own).
        oof_path: where to save (``np.save``) each example's class probabilities from the fold that held it
            out, in :attr:`EncodedData.pool` order: the input of the label-quality check.
    """
    k = cfg.train.cv_folds or 0
    if k < 2:
        raise ValueError("cross_validate needs train.cv_folds >= 2")
    scores: list[float] = []
    counter = counter or EpochCounter()
    start_epochs = counter.epochs
    oof = np.zeros((len(data.pool), len(data.labels)), dtype=np.float32) if oof_path else None
    for i, (train_part, held_out) in enumerate(data.fold_indices(k, cfg.train.seed)):
        fold_start = counter.epochs
        fold_tags = {TAG_STAGE: "fold", "tuneflow.fold": str(i), **(tags or {})}
        with recorder.child(f"{run_name}fold-{i}", fold_tags) as run:
            score = _fit_fold(
                cfg, data, train_part, held_out, Path(work_dir) / f"fold-{i}", run, counter, oof
            )
            fold_epochs = counter.epochs - fold_start
            run.log_metrics({names.best(cfg.train.monitor): score, f"{names.FIT}epochs_trained": fold_epochs})
        scores.append(score)
        print(f"  fold {i + 1}/{k}: best {cfg.train.monitor} {score:.4f} after {fold_epochs} epoch(s)")
        if on_fold is not None:
            on_fold(i, scores)
    if oof is not None and oof_path:
        np.save(oof_path, oof)
    return CVResult(cfg.train.monitor, scores, counter.epochs - start_epochs)
