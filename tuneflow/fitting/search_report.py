"""The study's report: trials.csv and the Optuna plots written beside it (logged on the search run), and
the console lines a running study prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
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


def short_params(params: dict[str, Any]) -> str:
    """``lr=3e-05, dropout=0.1``: a trial's parameters on one console line."""
    return ", ".join(
        f"{k.rsplit('.', 1)[-1]}={v:.3g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]}={v}"
        for k, v in params.items()
    )


def best_so_far(trial: optuna.Trial, value: float | None = None) -> tuple[float, int] | None:
    """The study's best (value, trial number) so far in a single-objective study, counting ``value``: the
    running trial's result, which the study records only once the objective has returned."""
    study = trial.study
    best: tuple[float, int] | None = None
    try:
        done = study.best_trial  # one storage read (a shared RDB study)
        best = (done.value, done.number)
    except ValueError:  # no complete trial yet
        pass
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    if value is not None and (best is None or (value > best[0] if maximize else value < best[0])):
        best = (value, trial.number)
    return best


def describe_best(trial: optuna.Trial, value: float | None = None) -> str:
    """The study's best so far, for the progress lines."""
    if len(trial.study.directions) > 1:
        return f"{len(trial.study.best_trials)} Pareto-optimal trial(s) so far"
    best = best_so_far(trial, value)
    return "no complete trial yet" if best is None else f"best {best[0]:.4f} (trial {best[1]})"


class TrialProgress(pl.Callback):
    """A line per validated epoch of a search trial: the console shows the running trial is alive."""

    def __init__(self, number: int, metric: str):
        self.number, self.metric = number, metric

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.metric)
        if not trainer.sanity_checking and value is not None:
            print(
                f"  trial {self.number} epoch {trainer.current_epoch + 1} step {trainer.global_step}: "
                f"{self.metric} {float(value):.4f}"
            )
