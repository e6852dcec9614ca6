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

from tuneflow import tracking
from tuneflow.config import PipelineConfig
from tuneflow.data import EncodedData
from tuneflow.training import EpochCounter, fit


@dataclass
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
            f"cv_{self.metric}_mean": self.mean,
            f"cv_{self.metric}_std": self.std,
            "cv_folds": len(self.scores),
            "cv_epochs": self.epochs,
        }


def cross_validate(
    cfg: PipelineConfig,
    data: EncodedData,
    parent_run_id: str,
    work_dir: str | Path,
    tracking_uri: str,
    run_name: str = "",
    tags: dict[str, str] | None = None,
    on_fold: Callable[[int, list[float]], None] | None = None,
    counter: EpochCounter | None = None,
) -> CVResult:
    """Fit one model per stratified fold (``cfg.train.cv_folds`` folds) and score each on its held-out part.

    Args:
        cfg: the config to evaluate (``train.monitor`` is the score).
        data: tokenized train/validation splits; they are pooled and re-split into folds.
        parent_run_id: each fold becomes a nested run under it.
        work_dir: fold checkpoints go here and are removed once the fold is scored.
        tracking_uri: MLflow store of the fold runs.
        run_name: prefix of the fold run names.
        tags: extra tags of every fold run.
        on_fold: called with ``(fold_index, scores_so_far)`` after each fold; a search uses it to report the
            running mean to Optuna (and may raise ``optuna.TrialPruned``).
    """
    k = cfg.train.cv_folds or 0
    if k < 2:
        raise ValueError("cross_validate needs train.cv_folds >= 2")
    scores: list[float] = []
    counter = counter or EpochCounter()
    start_epochs = counter.epochs
    for i, fold in enumerate(data.folds(k, cfg.train.seed)):
        run_id = tracking.start_run(
            cfg.experiment_name,
            run_name=f"{run_name}fold-{i}",
            tags={tracking.TAG_STAGE: "fold", "tuneflow.fold": str(i), **(tags or {})},
            parent_run_id=parent_run_id,
        )
        error, fold_start = None, counter.epochs
        fold_dir = Path(work_dir) / f"fold-{i}"
        try:
            logger = tracking.MLflowMetricsLogger(run_id, tracking_uri)
            result = fit(
                cfg, fold, fold_dir, logger=logger, callbacks=[counter], progress_bar=False, resumable=False
            )
            score = result.best_score if result.best_score is not None else float("nan")
            fold_epochs = counter.epochs - fold_start
            tracking.log_metrics(run_id, {f"best_{cfg.train.monitor}": score, "epochs_trained": fold_epochs})
        except BaseException as exc:
            error = exc
            raise
        finally:
            tracking.end_run(run_id, tracking.run_status(error))
            shutil.rmtree(fold_dir, ignore_errors=True)  # scored: the fold's weights are not needed again
        scores.append(score)
        print(f"  fold {i + 1}/{k}: best {cfg.train.monitor} {score:.4f} after {fold_epochs} epoch(s)")
        if on_fold is not None:
            on_fold(i, scores)
    return CVResult(cfg.train.monitor, scores, counter.epochs - start_epochs)
