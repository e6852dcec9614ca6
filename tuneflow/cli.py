"""The ``tuneflow`` command line. Heavy libraries are imported inside commands so ``--help`` is instant.

Exit codes: 0 success, 1 unexpected failure, 2 invalid config or arguments, 3 data validation failed,
4 model could not be loaded, 5 the search could not run or no trial completed, 6 `promote` decided not to
promote, 7 a store or server the command needs (MLflow store, Optuna storage, lease store, Prefect API)
cannot be reached or written.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(
    help="Fine-tune pre-trained language models; track and register them in MLflow.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True, soft_wrap=True)  # messages name paths: never hard-wrap them
VERBOSE = {"on": False}

ConfigArg = Annotated[Path, typer.Argument(help="Experiment YAML (see configs/).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a key: --set train.lr=3e-5")]
TrackingOpt = Annotated[str | None, typer.Option(help="MLflow tracking URI (default: the project store).")]
WorkersOpt = Annotated[
    int, typer.Option(min=1, help="Local worker processes sharing the Optuna study (search only).")
]


@app.callback()
def _options(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show tracebacks and third-party logs of known errors.")
    ] = False,
) -> None:
    VERBOSE["on"] = verbose


def _known_errors() -> tuple[tuple[type[Exception], int], ...]:
    """Bad-input errors and their exit codes: printed once by the CLI, never as a traceback."""
    from tuneflow.config import ConfigError
    from tuneflow.lora import AdapterMismatchError
    from tuneflow.model import ModelLoadError
    from tuneflow.search import SearchError
    from tuneflow.validation import DataValidationError

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
        self.names = tuple(kind.__name__ for kind, _ in _known_errors())

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


def _hide_known_tracebacks() -> None:
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


def _hide_secrets(overrides: list[str] | None) -> list[str]:
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


def _preflight(cfg, data: bool = True, stores: bool = True) -> None:  # noqa: ANN001
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
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit({"data": 3, "model": 4, "store": 7}[exc.kind]) from None


def _check_store(tracking_uri: str | None) -> None:
    """The MLflow store a registry command reads, probed in seconds (exit 7), not through MLflow's retries."""
    from tuneflow.config import resolve_tracking_uri
    from tuneflow.preflight import check_store, tracking_setting

    setting = "--tracking-uri" if tracking_uri else tracking_setting()
    problem = check_store(setting, resolve_tracking_uri(tracking_uri))
    if problem:
        console.print(f"[bold red]error:[/] {escape(problem)}", highlight=False)
        raise typer.Exit(7)


def _check_registry(
    tracking_uri: str | None, model: str, version: str | None = None, alias: str | None = None
):  # noqa: ANN202
    """Store, model, version and alias checked before Prefect starts (exit 7 / 2)."""
    from tuneflow.config import resolve_tracking_uri

    if version is not None and not version.isdigit():
        console.print(  # checked here, before the store: no store is needed to say so
            f"[bold red]error:[/] --version {escape(version)}: a version is a number (e.g. --version 3)"
        )
        raise typer.Exit(2)
    _check_store(tracking_uri)
    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        # Creating an empty store (MLflow's migrations, seconds) only to find nothing in it: say so now.
        console.print(
            f"[bold red]error:[/] no registered model '{escape(model)}' (no MLflow store at {uri} yet)",
            highlight=False,
        )
        raise typer.Exit(2)
    from tuneflow import tracking

    tracking.configure(tracking_uri)
    try:
        tracking.check_registry(model, version, alias)
    except LookupError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None


