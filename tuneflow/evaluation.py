"""Run an exported model on evaluation sets and write the reports a person wants to look at."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tuneflow.data import LABEL, LINE, TEXT, Splits
from tuneflow.metrics import classification_metrics, confusion, latency_summary, per_class_table

TRAIN_SAMPLE_FOR_GAP = 2000


@dataclass
class Classifier:
    """An exported classifier (HF model dir) ready for inference on raw text."""

    model: Any
    tokenizer: Any
    labels: list[str]
    max_length: int = 128

    @torch.inference_mode()
    def predict_proba(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        """Class probabilities, shape (len(texts), n_labels). Sorting by length keeps padding small."""
        order = np.argsort([len(t) for t in texts])
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            enc = self.tokenizer(
                [texts[i] for i in idx],
                truncation=True,
                max_length=self.max_length,
                padding=True,
                return_tensors="pt",
            )
            out[idx] = torch.softmax(self.model(**enc).logits.float(), -1).numpy()
        return out

    def predict(self, texts: list[str], batch_size: int = 128) -> pd.DataFrame:
        """``label`` and ``score`` (its probability) per text."""
        proba = self.predict_proba(texts, batch_size) if texts else np.zeros((0, len(self.labels)))
        best = proba.argmax(-1) if len(proba) else np.zeros(0, dtype=int)
        return pd.DataFrame(
            {
                "label": [self.labels[i] for i in best],
                "score": proba[np.arange(len(best)), best].astype(float),
            }
        )


@dataclass
class EvaluationResult:
    metrics: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    artifacts: list[str] = field(default_factory=list)


def _score(clf: Classifier, df: pd.DataFrame, batch_size: int) -> tuple[np.ndarray, list[str]]:
    proba = clf.predict_proba(df[TEXT].tolist(), batch_size)
    return proba, [clf.labels[i] for i in proba.argmax(-1)]


def measure_latency(clf: Classifier, texts: list[str], n: int, batch_size: int) -> dict[str, float]:
    """Single-example latency p50/p95 on ``n`` texts, and batched throughput over all ``texts``."""
    out: dict[str, float] = {}
    if n and texts:
        clf.predict_proba(texts[:2], 1)  # warm-up: first call pays for lazy initialization
        timings = []
        for text in texts[:n]:
            start = time.perf_counter()
            clf.predict_proba([text], 1)
            timings.append(time.perf_counter() - start)
        out.update(latency_summary(timings))
    if texts:
        start = time.perf_counter()
        clf.predict_proba(texts, batch_size)
        out["throughput_examples_per_s"] = len(texts) / (time.perf_counter() - start)
    return out


def plot_confusion(cm: np.ndarray, labels: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = min(4 + 0.25 * len(labels), 30)
    fig, ax = plt.subplots(figsize=(size, size))
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
    ax.set_title("Confusion matrix (test, row-normalized colour)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_learning_curves(history: dict[str, list[tuple[int, float]]], path: Path) -> bool:
    """Train loss per step and validation metrics per epoch (x = optimizer step). False when no history."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(history.values()):
        return False
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4))
    for key, ax in (
        ("train_loss", ax_loss),
        ("val_loss", ax_loss),
        ("train_accuracy", ax_metric),
        ("val_accuracy", ax_metric),
        ("val_f1_macro", ax_metric),
        ("val_f1", ax_metric),
    ):
        points = history.get(key) or []
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, marker="o" if not key.startswith("train_loss") else None, label=key)
    for ax, title in ((ax_loss, "loss"), (ax_metric, "accuracy / F1")):
        ax.set_xlabel("optimizer step")
        ax.set_title(title)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def finish(
    res: EvaluationResult, out: Path, history: dict[str, list[tuple[int, float]]] | None
) -> EvaluationResult:
    """Common end of every task's evaluation: learning curves (with a history) and ``metrics.json``."""
    if history is not None and plot_learning_curves(history, out / "learning_curves.png"):
        res.artifacts.append("learning_curves.png")
    (out / "metrics.json").write_text(json.dumps(res.metrics, indent=2))
    res.artifacts.append("metrics.json")
    return res


def evaluate(
    clf: Classifier,
    splits: Splits,
    out_dir: str | Path,
    *,
    batch_size: int = 128,
    worst_examples: int = 50,
    latency_examples: int = 50,
    overfit_gap_threshold: float = 0.1,
    history: dict[str, list[tuple[int, float]]] | None = None,
) -> EvaluationResult:
    """Evaluate on test (headline), validation and a train sample (gap), and each extra set.

    Writes into ``out_dir``: ``per_class_metrics.csv``, ``confusion_matrix.png``, ``worst_errors.csv``,
    ``learning_curves.png`` (when a history is given), ``metrics.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = EvaluationResult(metrics={})
    test = splits.test
    proba, pred = _score(clf, test, batch_size)
    truth = test[LABEL].tolist()
    res.metrics.update(classification_metrics(truth, pred, prefix="test_"))

    table = per_class_table(truth, pred, clf.labels)
    table.to_csv(out / "per_class_metrics.csv", index=False)
    plot_confusion(confusion(truth, pred, clf.labels), clf.labels, out / "confusion_matrix.png")
    label_idx = {label: i for i, label in enumerate(clf.labels)}
    errors = test.assign(
        predicted=pred,
        p_predicted=proba.max(-1),
        p_true=[proba[i, label_idx[t]] for i, t in enumerate(truth)],
    )
    errors = errors[errors[LABEL] != errors["predicted"]].sort_values("p_predicted", ascending=False)
    errors.rename(columns={LINE: "line"})[["line", TEXT, LABEL, "predicted", "p_predicted", "p_true"]].head(
        worst_examples
    ).to_csv(out / "worst_errors.csv", index=False)
    res.artifacts += ["per_class_metrics.csv", "confusion_matrix.png", "worst_errors.csv"]

    # The gap is measured in eval mode on both sides (dropout off), so it reflects memorization alone.
    sample = splits.train.sample(n=min(len(splits.train), TRAIN_SAMPLE_FOR_GAP), random_state=0)
    _, train_pred = _score(clf, sample, batch_size)
    _, val_pred = _score(clf, splits.validation, batch_size)
    train_acc = classification_metrics(sample[LABEL].tolist(), train_pred)["accuracy"]
    val_m = classification_metrics(splits.validation[LABEL].tolist(), val_pred, prefix="validation_")
    gap = train_acc - val_m["validation_accuracy"]
    res.metrics.update(val_m, train_accuracy=train_acc, train_val_gap=gap)
    res.metrics["overfit_warning"] = float(gap > overfit_gap_threshold)
    if gap > overfit_gap_threshold:
        res.warnings.append(
            f"possible overfitting: train accuracy {train_acc:.3f} exceeds validation accuracy "
            f"{val_m['validation_accuracy']:.3f} by {gap:.3f} (> train.overfit_gap_threshold="
            f"{overfit_gap_threshold})"
        )

    for name, df in splits.extra.items():
        _, extra_pred = _score(clf, df, batch_size)
        res.metrics.update(classification_metrics(df[LABEL].tolist(), extra_pred, prefix=f"ood_{name}_"))

    res.metrics.update(measure_latency(clf, test[TEXT].tolist(), latency_examples, batch_size))
    return finish(res, out, history)
