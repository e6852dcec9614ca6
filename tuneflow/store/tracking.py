"""Every MLflow call of tuneflow goes through this module.

Runs are addressed by id through ``MlflowClient`` (never the thread-local "active run"): Prefect tasks run on
worker threads. :func:`configure` points a process at its store once, at its entry (the CLI, a flow, a search
worker, a DDP rank); default: ``sqlite:///mlruns/mlflow.db``, artifacts in ``mlruns/artifacts``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from tuneflow.config import SMOLLM2_MODEL, resolve_tracking_uri, sqlite_path  # noqa: F401 (re-exported)
from tuneflow.store.gc import RunFacts

TAG_STAGE, TAG_CONFIG_HASH = "tuneflow.stage", "tuneflow.config_hash"
TAG_DATA_FP, TAG_ADAPTER = "tuneflow.data_fingerprint", "tuneflow.adapter"
TAG_REGISTERED = "tuneflow.registered_version"  # on a run: the version registered from it
REFERENCE_SAMPLE = "reference/train_sample.jsonl"  # a run's training sample: the drift reference
ADAPTER_PREFIX = "adapter-"  # artifact keys of an adapter-set model: adapter-<name>
MAX_PARAM_LEN = 6000

HTTP_RETRY_BUDGET = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
"""A tracking server that stops answering costs a call about 7 s of back-off (1 + 2 + 4) and at most 30 s
per attempt, not MLflow's default of 7 retries over ~2 minutes; set the variables to choose otherwise."""


def configure(configured: str | None = None) -> str:
    """Point MLflow at the store (creating ``mlruns/`` for the default SQLite store) and return its URI."""
    uri = resolve_tracking_uri(configured)
    for name, value in HTTP_RETRY_BUDGET.items():
        os.environ.setdefault(name, value)
    if (db := sqlite_path(uri)) is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def current_uri() -> str:
    """The store this process was pointed at by its entry (the CLI, a flow, a search worker, a DDP rank)."""
    return mlflow.get_tracking_uri()


def client() -> MlflowClient:
    return MlflowClient()


def _artifact_root(uri: str) -> str | None:
    # For a local SQLite store keep artifacts beside the database (mlruns/artifacts), not in ./mlartifacts.
    db = sqlite_path(uri)
    return (db.parent / "artifacts").resolve().as_uri() if db is not None else None


EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
"""Opens the experiment in the UI's model-training view (runs, charts, compare) instead of the GenAI one."""


def experiment_id(name: str) -> str | None:
    """Id of experiment ``name``, or None when there is none."""
    exp = client().get_experiment_by_name(name)
    return exp.experiment_id if exp is not None else None


def ensure_experiment(name: str) -> str:
    """Id of experiment ``name``, created on first use (in the UI's model-training view)."""
    c = client()
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.tags.get("mlflow.experimentKind") is None:  # made by an older tuneflow
            for key, value in EXPERIMENT_KIND.items():
                c.set_experiment_tag(exp.experiment_id, key, value)
        return exp.experiment_id
    root = _artifact_root(mlflow.get_tracking_uri())
    location = f"{root}/{name}" if root else None
    return c.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)


def source_tags(source: str) -> dict[str, str]:
    """The UI's User and Source columns: who started the run, and from what (e.g. ``tuneflow run x.yaml``)."""
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        user = "unknown"
    return {"mlflow.user": user, "mlflow.source.name": source, "mlflow.source.type": "LOCAL"}


def start_run(
    experiment: str,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
) -> str:
    """Create a run and return its id (nested under ``parent_run_id`` when given).

    The run gets the UI's User and Source columns filled (``source_tags``) unless ``tags`` sets them.
    """
    tags = {**source_tags(f"tuneflow ({run_name or 'run'})"), **(tags or {})}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = client().create_run(ensure_experiment(experiment), run_name=run_name, tags=tags)
    return run.info.run_id


UI_VIEW = "?workflowType=machine_learning"
"""MLflow 3.17's UI picks its GenAI or model-training view from a global toggle (remembered by the browser),
not from the experiment's kind (MLflow #24498, unfixed in 3.18): links tuneflow prints select the
model-training view, and ``tuneflow ui`` serves the UI so that the choice sticks
(:mod:`tuneflow.store.mlflow_app`)."""
UI_ADDRESS = "http://127.0.0.1:5000"  # where `tuneflow ui` serves a local store
RUNS_VIEW = "tuneflow"
"""Id of the saved runs view tuneflow keeps on each experiment (the UI's "Views" menu)."""
VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # how MLflow's UI stores a saved view: an experiment tag
TAG_ALIASES = "tuneflow.aliases"  # on a run: the registry aliases its version holds now (the UI's column)


