"""How fast tuneflow reports bad input (targets: <= 5 s for data, <= 3 s for an unusable store or an
unknown registry entry, on an idle machine).

``python -m bench.failfast [--repeats N]``: each case is a real `tuneflow` process (`run` or `tune` on a
copy of the demo config with one defect; `promote` / `rollback` / `status` with a bad name or store), timed
from start to exit, N times; the median is reported. The exit code and the message are checked too, so a
case that stops failing (or fails later) shows up.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.common import write_result, write_table

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "data" / "chatbot_intents"


def _cases(tmp: Path) -> dict[str, tuple[list[str], int, str]]:
    with open(DEMO / "train.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    base = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    base["search"]["enabled"] = False
    base["data"] = {k: v for k, v in base["data"].items() if k not in ("validation", "test")}
    for key in ("oos_validation", "oos_test"):  # relative to configs/, and the copies live elsewhere
        base["data"][key] = str((ROOT / "configs" / base["data"][key]).resolve())

    def config(name: str, train: Path, **data: object) -> Path:
        cfg = json.loads(json.dumps(base))
        cfg["data"]["train"] = {"path": str(train)}
        cfg["data"].update(data)
        path = tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    semicolon = tmp / "semicolon.csv"
    semicolon.write_text("text;intent\n" + "".join(f"{r['text']};{r['intent']}\n" for r in rows))
    broken = tmp / "broken.jsonl"
    lines = [json.dumps({"text": r["text"], "intent": r["intent"]}) for r in rows]
    lines[100] = lines[100][:-5]
    broken.write_text("\n".join(lines) + "\n")
    headerless = tmp / "headerless.csv"
    headerless.write_text((DEMO / "train.csv").read_text().split("\n", 1)[1])
    unseen = tmp / "unseen_test.csv"
    with open(unseen, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "intent"])
        w.writerows([[r["text"], r["intent"]] for r in rows[:20]] + [["will it rain", "weather"]])

    def run_(path: Path, *extra: str) -> list[str]:
        return ["run", str(path), *extra]

    demo = config("demo", DEMO / "train.csv")
    closed = "postgresql+psycopg://tuner:secret@127.0.0.1:9/optuna"
    return {
        "';'-delimited CSV": (run_(config("semicolon", semicolon)), 3, "';'-delimited"),
        "broken JSONL line": (run_(config("broken", broken)), 3, "broken.jsonl:101"),
        "unseen label in test": (
            run_(config("unseen", DEMO / "train.csv", test={"path": str(unseen)})),
            3,
            "never seen in train",
        ),
        "data file that is a folder": (run_(config("folder", DEMO)), 3, "is a folder, not a file"),
        "CSV without a header line": (run_(config("headerless", headerless)), 3, "add a header line"),
        "batch larger than the training set": (
            run_(demo, "--set", "train.batch_size=1000000000"),
            3,
            "train.batch_size 1000000000 is larger than the training set",
        ),
        "max_length beyond the model's positions": (
            run_(demo, "--set", "model.max_length=4096"),
            4,
            "(512 positions)",
        ),
        "invalid config value": (run_(demo, "--set", "train.lr=-1"), 2, "train.lr"),
        "output folder under a file": (
            run_(demo, "--set", f"output_dir={semicolon}/checkpoints"),
            7,
            "output_dir:",
        ),
        "MLflow store that cannot be written": (
            run_(demo, "--set", "tracking.tracking_uri=sqlite:////proc/tuneflow/m.db"),
            7,
            "cannot write in /proc",
        ),
        "MLflow server not running": (
            run_(demo, "--set", "tracking.tracking_uri=http://127.0.0.1:9"),
            7,
            "did not answer",
        ),
        "Optuna storage on a closed port": (
            ["tune", str(demo), "--set", "search.enabled=true", "--set", f"search.storage={closed}"],
            7,
            "search.storage: cannot connect",
        ),
        "status on an unwritable store": (
            ["status", "m", "--tracking-uri", "sqlite:////proc/tuneflow/m.db"],
            7,
            "cannot write in /proc",
        ),
        "promote an unknown model": (
            ["promote", "no-such-model", "--version", "1"],
            2,
            "no registered model",
        ),
        "rollback an unknown model": (["rollback", "no-such-model"], 2, "no registered model"),
        "predict with a bare model name": (
            ["predict", "--model", "chatbot-intents", "hello"],
            2,
            "models:/chatbot-intents@champion",
        ),
        "predict with an unknown registered model": (
            ["predict", "--model", "models:/no-such-model@champion", "hello"],
            2,
            "no registered model",
        ),
    }


def run(repeats: int) -> dict:
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1"}
    results, rows = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlruns/mlflow.db"
        for name, (args, code, needle) in _cases(Path(tmp)).items():
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                proc = subprocess.run(
                    [sys.executable, "-m", "tuneflow.cli", *args],
                    capture_output=True,
                    text=True,
                    env=env,
                    cwd=ROOT,
                )
                times.append(time.perf_counter() - start)
                out = proc.stdout + proc.stderr
                assert proc.returncode == code and needle in out and "Traceback" not in out, out
            median = statistics.median(times)
            results[name] = {"seconds": times, "median_s": median, "exit": code}
            print(f"{name}: median {median:.2f} s over {repeats}", flush=True)
            rows.append(
                {
                    "what": f"time to report bad input: {name}",
                    "result": f"{median:.2f} s (exit {code}; runs {', '.join(f'{t:.2f}' for t in times)})",
                    # Stores and registry lookups have a tighter target than reading the data.
                    "target": "<= 3 s" if code == 7 or args[0] != "run" else "<= 5 s",
                    "data": f"`tuneflow {args[0]}` with one defect, whole process, idle machine",
                }
            )
    return {"cases": results, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.failfast", description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"wrote {write_result('failfast', run(args.repeats))}")
    write_table()


if __name__ == "__main__":
    main()
