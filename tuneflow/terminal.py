"""What the ``tuneflow`` command line prints, and how problems become exit codes: the checks run before
anything heavy starts, the filters that keep Prefect's and third parties' chatter off the default console, and
the result summaries. The commands themselves are in :mod:`tuneflow.cli`.

May import: everything in tuneflow except the CLI (never Prefect, flows or tasks).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

console = Console(stderr=True, soft_wrap=True)  # messages name paths: never hard-wrap them
VERBOSE = {"on": False}
PREFLIGHT_EXIT = {"data": 3, "model": 4, "store": 7}


def fail(message: str, code: int) -> NoReturn:
    """Print ``error: message`` (markup escaped) and exit with ``code``."""
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def known_errors() -> tuple[tuple[type[Exception], int], ...]:
    """Bad-input errors and their exit codes: printed once by the CLI, never as a traceback."""
    from tuneflow.backbone.lora import AdapterMismatchError
    from tuneflow.config import ConfigError
    from tuneflow.data.validation import DataValidationError
    from tuneflow.fitting.model import ModelLoadError
    from tuneflow.fitting.search import SearchError

    return (
        (ConfigError, 2),
        (DataValidationError, 3),
        (ModelLoadError, 4),
        (AdapterMismatchError, 4),
        (SearchError, 5),
    )


class _KnownErrorFilter:
    """Drops Prefect's log records about a known bad-input error: the CLI prints it once, cleanly."""

    def __init__(self) -> None:
        self.names = tuple(kind.__name__ for kind, _ in known_errors())

    def filter(self, record: object) -> bool:
        import logging

        assert isinstance(record, logging.LogRecord)
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__name__ in self.names:
            return False
        return not any(name in record.getMessage() for name in self.names)


class _PlainFormatter:
    """The default console: a run's own lines as they are (no timestamp, level or task-run prefix)."""

    def format(self, record: object) -> str:
        import logging

        assert isinstance(record, logging.LogRecord)
        message = record.getMessage()
        return f"{record.levelname.lower()}: {message}" if record.levelno >= logging.WARNING else message


class _LifecycleFilter:
    """Drops Prefect's own INFO bookkeeping (flow and task runs beginning, finishing, their URLs)."""

    PREFIXES = (
        "Beginning ",
        "Finished in state",
        "View at ",
        "Created ",
        "Executing ",
        "Running ",
        "Starting temporary server",
        "Stopping temporary server",
        "Starting server",
    )

    def filter(self, record: object) -> bool:
        import logging

        assert isinstance(record, logging.LogRecord)
        prefect = record.name.startswith("prefect") and record.levelno < logging.WARNING
        return not (prefect and record.getMessage().startswith(self.PREFIXES))


def hide_known_tracebacks() -> None:
    import logging

    if VERBOSE["on"]:
        return
    loggers = [logging.root] + [
        logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if n.startswith("prefect")
    ]
    for logger in loggers:
        # Console handlers only: the Prefect UI (API log handlers) keeps the full record.
        for handler in getattr(logger, "handlers", []):
            console_handler = isinstance(handler, logging.StreamHandler)
            if console_handler and not any(isinstance(f, _KnownErrorFilter) for f in handler.filters):
                handler.addFilter(_KnownErrorFilter())
                handler.addFilter(_LifecycleFilter())
                handler.setFormatter(_PlainFormatter())  # type: ignore[arg-type]


def hide_secrets(overrides: list[str] | None) -> list[str]:
    """Move URL passwords out of ``--set`` values into environment variables the config expands.

    The flow's parameters (stored by Prefect) then hold ``${TUNEFLOW_SECRET_0}``, never the password.
    """
    from tuneflow.config import redact_secrets

    out = []
    for i, item in enumerate(overrides or []):
        key, _, value = item.partition("=")
        if value and redact_secrets(value) != value:
            var = f"TUNEFLOW_SECRET_{i}"
            os.environ[var] = value
            item = f"{key}=${{{var}}}"
        out.append(item)
    return out