def ui_address(tracking_uri: str) -> str:
    """The MLflow UI of a store: the tracking server itself, else where ``tuneflow ui`` serves."""
    base = tracking_uri if tracking_uri.startswith(("http://", "https://")) else UI_ADDRESS
    return base.rstrip("/")


def run_link(experiment_id: str, run_id: str) -> str:
    """A run's page as a link inside the MLflow UI (relative: it opens in whichever UI shows it)."""
    return f"#/experiments/{experiment_id}/runs/{run_id}{UI_VIEW}"


def runs_link(experiment_id: str, view: bool = True) -> str:
    """An experiment's runs table as a link inside the MLflow UI, with tuneflow's saved view (``view``)."""
    return f"#/experiments/{experiment_id}/runs{UI_VIEW}" + (
        f"&viewStateShareKey={RUNS_VIEW}" if view else ""
    )


def run_url(run_id: str, tracking_uri: str) -> str:
    """The run's page in the MLflow UI (model-training view)."""
    experiment_id = client().get_run(run_id).info.experiment_id
    return f"{ui_address(tracking_uri)}/{run_link(experiment_id, run_id)}"


def experiment_url(experiment_id: str, tracking_uri: str, address: str | None = None) -> str:
    """The experiment's runs table in the model-training view, with tuneflow's saved view applied (when the
    experiment has one): the columns that decide between fine-tunings, learning curves first.

    ``address``: the UI's, when it is not the store's default (``tuneflow ui --port``)."""
    base = address or ui_address(tracking_uri)
    return f"{base}/{runs_link(experiment_id, _has_runs_view(experiment_id))}"


def _has_runs_view(experiment_id: str) -> bool:
    return VIEW_TAG_PREFIX + RUNS_VIEW in client().get_experiment(experiment_id).tags


def recent_experiments(limit: int = 5) -> list[tuple[str, str]]:
    """(id, name) of the most recently updated experiments that have runs, newest first."""
    found = client().search_experiments(order_by=["last_update_time DESC"], max_results=limit + 1)
    out = [(e.experiment_id, e.name) for e in found if e.name != "Default"]
    return out[:limit]


def save_runs_view(experiment_id: str, name: str, state: dict[str, Any]) -> None:
    """Write (or replace) the experiment's saved runs view in the format MLflow's UI reads: an experiment
    tag ``mlflow.sharedViewState.<id>`` holding ``{name, createdAt, updatedAt, state}``, the page state as
    zlib-compressed JSON behind ``deflate;`` (what the UI's own "Save view" writes)."""
    import base64
    import zlib

    key = VIEW_TAG_PREFIX + RUNS_VIEW
    now = int(time.time() * 1000)
    previous = client().get_experiment(experiment_id).tags.get(key)
    try:
        created = int(json.loads(previous)["createdAt"]) if previous else now
    except (ValueError, KeyError, TypeError):
        created = now
    packed = "deflate;" + base64.b64encode(zlib.compress(json.dumps(state).encode())).decode()
    envelope = {"name": name, "createdAt": created, "updatedAt": now, "state": packed}
    client().set_experiment_tag(experiment_id, key, json.dumps(envelope))


def read_runs_view(experiment_id: str) -> dict[str, Any] | None:
    """The page state of the experiment's saved tuneflow view (None without one)."""
    import base64
    import zlib

    raw = client().get_experiment(experiment_id).tags.get(VIEW_TAG_PREFIX + RUNS_VIEW)
    if raw is None:
        return None
    try:
        packed = json.loads(raw)["state"].removeprefix("deflate;")
        return json.loads(zlib.decompress(base64.b64decode(packed)))
    except (ValueError, KeyError, TypeError, AttributeError, zlib.error):  # not a view tuneflow wrote
        return None


def set_description(run_id: str, markdown: str) -> None:
    """The run's description: the first thing its page shows, and the runs table's Description column."""
    set_tags(run_id, {"mlflow.note.content": markdown})


