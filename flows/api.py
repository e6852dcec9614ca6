"""The Prefect API a flow call reports to: a configured server, or a temporary one booted early.

Without ``PREFECT_API_URL`` Prefect starts a temporary server in a subprocess at the first flow call (~5 s on
2 cores) and the process waits for it. :func:`boot` starts that subprocess *before* the flow module imports
torch, transformers, Lightning and MLflow (~6 s), so the two overlap on separate cores; :meth:`Boot.wait`
joins it before the flow is called. The boot thread also makes the server's first API request, which builds
its API (~0.6 s, measured), while the main thread still imports. With ``PREFECT_API_URL`` set (``tuneflow
server`` or ``prefect server start``), nothing is started and the server's health is checked first, so a
wrong URL fails in a second with its name instead of after a traceback.
"""

from __future__ import annotations

import contextlib
import threading


class PrefectUnreachable(RuntimeError):
    """``PREFECT_API_URL`` is set but nothing answers there."""


class Boot:
    """A temporary server being started in a thread (or nothing to wait for)."""

    def __init__(self, thread: threading.Thread | None = None):
        self.thread = thread

    def wait(self) -> None:
        """Block until the temporary server answers (or its start failed: the flow call retries it); from
        then on, this thread's flow calls send no heartbeats (:func:`skip_heartbeats`)."""
        if self.thread is not None:
            self.thread.join()
            self.thread = None
            skip_heartbeats()


def skip_heartbeats() -> None:
    """Turn flow-run heartbeats off for the rest of this thread's flow calls.

    A long-lived server reads heartbeats to mark a run whose process died as crashed; a temporary server dies
    with the process, so nobody reads them there. They are not free: Prefect joins its heartbeat thread when
    a flow ends, and that thread sleeps in 1 s steps, so every flow call waited up to a second at its end
    (0.3-0.7 s measured on the demo). With ``PREFECT_API_URL`` they stay on.
    """
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    # Entered for good: the settings context lasts as long as the command that booted the server (kept
    # referenced: a collected context manager would close itself and restore the old settings).
    settings = temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})
    settings.__enter__()
    _KEPT.append(settings)


_KEPT: list[object] = []


def _start_temporary() -> None:
    import httpx
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    try:
        server.start()
        if server.server_process is not None:
            stop_with_this_process(server.server_process.pid)
        # The server answers /health at once but builds its API on the first API request: ~0.6 s that the
        # flow call's version check would otherwise wait for. Its failure is the flow call's to report.
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(f"{server.api_url}/admin/version", timeout=30)
    except Exception:
        # A server that misses its start-up deadline (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, easy
        # to miss on 2 busy cores) is left running by Prefect, which then starts a second one at the flow
        # call and only stops that one at exit: the first would outlive the run. Stop it here; the flow's
        # own start retries and reports what failed.
        with contextlib.suppress(Exception):
            server.stop()


def stop_with_this_process(pid: int) -> None:
    """Stop process ``pid`` (the temporary server) when this process is gone, however it ends.

    Prefect stops its temporary server from an ``atexit`` handler, which a process killed by the OOM killer or
    ``kill -9`` never runs: such a run's server was found still running 90 minutes later. A shell loop that
    checks both processes once a second (no Python, ~1 MB) ends it within a second of this process.
    """
    import os
    import subprocess

    # Alive = not gone and not a zombie (a killed process stays one until its parent reaps it).
    state = f"sed -n 's/^State:\\s*\\(.\\).*/\\1/p' /proc/{os.getpid()}/status"
    alive = f'st=$({state}) && [ -n "$st" ] && [ "$st" != Z ]'
    loop = f"while {alive} && kill -0 {pid}; do sleep 1; done 2>/dev/null; kill {pid} 2>/dev/null"
    subprocess.Popen(
        ["sh", "-c", loop],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C to the run's process group leaves it to do its job
    )


def boot() -> Boot:
    """Check the configured Prefect server, or start the temporary one in the background.

    Raises:
        PrefectUnreachable: ``PREFECT_API_URL`` is set and its ``/health`` does not answer.
    """
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    api = settings.api.url
    if api:
        import httpx

        try:
            httpx.get(f"{str(api).rstrip('/')}/health", timeout=3).raise_for_status()
        except httpx.HTTPError as exc:
            raise PrefectUnreachable(
                f"the Prefect server PREFECT_API_URL={api} is not reachable ({type(exc).__name__}): start it "
                "(`tuneflow server`) or unset PREFECT_API_URL to let each run start a temporary one"
            ) from None
        return Boot()
    if not settings.server.ephemeral.enabled:
        return Boot()  # Prefect itself says what is missing at the flow call
    thread = threading.Thread(target=_start_temporary, name="prefect-boot", daemon=True)
    thread.start()
    return Boot(thread)
