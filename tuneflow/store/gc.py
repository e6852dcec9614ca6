"""Checkpoint garbage collection: keep only the local files something can still use.

A MiniLM checkpoint weighs ~270 MB; kept for every run, 20 runs fill 8 GB. What is still useful:
- a run that is RUNNING (heartbeat alive): everything;
- the newest interrupted run of each config: its folder, for ``--resume``;
- a finished run that was *not* registered: its ``export/`` (the only copy of the model).
Everything else (registered or superseded runs, runs the store no longer knows) can go. The flows delete a
run's files as soon as its model is registered; ``tuneflow gc`` cleans up what older runs left behind.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

EXPORT = "export"


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def remove_run_files(folder: Path, keep_export: bool = False) -> int:
    """Delete a run's folder (or everything in it but ``export/``); returns the bytes freed."""
    if not folder.is_dir():
        return 0
    if not keep_export:
        freed = folder_size(folder)
        shutil.rmtree(folder, ignore_errors=True)
        return freed
    freed = 0
    for child in folder.iterdir():
        if child.name == EXPORT:
            continue
        freed += folder_size(child) if child.is_dir() else child.stat().st_size
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    return freed


@dataclass(frozen=True)
class Action:
    """What gc does with one run folder, and why."""

    folder: Path
    action: str  # "delete", "keep-export" or "keep"
    reason: str
    bytes: int


@dataclass(frozen=True)
class RunFacts:
    """What gc needs to know of a run (read from the tracking store by the caller)."""

    status: str  # FINISHED, FAILED, KILLED, RUNNING
    alive: bool  # RUNNING with a fresh heartbeat
    registered: bool
    config_hash: str
    start_time: int


def plan(output_dir: str | Path, facts_of: Callable[[str], RunFacts | None]) -> list[Action]:
    """Decide, for each ``<output_dir>/<run_id>/`` folder, what to delete (nothing is deleted here).

    Args:
        output_dir: the checkpoint root (``mlruns/checkpoints``).
        facts_of: the run's facts by id, or None when the store does not know the run.
    """
    root = Path(output_dir)
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    facts = {f.name: facts_of(f.name) for f in folders}
    newest_interrupted: dict[str, tuple[int, str]] = {}
    for run_id, f in facts.items():
        if f and f.status != "FINISHED" and not f.alive and not f.registered:
            best = newest_interrupted.get(f.config_hash)
            if best is None or f.start_time > best[0]:
                newest_interrupted[f.config_hash] = (f.start_time, run_id)
    actions = []
    for folder in folders:
        f, size = facts[folder.name], folder_size(folder)
        if f is None:
            actions.append(Action(folder, "delete", "no such run in the tracking store", size))
        elif f.alive:
            actions.append(Action(folder, "keep", "run in progress", size))
        elif f.registered:
            actions.append(Action(folder, "delete", "model registered: the store holds it", size))
        elif f.status == "FINISHED":
            export = folder_size(folder / EXPORT)
            if export:
                actions.append(
                    Action(folder, "keep-export", "finished, not registered: keep its export", size - export)
                )
            else:
                actions.append(Action(folder, "delete", "finished", size))
        elif newest_interrupted.get(f.config_hash, (0, ""))[1] == folder.name:
            actions.append(
                Action(folder, "keep", f"newest interrupted run of its config ({f.status}): --resume", size)
            )
        else:
            actions.append(
                Action(folder, "delete", f"{f.status}, superseded by a newer interrupted run", size)
            )
    return actions


def apply(actions: list[Action]) -> int:
    """Carry out a plan; returns the bytes freed."""
    freed = 0
    for a in actions:
        if a.action == "delete":
            freed += remove_run_files(a.folder)
        elif a.action == "keep-export":
            freed += remove_run_files(a.folder, keep_export=True)
    return freed


def freeable(actions: list[Action]) -> int:
    """Bytes a plan would free (what :func:`apply` deletes)."""
    return sum(a.bytes for a in actions if a.action != "keep")