def _check_model_uri(model: str, tracking_uri: str | None) -> None:
    """``predict --model``: a registered model's name, version and alias are checked before it is loaded
    (exit 2 naming what exists); a bare name gets the URI forms it was probably meant as."""
    import re

    registered = re.fullmatch(r"models:/([^/@]+)(?:/(\w+)|@([\w-]+))", model)
    if registered:
        name, version, alias = registered.groups()
        _check_registry(tracking_uri, name, None if version == "latest" else version, alias)
    elif model.startswith(("models:/", "runs:/")):
        _check_store(tracking_uri)
    elif "://" not in model and not Path(model).exists():
        console.print(
            f"[bold red]error:[/] --model {escape(model)}: not a model URI nor a local model folder; a "
            f"registered model is models:/{escape(model)}@champion (its champion), models:/{escape(model)}/3 "
            "(a version) or models:/NAME/latest",
            highlight=False,
        )
        raise typer.Exit(2)


def _quiet_env() -> None:
    # No network on CI/offline machines: Prefect must not try to phone home (nor print its notice about it).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    if not VERBOSE["on"]:
        _quiet_third_parties()
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Predictions and tables go to stdout; no artifact-download progress bars around them.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _quiet_third_parties() -> None:
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


def _load(config: Path, overrides: list[str] | None):  # noqa: ANN202
    from tuneflow.config import ConfigError
    from tuneflow.experiment import load_config

    try:
        return load_config(config, overrides or [])
    except ConfigError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None


def _fail_on_known(exc: BaseException) -> None:
    for kind, code in _known_errors():
        if isinstance(exc, kind):
            console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
            raise typer.Exit(code) from None


def _boot_prefect():  # noqa: ANN202  (a flows.api.Boot)
    """Check ``PREFECT_API_URL``'s server, or boot Prefect's temporary one while the flow module imports
    (``flows.api``); call it before importing a flow and ``.wait()`` on the result before calling it (a
    half-started server must not be taken for a running one). An unreachable configured server exits 7."""
    import gc

    from flows.api import PrefectUnreachable, boot

    # The flow module's imports (torch, transformers, Lightning, MLflow, Prefect) create millions of
    # long-lived objects; the full collections Python runs while they load cost ~1.5 s on 2 cores and free
    # nothing. _ready turns collection back on once they are loaded.
    gc.disable()
    try:
        return boot()
    except PrefectUnreachable as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(7) from None


def _ready(prefect) -> None:  # noqa: ANN001  (a flows.api.Boot)
    """Once the flow's imports are done: turn garbage collection back on with everything loaded so far
    frozen (the collector never walks the libraries' objects again, as each full collection during a run
    would), then wait for the Prefect server ``_boot_prefect`` started."""
    import gc

    gc.freeze()
    gc.enable()
    prefect.wait()


def _call_flow(prefect, flow_fn, *args):  # noqa: ANN001, ANN202
    """Run a flow once ``prefect`` (``_boot_prefect``'s) is up; known bad-input errors become their exit
    codes instead of a traceback."""
    if not VERBOSE["on"]:
        _quiet_third_parties()
    _hide_known_tracebacks()
    _ready(prefect)
    try:
        return flow_fn(*args)
    except Exception as exc:
        _fail_on_known(exc)
        raise