def run_preflight(cfg, data: bool = True, stores: bool = True) -> None:  # noqa: ANN001
    """Stores (unless ``stores`` is False), data (unless ``data`` is False) and model directory checked in
    seconds, before Prefect or torch start and before any MLflow run exists (exit 7 / 3 / 4)."""
    from tuneflow.preflight import PreflightError, check_model, check_stores, preflight

    try:
        if stores:
            check_stores(cfg)
        if data:
            preflight(cfg)
        else:
            check_model(cfg)
    except PreflightError as exc:
        fail(str(exc), PREFLIGHT_EXIT[exc.kind])


def probe_store(tracking_uri: str | None) -> None:
    """The MLflow store a registry command reads, probed in seconds (exit 7), not through MLflow's retries."""
    from tuneflow.config import resolve_tracking_uri
    from tuneflow.preflight import check_store, tracking_setting

    setting = "--tracking-uri" if tracking_uri else tracking_setting()
    problem = check_store(setting, resolve_tracking_uri(tracking_uri))
    if problem:
        fail(problem, 7)


def check_registry(
    tracking_uri: str | None, model: str, version: str | None = None, alias: str | None = None
):  # noqa: ANN202
    """Store, model, version and alias checked before Prefect starts (exit 7 / 2)."""
    from tuneflow.config import resolve_tracking_uri

    if version is not None and not version.isdigit():
        # Checked here, before the store: no store is needed to say so.
        fail(f"--version {version}: a version is a number (e.g. --version 3)", 2)
    probe_store(tracking_uri)
    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        # Creating an empty store (MLflow's migrations, seconds) only to find nothing in it: say so now.
        fail(f"no registered model '{model}' (no MLflow store at {uri} yet)", 2)
    from tuneflow.store import registered, tracking

    tracking.configure(tracking_uri)
    try:
        registered.check_registry(model, version, alias)
    except LookupError as exc:
        fail(str(exc), 2)


def check_model_uri(model: str, tracking_uri: str | None) -> None:
    """``predict --model``: a registered model's name, version and alias are checked before it is loaded
    (exit 2 naming what exists); a bare name gets the URI forms it was probably meant as."""
    import re

    registered = re.fullmatch(r"models:/([^/@]+)(?:/(\w+)|@([\w-]+))", model)
    if registered:
        name, version, alias = registered.groups()
        check_registry(tracking_uri, name, None if version == "latest" else version, alias)
    elif model.startswith(("models:/", "runs:/")):
        probe_store(tracking_uri)
    elif "://" not in model and not Path(model).exists():
        fail(
            f"--model {model}: not a model URI nor a local model folder; a registered model is "
            f"models:/{model}@champion (its champion), models:/{model}/3 (a version) or models:/NAME/latest",
            2,
        )


def quiet_env() -> None:
    # No network on CI/offline machines: Prefect must not try to phone home (nor print its notice about it).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    if not VERBOSE["on"]:
        quiet_third_parties()
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Predictions and tables go to stdout; no artifact-download progress bars around them.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def quiet_third_parties() -> None:
    """The default console shows tuneflow's own lines: third-party warnings and INFO chatter (Lightning's
    hardware lines and tips, transformers' load reports) stay out; ``--verbose`` shows everything."""
    import logging
    import warnings

    warnings.simplefilter("ignore")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # search workers and DDP processes too
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # "Loading weights", "Writing model shards"
    # Set again once the libraries are imported: Lightning sets its own level on import.
    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)


def load_config_or_exit(config: Path, overrides: list[str] | None):  # noqa: ANN202
    from tuneflow.config import ConfigError
    from tuneflow.tasktypes.resolve import load_config

    try:
        return load_config(config, overrides or [])
    except ConfigError as exc:
        fail(str(exc), 2)


def fail_on_known(exc: BaseException) -> None:
    for kind, code in known_errors():
        if isinstance(exc, kind):
            fail(str(exc), code)