@contextmanager
def system_metrics(run_id: str, interval: float = 5.0) -> Iterator[None]:
    """Sample CPU, memory, disk and network into the run's ``system/`` metrics (MLflow's monitor) while the
    block runs (``tracking.system_metrics``); nothing without psutil. A resumed run's samples continue."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(
            run_id,
            sampling_interval=interval,
            samples_before_logging=1,
            resume_logging=True,
            tracking_uri=mlflow.get_tracking_uri(),
        )
    except ImportError:  # psutil is MLflow's optional dependency for these
        yield
        return
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


def rename_run(run_id: str, name: str) -> None:
    """Change the name the run list shows (e.g. ``trial-3 (pruned)``)."""
    client().update_run(run_id, name=name)


def reopen_run(run_id: str) -> None:
    """Mark an interrupted run as running again (``--resume``)."""
    client().update_run(run_id, status="RUNNING")


def run_status(exc: BaseException | None) -> str:
    """MLflow status for a run that ended with ``exc``: None finished; Ctrl-C, exit, ``kill PID`` killed."""
    stopped = isinstance(exc, KeyboardInterrupt | SystemExit) or type(exc).__name__ == "TerminationSignal"
    return "FINISHED" if exc is None else "KILLED" if stopped else "FAILED"


def end_run(run_id: str, status: str = "FINISHED") -> None:
    client().set_terminated(run_id, status=status)


def set_tags(run_id: str, tags: dict[str, Any]) -> None:
    client().log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_params(run_id: str, params: dict[str, Any]) -> None:
    """Log params in batches (MLflow takes at most 100 per call); values are stringified and capped."""
    items = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in params.items()]
    existing = client().get_run(run_id).data.params
    items = [p for p in items if p.key not in existing]  # params are immutable: a resumed run keeps its own
    for i in range(0, len(items), 100):
        client().log_batch(run_id, params=items[i : i + 100])


def clean(value: float) -> float:
    """A metric as a person reads it: float32 noise removed (``1.0000001192`` -> ``1.0``).

    Values computed in float32 carry ~7 significant digits; keeping 7 drops only the noise.
    """
    value = float(value)
    if value != value or abs(value) == float("inf") or value.is_integer():  # counts and bytes stay exact
        return value
    return float(f"{value:.7g}")


def log_metrics(run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
    _write_metrics(client(), run_id, [(k, v, step or 0) for k, v in metrics.items()])


def _write_metrics(c: MlflowClient, run_id: str, metrics: list[tuple[str, float, int]]) -> None:
    """``(key, value, step)`` metrics, cleaned, in batches of 1000 (MLflow's limit per call)."""
    ts = int(time.time() * 1000)
    batch = [Metric(k, clean(v), ts, step) for k, v, step in metrics]
    for i in range(0, len(batch), 1000):
        c.log_batch(run_id, metrics=batch[i : i + 1000])


def log_artifacts(run_id: str, directory: str | Path, artifact_path: str | None = None) -> None:
    client().log_artifacts(run_id, str(directory), artifact_path)


def log_text(run_id: str, text: str, artifact_file: str) -> None:
    client().log_text(run_id, text, artifact_file)


def log_dataset(
    run_id: str, df: pd.DataFrame, name: str, source: str, context: str, targets: str | None
) -> None:
    """Record a dataset's lineage (schema, digest, source) on the run via ``log_inputs``."""
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.entities import DatasetInput, InputTag

    from tuneflow.store.params import portable_path

    # A local file is named as one (a bare string is ambiguous to MLflow, which warns on every dataset), by
    # its folder and name only (no machine's path); "path (stratified 10% split, seed 1)" is a carved split.
    file = source.split(" (")[0]
    origin = LocalArtifactDatasetSource(portable_path(file)) if Path(file).is_file() else source
    dataset = mlflow.data.from_pandas(df, source=origin, name=name, targets=targets)
    client().log_inputs(
        run_id, [DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])]
    )


def metric_history(run_id: str, keys: Iterable[str]) -> dict[str, list[tuple[int, float]]]:
    """``{key: [(step, value), ...]}`` for each key (empty list when never logged)."""
    c = client()
    return {k: sorted((m.step, m.value) for m in c.get_metric_history(run_id, k)) for k in keys}


TAG_HEARTBEAT = "tuneflow.heartbeat"
TAG_HEARTBEAT_INTERVAL = "tuneflow.heartbeat_interval"
TAG_KILLED = "tuneflow.killed_reason"
TAG_HOST, TAG_PID = "tuneflow.host", "tuneflow.pid"
STALE_AFTER = 4  # heartbeat intervals without a beat before a RUNNING run counts as dead


def clear_liveness(run_id: str) -> None:
    """Delete a closed run's liveness tags (:class:`Heartbeat`): they only tell a RUNNING run's state."""
    for key in {TAG_HEARTBEAT, TAG_HEARTBEAT_INTERVAL, TAG_HOST, TAG_PID} & set(get_run(run_id).data.tags):
        client().delete_tag(run_id, key)


