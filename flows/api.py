"""The Prefect API a flow call reports to: a configured server, or a temporary one booted early.

Without ``PREFECT_API_URL`` Prefect starts a temporary server in a subprocess at the first flow call (~5 s on
2 cores) and the process waits for it. :func:`boot` starts that subprocess *before* the flow module imports
torch, transformers, Lightning and MLflow (~6 s), so the two overlap on separate cores; :meth:`Boot.wait`
joins it before the flow is called. With ``PREFECT_API_URL`` set (``tuneflow server`` or ``prefect server
start``), nothing is started and the server's health is checked first, so a wrong URL fails in a second
with its name instead of after a traceback.
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
        """Block until the temporary server answers (or its start failed: the flow call retries it)."""
        if self.thread is not None:
            self.thread.join()
            self.thread = None


def _start_temporary() -> None:
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    try:
        server.start()
    except Exception:
        # A server that misses its start-up deadline (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, easy
        # to miss on 2 busy cores) is left running by Prefect, which then starts a second one at the flow
        # call and only stops that one at exit: the first would outlive the run. Stop it here; the flow's
        # own start retries and reports what failed.
        with contextlib.suppress(Exception):
            server.stop()


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
            httpx.get(f"{str(api).rstrip('/')}/health", timeout=5).raise_for_status()
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