def print_browse(cfg: Any, what: str = "browse runs") -> None:  # (a tuneflow.config.PipelineConfig)
    """The experiment's runs table in the MLflow UI (model-training view, tuneflow's columns)."""
    from tuneflow.config import redact_secrets
    from tuneflow.store import tracking

    uri = tracking.configure(cfg.tracking.tracking_uri)
    experiment_id = tracking.experiment_id(cfg.experiment_name)
    if experiment_id is None:
        return
    url = redact_secrets(tracking.experiment_url(experiment_id, uri))
    local = not uri.startswith(("http://", "https://"))
    how = (
        f"tuneflow ui{'' if uri == tracking.resolve_tracking_uri() else f' --tracking-uri {uri}'}, then "
        if local
        else ""
    )
    console.print(f"{what:<15} {how}{url}", highlight=False)


def print_decision(d) -> None:  # noqa: ANN001  (a tuneflow.promotion.Decision)
    verdict = "[green]promoted to champion" if d.promote else "[yellow]not promoted"
    if d.forced:
        verdict += " (forced)"
    against = f"champion v{d.champion_version}" if d.champion_version else "no champion yet"
    console.print(f"promotion       v{d.challenger_version} vs {against}: {verdict}[/]")
    for g in d.gates:
        value = "n/a" if g.value is None else f"{g.value:.4f}"
        mark = "pass" if g.passed else "[red]FAIL[/]"
        console.print(
            f"  {mark:<4} {escape(g.name)}: {value} ({escape(g.threshold)}) {escape(g.detail)}",
            highlight=False,
        )


def print_search(s) -> None:  # noqa: ANN001  (a tuneflow.search.StudySummary)
    best = "none" if s.best_value is None else f"{s.best_value:.4f}"
    console.print(
        f"search          study '{s.study_name}': best {s.metric} {best} "
        f"(trial {s.best_trial}); {s.n_complete} complete, {s.n_pruned} pruned, "
        f"{s.n_failed} failed; {s.epochs_total:g} epochs"
    )
    for key, value in s.best_params.items():
        console.print(f"  best {key} = {value}")


def print_run(result: Any, cfg: Any) -> None:
    """The end of ``tuneflow run``: the run, search and cross-validation, headline scores, what the task
    type adds (calibration, out-of-scope, base vs tuned), the registered version and the decision."""
    from tuneflow.config import redact_secrets
    from tuneflow.tasktypes import task_type

    m = result.metrics
    console.rule("[bold green]tuneflow run finished")
    console.print(
        f"MLflow run      {result.run_id}  (experiment '{result.experiment}', "
        f"{redact_secrets(result.tracking_uri)})"
    )
    if result.search:
        print_search(result.search)
    if result.cv:
        cv = result.cv
        console.print(
            f"cross-val       {cv.metric} {cv.mean:.4f} +- {cv.std:.4f} over {len(cv.scores)} folds"
        )
    shown = [(k, v) for k, v in result.headline if not k.startswith("serving/")]
    console.print("   ".join(f"{k} {v:.4f}" for k, v in shown))
    headline = shown[0][0].rsplit("/", 1)[-1]
    for key in sorted(k for k in m if k.startswith("ood/") and k.endswith(f"/{headline}")):
        console.print(f"{key:<15} {m[key]:.4f}")
    for label, text in task_type(cfg.task).result_lines(m):
        console.print(f"{label:<15} {text}")
    if result.model:
        uri = f"models:/{result.model.name}/{result.model.version}"
        console.print(f"registered      {uri}")
        console.print(f'try it          tuneflow predict --model {uri} "some text"')
    if result.promotion:
        print_decision(result.promotion)
    print_browse(cfg)


def print_models(models: dict[str, dict[str, str]]) -> None:
    """``tuneflow status``: every registered model and its champion."""
    for name, aliases in sorted(models.items()):
        champion = f"champion v{aliases['champion']}" if "champion" in aliases else "no champion"
        print(f"{name:<30} {champion}")
    if not models:
        print("no registered models yet")


