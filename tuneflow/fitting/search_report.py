"""The study's report: trials.csv and the Optuna plots written beside it (logged on the search run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState

RUN_ATTR, EPOCHS_ATTR, LATENCY_ATTR = "mlflow_run_id", "epochs", "latency_ms"  # trial user attributes


def _save(ax: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    fig.set_size_inches(9, 5.5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(study: optuna.Study, metric: str, out: Path) -> list[Path]:
    """Optimization history (or Pareto front), parameter importances and intermediate values as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as ovm

    target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
    plots: list[tuple[str, Any]] = [
        (
            "optimization_history.png",
            lambda: ovm.plot_optimization_history(study, target=target, target_name=metric),
        )
    ]
    if len(study.directions) > 1:
        plots.append(
            ("pareto_front.png", lambda: ovm.plot_pareto_front(study, target_names=[metric, "latency_ms"]))
        )
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) >= 2 and any(t.distributions for t in complete):
        plots.append(
            (
                "param_importances.png",
                lambda: ovm.plot_param_importances(study, target=target, target_name=metric),
            )
        )
    if any(t.intermediate_values for t in study.trials):
        plots.append(("intermediate_values.png", lambda: ovm.plot_intermediate_values(study)))
    written = []
    # Optuna's plots switch pyplot to the ggplot style for the whole process; keep that to these plots
    # (its white grid would cross the counts of the confusion matrix drawn later in the same process).
    with matplotlib.rc_context():
        for name, draw in plots:
            try:
                written.append(_save(draw(), out / name))
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. constant params' importances
                print(f"skipped {name}: {exc}")
    return written


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, value(s), params, epochs, MLflow run id, duration."""
    rows = []
    for t in study.trials:
        row: dict[str, Any] = {"number": t.number, "state": t.state.name}
        if t.values is not None:
            row["value"] = t.values[0]
            if len(t.values) > 1:
                row["latency_ms"] = t.values[1]
        row.update({f"params.{k}": v for k, v in t.params.items()})
        row["epochs"] = t.user_attrs.get(EPOCHS_ATTR)
        row["mlflow_run_id"] = t.user_attrs.get(RUN_ATTR)
        row["duration_s"] = t.duration.total_seconds() if t.duration else None
        row["retry_of"] = t.system_attrs.get("failed_trial")
        rows.append(row)
    return pd.DataFrame(rows)
