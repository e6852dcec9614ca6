"""Fault injection for the crash tests: ``TUNEFLOW_CRASH_AT=<point>`` SIGKILLs the whole process group.

The kill tests need a ``kill -9`` at an exact stage (during validation, a training epoch, a search trial,
right after registration, inside the promotion decision); polling from outside cannot hit those windows
reliably. Unset (always, outside tests) this does nothing.
"""

from __future__ import annotations

import os
import signal

ENV = "TUNEFLOW_CRASH_AT"


def crash_point(point: str) -> None:
    """Kill this process group with SIGKILL when ``$TUNEFLOW_CRASH_AT`` names ``point``."""
    if os.environ.get(ENV) == point:
        print(f"[fault injection] SIGKILL at {point}", flush=True)
        os.killpg(os.getpgid(0), signal.SIGKILL)
