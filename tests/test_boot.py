"""The early boot of Prefect's temporary server (flows/api.py): nothing it starts outlives the run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from tests.conftest import ROOT

# Run in a process of its own: Prefect's server singleton and settings must not leak into other tests.
SCRIPT = textwrap.dedent(
    """
    import subprocess, sys
    from prefect.server.api import server as prefect_server
    from tuneflow.flows import api

    def late_start(self, timeout=None):
        # What Prefect's start does when /health does not answer in time: the process stays up.
        self.server_process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(self.server_process.pid, flush=True)
        self.running = False
        raise RuntimeError("Timed out while attempting to connect to ephemeral Prefect API server.")

    prefect_server.SubprocessASGIServer.start = late_start
    api._start_temporary()  # not raised: the flow call's own start retries and reports
    """
)


def test_a_temporary_server_that_misses_its_deadline_is_stopped() -> None:
    """Prefect leaves a server that missed PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS running and
    starts another at the flow call; the early boot must stop the first one, or it is orphaned for good."""
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    pid = int(done.stdout.split()[0])
    try:
        os.kill(pid, 0)  # still there: it was left behind (a stopped child of an exited process is reaped)
    except ProcessLookupError:
        return
    os.kill(pid, 9)
    raise AssertionError(f"the temporary server process {pid} outlived the run")


def test_flow_commands_collect_garbage_again_once_the_libraries_are_loaded(monkeypatch) -> None:  # noqa: ANN001
    """Collection is off while a flow command imports torch & co. and back on (the imports frozen) before
    the flow runs: a run with the collector off would keep every reference cycle it makes."""
    import gc

    from tuneflow import cli
    from tuneflow.flows import api

    monkeypatch.setattr(api, "boot", api.Boot)  # nothing to start: PREFECT_API_URL-style, no thread
    frozen = gc.get_freeze_count()
    try:
        prefect = cli._boot_prefect()
        assert not gc.isenabled()
        cli._ready(prefect)
        assert gc.isenabled()
        assert gc.get_freeze_count() > frozen
    finally:
        gc.enable()
        gc.unfreeze()


HEARTBEATS = textwrap.dedent(
    """
    import threading
    from prefect.settings import get_current_settings
    from tuneflow.flows import api

    api.Boot().wait()  # PREFECT_API_URL's server (nothing started here): a long-lived server reads heartbeats
    print(get_current_settings().flows.heartbeat_frequency)
    started = threading.Thread(target=lambda: None)
    started.start()
    api.Boot(started).wait()  # a temporary server this process booted
    print(get_current_settings().flows.heartbeat_frequency)
    """
)


def test_flows_on_a_temporary_server_send_no_heartbeats() -> None:
    """Nobody reads a temporary server's heartbeats, and Prefect's heartbeat thread delays every flow's end
    by up to a second; with a configured server they stay on."""
    done = subprocess.run(
        [sys.executable, "-c", HEARTBEATS], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["180", "None"]
