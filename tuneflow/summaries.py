"""What the commands print when they end: a run's scores and links, a study, a promotion decision, the
registry's state, tables of adapters and task types. Plain output only; exit codes live in
:mod:`tuneflow.terminal`.

May import: everything in tuneflow except the CLI (never Prefect, flows or tasks).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from tuneflow.terminal import console


def print_browse(cfg: Any, what: str = "browse runs") -> None:  # (a tuneflow.config.PipelineConfig)
    """The experiment's runs table in the MLflow UI (model-training view, tuneflow's columns)."""
    from tuneflow.config import redact_secrets
    from tuneflow.store import tracking

    uri = tracking.current_uri()  # the store the flow that just ran was pointed at
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
    from tuneflow.store.params import readable

    best = "none" if s.best_value is None else f"{s.best_value:.4f}"
    console.print(
        f"search          study '{s.study_name}': best {s.metric} {best} "
        f"(trial {s.best_trial}); {s.n_complete} complete, {s.n_pruned} pruned, "
        f"{s.n_failed} failed; {s.epochs_total:g} epochs"
    )
    for key, value in s.best_params.items():
        console.print(f"  best {key} = {readable(value)}")


def print_run(result: Any, cfg: Any) -> None:
    """The end of ``tuneflow run``: the run, search and cross-validation, headline scores, what the task
    type adds (calibration, out-of-scope, base vs tuned), the registered version and the decision."""
    from tuneflow.config import redact_secrets

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
    for label, text in result_lines(m):
        console.print(f"{label:<15} {text}")
    metric = cfg.gates.metric
    fp32, speedup = m.get(f"quantization/fp32_{metric}"), m.get("quantization/latency_speedup")
    if fp32 is not None:
        faster = f", single examples {speedup:.1f}x faster" if speedup else ""
        console.print(
            f"{'served int8':<15} test {metric} {fp32:.4f} (fp32) -> {m.get(f'test/{metric}', 0):.4f} "
            f"(int8, what is served and scored above){faster}"
        )
    if result.model:
        uri = f"models:/{result.model.name}/{result.model.version}"
        console.print(f"registered      {uri}")
        console.print(f'try it          tuneflow predict --model {uri} "some text"')
    if result.promotion:
        print_decision(result.promotion)
    print_browse(cfg)


def show_status(model: str | None, exists: bool) -> None:
    """``tuneflow status [MODEL]`` on a store that ``exists`` (or not yet): every registered model, or one
    model's champion and history (exit 2 for an unknown model)."""
    from tuneflow.store import registered
    from tuneflow.terminal import fail

    if model is None:
        print_models(registered.registered_models() if exists else {})
        return
    try:
        print_status(model, registered.model_status(model))
    except LookupError as exc:
        fail(str(exc), 2)


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

    out = Console(emoji=False)
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
    out = Console(emoji=False)
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


def clean_checkpoints(output_dir: Path, dry_run: bool, tracking_uri: str | None) -> None:
    """``tuneflow gc``: list each run folder's fate, then delete (or, dry run, only count)."""
    from tuneflow.store import gc, tracking
    from tuneflow.terminal import fail, use_store

    if output_dir.exists() and not output_dir.is_dir():
        fail(f"--output-dir {output_dir} is a file; give the checkpoint folder (the configs' output_dir)", 2)
    use_store(tracking_uri)
    actions = gc.plan(output_dir, tracking.run_facts)
    print_gc(actions)
    if dry_run:
        print(f"would free {gc.freeable(actions) / 1e6:.1f} MB (dry run: nothing deleted)")
    else:
        print(f"freed {gc.apply(actions) / 1e6:.1f} MB")


def exec_mlflow_ui(port: int, tracking_uri: str | None) -> None:
    """``tuneflow ui``: print the links, then become MLflow's UI server (tuneflow's app) on 127.0.0.1."""
    from tuneflow.store.mlflow_app import ui_args
    from tuneflow.terminal import use_store

    uri = use_store(tracking_uri)
    print_ui_links(uri, f"http://127.0.0.1:{port}")
    cmd = [sys.executable, "-m", "mlflow", *ui_args(uri), "--host", "127.0.0.1", "--port", str(port)]
    os.execv(sys.executable, cmd)