@app.command()
def run(
    config: ConfigArg,
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option(help="Continue the last interrupted run of this config.")] = False,
    workers: WorkersOpt = 1,
) -> None:
    """Validate data, search (when configured), fine-tune, evaluate and register a model (finetune flow)."""
    set_ = _hide_secrets(set_)
    cfg = _load(config, set_)  # fail fast, before Prefect starts, on a bad config
    _preflight(cfg)
    _quiet_env()
    prefect = _boot_prefect()
    from flows.finetune import finetune
    from tuneflow.config import redact_secrets

    result = _call_flow(prefect, finetune, str(config), set_, resume, workers)
    m = result.metrics
    console.rule("[bold green]tuneflow run finished")
    console.print(
        f"MLflow run      {result.run_id}  (experiment '{result.experiment}', "
        f"{redact_secrets(result.tracking_uri)})"
    )
    if result.search:
        _print_search(result.search)
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
    before = [k.split("/", 1)[1] for k in sorted(m) if k.startswith("base/") and k != "base/loss"]
    if before:  # a chat model: the base model zero-shot on the same test turns
        changes = [f"{k} {m[f'base/{k}']:.4f} -> {m[f'test/{k}']:.4f}" for k in before if f"test/{k}" in m]
        console.print(f"base -> tuned   {', '.join(changes)}")
    if "calibration/ece" in m:
        console.print(
            f"calibration     ECE {m.get('calibration/ece_before', float('nan')):.3f} -> "
            f"{m['calibration/ece']:.3f} (temperature {m.get('calibration/temperature', 1.0):.2f})"
        )
    if "oos/in_scope_accuracy" in m:
        caught = (
            f"out-of-scope recall {m['oos/recall']:.3f}, precision {m['oos/precision']:.3f}, "
            f"AUROC {m['oos/auroc']:.3f}; "
            if "oos/recall" in m
            else ""
        )
        console.print(
            f"out-of-scope    {caught}in-scope accuracy with fallback {m['oos/in_scope_accuracy']:.3f}"
        )
    if result.model:
        uri = f"models:/{result.model.name}/{result.model.version}"
        console.print(f"registered      {uri}")
        console.print(f'try it          tuneflow predict --model {uri} "some text"')
    if result.promotion:
        _print_decision(result.promotion)
    _print_browse(cfg)


def _print_browse(cfg: Any, what: str = "browse runs") -> None:  # (a tuneflow.config.PipelineConfig)
    """The experiment's runs table in the MLflow UI (model-training view, tuneflow's columns)."""
    from tuneflow import tracking
    from tuneflow.config import redact_secrets

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


def _print_decision(d) -> None:  # noqa: ANN001  (a tuneflow.promotion.Decision)
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


@app.command()
def promote(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Option(help="Version to decide on.")],
    force: Annotated[bool, typer.Option(help="Promote even if gates fail (audited override).")] = False,
    reason: Annotated[str, typer.Option(help="Why a forced promotion is made (kept in the report).")] = "",
    tracking_uri: TrackingOpt = None,
) -> None:
    """Re-run the champion/challenger comparison for a registered version; move aliases if it passes."""
    if force and not reason:
        console.print("[bold red]error:[/] --force needs --reason (the override is audited)")
        raise typer.Exit(2)
    _check_registry(tracking_uri, model, version)
    _quiet_env()
    prefect = _boot_prefect()
    from flows.promote import promote as promote_flow

    _ready(prefect)
    try:
        decision = promote_flow(model, version, force, reason, tracking_uri)
    except LookupError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    _print_decision(decision)
    if not decision.promote:
        raise typer.Exit(6)


