"""Calibrated confidence: temperature scaling fitted on validation, expected calibration error, reliability.

A fine-tuned classifier's softmax is usually overconfident: "0.95" is right far less than 95% of the time,
so a threshold on it (an out-of-scope fallback, a hand-over to a person) means little. Temperature scaling
(Guo et al., 2017) divides the logits by one scalar ``T`` fitted to minimize the negative log-likelihood on
held-out data: the predicted class never changes (accuracy is untouched), the probabilities become honest.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ECE_BINS = 15
CALIBRATION_FILE = "calibration.json"


def save_temperature(model_dir: str | Path, temperature: float) -> None:
    """Store the fitted temperature beside the exported weights (``calibration.json``)."""
    path = Path(model_dir) / CALIBRATION_FILE
    path.write_text(json.dumps({"temperature": temperature, "method": "temperature scaling"}, indent=2))
    path.chmod(0o644)


def load_temperature(model_dir: str | Path | None) -> float:
    """The export's temperature; 1.0 (the raw softmax) for models exported without calibration."""
    path = Path(model_dir) / CALIBRATION_FILE if model_dir else None
    return float(json.loads(path.read_text())["temperature"]) if path and path.is_file() else 1.0


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (float64, numerically stable)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true labels under ``softmax(logits / temperature)``."""
    p = softmax(logits, temperature)[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(p, 1e-12, None)).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimizing the NLL of ``labels`` (validation), searched on ``log T`` in [-3, 3].

    Args:
        logits: raw model outputs on held-out examples, shape (n, classes).
        labels: their true class indices, shape (n,).

    Returns:
        ``T`` > 1 softens an overconfident model, < 1 sharpens an underconfident one; 1.0 without data.
    """
    from scipy.optimize import minimize_scalar

    if not len(labels):
        return 1.0
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    result = minimize_scalar(
        lambda log_t: nll(logits, labels, np.exp(log_t)), bounds=(-3, 3), method="bounded"
    )
    return float(np.exp(result.x))


def reliability(proba: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Per equal-width confidence bin: examples, mean confidence and accuracy of the top class."""
    conf, correct = proba.max(axis=1), (proba.argmax(axis=1) == labels).astype(np.float64)
    which = np.minimum((conf * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins).astype(np.float64)
    safe = np.maximum(count, 1)
    return {
        "count": count,
        "confidence": np.bincount(which, weights=conf, minlength=bins) / safe,
        "accuracy": np.bincount(which, weights=correct, minlength=bins) / safe,
    }


def expected_calibration_error(proba: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the example-weighted mean gap between confidence and accuracy over ``bins`` equal-width bins."""
    if not len(labels):
        return 0.0
    r = reliability(proba, np.asarray(labels), bins)
    return float((r["count"] * np.abs(r["accuracy"] - r["confidence"])).sum() / len(labels))


def plot_reliability(
    before: np.ndarray,
    after: np.ndarray,
    labels: np.ndarray,
    temperature: float,
    path: Path,
    bins: int = ECE_BINS,
) -> None:
    """Reliability diagram of the test split before and after temperature scaling, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), sharey=True)
    edges = np.linspace(0, 1, bins + 1)
    for ax, proba, title in (
        (axes[0], before, "uncalibrated"),
        (axes[1], after, f"temperature {temperature:.2f}"),
    ):
        r = reliability(proba, labels, bins)
        filled = r["count"] > 0
        ax.bar(
            edges[:-1][filled],
            r["accuracy"][filled],
            width=1 / bins,
            align="edge",
            alpha=0.75,
            edgecolor="black",
            label="accuracy",
        )
        ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
        ax.plot(r["confidence"][filled], r["accuracy"][filled], "o", color="tab:red", ms=3, label="bin mean")
        ece = expected_calibration_error(proba, labels, bins)
        ax.set_title(f"{title}: ECE {ece:.3f}")
        ax.set_xlabel("confidence (top-class probability)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle(f"Reliability on the test split ({len(labels)} examples, {bins} bins)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
