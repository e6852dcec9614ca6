"""Overfitting judged from the validation curve, not from the train/validation gap.

A converged fine-tuning of a pre-trained model reaches ~1.0 training accuracy on small data while its
validation score is still at its best, so a raw train-minus-validation gap measures convergence, not
overfitting. What overfitting does is make the *validation* score get worse after some epoch. Early
stopping and best-checkpoint export already guard against that; this module measures what they could not
prevent: how far the monitored validation metric fell from its best epoch by the end of training.
"""

from __future__ import annotations

from collections.abc import Sequence

from tuneflow import names


def validation_degradation(
    history: Sequence[tuple[int, float]], lower_better: bool, monitor: str
) -> dict[str, float]:
    """How much the monitored validation metric degraded after its best epoch.

    Args:
        history: ``(step, value)`` of ``monitor``, one per validation (the run's MLflow history).
        lower_better: whether smaller values win (a loss), from the task type's metric spec.
        monitor: the curve's name (``val/f1_macro``): its best value is logged as ``val/best_f1_macro``.

    Returns:
        ``val/best_<metric>``, ``fit/val_final``, ``fit/best_epoch`` (1-based), ``fit/epochs_after_best``
        and ``fit/val_degradation``: the drop from the best value to the final one, in the metric's units
        for scores (0.05 = 5 points of F1) and relative for a loss (0.10 = 10% above the best loss); 0 when
        the last epoch is the best. Empty when there is no history.
    """
    values = [v for _, v in sorted(history)]
    if not values:
        return {}
    best_i = min(range(len(values)), key=lambda i: values[i] if lower_better else -values[i])
    best, final = values[best_i], values[-1]
    relative_rise = (final - best) / abs(best) if best else final - best
    degradation = relative_rise if lower_better else best - final
    return {
        names.best(monitor): best,
        f"{names.FIT}val_final": final,
        f"{names.FIT}best_epoch": float(best_i + 1),
        f"{names.FIT}epochs_after_best": float(len(values) - 1 - best_i),
        f"{names.FIT}val_degradation": max(float(degradation), 0.0),
    }


OVERFIT_ADVICE = (
    "to fix: lower train.max_epochs or train.early_stopping_patience, raise train.weight_decay or "
    "model.dropout, lower train.lr, or train on more data"
)
GAP_ADVICE = (
    "a large train/validation gap is normal for a converged fine-tuning; gate on overfitting with "
    "gates.max_val_degradation instead (set gates.max_train_val_gap: null), or regularize: "
    + OVERFIT_ADVICE.removeprefix("to fix: ")
)
