"""Run a ``tuneflow`` command as a user does and watch it: exit code, wall time, stage times, peak resident
memory (the kernel's own count for the process), resident memory at the end of each epoch and its growth.

Shared by the allocator matrix (``python -m bench.allocator``) and the field matrix (``python -m bench
field``). The process is watched from outside (``/proc/PID/status`` every half second, ``wait4``'s
``ru_maxrss`` for the exact peak), so what is measured is what ``tuneflow`` gives itself, allocator included.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from tuneflow.allocator import resident_mb

EPOCH = re.compile(r"^\s+epoch (\d+)/\d+\s+step \d+\s+([\d.]+) s")
STAGE = re.compile(r"^[✓✗] (\w+)\s+(?:(?:failed|interrupted) after )?([\d.]+) s")


def growth(epoch_rss: list[float]) -> float | None:
    """RSS growth from the end of epoch 2 to the end of the last epoch (0.1 = +10 %); None under 3 epochs."""
    if len(epoch_rss) < 3:
        return None
    return epoch_rss[-1] / epoch_rss[1] - 1


def watch(cmd: list[str], env: dict[str, str], cwd: Path, timeout_s: float = 3600) -> dict[str, Any]:
    """Run ``cmd`` to its end and measure it (see the module docstring); its own session, so that whatever it
    starts (a temporary Prefect server) is stopped with it.

    Returns:
        ``exit``, ``wall_s``, ``peak_rss_mb``, ``epoch_rss_mb`` (at each epoch line), ``epoch_s``,
        ``rss_growth`` (:func:`growth`), ``stage_s`` and ``stage_peak_rss_mb`` (from the samples inside each
        stage), and the last 60 lines of output (``tail``).
    """
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            mb = resident_mb(proc.pid)
            if mb is not None:
                samples.append((time.perf_counter() - start, mb))
            done.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    timer = threading.Timer(timeout_s, lambda: os.killpg(proc.pid, signal.SIGTERM))
    timer.start()
    lines, epoch_rss, epoch_s, stages = [], [], [], {}
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip())
        if m := EPOCH.match(line):
            epoch_rss.append(resident_mb(proc.pid) or (samples[-1][1] if samples else 0.0))
            epoch_s.append(float(m.group(2)))
        elif m := STAGE.match(line):
            stages[m.group(1)] = (
                time.perf_counter() - start - float(m.group(2)),
                time.perf_counter() - start,
            )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    timer.cancel()
    done.set()
    sampler.join()
    with contextlib.suppress(ProcessLookupError):  # anything it left in its session (it should leave nothing)
        os.killpg(proc.pid, signal.SIGKILL)
    stage_peak = {
        name: max((mb for t, mb in samples if a <= t <= b), default=None) for name, (a, b) in stages.items()
    }
    return {
        "exit": proc.returncode,
        "wall_s": round(time.perf_counter() - start, 1),
        "peak_rss_mb": round(max(usage.ru_maxrss / 1024, *(mb for _, mb in samples))),
        "epoch_rss_mb": [round(x) for x in epoch_rss],
        "epoch_s": epoch_s,
        "rss_growth": None if (g := growth(epoch_rss)) is None else round(g, 3),
        "stage_s": {name: round(b - a, 1) for name, (a, b) in stages.items()},
        "stage_peak_rss_mb": {k: round(v) for k, v in stage_peak.items() if v is not None},
        "tail": lines[-60:],
    }
