"""Cold start: ``make demo`` from a fresh clone (install included), and the installed environment's size.

Clones this repository (its committed HEAD) into a temporary folder with ``../shared`` beside it, then times
``make install`` and ``make demo`` separately. pip's download cache of this machine is used (as on any
machine that installed Python packages before); nothing else is shared with the working copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start


def _size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6


def run(quick: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subprocess.run(["git", "clone", "-q", str(ROOT), str(work / "main")], check=True)
        os.symlink(ROOT.parent / "shared", work / "shared")
        repo = work / "main"
        print("coldstart: make install", flush=True)
        install_s = _timed(["make", "install"], repo)
        print("coldstart: make demo", flush=True)
        demo_s = _timed(["make", "demo"], repo)
        venv_mb = _size_mb(repo / ".venv")
        torch_dir = next((repo / ".venv").glob("lib/python*/site-packages/torch"), None)
        torch_mb = _size_mb(torch_dir) if torch_dir else 0.0
        shutil.rmtree(repo / "mlruns", ignore_errors=True)
    rows = [
        {
            "what": "cold start: fresh clone -> make demo",
            "result": f"{(install_s + demo_s) / 60:.1f} min (install {install_s:.0f} s, demo {demo_s:.0f} s)",
            "target": "report",
            "data": "configs/demo.yaml (6-trial search, final training, evaluation, registration, "
            "promotion); pip download cache warm",
        },
        {
            "what": "installed environment size (.venv)",
            "result": f"{venv_mb / 1000:.2f} GB (torch {torch_mb / 1000:.2f} GB)",
            "target": "report",
            "data": "torch 2.13.0 CPU wheel + tuneflow[dev]",
        },
    ]
    return {"install_s": install_s, "demo_s": demo_s, "venv_mb": venv_mb, "torch_mb": torch_mb, "rows": rows}
