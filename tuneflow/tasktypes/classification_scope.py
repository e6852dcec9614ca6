"""Fitting the out-of-scope fallback of a sequence classifier after training, once its temperature is
known: the detector of :mod:`tuneflow.judging.outofscope`, its threshold, saved with the exported model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from tuneflow import names
from tuneflow.config import DataConfig, FileSpec, OOSConfig, PipelineConfig
from tuneflow.data.readers import LABEL, TEXT, read_columns
from tuneflow.data.splits import Splits
from tuneflow.judging.outofscope import (
    ScopeDetector,
    fit_methods,
    standardization,
    threshold_for_recall,
    threshold_on_oos,
)

# Train examples the Mahalanobis means and covariance are fitted on, and the most a knn bank holds (20,000
# x 384 float32 = 31 MB in the exported model).
MAX_TRAIN_FOR_SCOPE = 20_000


def read_texts(spec: FileSpec | None, cfg: DataConfig) -> list[str]:
    """The texts of an out-of-scope file (validated before training: problems here are errors)."""
    if spec is None:
        return []
    df, _, problems = read_columns(spec, [cfg.text_column])
    if df is None:
        raise ValueError("; ".join(str(p) for p in problems))
    return df[cfg.text_column].astype(str).tolist()


def scope_features(oos: OOSConfig) -> str | None:
    """The features the configured detector reads from the model's forward pass (None: logits only)."""
    return ScopeDetector(oos.methods, 0.0, oos.fallback_label, features=oos.feature_kind).feature_kind


def fit_scope(
    predictor: Any,
    export_dir: Path,
    splits: Splits,
    cfg: PipelineConfig,
    temperature: float,
    validation: tuple[np.ndarray, np.ndarray | None],
) -> dict[str, float]:
    """Fit the detector on the training split, choose its threshold (``oos.threshold_rule``) and save it
    beside the exported model; returns the ``oos/`` metrics of the fit.

    Args:
        validation: the validation split's logits and :func:`scope_features` (one forward pass, shared
            with the temperature's fit).
    """
    batch, oos = cfg.train.eval_batch_size, cfg.oos
    index = {label: i for i, label in enumerate(predictor.labels)}
    detector = ScopeDetector(oos.methods, 0.0, oos.fallback_label, temperature, features=oos.feature_kind)
    features = detector.feature_kind
    logits, feats = validation
    if features:
        train = splits.train.sample(n=min(len(splits.train), MAX_TRAIN_FOR_SCOPE), random_state=0)
        y_train = np.array([index[x] for x in train[LABEL]])
        _, train_feats = predictor.forward(train[TEXT].tolist(), batch, features)
        assert train_feats is not None
        # A quantized model's detector runs its knn bank in int8 too: what is fitted is what serves.
        int8 = bool(getattr(predictor.model, "int8", False))
        detector = replace(
            detector, **fit_methods(oos.methods, train_feats, y_train, len(index), oos.knn_k, int8)
        )
    parts = detector.part_scores(logits, feats)
    if len(parts) > 1:
        detector = replace(detector, standardize=standardization(parts))
    in_scores = detector.scores(logits, feats)
    oos_texts = read_texts(cfg.data.oos_validation, cfg.data)
    if oos_texts and oos.threshold_rule == "youden":
        o_logits, o_feats = predictor.forward(oos_texts, batch, features)
        threshold = threshold_on_oos(in_scores, detector.scores(o_logits, o_feats))
    else:
        threshold = threshold_for_recall(in_scores, oos.target_in_scope_recall)
    replace(detector, threshold=threshold).save(export_dir)
    # The share of known-intent validation questions kept: what the fallback costs real users.
    kept = float((in_scores >= threshold).mean())
    return {f"{names.OOS}threshold": threshold, f"{names.OOS}val_in_scope_recall": kept}
