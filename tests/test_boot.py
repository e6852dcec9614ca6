"""The early boot of Prefect's temporary server (flows/api.py): nothing it starts outlives the run."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_a_temporary_server_that_misses_its_deadline_is_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefect leaves a server that missed PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS running and
    starts another at the flow call; the early boot must stop the first one, or it is orphaned for good."""
    from prefect.server.api import server as prefect_server

    from flows import api

    started: list[subprocess.Popen[bytes]] = []

    def late_start(self: prefect_server.SubprocessASGIServer, timeout: int | None = None) -> None:
        # What Prefect's start does when /health does not answer in time: the process stays up.
        self.server_process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        started.append(self.server_process)
        self.running = False
        raise RuntimeError("Timed out while attempting to connect to ephemeral Prefect API server.")

    monkeypatch.setattr(prefect_server.SubprocessASGIServer, "start", late_start)
    try:
        api._start_temporary()  # the failure is not raised: the flow call's own start retries and reports
        assert len(started) == 1
        assert started[0].wait(timeout=10) is not None  # stopped, not left behind
        assert prefect_server.SubprocessASGIServer().server_process is None
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
