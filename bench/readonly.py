"""How fast the read-only commands answer (target: `tuneflow status` <= 3 s on an idle machine).

``python -m bench.readonly [--repeats N]``: builds a throw-away MLflow store holding one registered model with
a champion, a finished run with metrics and a retraining decision, then times whole `tuneflow --help`,
`tuneflow status`, `tuneflow status MODEL` and `tuneflow adapters` processes N times each (median). Each
process must also leave torch and lightning unimported (checked through ``-X importtime``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import write_result, write_table

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "lightning", "transformers")


def _store(tmp: Path) -> str:
    """A store with what `status` reads: a champion version, its run's metrics and a retrain decision."""
    from tuneflow.store import registered, tracking

    uri = tracking.configure(f"sqlite:///{tmp}/mlruns/mlflow.db")
    run_id = tracking.start_run(
        "bench-status", run_name="bench", tags={tracking.TAG_DATA_FP: "0123456789abcdef"}
    )
    metrics = {"test/accuracy": 0.9, "test/f1_macro": 0.88, "serving/latency_p95_ms": 12.0}
    tracking.log_metrics(run_id, metrics)
    model_dir = tmp / "model"
    model_dir.mkdir()
    (model_dir / "MLmodel").write_text("flavors: {}\n")
    tracking.log_artifacts(run_id, model_dir, "model")
    tracking.end_run(run_id)
    version = registered.register_model(
        f"runs:/{run_id}/model", "bench-status", run_id, {tracking.TAG_DATA_FP: "0123456789abcdef"}
    )
    registered.set_alias("bench-status", "champion", version)
    check = tracking.start_run(
        "bench-status",
        run_name="retrain-check",
        tags={
            tracking.TAG_STAGE: "retrain",
            "tuneflow.registered_model": "bench-status",
            "tuneflow.retrain.decision": "skip",
            "tuneflow.retrain.reason": "data unchanged",
        },
    )
    tracking.end_run(check)
    return uri


def run(repeats: int) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    results, rows = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        uri = _store(Path(tmp))
        commands = {
            "tuneflow --help": ["--help"],
            "tuneflow status": ["status", "--tracking-uri", uri],
            "tuneflow status MODEL": ["status", "bench-status", "--tracking-uri", uri],
            "tuneflow adapters": ["adapters", "--tracking-uri", uri],
        }
        for name, args in commands.items():
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                proc = subprocess.run(
                    [sys.executable, "-X", "importtime", "-m", "tuneflow.cli", *args],
                    capture_output=True,
                    text=True,
                    env=env,
                    cwd=ROOT,
                )
                times.append(time.perf_counter() - start)
                assert proc.returncode == 0, proc.stdout + proc.stderr
                imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
                heavy = sorted(m for m in HEAVY if m in imported)
                assert not heavy, f"{name} imported {heavy}"
            median = statistics.median(times)
            results[name] = {"seconds": times, "median_s": median}
            print(f"{name}: median {median:.2f} s over {repeats}", flush=True)
            target = "<= 3 s" if name.startswith("tuneflow status") else "fast (no torch/lightning import)"
            rows.append(
                {
                    "what": f"read-only command: {name}",
                    "result": f"{median:.2f} s median (runs {', '.join(f'{t:.2f}' for t in times)}); "
                    "no torch/lightning import",
                    "target": target,
                    "data": "whole process, local SQLite store with one registered model, idle machine",
                }
            )
    return {"commands": results, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.readonly", description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"wrote {write_result('readonly', run(args.repeats))}")
    write_table()


if __name__ == "__main__":
    main()