def result_lines(m: dict[str, float]) -> list[tuple[str, str]]:
    """A run's own results beyond the headline, from the metrics it logged (label, text): calibration and
    the out-of-scope fallback (classifiers), the base model against the tuned one (generative models)."""
    out = []
    if "calibration/ece" in m:
        before, temperature = (
            m.get("calibration/ece_before", float("nan")),
            m.get("calibration/temperature", 1.0),
        )
        out.append(
            ("calibration", f"ECE {before:.3f} -> {m['calibration/ece']:.3f} (temperature {temperature:.2f})")
        )
    if "oos/in_scope_accuracy" in m:
        caught = (
            f"out-of-scope recall {m['oos/recall']:.3f}, precision {m['oos/precision']:.3f}, "
            f"AUROC {m['oos/auroc']:.3f}; "
            if "oos/recall" in m
            else ""
        )
        out.append(
            ("out-of-scope", f"{caught}in-scope accuracy with fallback {m['oos/in_scope_accuracy']:.3f}")
        )
    before = [k.split("/", 1)[1] for k in sorted(m) if k.startswith("base/") and k != "base/loss"]
    changes = [f"{k} {m[f'base/{k}']:.4f} -> {m[f'test/{k}']:.4f}" for k in before if f"test/{k}" in m]
    if changes:
        out.append(("base -> tuned", ", ".join(changes)))
    return out


def prediction_line(text: str, row: dict[str, Any]) -> str:
    """One line of ``tuneflow predict`` for ``text``, by what the model answered: entities (token
    classification), generated text (seq2seq, chat), a label with its score and, where the model has a
    fallback, whether the text was in scope; any other answer's values, each as a cell (JSON for lists)."""
    if "entities" in row:
        return f"{text}\t{_json_cell(row['entities'])}"
    if "generated_text" in row:
        return f"{text}\t{row['generated_text']}"
    if "label" not in row:  # another task type's answer (a label set with scores): its values as cells
        return "\t".join([*(str(_json_cell(v)) for v in row.values()), text])
    if "in_scope" not in row:
        return f"{row['label']}\t{row['score']:.4f}\t{text}"
    scope = "in scope" if row["in_scope"] else "out of scope"
    how = f"{scope} ({row['oos_score']:.3g} vs threshold {row['threshold']:.3g})"
    return f"{row['label']}\t{row['score']:.4f}\t{how}\t{text}"


def csv_cells(frame: Any) -> Any:  # (a pandas DataFrame)
    """Predictions as CSV cells (``tuneflow predict --output``): list-valued answers (entity spans) as
    JSON text, every other value as it is."""
    return frame.map(_json_cell)


def _json_cell(value: Any) -> Any:
    """A list-like or dict value as JSON text (numpy scalars as floats); anything else unchanged."""
    import json

    import numpy as np

    if isinstance(value, dict):
        return json.dumps(value, default=float)
    return json.dumps(list(value), default=float) if isinstance(value, list | tuple | np.ndarray) else value


def print_round(result: Any, cfg: Any, config: Path) -> None:  # (a tuneflow.registry.labelling.Round)
    """What ``tuneflow label`` picked, where it went, and how the round joins the next run."""
    picks, out = result.picks, result.written[0]
    for note in result.notes:
        console.print(f"note: {note}", highlight=False, markup=False)
    origin = [
        f"{n} from {flag}"
        for n, flag in ((result.candidates - result.from_served, "--pool"), (result.from_served, "--served"))
        if n
    ]
    console.print(
        f"picked {len(picks)} of {result.candidates} candidates ({', '.join(origin) or 'none'}; "
        f"{result.already_labelled} already in the data, skipped) -> {', '.join(map(str, result.written))}",
        highlight=False,
        markup=False,
    )
    for row in picks.head(3).to_dict("records"):
        text = row["text"] if len(row["text"]) <= 70 else row["text"][:67] + "..."
        console.print(f"  {text!r}: model guesses {row['suggested']} ({row['confidence']:.2f})", markup=False)
    try:
        listed = os.path.relpath(out.resolve(), config.resolve().parent)
    except ValueError:  # another drive
        listed = str(out.resolve())
    fill = "label them in Label Studio and export CSV" if out.suffix == ".json" else "fill in"
    console.print(
        f"next: {fill} the '{cfg.data.label_column}' column, add the file to {config}:\n"
        f"  data:\n    labelled:\n      - {listed}\nthen run: tuneflow retrain {config}  (or tuneflow run)",
        highlight=False,
        markup=False,
    )
