"""Disk used by repeated runs: local checkpoints vs the MLflow store (target: checkpoints stay < 1 GB).

``python -m bench.disk [--runs N] [--epochs E]``: N `tuneflow run` processes of the demo config (search off,
E epochs) into one fresh store, then `tuneflow gc`; reports the size of the checkpoint folder and of the
MLflow artifact store after the runs, and what gc would still free.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import write_result, write_table

ROOT = Path(__file__).resolve().parent.parent


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def run(runs: int, epochs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "mlruns"
        env = {
            **os.environ,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "HF_HUB_OFFLINE": "1",
            "MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db",
        }
        sets = ["--set", "search.enabled=false", "--set", f"train.max_epochs={epochs}"]
        sets += ["--set", f"output_dir={store}/checkpoints"]
        walls = []
        for i in range(runs):
            start = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "tuneflow.cli", "run", "configs/demo.yaml", *sets],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
            )
            walls.append(time.perf_counter() - start)
            assert proc.returncode in (0, 6), proc.stdout[-2000:] + proc.stderr[-2000:]
            used = _size(store / "checkpoints") / 1e6
            print(f"run {i + 1}/{runs}: {walls[-1]:.0f} s, checkpoints {used:.1f} MB", flush=True)
        checkpoints, artifacts = _size(store / "checkpoints"), _size(store / "artifacts")
        gc = subprocess.run(
            [sys.executable, "-m", "tuneflow.cli", "gc", "--dry-run", "--output-dir", f"{store}/checkpoints"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
    data = f"configs/demo.yaml x {runs} runs, search off, {epochs} epoch(s), full fine-tuning of MiniLM-L6"
    rows = [
        {
            "what": f"local checkpoints after {runs} runs",
            "result": f"{checkpoints / 1e6:.1f} MB (gc --dry-run: {gc.stdout.strip().splitlines()[-1]})",
            "target": "< 1 GB (was 7.8 GB after 20 runs: 273 MB per run kept)",
            "data": data,
        },
        {
            "what": f"MLflow artifact store after {runs} runs",
            "result": f"{artifacts / 1e6:.1f} MB ({artifacts / 1e6 / runs:.1f} MB per registered version)",
            "target": "report: every registered version keeps its model (the registry)",
            "data": data,
        },
    ]
    return {
        "runs": runs,
        "epochs": epochs,
        "walls_s": walls,
        "checkpoints_bytes": checkpoints,
        "artifacts_bytes": artifacts,
        "gc": gc.stdout,
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.disk", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    print(f"wrote {write_result('disk', run(args.runs, args.epochs))}")
    write_table()


if __name__ == "__main__":
    main()