class Heartbeat:
    """Stamps ``tuneflow.heartbeat`` (epoch seconds) on a run every ``interval`` seconds from a thread.

    A process killed with ``kill -9`` cannot close its run; the missing heartbeat is how a later run tells
    "still running elsewhere" from "dead" (see :func:`reap_stale_runs`).
    """

    def __init__(self, run_id: str, interval: float):
        import threading

        self.run_id, self.interval = run_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{run_id[:8]}", daemon=True)

    def beat(self) -> None:
        set_tags(self.run_id, {TAG_HEARTBEAT: f"{time.time():.0f}", TAG_HEARTBEAT_INTERVAL: self.interval})

    def _identify(self) -> None:
        import socket

        set_tags(self.run_id, {TAG_HOST: socket.gethostname(), TAG_PID: os.getpid()})

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception:  # a busy store: the next beat will do (staleness allows several misses)
                continue

    def __enter__(self) -> Heartbeat:
        self._identify()
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        # A beat stuck on a store lock must not hold up a failed run (a late beat on a closed run: harmless).
        self._thread.join(timeout=5 if exc[0] is None else 1)


def _process_gone(tags: dict[str, str]) -> bool:
    """The run's process ran on this machine and no longer exists (no need to wait for its heartbeat)."""
    import socket

    if tags.get(TAG_HOST) != socket.gethostname() or not str(tags.get(TAG_PID, "")).isdigit():
        return False
    try:
        os.kill(int(tags[TAG_PID]), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        pass
    return False


def is_alive(run: Any) -> bool:
    """A RUNNING run whose process still beats (somewhere): never resumed, reaped or garbage-collected."""
    return run.info.status == "RUNNING" and TAG_HEARTBEAT in run.data.tags and not is_stale(run)


def is_stale(run: Any, now: float | None = None) -> bool:
    """A RUNNING run whose process is gone: its pid no longer exists on this machine, or (any machine) its
    heartbeat stopped for 4 intervals. Runs without heartbeats (older tuneflow) never are."""
    tags = run.data.tags
    if run.info.status != "RUNNING" or TAG_HEARTBEAT not in tags:
        return False
    if _process_gone(tags):
        return True
    interval = float(tags.get(TAG_HEARTBEAT_INTERVAL) or 30)
    return (now or time.time()) - float(tags[TAG_HEARTBEAT]) > STALE_AFTER * interval


def reap_stale_runs(experiment: str, by: str = "") -> list[str]:
    """Mark RUNNING runs of ``experiment`` whose heartbeat is stale KILLED, with their nested runs.

    Returns the ids marked. The tag ``tuneflow.killed_reason`` says why (and which run noticed).
    """
    exp = client().get_experiment_by_name(experiment)
    if exp is None:
        return []
    running = client().search_runs([exp.experiment_id], "attributes.status = 'RUNNING'", max_results=5000)
    dead = [r for r in running if is_stale(r)]
    children: dict[str, list[str]] = {}
    for r in running:
        parent = r.data.tags.get("mlflow.parentRunId")
        if parent:
            children.setdefault(parent, []).append(r.info.run_id)
    marked: list[str] = []
    for run in dead:
        last = pd.Timestamp(float(run.data.tags[TAG_HEARTBEAT]), unit="s").isoformat(timespec="seconds")
        why = "its process is gone" if _process_gone(run.data.tags) else f"no heartbeat since {last} UTC"
        reason = f"{why}: marked KILLED" + (f" by {by}" if by else "")
        todo = [run.info.run_id]
        while todo:  # the dead run's nested search/trial/fold runs died with it
            run_id = todo.pop()
            set_tags(run_id, {TAG_KILLED: reason})
            end_run(run_id, "KILLED")
            marked.append(run_id)
            todo += children.get(run_id, [])
    return marked


def resumable_runs(
    experiment: str, config_hash: str, stage: str = "finetune", include_alive: bool = False
) -> list[Any]:
    """Interrupted ``stage`` runs of ``experiment`` started from the same config, newest first.

    Interrupted = KILLED, FAILED, or RUNNING with a stale (or no) heartbeat. A RUNNING run that still
    beats is alive somewhere: offered only with ``include_alive`` (a study shared by several machines).
    """
    exp = client().get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client().search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{TAG_CONFIG_HASH}` = '{config_hash}' and tags.`{TAG_STAGE}` = '{stage}'",
        order_by=["attributes.start_time DESC"],
        max_results=50,
    )
    out = []
    for r in runs:
        status = r.info.status
        if status in ("KILLED", "FAILED", "RUNNING") and (include_alive or not is_alive(r)):
            out.append(r)
    return out


def get_run(run_id: str) -> Any:
    return client().get_run(run_id)


def run_facts(run_id: str) -> RunFacts | None:
    """What ``tuneflow gc`` needs to know of a run, or None when this store does not know it."""
    try:
        run = get_run(run_id)
    except mlflow.exceptions.MlflowException:  # deleted run, or a folder of another store
        return None
    tags = run.data.tags
    return RunFacts(
        status=run.info.status,
        alive=is_alive(run),
        registered=bool(tags.get(TAG_REGISTERED)),
        config_hash=tags.get(TAG_CONFIG_HASH, ""),
        start_time=int(run.info.start_time or 0),
    )


def running_runs(experiment: str, tags: dict[str, str]) -> list[str]:
    """Ids of RUNNING runs of ``experiment`` carrying all ``tags`` (e.g. a dead worker's trial)."""
    exp = client().get_experiment_by_name(experiment)
    if exp is None:
        return []
    clauses = [f"tags.`{k}` = '{v}'" for k, v in tags.items()] + ["attributes.status = 'RUNNING'"]
    return [r.info.run_id for r in client().search_runs([exp.experiment_id], " and ".join(clauses))]


@dataclass(frozen=True)
class ChildRun:
    """A run a :class:`RunRecorder` opened: what search and cross-validation may record on it."""

    run_id: str
    recorder: RunRecorder

    def log_params(self, params: dict[str, Any]) -> None:
        log_params(self.run_id, params)

    def log_metrics(self, metrics: dict[str, float]) -> None:
        log_metrics(self.run_id, metrics)

    def set_tags(self, tags: dict[str, Any]) -> None:
        set_tags(self.run_id, tags)

    def rename(self, name: str) -> None:
        rename_run(self.run_id, name)

    def history(self, keys: Iterable[str]) -> dict[str, list[tuple[int, float]]]:
        return metric_history(self.run_id, keys)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        client().log_artifact(self.run_id, str(path), artifact_path)

    @property
    def tracking_uri(self) -> str:
        return self.recorder.tracking_uri

    def nested(self) -> RunRecorder:
        """A recorder whose runs nest under this one (a trial's cross-validation folds)."""
        return RunRecorder(self.recorder.tracking_uri, self.recorder.experiment, self.run_id)


@dataclass(frozen=True)
class RunRecorder:
    """Where search and cross-validation record their runs: nested under ``parent_run_id``.

    They receive one instead of calling MLflow themselves, so every MLflow call stays in this module. Plain
    values only: it travels to spawned search workers.
    """

    tracking_uri: str
    experiment: str
    parent_run_id: str

    @contextmanager
    def child(
        self, name: str, tags: dict[str, str], finished_on: tuple[type[BaseException], ...] = ()
    ) -> Iterator[ChildRun]:
        """Open a nested run; it ends FINISHED, or FAILED / KILLED with the exception that left the block.
        ``finished_on``: exceptions that end the run normally (a pruned trial is a finished trial)."""
        run = ChildRun(
            start_run(self.experiment, run_name=name, tags=tags, parent_run_id=self.parent_run_id), self
        )
        error: BaseException | None = None
        try:
            yield run
        except finished_on:
            raise
        except BaseException as exc:
            error = exc
            raise
        finally:
            end_run(run.run_id, run_status(error))

    def kill_running(
        self, tags: dict[str, str], reason_tags: dict[str, str], run_ids: Iterable[str] = ()
    ) -> None:
        """Mark runs KILLED: those given, and the RUNNING runs of the experiment carrying ``tags``."""
        for run_id in set(run_ids) | set(running_runs(self.experiment, tags)):
            set_tags(run_id, reason_tags)
            end_run(run_id, "KILLED")


def run_metrics(run_id: str) -> dict[str, float]:
    return dict(client().get_run(run_id).data.metrics)


def read_text(run_id: str, artifact_file: str) -> str:
    """Text of one artifact of a run (e.g. its resolved config)."""
    return mlflow.artifacts.load_text(f"runs:/{run_id}/{artifact_file}")


def try_read_text(run_id: str, artifact_file: str) -> str | None:
    """Like :func:`read_text`, or None when the run has no such artifact."""
    try:
        return read_text(run_id, artifact_file)
    except (mlflow.exceptions.MlflowException, OSError):
        return None


_CLIENTS: dict[str, MlflowClient] = {}


def log_metric_batch(tracking_uri: str, run_id: str, metrics: list[tuple[str, float, int]]) -> None:
    """Write ``(key, value, step)`` metrics to ``run_id`` in ``tracking_uri`` (Lightning's logger calls this
    from training processes, which may not have configured MLflow)."""
    if tracking_uri not in _CLIENTS:
        _CLIENTS[tracking_uri] = MlflowClient(tracking_uri=tracking_uri)
    _write_metrics(_CLIENTS[tracking_uri], run_id, metrics)
