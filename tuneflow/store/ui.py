"""What a person comparing fine-tunings meets in the MLflow UI: the saved runs view, trial names, run
descriptions. The page state follows MLflow 3.17's UI (``ExperimentPageUIState`` + search facets): only
keys the UI shares through a saved view are set (it keeps expanded rows per browser, not per view).
"""

from __future__ import annotations

from typing import Any

from tuneflow import names
from tuneflow.config import PipelineConfig
from tuneflow.store import tracking

ALWAYS_SHOWN_PARAMS = ("train.lr", "train.batch_size", "train.max_epochs")
CURVES_SECTION, TEST_SECTION = "learning curves", "test"
# The runs table's column groups, in the order the view shows them: what serves (the registered version and
# its aliases) first, within reach at 1600 px; then the scores and the params, which scroll.
KINDS = ("attributes", "tags", "metrics", "params")
# Short names for searched keys in a trial's run name (the run list's column is ~25 characters wide).
SHORT = {
    "lr": "lr",
    "batch_size": "bs",
    "dropout": "do",
    "weight_decay": "wd",
    "warmup_ratio": "wu",
    "max_epochs": "ep",
    "max_length": "len",
    "grad_accumulation": "ga",
    "label_smoothing": "ls",
}


def column(kind: str, key: str) -> str:
    """A runs-table column as the UI names it: ``metrics.`val/best_f1_macro```."""
    return f"{kind}.`{key}`"


def runs_view_columns(cfg: PipelineConfig) -> list[str]:
    """The columns that decide between fine-tunings, in reading order: the monitored validation metric
    (what early stopping and the search optimize), the headline test scores, the searched (or the usual)
    hyper-parameters, base model, data fingerprint, registry aliases and version."""
    spec = cfg.kind.metrics
    monitors = [cfg.search_metric] if cfg.searching else []
    metrics = list(dict.fromkeys(names.best(m) for m in [*monitors, cfg.train.monitor]))
    metrics += [m for m in spec.headline if m.startswith(names.TEST) and m not in metrics]
    searched = list(cfg.search.space) if cfg.searching and cfg.search else []
    params = [*searched, *(p for p in ALWAYS_SHOWN_PARAMS if p not in searched), "model.name"]
    return [
        *(column("metrics", m) for m in metrics),
        *(column("params", p) for p in params),
        column("tags", tracking.TAG_ALIASES),
        column("tags", tracking.TAG_DATA_FP),
        column("attributes", "Models"),
    ]


def _kind_order(column_key: str) -> int:
    kind = column_key.split(".", 1)[0]
    return KINDS.index(kind) if kind in KINDS else len(KINDS)


def _section(uuid: str, name: str) -> dict[str, Any]:
    return {"uuid": uuid, "name": name, "display": True, "isReordered": True, "deleted": False}


def _chart(uuid: str, section: str, metric: str, kind: str) -> dict[str, Any]:
    card: dict[str, Any] = {
        "uuid": uuid,
        "type": kind,
        "metricSectionId": section,
        "deleted": False,
        "isGenerated": False,
        "metricKey": metric,
        "displayName": metric,
        "runsCountToCompare": 20,
    }
    if kind == "LINE":
        card.update(
            selectedMetricKeys=[metric],
            xAxisKey="step",
            xAxisScaleType="linear",
            scaleType="linear",
            lineSmoothness=0,
            range={},
            selectedXAxisMetricKey="",
            useGlobalXaxisKey=False,
            useGlobalLineSmoothing=False,
        )
    return card


def runs_view_state(cfg: PipelineConfig, kept_columns: list[str] | None = None) -> dict[str, Any]:
    """The saved view's page state: the runs table with :func:`runs_view_columns`, newest first (parent
    runs with their trials and folds nested one level below), and a chart view that opens on the learning
    curves, then the headline test metrics; MLflow appends every other section after them.

    ``kept_columns``: columns shown for earlier runs, kept after this config's own."""
    spec = cfg.kind.metrics
    monitor = cfg.search_metric if cfg.searching else cfg.train.monitor
    curves = list(dict.fromkeys([monitor, *spec.history, f"{names.TRAIN}lr"]))
    tests = [m for m in spec.headline if m.startswith(names.TEST)]
    charts = [_chart(f"tuneflow-curve-{i}", "tuneflow-curves", m, "LINE") for i, m in enumerate(curves)]
    charts += [_chart(f"tuneflow-test-{i}", "tuneflow-test", m, "BAR") for i, m in enumerate(tests)]
    merged = dict.fromkeys([*runs_view_columns(cfg), *(kept_columns or [])])
    # The table groups columns by kind (metrics, params, tags, attributes): keep a kind's columns together.
    columns = sorted(merged, key=_kind_order)
    return {
        "searchFilter": "",
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        "selectedColumns": columns,
        "columnOrder": columns,  # without it the UI orders the chosen columns by name
        # The default 200 px puts the params off-screen; the Models cell holds "name vN".
        "columnWidths": {c: 160 if c.startswith("attributes.") else 120 for c in columns},
        "runsHiddenMode": "SHOW_ALL",  # charts compare every run, not the first 10
        "compareRunCharts": charts,
        "compareRunSections": [
            _section("tuneflow-curves", CURVES_SECTION),
            _section("tuneflow-test", TEST_SECTION),
        ],
        "isAccordionReordered": True,  # keep this order; sections MLflow adds go after it
        "viewMaximized": False,
        "runListHidden": False,
        "useGroupedValuesInCharts": True,
        "hideEmptyCharts": True,
        "groupBy": None,
        "groupsExpanded": {},
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
    }


def save_runs_view(cfg: PipelineConfig) -> None:
    """Keep the experiment's tuneflow view current for this config (the links tuneflow prints open it).

    Columns the view showed for earlier runs stay after this config's own (a run without a search must
    not hide the searched parameters of the runs before it)."""
    experiment_id = tracking.ensure_experiment(cfg.experiment_name)
    previous = tracking.read_runs_view(experiment_id) or {}
    state = runs_view_state(cfg, previous.get("selectedColumns"))
    tracking.save_runs_view(experiment_id, f"tuneflow: {cfg.name}", state)


def _short_value(value: Any) -> str:
    return f"{value:.2g}" if isinstance(value, float) else str(value)


def trial_run_name(number: int, params: dict[str, Any], state: str | None = None) -> str:
    """A trial's run name that reads in a narrow column: ``t5 pruned lr=2e-04 bs=16 do=0.12`` (Optuna's
    trial number, the state when not complete, then the sampled values)."""
    parts = [f"t{number}"] + ([state.lower()] if state and state != "COMPLETE" else [])
    for key, value in params.items():
        leaf = key.rsplit(".", 1)[-1]
        parts.append(f"{SHORT.get(leaf, leaf)}={_short_value(value)}")
    return " ".join(parts)


def run_description(
    headline: list[tuple[str, float]],
    monitor: tuple[str, float] | None = None,
    notes: list[str] | None = None,
) -> str:
    """The run page's description (shown above its metrics, cut after a few lines behind "Show more"):
    headline scores first, then ``notes`` on one line (the registered version and its promotion decision,
    a study's counts), then the monitored validation score."""
    lines = [" · ".join(f"**{k}** {v:.4f}" for k, v in headline)] if headline else []
    if notes:
        lines.append(" · ".join(notes))
    if monitor is not None:
        lines.append(f"best validation score: {monitor[0]} {monitor[1]:.4f}")
    return "\n\n".join(lines)