def print_status(model: str, s: dict[str, Any]) -> None:
    """``tuneflow status NAME``: aliases, the champion's metrics and data, the last retraining decision."""
    aliases = ", ".join(f"{a}=v{v}" for a, v in sorted(s["aliases"].items())) or "none"
    print(f"model           {model}\naliases         {aliases}")
    champ = s.get("champion")
    if not champ:
        print("champion        none yet")
        return
    print(f"champion        v{champ['version']} (run {champ['run_id']}, {champ['age_days']:.1f} days old)")
    print(f"data            fingerprint {champ['data_fingerprint']}")
    for key in sorted(champ["metrics"]):
        print(f"  {key:<28} {champ['metrics'][key]:.4f}")
    last = s.get("last_retrain")
    print(
        f"last retrain    {last['when']}: {last['decision']} ({last['reason']})"
        if last
        else "last retrain    never"
    )


def print_adapters(found: list[dict[str, Any]]) -> None:
    """``tuneflow adapters``: one table per base model (weights and tokenizer hash)."""
    from rich.table import Table

    out = Console()
    bases: dict[tuple[str, str, str], list[dict]] = {}
    for a in found:
        bases.setdefault((a["base_model"], a["base_hash"], a["tokenizer_hash"]), []).append(a)
    for (base_model, weights, tok), rows in bases.items():
        table = Table(title=f"base {base_model}\n(weights {weights}, tokenizer {tok})", title_justify="left")
        for col in ("adapter", "version", "aliases", "task", "size"):
            table.add_column(col, overflow="fold")
        for a in rows:
            size = f"{a['adapter_bytes'] / 1e6:.2f} MB"
            table.add_row(a["name"], a["version"], ", ".join(a["aliases"]), a["task"], size)
        out.print(table)


def print_task_types() -> None:
    """``tuneflow tasks``: what each registered task type fine-tunes for, and its metrics."""
    from rich.table import Table

    from tuneflow.tasktypes import TASK_TYPES

    table = Table(title="task types (config key `task`)", title_justify="left")
    table.add_column("task", no_wrap=True)
    for col in ("what", "train.monitor (first = default)", "gates.metric (first = default)"):
        table.add_column(col, overflow="fold")
    for kind in TASK_TYPES.values():
        m = kind.metrics
        table.add_row(kind.name, kind.summary, ", ".join(m.monitors), ", ".join(m.gate_metrics))
    out = Console()
    out.width = max(out.width, 120)  # piped output defaults to 80 columns: too narrow for the names
    out.print(table)


def with_progress(total: int, work: Any) -> Any:
    """``work(advance)`` under a transient progress bar of ``total`` rows; its result."""
    from rich.progress import Progress

    with Progress(console=console, transient=True) as progress:
        job = progress.add_task(f"scoring {total} rows", total=total)
        return work(lambda n: progress.advance(job, n))


def print_tune(result: Any, cfg: Any, config: Path, overrides: list[str]) -> None:
    """The end of ``tuneflow tune``: the study, and the command that trains with its best parameters."""
    console.rule("[bold green]tuneflow tune finished")
    console.print(f"MLflow HPO run  {result.run_id}  (experiment '{result.experiment}')")
    print_search(result.search)
    given = [f"--set {item}" for item in overrides if not item.startswith("search.")]
    best = [f"--set {k}={v}" for k, v in result.search.best_params.items()]
    sets = " ".join(given + best)
    console.print(f"train with it   tuneflow run {config} --set search.enabled=false {sets}")
    print_browse(cfg, "compare trials")


def print_retrain(result: Any, cfg: Any) -> None:
    """The end of ``tuneflow retrain``: the decision, why, and the promotion of what was trained."""
    console.rule(f"[bold green]tuneflow retrain: {result.check.decision}")
    console.print(f"reason          {result.check.reason}", highlight=False, markup=False)
    if result.finetune is not None and result.finetune.promotion:
        print_decision(result.finetune.promotion)
    print_browse(cfg)