@app.command()
def status(
    model: Annotated[str | None, typer.Argument(help="Registered model name (none: list all).")] = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Champion version, its metrics, data fingerprint and age; last retraining decision and why."""
    from tuneflow import tracking

    _check_store(tracking_uri)
    tracking.configure(tracking_uri)
    if model is None:
        models = tracking.registered_models()
        for name, aliases in sorted(models.items()):
            champion = f"champion v{aliases['champion']}" if "champion" in aliases else "no champion"
            print(f"{name:<30} {champion}")
        if not models:
            print("no registered models yet")
        return
    try:
        s = tracking.model_status(model)
    except LookupError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
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
    if last:
        print(f"last retrain    {last['when']}: {last['decision']} ({last['reason']})")
    else:
        print("last retrain    never")


@app.command()
def rollback(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    tracking_uri: TrackingOpt = None,
) -> None:
    """Move the champion alias back to the previous champion."""
    _check_registry(tracking_uri, model, alias="previous-champion")
    _quiet_env()
    prefect = _boot_prefect()
    from flows.promote import rollback as rollback_flow

    _ready(prefect)
    try:
        out = rollback_flow(model, tracking_uri)
    except LookupError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    demoted = f"v{out.demoted} demoted" if out.demoted else "no champion before"
    console.print(f"{model}: champion is v{out.champion} again ({demoted})")


def _print_search(s) -> None:  # noqa: ANN001  (a tuneflow.search.StudySummary)
    best = "none" if s.best_value is None else f"{s.best_value:.4f}"
    console.print(
        f"search          study '{s.study_name}': best {s.metric} {best} "
        f"(trial {s.best_trial}); {s.n_complete} complete, {s.n_pruned} pruned, "
        f"{s.n_failed} failed; {s.epochs_total:g} epochs"
    )
    for key, value in s.best_params.items():
        console.print(f"  best {key} = {value}")


@app.command()
def tune(config: ConfigArg, set_: SetOpt = None, workers: WorkersOpt = 1) -> None:
    """Run (or resume) the config's Optuna search only; trials are nested runs in MLflow (the tune flow).

    Rerunning the same command resumes the study and runs only the missing trials. Several machines can
    run it against one PostgreSQL storage (--set search.storage=postgresql://...).
    """
    set_ = _hide_secrets(set_)
    cfg = _load(config, set_)
    if cfg.search is None:
        console.print(f"[bold red]error:[/] {config} has no search: section (see configs/demo.yaml)")
        raise typer.Exit(2)
    _preflight(cfg)
    _quiet_env()
    prefect = _boot_prefect()
    from flows.tune import tune as tune_flow

    result = _call_flow(prefect, tune_flow, str(config), set_, workers)
    console.rule("[bold green]tuneflow tune finished")
    console.print(f"MLflow HPO run  {result.run_id}  (experiment '{result.experiment}')")
    _print_search(result.search)
    given = [f"--set {item}" for item in set_ if not item.startswith("search.")]
    best = [f"--set {k}={v}" for k, v in result.search.best_params.items()]
    sets = " ".join(given + best)
    console.print(f"train with it   tuneflow run {config} --set search.enabled=false {sets}")
    _print_browse(cfg, "compare trials")


@app.command()
def retrain(
    config: ConfigArg,
    set_: SetOpt = None,
    force: Annotated[bool, typer.Option(help="Retrain even if the data is unchanged.")] = False,
    workers: WorkersOpt = 1,
) -> None:
    """Retrain when the data changed (drift decides on a fresh search), then promote if the gates pass."""
    set_ = _hide_secrets(set_)
    cfg = _load(config, set_)
    _preflight(cfg)
    _quiet_env()
    prefect = _boot_prefect()
    from flows.retrain import retrain as retrain_flow

    result = _call_flow(prefect, retrain_flow, str(config), set_, force, workers)
    console.rule(f"[bold green]tuneflow retrain: {result.check.decision}")
    console.print(f"reason          {escape(result.check.reason)}", highlight=False)
    if result.finetune is not None and result.finetune.promotion:
        _print_decision(result.finetune.promotion)
    _print_browse(cfg)


@app.command()
def serve(
    config: Annotated[
        Path | None, typer.Option(help="Config all deployments run (default: the one in prefect.yaml).")
    ] = None,
) -> None:
    """Serve the finetune, tune and retrain deployments of prefect.yaml from this process (single machine)."""
    if config is not None:
        _load(config, [])
    _quiet_env()
    from prefect import serve as prefect_serve

    from flows.deployments import build

    deployments = build(str(config.resolve()) if config else None)
    names = ", ".join(d.name for d in deployments)
    console.print(f"serving {names}; trigger one with: prefect deployment run 'retrain/retrain'")
    prefect_serve(*deployments)


@app.command()
def validate(config: ConfigArg, set_: SetOpt = None) -> None:
    """Only run the data checks and print the report (no training, nothing logged)."""
    cfg = _load(config, set_)
    from tuneflow.tasktypes import task_type
    from tuneflow.validation import validate_dataset

    kind = task_type(cfg.task)
    raw = kind.load_raw(cfg.data)
    # The pre-flight's fast path first (pandas only, a second): data errors never wait for a tokenizer.
    report, _ = validate_dataset(raw, cfg, kind, tokenizer=None)
    if report.ok:
        _preflight(cfg, data=False, stores=False)
        from tuneflow.model import ModelLoadError, load_tokenizer

        try:
            tokenizer = load_tokenizer(cfg.model.name)
        except ModelLoadError as exc:
            _fail_on_known(exc)
        report, _ = validate_dataset(raw, cfg, kind, tokenizer)  # + the truncation statistics
    print(report.to_markdown())
    if not report.ok:
        raise typer.Exit(3)


@app.command()
def predict(
    texts: Annotated[
        list[str] | None,
        typer.Argument(help="Texts to classify, tag or summarize; user messages for a chat model."),
    ] = None,
    model: Annotated[
        str,
        typer.Option(
            help="models:/NAME/VERSION, models:/NAME@ALIAS or runs:/ID/model; with --adapter: the base model "
            "id or directory to put the adapter on."
        ),
    ] = ...,
    adapter: Annotated[
        str | None,
        typer.Option(help="A registered LoRA adapter: NAME (its champion), NAME/VERSION or NAME@ALIAS."),
    ] = None,
    input_file: Annotated[
        Path | None,
        typer.Option("--input", help="Score a file instead (CSV, TSV, JSONL or parquet); needs --output."),
    ] = None,
    column: Annotated[str, typer.Option(help="The --input column holding the texts.")] = "text",
    output: Annotated[
        Path | None,
        typer.Option(help="Where --input's predictions go (CSV: the input columns + predictions)."),
    ] = None,
    skip_empty: Annotated[
        bool,
        typer.Option(help="--input rows with an empty text get no prediction (default: refuse the file)."),
    ] = False,
    param: Annotated[
        list[str] | None,
        typer.Option(
            help="KEY=VALUE request setting, repeatable: a chat model's generation settings "
            "(max_new_tokens=32, do_sample=true, temperature=0.7, top_p, num_beams)."
        ),
    ] = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Predict with a registered model, or with a registered adapter on a base model (--adapter).

    Texts on the command line print one prediction per line; ``--input file --output preds.csv`` scores a
    whole file in batches (with a progress bar), without a server.
    """
    import json
    import tempfile

    if bool(input_file) != bool(output) or bool(input_file) == bool(texts):
        console.print("[bold red]error:[/] give texts, or --input FILE with --output FILE")
        raise typer.Exit(2)
    blank = [i for i, t in enumerate(texts or [], 1) if not t.strip()]
    if blank:
        console.print(f"[bold red]error:[/] text {', '.join(map(str, blank))} is empty: nothing to predict")
        raise typer.Exit(2)
    if output is not None:
        _check_output(output)
    frame = _read_scoring_input(input_file, column, skip_empty) if input_file else None
    params = _parse_params(param or [])
    if adapter:
        _check_store(tracking_uri)
    else:
        _check_model_uri(model, tracking_uri)
    from tuneflow import tracking

    _quiet_env()
    tracking.configure(tracking_uri)
    try:
        if adapter:
            from tuneflow.export import load_predictor, read_meta
            from tuneflow.tasktypes import task_type

            tmp = tempfile.TemporaryDirectory()
            export = tracking.download_export(_adapter_uri(adapter), tmp.name)
            meta = read_meta(export)
            kind = task_type(meta["task"])
            accepted = set(kind.serving_params(meta))
            predictor = load_predictor(export, base=model)

            def run(batch: list[str]):  # noqa: ANN202
                return predictor.predict(kind.to_inputs(batch), **params)
        else:
            pyfunc = tracking.load_pyfunc(model)
            schema = pyfunc.metadata.get_params_schema()
            accepted = {p.name for p in schema.params} if schema else set()

            def run(batch: list[str]):  # noqa: ANN202
                return pyfunc.predict(batch, params=params) if params else pyfunc.predict(batch)
    except Exception as exc:
        _fail_on_known(exc)
        console.print(
            f"[bold red]error:[/] cannot load model '{escape(adapter or model)}': {escape(str(exc))}",
            highlight=False,
        )
        raise typer.Exit(2) from None
    unknown = sorted(set(params) - accepted)
    if unknown:
        takes = f"it takes: {', '.join(sorted(accepted))}" if accepted else "it takes none"
        bad = escape(", ".join(unknown))
        console.print(
            f"[bold red]error:[/] --param {bad}: not a setting of this model ({takes})",
            highlight=False,
        )
        raise typer.Exit(2)
    try:
        if frame is not None:
            _score_file(run, frame, column, output)
            return
        out = run(list(texts))
    except ValueError as exc:  # bad --param values, named by the model
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    for text, row in zip(texts, out.to_dict("records"), strict=True):
        if "in_scope" in row:
            scope = "in scope" if row["in_scope"] else "out of scope"
            how = f"{scope} ({row['oos_score']:.3g} vs threshold {row['threshold']:.3g})"
            print(f"{row['label']}\t{row['score']:.4f}\t{how}\t{text}")
        elif "label" in row:
            print(f"{row['label']}\t{row['score']:.4f}\t{text}")
        elif "entities" in row:
            print(f"{text}\t{json.dumps(list(row['entities']), default=float)}")
        else:
            print(f"{text}\t{row['generated_text']}")


def _parse_params(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; values read as YAML scalars (``32`` an int, ``true`` a bool, ``0.7`` a float)."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            console.print(f"[bold red]error:[/] --param {escape(item)}: expected KEY=VALUE", highlight=False)
            raise typer.Exit(2)
        out[key.strip()] = yaml.safe_load(value)
    return out


def _check_output(output: Path) -> None:
    """--output is checked before the model loads: a missing folder is not found after scoring every row."""
    if output.is_dir():
        console.print(f"[bold red]error:[/] --output {escape(str(output))} is a directory; give a file name")
        raise typer.Exit(2)
    if not output.parent.is_dir():
        folder = escape(str(output.parent))
        console.print(
            f"[bold red]error:[/] --output {escape(str(output))}: folder {folder} does not exist",
            highlight=False,
        )
        raise typer.Exit(2)


def _read_scoring_input(path: Path, column: str, skip_empty: bool = False):  # noqa: ANN202
    import pandas as pd

    # keep_default_na=False: the texts "NaN", "null", "N/A" are texts, not missing values.
    readers = {
        ".csv": lambda p: pd.read_csv(p, keep_default_na=False, dtype={column: str}),
        ".tsv": lambda p: pd.read_csv(p, sep="\t", keep_default_na=False, dtype={column: str}),
        ".parquet": pd.read_parquet,
    }
    read = readers.get(path.suffix.lower(), lambda p: pd.read_json(p, lines=True, dtype=False))
    if path.is_dir():
        console.print(f"[bold red]error:[/] --input {escape(str(path))} is a directory; give a file")
        raise typer.Exit(2)
    try:
        frame = read(path)
    except Exception as exc:
        console.print(
            f"[bold red]error:[/] cannot read {escape(str(path))}: {escape(str(exc))}", highlight=False
        )
        raise typer.Exit(2) from None
    if column not in frame.columns:
        found = ", ".join(map(str, frame.columns))
        console.print(
            f"[bold red]error:[/] {escape(str(path))} has no column '{escape(column)}' "
            f"(it has: {escape(found)}); pick one with --column",
            highlight=False,
        )
        raise typer.Exit(2)
    texts = frame[column]
    empty = texts.isna() | texts.map(lambda t: not str(t).strip())
    if empty.any():
        # Rows as a person finds them: CSV/TSV lines count the header, JSONL lines do not.
        first = 2 if path.suffix.lower() in (".csv", ".tsv") else 1
        rows = [int(i) + first for i in frame.index[empty]]
        shown = ", ".join(map(str, rows[:10])) + (f" and {len(rows) - 10} more" if len(rows) > 10 else "")
        where = "line" if path.suffix.lower() != ".parquet" else "row"
        if not skip_empty:
            console.print(
                f"[bold red]error:[/] {escape(str(path))}: {len(rows)} empty '{escape(column)}' value(s), "
                f"{where} {shown}; fill them, or pass --skip-empty to leave them without a prediction",
                highlight=False,
            )
            raise typer.Exit(2)
        console.print(f"skipping {len(rows)} empty text(s), {where} {shown}", highlight=False)
        frame = frame[~empty]
    return frame


def _score_file(run, frame, column: str, output: Path, batch: int = 256) -> None:  # noqa: ANN001
    """Predict ``frame[column]`` in batches with a progress bar; write the input + predictions as CSV."""
    import json

    import pandas as pd
    from rich.progress import Progress

    texts = frame[column].astype(str).tolist()
    parts = []
    with Progress(console=console, transient=True) as progress:
        job = progress.add_task(f"scoring {len(texts)} rows", total=len(texts))
        for start in range(0, len(texts), batch):
            parts.append(run(texts[start : start + batch]))
            progress.advance(job, min(batch, len(texts) - start))
    preds = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if "entities" in preds.columns:  # spans as JSON text in a CSV cell
        preds["entities"] = preds["entities"].map(lambda e: json.dumps(list(e), default=float))
    result = pd.concat([frame.reset_index(drop=True), preds.add_prefix("predicted_")], axis=1)
    result.to_csv(output, index=False)
    console.print(f"wrote {len(result)} predictions to {escape(str(output))}", highlight=False)


def _adapter_uri(adapter: str) -> str:
    if adapter.startswith("models:/"):
        return adapter
    if "@" in adapter or "/" in adapter:
        return f"models:/{adapter}"
    return f"models:/{adapter}@champion"


@app.command()
def adapters(
    base: Annotated[str | None, typer.Option(help="Only adapters trained on this base model id.")] = None,
    bundle: Annotated[
        str | None,
        typer.Option(
            help="Register a model NAME serving every listed adapter (its champion, else newest version) on "
            "one shared base; pick one per request with params={'adapter': NAME}."
        ),
    ] = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """List registered LoRA adapters per base model; optionally bundle them into one servable model."""
    from rich.table import Table

    from tuneflow import tracking

    _quiet_env()
    tracking.configure(tracking_uri)
    found = tracking.adapter_versions(base)
    if not found:
        console.print("no registered adapters" + (f" on base '{base}'" if base else ""))
        raise typer.Exit(1 if bundle else 0)
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
    if bundle:
        _bundle(bundle, found)


def _bundle(name: str, found: list[dict]) -> None:
    import tempfile

    from tuneflow import tracking
    from tuneflow.export import read_meta
    from tuneflow.lora import AdapterMismatchError
    from tuneflow.serving import check_adapter_set

    chosen: dict[str, dict] = {}
    for a in found:  # newest first per name: keep the champion, else the first seen
        if a["name"] not in chosen or "champion" in a["aliases"]:
            chosen[a["name"]] = a
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {
            n: str(tracking.download_export(f"models:/{n}/{a['version']}", Path(tmp) / n))
            for n, a in chosen.items()
        }
        try:
            check_adapter_set({n: read_meta(d) for n, d in dirs.items()})
        except AdapterMismatchError as exc:
            console.print(
                f"[bold red]error:[/] {escape(str(exc))} (use --base to pick one base)", highlight=False
            )
            raise typer.Exit(4) from None
        task = read_meta(next(iter(dirs.values())))["task"]
        run_id = tracking.start_run(name, run_name="adapter-set", tags={tracking.TAG_STAGE: "adapter-set"})
        tracking.log_params(run_id, {f"adapter.{n}": f"v{a['version']}" for n, a in chosen.items()})
        uri = tracking.log_adapter_set(run_id, dirs, task)
        first = next(iter(chosen.values()))
        version = tracking.register_model(
            uri,
            name,
            run_id,
            tags={
                "tuneflow.task": task,
                "tuneflow.base_model": first["base_model"],
                "tuneflow.base_hash": first["base_hash"],
                "tuneflow.adapters": ", ".join(f"{n}/v{a['version']}" for n, a in chosen.items()),
            },
            description=f"{task} adapter set on {first['base_model']}: "
            + ", ".join(f"{n} (v{a['version']})" for n, a in chosen.items())
            + "; pick one with params={'adapter': NAME}",
        )
        tracking.end_run(run_id)
    console.print(
        f"registered adapter set [bold]{name}[/] v{version} ({', '.join(sorted(chosen))}): "
        f"mlflow.pyfunc.load_model('models:/{name}/{version}').predict(texts, params={{'adapter': NAME}})"
    )


@app.command()
def tasks() -> None:
    """List the registered task types: what each fine-tunes for, and its metrics."""
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


@app.command()
def gc(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be deleted.")] = False,
    output_dir: Annotated[Path, typer.Option(help="Checkpoint root (the configs' output_dir).")] = Path(
        "mlruns/checkpoints"
    ),
    tracking_uri: TrackingOpt = None,
) -> None:
    """Delete local checkpoints no run can use any more (registered, finished or superseded runs).

    Kept: runs in progress, the newest interrupted run of each config (for --resume), and the export of a
    finished run that was not registered.
    """
    from tuneflow import gc as gc_lib
    from tuneflow import tracking

    tracking.configure(tracking_uri)
    actions = gc_lib.plan(output_dir, tracking.run_facts)
    for a in actions:
        print(f"{a.action:<12} {a.bytes / 1e6:>9.1f} MB  {a.folder.name}  ({a.reason})")
    to_free = sum(a.bytes for a in actions if a.action != "keep")
    if dry_run:
        print(f"would free {to_free / 1e6:.1f} MB (dry run: nothing deleted)")
        return
    print(f"freed {gc_lib.apply(actions) / 1e6:.1f} MB")


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 5000,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Start the MLflow UI on the project's store, bound to 127.0.0.1; print a link to each experiment's runs.

    The UI is MLflow's own, served with tuneflow's app (``mlflow ui --app-name tuneflow``): it opens in the
    model-training view and stays there as you click through (MLflow otherwise starts on its GenAI view).
    """
    from tuneflow import tracking
    from tuneflow.mlflow_app import ui_args

    uri = tracking.configure(tracking_uri)
    address = f"http://127.0.0.1:{port}"
    experiments = tracking.recent_experiments()
    console.print(f"MLflow UI on {address} (store {uri}; stop with Ctrl+C)", highlight=False)
    for experiment_id, name in experiments:
        url = tracking.experiment_url(experiment_id, uri, address)
        console.print(f"  runs of {name}: {url}", highlight=False)
    if not experiments:
        console.print(f"  no runs yet: {address}/#/experiments{tracking.UI_VIEW}", highlight=False)
    cmd = [sys.executable, "-m", "mlflow", *ui_args(uri), "--host", "127.0.0.1", "--port", str(port)]
    os.execv(sys.executable, cmd)


@app.command()
def server(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 4200,
) -> None:
    """Start a Prefect server (API + UI) that runs reuse instead of each starting a temporary one.

    Point every shell that runs flows at it (``export PREFECT_API_URL=http://127.0.0.1:PORT/api``): a run
    then skips the ~5 s temporary-server start, and the Prefect UI keeps every flow run's history.
    """
    _quiet_env()
    url = f"http://127.0.0.1:{port}"
    console.print(
        f"Prefect server on {url} (UI and API; stop with Ctrl+C). In the shells that run flows:\n"
        f"  export PREFECT_API_URL={url}/api",
        highlight=False,
    )
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    os.execv(sys.executable, cmd)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
