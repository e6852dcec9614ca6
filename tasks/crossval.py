"""Cross-validation stage: k nested fold runs; mean and std of the best validation score on the parent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tuneflow.config import PipelineConfig
from tuneflow.data.encoding import EncodedData
from tuneflow.data.labelquality import find_label_issues
from tuneflow.data.readers import TEXT
from tuneflow.data.splits import Splits
from tuneflow.fitting.crossval import CVResult
from tuneflow.fitting.crossval import cross_validate as cross_validate_folds
from tuneflow.fitting.model import load_tokenizer
from tuneflow.fitting.runs import run_dir
from tuneflow.store import tracking


@task(cache_policy=NO_CACHE)
def cross_validate(cfg: PipelineConfig, run_id: str) -> CVResult:
    """Score the config by ``train.cv_folds``-fold cross-validation before the final training."""
    uri = tracking.current_uri()
    kind = cfg.kind
    splits = kind.data.load_splits(cfg.data, cfg.train.seed)
    data = kind.training.encode(splits, load_tokenizer(cfg.model.name), cfg)
    recorder = tracking.RunRecorder(uri, cfg.experiment_name, run_id)
    work = run_dir(cfg, run_id) / "cv"
    oof = work / "out_of_fold_proba.npy"
    result = cross_validate_folds(
        cfg, data, recorder, work, oof_path=oof if kind.judging.detects_scope else None
    )
    tracking.log_metrics(run_id, result.metrics())
    folds = len(result.scores)
    print(f"cross-validation: {result.metric} {result.mean:.4f} +- {result.std:.4f} over {folds} folds")
    if oof.is_file():
        _check_labels(cfg, run_id, splits, data, np.load(oof), work)
    return result


def _check_labels(
    cfg: PipelineConfig, run_id: str, splits: Splits, data: EncodedData, oof: np.ndarray, work: Path
) -> None:
    """Confident learning on the folds' out-of-fold probabilities: a ranked table, a warning above a share."""
    pool = pd.concat([splits.train, splits.validation], ignore_index=True)  # EncodedData.pool's order
    issues = find_label_issues(pool[TEXT].tolist(), data.pool.labels, oof, data.labels)
    tracking.log_text(run_id, issues.table.to_csv(index=False), "validation/label_issues.csv")
    tracking.log_metrics(run_id, issues.metrics())
    warning = issues.warning(cfg.validation.max_label_issue_share)
    if warning:
        get_run_logger().warning(warning)
        tracking.set_tags(run_id, {"tuneflow.label_issues_warning": warning})
    flagged = f"{len(issues.table)} of {issues.examples}"
    print(f"label quality: {flagged} examples look mislabeled ({issues.share:.1%})")