def checked(fn: Any, *args: Any) -> Any:
    """``fn(*args)``, with pre-flight problems and known errors turned into their exit codes."""
    from tuneflow.preflight import PreflightError

    try:
        return fn(*args)
    except PreflightError as exc:
        fail(str(exc), PREFLIGHT_EXIT[exc.kind])
    except Exception as exc:
        fail_on_known(exc)
        raise


def print_gc(actions: list[Any]) -> None:
    """``tuneflow gc``: each run folder, what happens to it and why."""
    for a in actions:
        print(f"{a.action:<12} {a.bytes / 1e6:>9.1f} MB  {a.folder.name}  ({a.reason})")


def print_ui_links(uri: str, address: str) -> None:
    """``tuneflow ui``: where the UI listens, and the runs table of each recent experiment."""
    from tuneflow.store import tracking

    experiments = tracking.recent_experiments()
    console.print(f"MLflow UI on {address} (store {uri}; stop with Ctrl+C)", highlight=False)
    for experiment_id, name in experiments:
        console.print(
            f"  runs of {name}: {tracking.experiment_url(experiment_id, uri, address)}", highlight=False
        )
    if not experiments:
        console.print(f"  no runs yet: {address}/#/experiments{tracking.UI_VIEW}", highlight=False)


def scoring_request(
    texts: list[str] | None,
    input_file: Path | None,
    output: Path | None,
    column: str,
    skip_empty: bool,
    param: list[str],
) -> tuple[Any, dict[str, Any]]:
    """``tuneflow predict``'s inputs checked before any model loads (exit 2): the rows of ``--input`` (or
    None for texts on the command line) and the ``--param`` settings."""
    from tuneflow.registry import scoring

    if bool(input_file) != bool(output) or bool(input_file) == bool(texts):
        fail("give texts, or --input FILE with --output FILE", 2)
    blank = [i for i, t in enumerate(texts or [], 1) if not t.strip()]
    if blank:
        fail(f"text {', '.join(map(str, blank))} is empty: nothing to predict", 2)
    try:
        if output is not None:
            scoring.check_output(output)
        frame, note = (
            scoring.read_scoring_input(input_file, column, skip_empty) if input_file else (None, None)
        )
        params = scoring.parse_params(param)
    except scoring.ScoringError as exc:
        fail(str(exc), 2)
    if note:
        console.print(note, highlight=False, markup=False)
    return frame, params


def load_scorer(model: str, adapter: str | None, params: dict[str, Any], tracking_uri: str | None) -> Any:
    """The model ``tuneflow predict`` scores with, its registry entry checked first (exit 7 / 2 / 4)."""
    from tuneflow.registry import scoring
    from tuneflow.store import tracking

    probe_store(tracking_uri) if adapter else check_model_uri(model, tracking_uri)
    quiet_env()
    tracking.configure(tracking_uri)
    try:
        return scoring.load_scorer(model, adapter, params)
    except scoring.ScoringError as exc:
        if exc.__cause__ is not None:
            fail_on_known(exc.__cause__)
        fail(str(exc), 2)


def bundle_adapters(name: str, found: list[dict[str, Any]]) -> None:
    """``tuneflow adapters --bundle NAME``: register the adapters as one servable model (exit 4 when they
    do not share a base)."""
    from tuneflow.backbone.lora import AdapterMismatchError
    from tuneflow.registry.registration import register_adapter_set

    try:
        version, chosen = register_adapter_set(name, found)
    except AdapterMismatchError as exc:
        fail(f"{exc} (use --base to pick one base)", 4)
    console.print(
        f"registered adapter set [bold]{name}[/] v{version} ({', '.join(sorted(chosen))}): "
        f"mlflow.pyfunc.load_model('models:/{name}/{version}').predict(texts, params={{'adapter': NAME}})"
    )
