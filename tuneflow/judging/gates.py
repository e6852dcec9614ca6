"""The absolute promotion gates: what a challenger must show on its own, before any champion is compared.

Each gate is a small object listed once in :data:`GATES`: the ``gates.*`` setting holding its bound (null =
off), the run metric it reads, which way the bound goes, what to say when the metric is missing, and the
advice a failed gate carries (which setting to change). Adding a gate: a bound field in
:class:`tuneflow.config.GatesConfig` and one entry here (``tests/test_promotion.py`` checks that every bound
field has its gate).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tuneflow import names
from tuneflow.config import GatesConfig
from tuneflow.judging.overfitting import GAP_ADVICE, OVERFIT_ADVICE


@dataclass(frozen=True)
class Gate:
    """One check: what was measured, against what, and whether it passed."""

    name: str
    value: float | None
    threshold: str
    passed: bool
    detail: str = ""


@dataclass(frozen=True)
class Bound:
    """A gate comparing one run metric with one ``gates.*`` bound."""

    setting: str  # the GatesConfig field holding the bound (None turns the gate off)
    title: str
    metric: str  # the run metric it reads
    upper: bool  # True: the bound is a maximum
    advice: str = ""  # appended when it fails
    missing: str = ""  # why the metric may be absent (a missing metric fails the gate, with this hint)
    explain: Callable[[dict[str, float]], str] | None = None  # detail when the metric is there
    pass_if_missing: bool = False  # a run that cannot measure it (no validation history) is not held back

    def check(self, gates: GatesConfig, run_metrics: dict[str, float]) -> list[Gate]:
        bound = getattr(gates, self.setting)
        if bound is None:
            return []
        value = run_metrics.get(self.metric)
        threshold = f"{'<=' if self.upper else '>='} {bound}"
        if value is None:
            hint = f": {self.missing}" if self.missing else ""
            detail = self.missing if self.pass_if_missing else f"no {self.metric} metric{hint}"
            return [Gate(self.title, None, threshold, self.pass_if_missing, detail)]
        passed = value <= bound if self.upper else value >= bound
        detail = self.explain(run_metrics) if self.explain else ""
        if not passed and self.advice:
            detail = f"{detail}; {self.advice}" if detail else self.advice
        return [Gate(self.title, value, threshold, passed, detail)]


def _degradation(m: dict[str, float]) -> str:
    best = next((v for k, v in m.items() if k.startswith(f"{names.VAL}best_")), 0.0)
    return (
        f"best at epoch {m.get(f'{names.FIT}best_epoch', 0):.0f} ({best:.4f}), "
        f"{m.get(f'{names.FIT}epochs_after_best', 0):.0f} epoch(s) later "
        f"{m.get(f'{names.FIT}val_final', 0):.4f}; the best checkpoint was exported"
    )


def _latency(m: dict[str, float]) -> str:
    threads, repeats = m.get(f"{names.SERVING}latency_threads"), m.get(f"{names.SERVING}latency_repeats")
    return (
        f"single examples, {threads:.0f} thread(s), fastest of {repeats:.0f} per example" if threads else ""
    )


def _quantization(m: dict[str, float]) -> str:
    speedup = m.get(f"{names.QUANTIZATION}latency_speedup")
    return f"fp32 minus int8 on test; int8 answers single examples {speedup:.1f}x faster" if speedup else ""


@dataclass(frozen=True)
class TrainValGap(Bound):
    """Gated with ``gates.max_train_val_gap``; otherwise reported, never failing (converged fine-tunings
    have large gaps)."""

    def check(self, gates: GatesConfig, run_metrics: dict[str, float]) -> list[Gate]:
        gap = run_metrics.get(self.metric)
        if gates.max_train_val_gap is None:
            diagnostic = Gate(
                "train/val gap (diagnostic)", gap, "reported", True, f"not gated (gates.{self.setting})"
            )
            return [diagnostic] if gap is not None else []
        return super().check(gates, run_metrics)


GATES: tuple[Bound, ...] = (
    Bound(
        "max_val_degradation",
        "max validation degradation after best epoch (overfitting)",
        f"{names.FIT}val_degradation",
        upper=True,
        advice=OVERFIT_ADVICE,
        missing="no validation history recorded: not checked",
        explain=_degradation,
        pass_if_missing=True,
    ),
    TrainValGap("max_train_val_gap", "max train/val gap", names.TRAIN_VAL_GAP, upper=True, advice=GAP_ADVICE),
    Bound(
        "max_latency_p95_ms",
        "max latency p95 ms",
        names.LATENCY_P95,
        upper=True,
        advice="to fix: a smaller model or a lower model.max_length, or raise gates.max_latency_p95_ms",
        explain=_latency,
    ),
    Bound(
        "max_quantization_loss",
        "max quantization loss (fp32 -> int8, test)",
        f"{names.QUANTIZATION}loss",
        upper=True,
        advice="to fix: serve fp32 (export.quantize: none), or revisit gates.max_quantization_loss",
        missing="is export.quantize: int8?",
        explain=_quantization,
    ),
    Bound(
        "min_oos_recall",
        "min out-of-scope recall",
        f"{names.OOS}recall",
        upper=False,
        advice="to fix: try oos.method: mahalanobis, give data.oos_validation examples to set the threshold, "
        "lower oos.target_in_scope_recall, or revisit gates.min_oos_recall",
        missing="is data.oos_test set?",
    ),
    Bound(
        "min_in_scope_accuracy",
        "min in-scope accuracy (fallback applied)",
        f"{names.OOS}in_scope_accuracy",
        upper=False,
        advice="to fix: raise oos.target_in_scope_recall (fewer in-scope queries rejected), train longer, or "
        "revisit gates.min_in_scope_accuracy",
        missing="is oos.enabled on?",
    ),
    Bound(
        "max_ece",
        "max calibration error (ECE, test)",
        f"{names.CALIBRATION}ece",
        upper=True,
        advice="to fix: keep eval.calibrate: true, add validation examples, or revisit gates.max_ece",
    ),
    Bound(
        "min_behavior_pass_rate",
        "min behaviour pass rate (worst test)",
        f"{names.BEHAVIOR}min_pass_rate",
        upper=False,
        advice="to fix: look at behavior_failures.csv in the run; add training examples with typos, other "
        "casing and phrasings (augmentation), or revisit gates.min_behavior_pass_rate",
        missing="is eval.behavior_checks on?",
    ),
)
"""Every absolute gate but the two bounds on the headline metric (``gates.min``, ``gates.min_ood``)."""

METRIC_ADVICE = (
    "to fix: search hyperparameters (search:), train longer (train.max_epochs), check the data report "
    "(noise, imbalance, leakage), or revisit gates.min"
)
OOD_ADVICE = (
    "to fix: add training data closer to that domain, regularize (train.weight_decay, model.dropout), or "
    "revisit gates.min_ood"
)


def _bounded(
    title: str, value: float | None, bound: float, lower_better: bool, missing: str, advice: str
) -> Gate:
    """A bound on a headline metric: a minimum for scores, a maximum where lower is better (perplexity)."""
    passed = value is not None and (value <= bound if lower_better else value >= bound)
    detail = missing if value is None else ("" if passed else advice)
    return Gate(title, value, f"{'<=' if lower_better else '>='} {bound}", passed, detail)


def absolute_gates(
    gates: GatesConfig, value: float, run_metrics: dict[str, float], lower_better: bool = False
) -> list[Gate]:
    """Every gate that needs no champion, in the order of the report: ``gates.min`` on the headline test
    metric, the registered gates, then ``gates.min_ood`` on each out-of-domain set."""
    metric, kind = gates.metric, "max" if lower_better else "min"
    out = []
    if gates.min is not None:
        out.append(_bounded(f"{kind} test {metric}", value, gates.min, lower_better, "", METRIC_ADVICE))
    out += [g for b in GATES for g in b.check(gates, run_metrics)]
    for name, bound in gates.min_ood.items():
        key = f"{names.ood(name)}{metric}"
        missing = f"no {key} metric: is {name} in data.extra_eval?"
        title = f"{kind} out-of-domain {name} {metric}"
        out.append(_bounded(title, run_metrics.get(key), bound, lower_better, missing, OOD_ADVICE))
    return out
