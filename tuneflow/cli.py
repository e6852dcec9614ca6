"""The ``tuneflow`` command line: each command parses, calls the library, prints (:mod:`tuneflow.summaries`);
problems become exit codes (:mod:`tuneflow.terminal`). Heavy libraries load inside commands: ``--help`` is
instant."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tuneflow import summaries, terminal
from tuneflow.allocator import use_jemalloc
from tuneflow.terminal import console, fail

app = typer.Typer(
    help="Fine-tune pre-trained language models; track and register them in MLflow.",
    no_args_is_help=True,
    add_completion=False,
)

ConfigArg = Annotated[Path, typer.Argument(help="Experiment YAML (see configs/).")]
DataOrConfig = Annotated[Path, typer.Argument(help="Experiment YAML, or a data file or folder (see init).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a key: --set train.lr=3e-5")]
TrackingOpt = Annotated[str | None, typer.Option(help="MLflow tracking URI (default: the project store).")]
WorkersOpt = Annotated[
    str,
    typer.Option(
        callback=terminal.workers_option,
        help="Local worker processes sharing the Optuna study (search only): N, or auto (by cores, memory).",
    ),
]


@app.callback()
def _options(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show tracebacks and third-party logs of known errors.")
    ] = False,
) -> None:
    terminal.VERBOSE["on"] = verbose


def _boot_prefect():  # noqa: ANN202  (a tuneflow.flows.api.Boot)
    """Check ``PREFECT_API_URL``'s server, or boot Prefect's temporary one while the flow module imports; wait
    on the result before calling a flow (a half-started server is not a running one). Unreachable: exit 7."""
    import gc

    from tuneflow.flows.api import PrefectUnreachable, boot

    # The flow module's imports create millions of long-lived objects; the full collections Python runs
    # while they load cost ~1.5 s on 2 cores and free nothing. _ready turns collection back on.
    gc.disable()
    try:
        return boot()
    except PrefectUnreachable as exc:
        fail(str(exc), 7)


def _ready(prefect) -> None:  # noqa: ANN001  (a tuneflow.flows.api.Boot)
    """After the flow's imports: GC on with everything loaded so far frozen; wait for ``_boot_prefect``'s."""
    import gc

    gc.freeze()
    gc.enable()
    prefect.wait()


def _call_flow(prefect, flow_fn, *args):  # noqa: ANN001, ANN202
    """Run a flow once ``prefect`` (``_boot_prefect``'s) is up; known bad-input errors become their exit
    codes instead of a traceback."""
    if not terminal.VERBOSE["on"]:
        terminal.quiet_third_parties()
    terminal.hide_known_tracebacks()
    _ready(prefect)
    try:
        return flow_fn(*args)
    except Exception as exc:
        terminal.fail_on_known(exc)
        raise


def _registry_flow(name: str, *args):  # noqa: ANN001, ANN202
    """Run flow ``name`` of ``tuneflow.flows.promote`` (``promote`` or ``rollback``); a lookup error is
    exit 2."""
    terminal.quiet_env()
    prefect = _boot_prefect()
    from tuneflow.flows import promote

    _ready(prefect)
    try:
        return getattr(promote, name)(*args)
    except LookupError as exc:
        fail(str(exc), 2)


def _prepare(config: Path, overrides: list[str] | None, again: str, needs_search: bool = False):  # noqa: ANN202
    """Config, data, model, stores checked in seconds (exit 2/3/4/7) before Prefect boots, then Ctrl-C stops
    at once, printing ``again``; the config, overrides (URL passwords into the environment), the server."""
    again = terminal.redact(" ".join([again, *(f"--set {o}" for o in overrides or [])]))
    overrides = terminal.hide_secrets(overrides)
    cfg = terminal.load_config_or_exit(config, overrides)  # fail fast, before Prefect starts, on a bad config
    if needs_search and cfg.search is None:
        fail(f"{config} has no search: section (see configs/demo.yaml)", 2)
    terminal.run_preflight(cfg)
    terminal.quiet_env()
    terminal.stop_on_signals(again)
    return cfg, overrides, _boot_prefect()


@app.command()
def init(
    data: Annotated[Path, typer.Argument(help="A data file, or a folder with train/validation/test files.")],
    task: Annotated[
        str, typer.Option(help="auto (from the columns) or a task type (tuneflow tasks).")
    ] = "auto",
    text_column: Annotated[str | None, typer.Option(help="The column holding the text.")] = None,
    label_column: Annotated[str | None, typer.Option(help="The column holding the label.")] = None,
    column: Annotated[
        list[str] | None, typer.Option(help="KEY=NAME for other columns (source_column=doc).")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Pre-trained model (default: the task type's).")] = None,
    oos: Annotated[
        Path | None, typer.Option(help="Off-topic examples: turns the out-of-scope fallback on.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="Where the config goes (default: configs/NAME.yaml).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing --output file.")] = False,
) -> None:
    """Draft a commented config from a data set (task, columns, lengths, budget, gates); check the data."""
    named = {"text_column": text_column, "label_column": label_column}
    given = {**terminal.parse_columns(column or []), **{k: v for k, v in named.items() if v}}
    cfg, drafted = terminal.draft(data, task, given, model, None, oos)
    terminal.write_draft(cfg, drafted, output or Path("configs") / f"{cfg.name}.yaml", force, check=True)


@app.command()
def run(
    config: DataOrConfig,
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option(help="Continue the last interrupted run of this config.")] = False,
    workers: WorkersOpt = "auto",
) -> None:
    """Validate data, search (when configured), fine-tune, evaluate and register a model (finetune flow).

    CONFIG may be a data file or folder instead: a config is drafted for it first (as ``tuneflow init``)."""
    config = terminal.config_for(config)
    cfg, set_, prefect = _prepare(config, set_, f"continue with: tuneflow run {config} --resume")
    from tuneflow.flows.finetune import finetune

    result = _call_flow(prefect, finetune, str(config), set_, resume, workers)
    summaries.print_run(result, cfg)


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
        fail("--force needs --reason (the override is audited)", 2)
    terminal.check_registry(tracking_uri, model, version)
    decision = _registry_flow("promote", model, version, force, reason, tracking_uri)
    summaries.print_decision(decision)
    if not decision.promote:
        raise typer.Exit(6)


@app.command()
def status(
    model: Annotated[str | None, typer.Argument(help="Registered model name (none: list all).")] = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Champion version, its metrics, data fingerprint and age; last retraining decision and why."""
    summaries.show_status(model, terminal.read_store(tracking_uri, model))


@app.command()
def rollback(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    tracking_uri: TrackingOpt = None,
) -> None:
    """Move the champion alias back to the previous champion."""
    terminal.check_registry(tracking_uri, model, alias="previous-champion")
    out = _registry_flow("rollback", model, tracking_uri)
    demoted = f"v{out.demoted} demoted" if out.demoted else "no champion before"
    console.print(f"{model}: champion is v{out.champion} again ({demoted})")


@app.command()
def tune(config: ConfigArg, set_: SetOpt = None, workers: WorkersOpt = "auto") -> None:
    """Run (or resume) the config's Optuna search only; trials are nested runs in MLflow (the tune flow).

    Rerunning the same command resumes the study and runs only the missing trials. Several machines can
    run it against one PostgreSQL storage (--set search.storage=postgresql://...).
    """
    cfg, set_, prefect = _prepare(config, set_, f"rerun to resume: tuneflow tune {config}", needs_search=True)
    from tuneflow.flows.tune import tune as tune_flow

    result = _call_flow(prefect, tune_flow, str(config), set_, workers)
    summaries.print_tune(result, cfg, config, set_)


@app.command()
def retrain(
    config: ConfigArg,
    set_: SetOpt = None,
    force: Annotated[bool, typer.Option(help="Retrain even if the data is unchanged.")] = False,
    workers: WorkersOpt = "auto",
) -> None:
    """Retrain when the data changed (drift decides on a fresh search), then promote if the gates pass."""
    cfg, set_, prefect = _prepare(config, set_, f"run it again: tuneflow retrain {config}")
    from tuneflow.flows.retrain import retrain as retrain_flow

    result = _call_flow(prefect, retrain_flow, str(config), set_, force, workers)
    summaries.print_retrain(result, cfg)


@app.command()
def serve(
    config: Annotated[
        Path | None, typer.Option(help="Config all deployments run (default: the one in prefect.yaml).")
    ] = None,
) -> None:
    """Serve the finetune, tune and retrain deployments of prefect.yaml from this process (single machine)."""
    if config is not None:
        terminal.load_config_or_exit(config, [])
    terminal.quiet_env()
    _boot_prefect().wait()  # PREFECT_API_URL set but nothing answers: exit 7 now, not a traceback later
    from prefect import serve as prefect_serve

    from tuneflow.flows.deployments import build

    deployments = build(str(config.resolve()) if config else None)
    names = ", ".join(d.name for d in deployments)
    console.print(f"serving {names}; trigger one with: prefect deployment run 'retrain/retrain'")
    prefect_serve(*deployments)


@app.command()
def validate(config: ConfigArg, set_: SetOpt = None) -> None:
    """Only run the data checks and print the report (no training, nothing logged)."""
    cfg = terminal.load_config_or_exit(config, set_)
    from tuneflow.preflight import validation_report

    report = terminal.checked(validation_report, cfg)
    print(report.to_markdown())
    if not report.ok:
        raise typer.Exit(3)


@app.command()
def predict(
    texts: Annotated[list[str] | None, typer.Argument(help="Texts; a chat model: user messages.")] = None,
    model: Annotated[
        str,
        typer.Option(help="models:/NAME/VERSION, models:/NAME@ALIAS, runs:/ID/model; --adapter: its base."),
    ] = ...,
    adapter: Annotated[
        str | None, typer.Option(help="A registered LoRA adapter: NAME (champion), NAME/VERSION, NAME@A.")
    ] = None,
    input_file: Annotated[
        Path | None, typer.Option("--input", help="Score a file (CSV, TSV, JSONL, parquet); needs --output.")
    ] = None,
    column: Annotated[str, typer.Option(help="The --input column holding the texts.")] = "text",
    output: Annotated[Path | None, typer.Option(help="Where --input's predictions go (CSV).")] = None,
    skip_empty: Annotated[
        bool, typer.Option(help="--input rows with an empty text get no prediction (default: refuse).")
    ] = False,
    param: Annotated[
        list[str] | None,
        typer.Option(help="KEY=VALUE, repeatable: chat models' max_new_tokens=32, do_sample=true, ..."),
    ] = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Predict with a registered model, or with a registered adapter on a base model (--adapter).

    Texts on the command line print one prediction per line; ``--input file --output preds.csv`` scores a
    whole file in batches (with a progress bar), without a server.
    """
    from tuneflow.registry import scoring

    frame, params = terminal.scoring_request(texts, input_file, output, column, skip_empty, param or [])
    scorer = terminal.load_scorer(model, adapter, params, tracking_uri)
    try:
        if frame is None:
            answers = scorer.run(list(texts)).to_dict("records")
            print("\n".join(summaries.prediction_line(t, row) for t, row in zip(texts, answers, strict=True)))
            return
        result = summaries.with_progress(
            len(frame), lambda advance: scoring.score_frame(scorer, frame, column, advance=advance)
        )
    except ValueError as exc:  # bad --param values, named by the model
        fail(str(exc), 2)
    summaries.csv_cells(result).to_csv(output, index=False)
    console.print(f"wrote {len(result)} predictions to {output}", highlight=False, markup=False)


@app.command()
def label(
    config: ConfigArg,
    output: Annotated[Path, typer.Option(help="Where the picks go: .csv, or .json for Label Studio.")],
    pool: Annotated[Path | None, typer.Option(help="Unlabelled texts: CSV, TSV, JSONL or parquet.")] = None,
    column: Annotated[str, typer.Option(help="The --pool column holding the texts.")] = "text",
    served: Annotated[Path | None, typer.Option(help="A served model's TUNEFLOW_REQUEST_LOG file.")] = None,
    below: Annotated[float, typer.Option(min=0, max=1, help="--served answers scored below it count.")] = 0.5,
    n: Annotated[int, typer.Option("-n", min=1, help="How many texts to pick.")] = 100,
    model: Annotated[str | None, typer.Option(help="The model that scores (default: the champion).")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing --output file.")] = False,
    set_: SetOpt = None,
) -> None:
    """Write the N texts most worth labelling next (the model is unsure of them; varied) for data.labelled."""
    cfg = terminal.load_config_or_exit(config, set_)
    sources = {"pool": pool and (pool, column), "served": served and (served, below)}
    summaries.print_round(terminal.labelling_round(cfg, output, n, sources, model, force), cfg, config)


@app.command()
def adapters(
    base: Annotated[str | None, typer.Option(help="Only adapters trained on this base model id.")] = None,
    bundle: Annotated[
        str | None,
        typer.Option(help="Register model NAME serving the adapters on one base (params={'adapter': A})."),
    ] = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """List registered LoRA adapters per base model; optionally bundle them into one servable model."""
    from tuneflow.store import registered

    terminal.quiet_env()
    found = registered.adapter_versions(base) if terminal.read_store(tracking_uri) else []
    if not found:
        none = "no registered adapters" + (f" on base '{base}'" if base else "")
        fail(f"{none} to bundle (train one with model.lora set)", 2) if bundle else console.print(none)
        return
    summaries.print_adapters(found)
    if bundle:
        terminal.bundle_adapters(bundle, found)


@app.command()
def tasks() -> None:
    """List the registered task types: what each fine-tunes for, and its metrics."""
    summaries.print_task_types()


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
    summaries.clean_checkpoints(output_dir, dry_run, tracking_uri)


@app.command()
def ui(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 5000,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Start the MLflow UI on the project's store, bound to 127.0.0.1; print a link to each experiment's runs.

    The UI is MLflow's own, served with tuneflow's app (``mlflow ui --app-name tuneflow``): it opens in the
    model-training view and stays there as you click through (MLflow otherwise starts on its GenAI view).
    """
    terminal.check_port(port)
    summaries.exec_mlflow_ui(port, tracking_uri)


@app.command()
def server(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 4200,
) -> None:
    """Start a Prefect server (API + UI) that runs reuse instead of each starting a temporary one.

    Point every shell that runs flows at it (``export PREFECT_API_URL=http://127.0.0.1:PORT/api``): a run
    then skips the ~5 s temporary-server start, and the Prefect UI keeps every flow run's history.
    """
    terminal.exec_prefect_server(port)


def main() -> None:
    use_jemalloc()  # training commands restart under jemalloc where installed (tuneflow.allocator)
    app()


if __name__ == "__main__":
    main()
