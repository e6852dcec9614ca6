"""Metric names: one name per quantity, grouped into chart sections by the prefix before ``/``.

The MLflow UI groups a run's charts into one section per prefix, so every metric tuneflow logs starts with
its section:

=============  ===========================================================================================
``train/``     training curves: ``train/loss`` per step, ``train/lr``, ``train/accuracy`` per epoch
``val/``       validation curves per epoch (``val/f1_macro``, ``val/loss``) and the best value,
               ``val/best_<metric>`` (the exported checkpoint's)
``test/``      the exported model on the test split (``test/accuracy``, ``test/f1_macro``)
``base/``      the pre-trained base model, zero-shot, on the same test examples (causal_lm: before vs after)
``ood/<set>/`` the exported model on an out-of-domain set (``ood/yelp/accuracy``)
``fit/``       how the fit went: epochs, the best epoch, validation degradation, the train/validation gap
``serving/``   single-example latency and batch throughput, with the conditions they were measured in
``timing/``    stage wall times (``timing/fit_s``) and training throughput (``timing/train_tokens_per_s``)
``model/``     parameter counts (total, trainable, trainable share) and the exported weights' bytes
``calibration/`` the fitted temperature and the expected calibration error before/after it (test split)
``oos/``       out-of-scope detection: threshold, in-scope accuracy with the fallback, out-of-scope recall
``quantization/`` with ``export.quantize: int8``: the fp32 weights the served model was made from, on the
               same test split (``quantization/fp32_accuracy``), the served model's loss against them
               (``quantization/loss``, on ``gates.metric``) and the single-example speed-up
``behavior/``  behaviour checks: pass rate of each perturbation test (typo, casing, ..., negation)
``label_quality/`` likely mislabeled training examples found from out-of-fold probabilities
``memory/``    resident memory: at the end of each training epoch (``memory/rss_mb``) and each stage's peak
               (``memory/peak_train_mb``)
``search/``    a search's counts; ``cv/`` cross-validation; ``drift/`` a retrain's drift signals
=============  ===========================================================================================

``system/`` is left to MLflow's own system metrics (CPU, memory, disk, network), sampled during the final
training: the UI shows that prefix on the run page's "System metrics" tab.
"""

from __future__ import annotations

import re

CALIBRATION, OOS, BEHAVIOR, LABEL_QUALITY = "calibration/", "oos/", "behavior/", "label_quality/"
BASE = "base/"
MEMORY = "memory/"
QUANTIZATION = "quantization/"
TRAIN, VAL, TEST, FIT, SERVING, TIMING, MODEL, SEARCH, CV, DRIFT = (
    "train/",
    "val/",
    "test/",
    "fit/",
    "serving/",
    "timing/",
    "model/",
    "search/",
    "cv/",
    "drift/",
)

LATENCY_P50, LATENCY_P95 = f"{SERVING}latency_p50_ms", f"{SERVING}latency_p95_ms"
TRAIN_VAL_GAP, OVERFIT_WARNING = f"{FIT}train_val_gap", f"{FIT}overfit_warning"

_LEGACY = re.compile(r"^(train|val)_(?!.*/)(.+)$")
_LEGACY_SYSTEM = re.compile(r"^(?:system/)?time_(.+)$")


def ood(name: str) -> str:
    """The section prefix of an out-of-domain set's metrics."""
    return f"ood/{name}/"


def base(metric: str) -> str:
    """The quantity without its section: ``val/best_f1_macro`` -> ``f1_macro``."""
    return metric.rsplit("/", 1)[-1].removeprefix("best_")


def best(monitor: str) -> str:
    """The name of a monitored curve's best value: ``val/f1_macro`` -> ``val/best_f1_macro``."""
    section, _, name = monitor.rpartition("/")
    return f"{section}/best_{name}" if section else f"best_{name}"


def from_legacy(metric: str) -> str:
    """Configs written before sections keep working: ``val_f1_macro`` -> ``val/f1_macro``."""
    m = _LEGACY.match(metric)
    return f"{m.group(1)}/{m.group(2)}" if m else metric


def from_legacy_bookkeeping(metric: str) -> str:
    """Results recorded before ``timing/`` and ``model/`` existed keep reading: ``system/time_fit_s`` (or
    ``time_fit_s``) -> ``timing/fit_s``, ``system/params_total`` -> ``model/params_total``."""
    if m := _LEGACY_SYSTEM.match(metric):
        return f"{TIMING}{m.group(1)}"
    if metric == "system/train_tokens_per_s":
        return f"{TIMING}train_tokens_per_s"
    if metric.startswith("system/"):
        return MODEL + metric.removeprefix("system/").replace("model_weights_bytes", "weights_bytes")
    return metric
