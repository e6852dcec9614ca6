"""How the ``tuneflow`` command line talks to a person: the checks run before anything heavy starts (and
the exit codes of what they find), the filters that keep Prefect's and third parties' chatter off the
default console, and drafting a config from data. The commands are in :mod:`tuneflow.cli`; what they print
at the end, in :mod:`tuneflow.summaries`.

Exit codes: 0 success, 1 unexpected failure, 2 invalid config or arguments, 3 data validation failed,
4 model could not be loaded, 5 the search could not run or no trial completed, 6 `promote` decided not to
promote, 7 a store or server the command needs (MLflow store, Optuna storage, lease store, Prefect API)
cannot be reached or written.

May import: everything in tuneflow except the CLI (never Prefect, flows or tasks).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

# Messages name paths: never hard-wrap them; and no emoji codes (a CoNLL error at "train.conll:100:" lost its
# line number to a 💯).
console = Console(stderr=True, soft_wrap=True, emoji=False)
VERBOSE = {"on": False}
PREFLIGHT_EXIT = {"data": 3, "model": 4, "store": 7}
TRACKING_SCHEMES = (
    "sqlite",
    "file",
    "http",
    "https",
    "postgresql",
    "postgres",
    "mysql",
    "mssql",
    "databricks",
)


def workers_option(value: str) -> int | str:
    """``--workers``: a positive number of search worker processes, or ``auto``."""
    if value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        raise typer.BadParameter(f"expected a number >= 1 or auto, got {value!r}")
    return int(value)


def fail(message: str, code: int) -> NoReturn:
    """Print ``error: message`` (markup escaped) and exit with ``code``."""
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def known_errors() -> tuple[tuple[type[Exception], int], ...]:
    """Bad-input errors and their exit codes: printed once by the CLI, never as a traceback."""
    from tuneflow.backbone.lora import AdapterMismatchError
    from tuneflow.config import ConfigError
    from tuneflow.data.splits import DataChangedError
    from tuneflow.data.validation import DataValidationError
    from tuneflow.fitting.model import ModelLoadError
    from tuneflow.fitting.search import SearchError

    return (
        (ConfigError, 2),
        (DataValidationError, 3),
        (DataChangedError, 3),
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
        message = record.getMessage()
        # Prefect's crash report of a SIGTERM: stop_on_signals says it once, with how to resume.
        return "aborted by a termination signal" not in message and not any(n in message for n in self.names)


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
    uri = resolve_tracking_uri(tracking_uri)
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""
    if scheme and scheme not in TRACKING_SCHEMES:
        fail(
            f"{setting} {uri}: unknown scheme '{scheme}://'; an MLflow store is sqlite:///PATH, "
            "http(s)://HOST:PORT (a tracking server), postgresql://..., mysql://..., mssql://... or file:///PATH",
            2,
        )
    problem = check_store(setting, uri)
    if problem:
        fail(problem, 7)


def read_store(tracking_uri: str | None, model: str | None = None) -> bool:
    """A read-only command's store: probed (exit 7); False when it does not exist yet (never created here:
    reading a store that is not there is an answer, not a reason to make an empty one)."""
    from tuneflow.config import resolve_tracking_uri, sqlite_path

    probe_store(tracking_uri)
    db = sqlite_path(uri := resolve_tracking_uri(tracking_uri))
    if db is not None and not db.exists():
        if model is not None:
            fail(f"no registered model '{model}' (no MLflow store at {uri} yet)", 2)
        return False
    use_store(tracking_uri)
    return True


def use_store(tracking_uri: str | None) -> str:
    """Point this CLI process at the MLflow store and return its URI: the one place a command sets it
    (a flow it runs sets the same store for its own run; a search worker or DDP rank sets it at its entry).
    Library code below never sets it: it uses the store its process was pointed at."""
    from tuneflow.store import tracking

    return tracking.configure(tracking_uri)


def check_registry(
    tracking_uri: str | None, model: str, version: str | None = None, alias: str | None = None
):  # noqa: ANN202
    """Store, model, version and alias checked before Prefect starts (exit 7 / 2)."""

    if version is not None and not version.isdigit():
        # Checked here, before the store: no store is needed to say so.
        fail(f"--version {version}: a version is a number (e.g. --version 3)", 2)
    read_store(tracking_uri, model)  # never creates a store only to find nothing in it
    from tuneflow.store import registered

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


def stop_on_signals(again: str) -> None:
    """Ctrl-C or SIGTERM during a training command: stop within a second, with what this process started
    (the temporary Prefect server, search workers, DDP ranks), and say how to go on: one line, exit 130 / 143.

    The default would unwind through Lightning's and Prefect's own interrupt handling: two tracebacks,
    Prefect's crash report and its event worker's errors against the server being stopped, and a run that
    did not stop for minutes. Stopping at once loses nothing a ``kill -9`` would not: the run's checkpoint
    of its last finished epoch stays, and ``--resume`` continues from it. (Prefect swaps in its own SIGTERM
    handler while a flow runs and re-raises the signal to this one when it unwinds.)
    """
    import signal

    def stop(signum: int, frame: object) -> None:
        what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            console.print(f"[yellow]interrupted[/] ({what}): stopped; {again}", highlight=False)
        stop_children()
        os._exit(128 + signum)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


def redact(text: str) -> str:
    """``text`` with URL passwords masked (for what is printed)."""
    from tuneflow.config import redact_secrets

    return redact_secrets(text)


def stop_children(timeout_s: float = 3.0) -> None:
    """Terminate every process this one started (recursively), then kill what is left after ``timeout_s``."""
    import psutil

    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    for child in children:
        with contextlib.suppress(Exception):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=timeout_s)
    for child in alive:
        with contextlib.suppress(Exception):
            child.kill()


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

    probe_store(tracking_uri) if adapter else check_model_uri(model, tracking_uri)
    quiet_env()
    use_store(tracking_uri)
    try:
        return scoring.load_scorer(model, adapter, params)
    except scoring.ScoringError as exc:
        if exc.__cause__ is not None:
            fail_on_known(exc.__cause__)
        fail(str(exc), 4 if isinstance(exc, scoring.ModelUnloadable) else 2)


def labelling_round(
    cfg: Any, output: Path, n: int, sources: dict[str, Any], model: str | None, force: bool
) -> Any:
    """``tuneflow label``: the request (exit 2) and the model's registry entry (exit 7 / 2) checked before
    the model loads (exit 4); the round written (:func:`tuneflow.registry.labelling.plan_round`)."""
    from tuneflow.registry import labelling, scoring

    pool, served = sources.get("pool"), sources.get("served")
    try:
        labelling.check_request(output, pool and pool[0], served and served[0], force)
    except labelling.LabellingError as exc:
        fail(str(exc), 2)
    uri = model or f"models:/{cfg.registered_model_name}@champion"
    check_model_uri(uri, cfg.tracking.tracking_uri)
    quiet_env()
    use_store(cfg.tracking.tracking_uri)
    try:
        return labelling.plan_round(cfg, uri, output, n, pool, served)
    except (labelling.LabellingError, scoring.ScoringError) as exc:
        fail(str(exc), 4 if isinstance(exc, scoring.ModelUnloadable) else 2)


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


def draft(
    data: Path, task: str, columns: dict[str, str], model: str | None, name: str | None, oos: Path | None
):  # noqa: ANN201
    """A config drafted for ``data`` (``tuneflow init`` / ``run DATA``). What it cannot decide is asked on a
    terminal, and otherwise exit 2 naming the flag to pass."""
    from tuneflow.tasktypes import TASK_TYPES
    from tuneflow.tasktypes.draft import DraftError, draft_config

    if task != "auto" and task not in TASK_TYPES:
        fail(f"--task {task}: one of {', '.join(['auto', *TASK_TYPES])}", 2)
    for attempt in range(3):
        try:
            return draft_config(data, task, columns, model, name, oos)
        except DraftError as exc:
            if attempt == 2 or not sys.stdin.isatty():
                fail(str(exc), 2)
            console.print(f"[yellow]{escape(str(exc))}[/]", highlight=False)
            choices = ", ".join(["auto", *TASK_TYPES])
            task = typer.prompt(f"task type ({choices})", default=task).strip()
            if task != "auto" and task not in TASK_TYPES:
                fail(f"--task {task}: one of {choices}", 2)
            answer = typer.prompt(
                "columns as KEY=NAME, comma-separated (blank: none)", default="", show_default=False
            )
            columns = {**columns, **parse_columns([a for a in answer.split(",") if a.strip()])}
    raise AssertionError("unreachable")


def parse_columns(items: list[str]) -> dict[str, str]:
    """``--column KEY=NAME`` pairs (``text_column=review``); exit 2 on a malformed one."""
    out = {}
    for item in items:
        key, sep, value = item.strip().partition("=")
        if not sep or not key or not value:
            fail(f"--column {item}: expected KEY=NAME, e.g. text_column=review", 2)
        out[key.strip() if key.strip().endswith("_column") else f"{key.strip()}_column"] = value.strip()
    return out


def write_draft(cfg: Any, drafted: Any, output: Path, force: bool = False, check: bool = False) -> None:
    """Write the drafted config to ``output`` (never over an existing file unless ``force``). With ``check``
    (``tuneflow init``): the data checks first, printed; a config whose data fails them is not written (exit
    3): a file that cannot run would only be found and run later."""
    if output.is_dir():
        fail(f"--output {output} is a folder; give a file name", 2)
    if output.exists() and not force:
        fail(f"{output} exists; pass --force to replace it, or --output another file", 2)
    existing = next(p for p in output.parents if p.exists())
    if not existing.is_dir():
        fail(f"--output {output}: cannot create {output.parent} ({existing} is a file)", 2)
    if check:
        print_draft_check(cfg, output)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"--output {output}: cannot create {output.parent} ({exc.strerror or exc})", 2)
    header = (
        f"Drafted by `tuneflow init` for {cfg.data.train.path} ({cfg.task}); edit freely.\n"
        "Every key is described in the configuration reference (docs/reference/config.md)."
    )
    output.write_text(drafted.to_yaml(header))
    if check:
        console.print(f"wrote           {output}\nnext            tuneflow run {output}", highlight=False)


def config_for(config: Path) -> Path:
    """``tuneflow run`` takes a YAML config, or a data file or folder: a config is drafted for it, written
    beside the MLflow store (so the run can be repeated) and used."""
    if config.suffix.lower() in (".yaml", ".yml"):
        return config
    from tuneflow.tasktypes.draft import store_folder

    cfg, drafted = draft(config, "auto", {}, None, None, None)
    output = store_folder() / "configs" / f"{cfg.name}.yaml"
    write_draft(cfg, drafted, output, force=True)
    console.print(f"drafted config  {output}  (repeat this run with: tuneflow run {output})", highlight=False)
    return output


def print_draft_check(cfg: Any, output: Path) -> None:
    """``tuneflow init``: the data validation's summary and its problems (exit 3 on errors, before the config
    is written)."""
    from tuneflow.preflight import validation_report

    report = checked(validation_report, cfg)
    summary = report.summary().split(" (report:")[0]
    console.print(f"data            {cfg.task}; {summary}", highlight=False)
    for problem in report.errors:
        console.print(f"  [red]error[/] {escape(short(problem))}", highlight=False)
    for warning in report.warnings[:5]:
        console.print(f"  warning {escape(short(warning))}", highlight=False)
    if not report.ok:
        console.print(f"not written     {output} (fix the data, then run init again)", highlight=False)
        raise typer.Exit(3)


def short(message: str, limit: int = 600) -> str:
    """A console line of at most ``limit`` characters (a list of 5,000 labels is not a message)."""
    return message if len(message) <= limit else f"{message[: limit - 40]} ... ({len(message):,} characters)"


def check_port(port: int) -> None:
    """``ui`` / ``server``: exit 2 when 127.0.0.1:``port`` is taken, before anything is printed or started
    (the server would print its banner, fail to bind and leave its own processes behind)."""
    import socket

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            fail(f"--port {port}: 127.0.0.1:{port} is in use ({exc.strerror}); choose another with --port", 2)


def exec_prefect_server(port: int) -> None:
    """``tuneflow server``: say how to point flows at it, then become a Prefect server on 127.0.0.1."""
    check_port(port)
    quiet_env()
    url = f"http://127.0.0.1:{port}"
    console.print(
        f"Prefect server on {url} (UI and API; stop with Ctrl+C). In the shells that run flows:\n"
        f"  export PREFECT_API_URL={url}/api",
        highlight=False,
    )
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    os.execv(sys.executable, cmd)
