"""The evaluation skeleton, run once for every task type, and the reports it shares.

Every task type answers the same questions in the same order: its headline metrics and reports on the test
split, the train/validation gap (overfitting), the out-of-domain sets, latency; then learning curves and
``metrics.json``. The task type supplies the answers (see :class:`tuneflow.tasktypes.base.TaskType`); this
module never imports one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from tuneflow import names
from tuneflow.config import PipelineConfig
from tuneflow.data.splits import Splits

History = dict[str, list[tuple[int, float]]]
LEARNING_CURVES = "learning_curves.png"  # one name for a final training's and each trial's curves (Compare)
TABLE_DECIMALS = 4  # floats in the CSV reports: 0.8889, not 0.8888888888888888


@dataclass(frozen=True)
class EvaluationResult:
    """Metrics, overfitting warnings and the files written (names relative to the output directory)."""

    metrics: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    artifacts: list[str] = field(default_factory=list)
    # What promotion judges the model on, when the test predictions already hold it (None: promotion scores)
    evidence: Any = field(default=None, repr=False)

    def with_metrics(self, metrics: dict[str, float]) -> EvaluationResult:
        """The same result with more metrics (e.g. the validation curve's overfitting figures)."""
        return replace(self, metrics={**self.metrics, **metrics})


@dataclass(frozen=True)
class Gap:
    """The generalization gap of a model: a quantity measured on (a train sample) and on validation.

    ``gap`` is oriented so that larger means more overfitting: train minus validation for a score,
    validation minus train for a loss.
    """

    quantity: str  # in words, for the warning ("entity F1")
    metric: str  # the metric's base name ("f1"): logged as fit/gap_train_<metric> and fit/gap_val_<metric>
    train: float
    validation: float
    lower_is_better: bool = False  # a loss: the gap is validation minus train

    @property
    def metrics(self) -> dict[str, float]:
        return {
            f"{names.FIT}gap_train_{self.metric}": self.train,
            f"{names.FIT}gap_val_{self.metric}": self.validation,
        }

    @property
    def gap(self) -> float:
        if self.lower_is_better:
            return self.validation - self.train
        return self.train - self.validation

    def warning(self, threshold: float) -> str:
        return (
            f"possible overfitting: train {self.quantity} {self.train:.3f} vs validation "
            f"{self.validation:.3f}, a gap of {self.gap:.3f} (> train.overfit_gap_threshold={threshold})"
        )


def evaluate(
    task: Any,
    predictor: Any,
    splits: Splits,
    out_dir: str | Path,
    cfg: PipelineConfig,
    history: History | None = None,
    fp32: Any | None = None,
) -> EvaluationResult:
    """Evaluate an exported model the way its task type does, in the order every task shares.

    Args:
        task: the task type (from :func:`tuneflow.tasktypes.task_type`).
        predictor: the task's inference wrapper around the exported model.
        splits: the validated splits (test = headline; train sample vs validation = gap; extra = OOD).
        out_dir: where the reports go.
        cfg: the pipeline config (evaluation and overfitting settings).
        history: the run's metric history, for the learning-curve plot.
        fp32: for an int8 model, the predictor of the fp32 weights it was made from: scored on the same
            test split, to report (and gate) what quantization cost (:func:`quantization_loss`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, float] = {}
    kept: dict[str, Any] = {}
    artifacts = task.judging.evaluate_test(predictor, splits.test, out, cfg, metrics, kept)
    gap = task.judging.measure_gap(predictor, splits, cfg)
    threshold = cfg.train.overfit_gap_threshold
    metrics.update(gap.metrics)
    metrics[names.TRAIN_VAL_GAP] = gap.gap
    metrics[names.OVERFIT_WARNING] = float(gap.gap > threshold)
    warnings = [gap.warning(threshold)] if gap.gap > threshold else []
    for name, df in splits.extra.items():
        metrics.update(task.judging.score_set(predictor, df, cfg, prefix=names.ood(name)))
    metrics.update(task.judging.measure_latency(predictor, splits.test, cfg))
    if fp32 is not None:
        metrics.update(quantization_loss(task, fp32, splits.test, cfg, metrics))
    if history is not None and plot_learning_curves(history, task.metrics.history, out / LEARNING_CURVES):
        artifacts.append(LEARNING_CURVES)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return EvaluationResult(metrics, warnings, [*artifacts, "metrics.json"], kept.get("promotion"))


def quantization_loss(
    task: Any, fp32: Any, test: Any, cfg: PipelineConfig, served: dict[str, float]
) -> dict[str, float]:
    """The fp32 weights' test scores beside the served int8 model's (``served``: its metrics so far).

    Returns ``quantization/fp32_<metric>`` for each test score, ``quantization/<metric>_loss`` (how much
    worse the served model is: fp32 minus int8 for a score), ``quantization/loss`` on ``gates.metric``
    (what ``gates.max_quantization_loss`` bounds), and the fp32 single-example p50 with the speed-up.
    """
    out: dict[str, float] = {}
    for metric, value in task.judging.score_set(fp32, test, cfg, prefix="").items():
        out[f"{names.QUANTIZATION}fp32_{metric}"] = value
        mine = served.get(f"{names.TEST}{metric}")
        if mine is not None:
            lower = task.metrics.lower_better(metric)
            out[f"{names.QUANTIZATION}{metric}_loss"] = mine - value if lower else value - mine
    primary = out.get(f"{names.QUANTIZATION}{cfg.gates.metric}_loss")
    if primary is not None:
        out[f"{names.QUANTIZATION}loss"] = primary
    p50 = task.judging.measure_latency(fp32, test, cfg).get(names.LATENCY_P50)
    if p50 and served.get(names.LATENCY_P50):
        out[f"{names.QUANTIZATION}fp32_latency_p50_ms"] = p50
        out[f"{names.QUANTIZATION}latency_speedup"] = p50 / served[names.LATENCY_P50]
    return out


def save_table(df: Any, path: str | Path, **to_csv: Any) -> None:
    """Write a report table with its floats rounded to :data:`TABLE_DECIMALS` places."""
    df.round(TABLE_DECIMALS).to_csv(path, **{"index": False, **to_csv})


def _pyplot() -> Any:
    """pyplot on the file backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(cm: np.ndarray, labels: list[str], path: Path, name: str = "") -> None:
    """The row-normalized confusion matrix, headed by ``name`` (the config) and the accuracy it shows: two of
    them side by side in MLflow's compare view say whose each is."""
    plt = _pyplot()
    size = min(4 + 0.25 * len(labels), 30)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.grid(False)  # whatever the style: grid lines would cross the counts
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7 if len(labels) > 20 else 9)
    ax.set_yticks(range(len(labels)), labels, fontsize=7 if len(labels) > 20 else 9)
    if len(labels) <= 20:
        for i in range(len(labels)):
            for j in range(len(labels)):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        int(cm[i, j]),
                        ha="center",
                        va="center",
                        color="white" if norm[i, j] > 0.5 else "black",
                        fontsize=8,
                    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    title = "Confusion matrix (test, row-normalized colour)"
    if name:
        title = f"{name}: accuracy {np.trace(cm) / max(cm.sum(), 1):.4f}\n{title}"
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_learning_curves(history: History, keys: tuple[str, ...], path: Path) -> bool:
    """Train loss per step and validation metrics per epoch (x = optimizer step). False when no history."""
    if not any(history.get(k) for k in keys):
        return False
    plt = _pyplot()
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4))
    for key in keys:
        points = history.get(key) or []
        if points:
            ax = ax_loss if key.endswith("loss") else ax_metric
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, marker=None if key == f"{names.TRAIN}loss" else "o", label=key)
    for ax, title in ((ax_loss, "loss"), (ax_metric, "accuracy / F1")):
        ax.set_xlabel("optimizer step")
        ax.set_title(title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
