"""Data drift between the champion's training data and new data: is retraining worth a fresh search?

Pure functions over text/label lists: label distribution shift (PSI and a chi-square test), text length
shift (Kolmogorov-Smirnov), vocabulary out-of-vocabulary rate, and the shift of the champion's prediction
confidence. Each signal is compared with its threshold; any exceeded threshold marks the data as drifted.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tuneflow import names
from tuneflow.config import RetrainConfig

WORD = re.compile(r"\w+", re.UNICODE)


def psi(reference: Sequence[str], current: Sequence[str], eps: float = 1e-4) -> float:
    """Population stability index of two categorical distributions (0 = identical; > 0.2 = large shift)."""
    cats = sorted(set(reference) | set(current))
    ref, cur = Counter(reference), Counter(current)
    p = np.array([ref[c] / len(reference) for c in cats]) + eps
    q = np.array([cur[c] / len(current) for c in cats]) + eps
    return float(np.sum((q - p) * np.log(q / p)))


def label_chi2_p(reference: Sequence[str], current: Sequence[str]) -> float:
    """p-value of a chi-square test that both label samples come from one distribution."""
    from scipy.stats import chi2_contingency

    cats = sorted(set(reference) | set(current))
    ref, cur = Counter(reference), Counter(current)
    table = np.array([[ref[c] for c in cats], [cur[c] for c in cats]])
    table = table[:, table.sum(0) > 0]
    if table.shape[1] < 2:
        return 1.0
    return float(chi2_contingency(table)[1])


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def oov_rate(reference: Sequence[str], current: Sequence[str]) -> float:
    """Share of word occurrences in ``current`` whose word never occurs in ``reference``."""
    vocab = {w for t in reference for w in words(t)}
    tokens = [w for t in current for w in words(t)]
    return sum(w not in vocab for w in tokens) / max(len(tokens), 1)


@dataclass
class Signal:
    """One drift measurement and its verdict."""

    name: str
    value: float
    threshold: float
    drifted: bool
    detail: str = ""


@dataclass
class DriftReport:
    """All signals; ``drifted`` when any exceeds its threshold."""

    signals: list[Signal]
    reference_size: int
    current_size: int
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def drifted(self) -> bool:
        return any(s.drifted for s in self.signals)

    def metrics(self) -> dict[str, float]:
        return {f"{names.DRIFT}{s.name}": s.value for s in self.signals}

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "drifted": self.drifted}, indent=2, default=str)

    def to_markdown(self) -> str:
        head = "DRIFT detected" if self.drifted else "no drift above thresholds"
        lines = [
            f"# Drift report: {head}",
            "",
            f"Reference (champion's training data): {self.reference_size} examples; new data: "
            f"{self.current_size} examples.",
            "",
            "| signal | value | threshold | drifted | detail |",
            "| --- | --- | --- | --- | --- |",
        ]
        for s in self.signals:
            lines.append(
                f"| {s.name} | {s.value:.4f} | {s.threshold} | {'YES' if s.drifted else 'no'} | {s.detail} |"
            )
        return "\n".join(lines) + "\n"


def drift_report(
    cfg: RetrainConfig,
    ref_texts: Sequence[str],
    ref_labels: Sequence[str] | None,
    new_texts: Sequence[str],
    new_labels: Sequence[str] | None,
    ref_confidence: Sequence[float] | None = None,
    new_confidence: Sequence[float] | None = None,
) -> DriftReport:
    """Compare new data with the champion's training data.

    Args:
        cfg: thresholds.
        ref_texts, ref_labels: the champion's training data (a logged sample of it); labels are classes, or
            every BIO tag for NER, or None for generation tasks (no label signal).
        new_texts, new_labels: the data a retraining would use.
        ref_confidence, new_confidence: the champion's top-class probability on each (optional).
    """
    signals, tests = [], {}
    if ref_labels is not None and new_labels is not None:
        label_psi = psi(ref_labels, new_labels)
        tests["label_chi2_p"] = chi2_p = label_chi2_p(ref_labels, new_labels)
        over = label_psi > cfg.max_label_psi
        signals.append(
            Signal("label_psi", label_psi, cfg.max_label_psi, over, f"chi-square p = {chi2_p:.3g}")
        )
    text_signals, tests["length_ks_p"] = _text_signals(cfg, ref_texts, new_texts)
    signals += text_signals
    if ref_confidence is not None and new_confidence is not None:
        drop = float(np.mean(ref_confidence) - np.mean(new_confidence))
        means = f"{np.mean(ref_confidence):.3f} -> {np.mean(new_confidence):.3f}"
        detail = f"champion mean top-class probability {means}"
        signals.append(
            Signal("confidence_drop", drop, cfg.max_confidence_drop, drop > cfg.max_confidence_drop, detail)
        )
    return DriftReport(signals, len(ref_texts), len(new_texts), tests)


def _text_signals(
    cfg: RetrainConfig, ref_texts: Sequence[str], new_texts: Sequence[str]
) -> tuple[list[Signal], float]:
    """Text length (KS test) and out-of-vocabulary words; the KS p-value."""
    from scipy.stats import ks_2samp

    ref_len = [len(words(t)) for t in ref_texts]
    new_len = [len(words(t)) for t in new_texts]
    ks = ks_2samp(ref_len, new_len)
    oov = oov_rate(ref_texts, new_texts)
    lengths = f"mean words {np.mean(ref_len):.1f} -> {np.mean(new_len):.1f}, p = {ks.pvalue:.3g}"
    return [
        Signal(
            "length_ks",
            float(ks.statistic),
            cfg.max_length_ks,
            float(ks.statistic) > cfg.max_length_ks,
            lengths,
        ),
        Signal(
            "oov_rate", oov, cfg.max_oov_rate, oov > cfg.max_oov_rate, "new-data words unseen in training"
        ),
    ], float(ks.pvalue)
