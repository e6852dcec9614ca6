"""Run the real finetune flow (Prefect + MLflow + registry) in a fresh process; collect metrics and timings.

Each pipeline runs in its own Python process (``python -m bench.pipeline CONFIG --set ...``) so that its wall
time includes everything a user waits for, and its peak RSS is its own. The MLflow store is a throw-away
SQLite database under the given directory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STAGES = (
    "timing/validate_s",
    "timing/fit_s",
    "timing/export_s",
    "timing/after_export_s",
    "timing/evaluate_s",
    "timing/register_s",
    "timing/promote_s",
)
PURE = ("timing/fit_s", "timing/after_export_s", "timing/evaluate_s")


def run_here(config: str, overrides: list[str], store: Path, early_boot: bool = True) -> dict[str, Any]:
    """Run the finetune flow in this process; returns metrics, stage timings and the wall-time split.

    ``early_boot``: start Prefect's temporary server while the libraries import, as ``tuneflow run`` does
    (off: Prefect starts it at the flow call, its own default; the overhead suite compares both).
    """
    import gc

    t0 = time.perf_counter()
    gc.disable()  # as `tuneflow run` does while the libraries import (tuneflow.cli._boot_prefect)
    from tuneflow.flows.api import Boot, boot

    prefect = boot() if early_boot else Boot()
    from mlflow import MlflowClient

    from tuneflow.flows.finetune import finetune
    from tuneflow.store import tracking

    gc.freeze()
    gc.enable()
    imports_s = time.perf_counter() - t0
    prefect.wait()
    boot_wait_s = time.perf_counter() - t0 - imports_s
    uri = f"sqlite:///{store}/mlflow.db"
    overrides = [*overrides, f"tracking.tracking_uri={uri}", f"output_dir={store}/checkpoints"]
    # The store exists before the flow, as for every run after a project's first: creating a fresh SQLite
    # store's tables (MLflow's migrations, seconds) is a one-time cost, reported apart.
    t_store = time.perf_counter()
    tracking.configure(uri)
    MlflowClient().search_experiments(max_results=1)
    store_init_s = time.perf_counter() - t_store
    flow_start = time.time()
    t1 = time.perf_counter()
    result = finetune(config, overrides)
    flow_s = time.perf_counter() - t1 + boot_wait_s
    tracking.configure(uri)
    run = MlflowClient().get_run(result.run_id)
    metrics = dict(run.data.metrics)
    stages = {k: metrics.get(k, 0.0) for k in STAGES}
    # From calling the flow to the MLflow parent run's creation (its first task): Prefect's start-up, plus
    # the wait for a temporary server still booting when the imports were done.
    prefect_start_s = run.info.start_time / 1000 - flow_start + boot_wait_s
    # Model work a hand-written script does too: training, fitting the temperature and out-of-scope
    # threshold on validation (a forward pass), evaluation. The rest is the pipeline's overhead.
    pure = sum(stages[k] for k in PURE)
    return {
        "config": config,
        "overrides": overrides,
        "run_id": result.run_id,
        "metrics": {k: v for k, v in metrics.items() if k not in STAGES},  # the stage times are in "wall"
        "registered": asdict(result.model) if result.model else None,
        "promoted": bool(result.promotion and result.promotion.promote),
        "wall": {
            "imports_s": imports_s,
            "prefect_boot_wait_s": boot_wait_s,
            "mlflow_store_init_s": store_init_s,
            "flow_s": flow_s,
            "prefect_start_s": prefect_start_s,
            **stages,
            "training_and_evaluation_s": pure,
            "other_s": flow_s - prefect_start_s - sum(stages.values()),
            "overhead_share": (flow_s - pure) / flow_s,
        },
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_pipeline(
    config: str | Path,
    overrides: list[str],
    store: Path,
    env: dict[str, str] | None = None,
    early_boot: bool = True,
    root: Path = ROOT,
) -> dict[str, Any]:
    """Run the flow in a fresh process (``env``: extra variables; ``root``: the checkout whose code runs);
    adds ``process_s`` (start to exit)."""
    store.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "bench.pipeline", str(config), "--store", str(store)]
    cmd += [] if early_boot else ["--no-early-boot"]
    for item in overrides:
        cmd += ["--set", item]
    # Output goes to files, not pipes: a grandchild that outlives the run (a Prefect server left behind)
    # would hold a pipe open and block the reader long after the run's own process has exited.
    with tempfile.TemporaryFile("w+") as out_f, tempfile.TemporaryFile("w+") as err_f:
        start = time.perf_counter()
        proc = subprocess.run(
            cmd, cwd=root, stdout=out_f, stderr=err_f, text=True, env={**os.environ, **(env or {})}
        )
        process_s = time.perf_counter() - start
        out_f.seek(0)
        err_f.seek(0)
        stdout, stderr = out_f.read(), err_f.read()
    lines = [line for line in stdout.splitlines() if line.startswith("PIPELINE ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"pipeline {config} failed (exit {proc.returncode}):\n{stderr[-4000:]}")
    out = json.loads(lines[-1][len("PIPELINE ") :])
    out["wall"]["process_s"] = process_s
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Run one finetune flow and print its measurements as JSON.")
    parser.add_argument("config")
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--no-early-boot", action="store_true", help="Prefect starts its server at the call")
    args = parser.parse_args()
    out = run_here(args.config, args.overrides, args.store, early_boot=not args.no_early_boot)
    print("PIPELINE " + json.dumps(out, default=str))


if __name__ == "__main__":
    main()
