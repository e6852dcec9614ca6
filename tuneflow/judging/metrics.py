"""Pure metric functions (scikit-learn underneath)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from tuneflow import names


def classification_metrics(
    y_true: Sequence[str], y_pred: Sequence[str], prefix: str = ""
) -> dict[str, float]:
    """Accuracy, macro and weighted F1."""
    from sklearn.metrics import accuracy_score, f1_score  # sklearn loads in ~0.9 s: only when scoring

    return {
        f"{prefix}accuracy": float(accuracy_score(y_true, y_pred)),
        f"{prefix}f1_macro": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        f"{prefix}f1_weighted": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
    }


def per_class_table(y_true: Sequence[str], y_pred: Sequence[str], labels: list[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class, one row per label (sorted by F1, worst first)."""
    from sklearn.metrics import classification_report

    report = classification_report(y_true, y_pred, labels=labels, output_dict=True, zero_division=0)
    rows = [
        {"label": label, **{k: report[label][k] for k in ("precision", "recall", "f1-score", "support")}}
        for label in labels
    ]
    df = pd.DataFrame(rows).rename(columns={"f1-score": "f1"})
    df["support"] = df["support"].astype(int)
    return df.sort_values(["f1", "label"]).reset_index(drop=True)


def confusion(y_true: Sequence[str], y_pred: Sequence[str], labels: list[str]) -> np.ndarray:
    """Confusion matrix, rows = true label, columns = predicted label, in ``labels`` order."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(y_true, y_pred, labels=labels)


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p95 of per-example latencies in milliseconds."""
    if not len(seconds):
        return {}
    ms = np.asarray(seconds) * 1000
    return {
        names.LATENCY_P50: float(np.percentile(ms, 50)),
        names.LATENCY_P95: float(np.percentile(ms, 95)),
    }


LATENCY_THREADS = 1
LATENCY_REPEATS = 3
LATENCY_WARMUP = 3


def time_single(predict: Callable[[list[Any]], Any], inputs: Sequence[Any], n: int) -> dict[str, float]:
    """p50/p95 latency of ``predict`` called on one input at a time, over the first ``n`` inputs.

    Measured so that two runs can be compared, also on a busy machine: after ``LATENCY_WARMUP`` calls (lazy
    initialization, allocator), with ``LATENCY_THREADS`` torch thread(s) (not whatever the machine has
    free), each input timed ``LATENCY_REPEATS`` times keeping its fastest (interference only ever adds
    time). The conditions are returned with the figures (``serving/latency_threads``,
    ``serving/latency_repeats``).
    """
    if not n or not inputs:
        return {}
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(LATENCY_THREADS)
    try:
        for item in list(inputs[:LATENCY_WARMUP]):
            predict([item])
        timings = []
        for item in inputs[:n]:
            best = float("inf")
            for _ in range(LATENCY_REPEATS):
                start = time.perf_counter()
                predict([item])
                best = min(best, time.perf_counter() - start)
            timings.append(best)
    finally:
        torch.set_num_threads(threads)
    return {
        **latency_summary(timings),
        f"{names.SERVING}latency_threads": float(LATENCY_THREADS),
        f"{names.SERVING}latency_repeats": float(LATENCY_REPEATS),
    }


def throughput(predict_batch: Callable[[list[Any]], Any], inputs: Sequence[Any]) -> dict[str, float]:
    """Examples per second of ``predict_batch`` over all ``inputs`` at once (batched inference)."""
    if not len(inputs):
        return {}
    start = time.perf_counter()
    predict_batch(list(inputs))
    return {f"{names.SERVING}throughput_examples_per_s": len(inputs) / (time.perf_counter() - start)}
