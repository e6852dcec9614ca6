"""Helpers shared by the tasks: where a run's files go, and the retry rule for IO-bound tasks."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tuneflow import names
from tuneflow.allocator import PeakWatch, release_free_memory
from tuneflow.config import ConfigError
from tuneflow.data.validation import DataValidationError
from tuneflow.fitting.model import ModelLoadError

# Bad input never gets better by retrying; only transient IO (network, hub, tracking server) might.
PERMANENT_ERRORS = (
    ConfigError,
    DataValidationError,
    ModelLoadError,
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    KeyError,
    ValueError,
)
# MLflow error codes and message fragments of faults that can heal within seconds (a restarting server, a
# busy SQLite file, a dropped connection); everything else fails at once.
TRANSIENT_CODES = {
    "TEMPORARILY_UNAVAILABLE",
    "RESOURCE_EXHAUSTED",
    "REQUEST_LIMIT_EXCEEDED",
    "DEADLINE_EXCEEDED",
}
TRANSIENT_WORDS = (
    "database is locked",
    "timed out",
    "timeout",
    "connection reset",
    "connection refused",
    "connection aborted",
    "max retries exceeded",
    "temporarily unavailable",
    "bad gateway",
    "service unavailable",
)
RETRY_DELAYS_S = [5, 15]
"""Waits before the 1st and 2nd retry of an IO-bound task: 20 s of waiting in all, on top of MLflow's own
bounded HTTP retries (:func:`tuneflow.store.tracking.configure`)."""


def is_transient(exc: BaseException) -> bool:
    """Whether retrying ``exc`` can help: connection and timeout faults, MLflow's "try again" codes."""
    if isinstance(exc, PERMANENT_ERRORS):
        return False
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    if getattr(exc, "error_code", None) in TRANSIENT_CODES:
        return True
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(word in text for word in TRANSIENT_WORDS)


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry transient IO faults only, and say on the console what is
    retried; bad input, permissions and bugs fail at once."""
    try:
        state.result()
    except Exception as exc:
        if not is_transient(exc):
            return False
        attempt = task_run.run_count if task_run is not None else 1
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        print(
            f"↻ {task.name}: {type(exc).__name__}: {first} -- looks transient, retry {attempt} of "
            f"{len(RETRY_DELAYS_S)} (at most {sum(RETRY_DELAYS_S)} s of waiting in all)"
        )
        return True
    return False


TRANSIENT_RETRIES: dict[str, Any] = {
    "retries": len(RETRY_DELAYS_S),
    "retry_delay_seconds": RETRY_DELAYS_S,
    "retry_condition_fn": retry_transient,
}
"""The retry policy of every IO-bound task: ``@task(cache_policy=NO_CACHE, **TRANSIENT_RETRIES)``."""


def is_stop(exc: BaseException) -> bool:
    """Whether ``exc`` is a person stopping the run: Ctrl-C, or ``kill PID`` (Prefect's TerminationSignal);
    the CLI says how to resume."""
    return isinstance(exc, KeyboardInterrupt) or type(exc).__name__ == "TerminationSignal"


@contextmanager
def stage(name: str, run_id: str | None = None) -> Iterator[Callable[[str], None]]:
    """One console line per stage when it ends: ``✓ train      41.3 s  3 epochs, best val_f1_macro 0.93``.

    Yields ``note(text)`` to add the stage's result to its line; a failure prints ``✗ name failed``. With
    ``run_id``, the stage's peak resident memory is logged to that run as ``memory/peak_<name>_mb``.
    """
    start, notes = time.perf_counter(), []
    try:
        with PeakWatch() as memory:
            yield notes.append
    except BaseException as exc:
        how = "interrupted" if is_stop(exc) else "failed"
        print(f"✗ {name} {how} after {time.perf_counter() - start:.1f} s")
        raise
    finally:
        peak = memory.peak
        # A stage's models sit in reference cycles (Lightning's trainer and module, predictors' hooks): freed
        # now, and the pages the allocator kept for them handed back: the next stage runs in another thread,
        # whose allocations would not reuse them (jemalloc's arenas are per thread), so they would add up.
        gc.collect()
        release_free_memory()
    if peak is not None:
        notes.append(f"peak RSS {peak / 1024:.1f} GB")
        if run_id is not None:
            from tuneflow.store import tracking

            tracking.log_metrics(run_id, {f"{names.MEMORY}peak_{name}_mb": round(peak, 1)})
    print(f"✓ {name:<10} {time.perf_counter() - start:6.1f} s  {'; '.join(notes)}".rstrip())
