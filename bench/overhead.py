"""Orchestration overhead: a pipeline run's wall time against its pure training + evaluation time.

Measured on real ``finetune`` flows: the quality suite's runs (the latest of ``bench/results/quality*.json``
for each run) and one run of the demo config without search (short: the overhead share is largest there).
Overhead = flow wall time minus the model work a hand-written script does too: ``fit``, fitting the
temperature and out-of-scope threshold on validation after export (a forward pass; runs measured before it
was timed count it as overhead) and evaluation. It is broken down into Prefect start-up (flow call to the
first task's MLflow run), validation, model export, MLflow model logging + registration, promotion, and the
rest (MLflow param/metric/artifact logging, reading and tokenizing the data for training, task bookkeeping).
Interpreter + import time is reported apart (it is paid once per process, whatever the orchestration).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import RESULTS
from bench.pipeline import ROOT, run_pipeline


def row(name: str, run: dict[str, Any], data: str) -> dict[str, str]:
    # Results written before metric names had sections call the stage timings time_*_s.
    w = {f"system/{k}" if k.startswith("time_") else k: v for k, v in run["wall"].items()}
    overhead = w["flow_s"] - w["training_and_evaluation_s"]
    parts = [
        ("Prefect start-up", w["prefect_start_s"]),
        ("validation", w["system/time_validate_s"]),
        ("export", w["system/time_export_s"]),
        ("MLflow model log + register", w["system/time_register_s"]),
        ("promotion", w["system/time_promote_s"]),
        ("other logging/bookkeeping", w["other_s"]),
    ]
    detail = ", ".join(f"{k} {v:.1f} s" for k, v in parts)
    # Runs measured before the calibration step was timed count it in "other".
    work = "fit+calibration+eval" if "system/time_after_export_s" in w else "fit+eval"
    return {
        "what": f"orchestration overhead, {name}",
        "result": f"{100 * w['overhead_share']:.1f}% ({overhead:.1f} s of {w['flow_s']:.0f} s flow; {work} "
        f"{w['training_and_evaluation_s']:.0f} s): {detail}; imports {w['imports_s']:.1f} s"
        + (f"; whole process {w['process_s']:.1f} s" if "process_s" in w else "")
        + (
            f"; MLflow store existing (creating a fresh one took {w['mlflow_store_init_s']:.1f} s, once)"
            if "mlflow_store_init_s" in w
            else "; fresh MLflow store created in the flow"
        ),
        # A short run pays the same fixed costs over less training: the demo gets the looser target.
        "target": "<= 10%" if name.startswith("demo") else "<= 2%",
        "data": data,
    }


@contextlib.contextmanager
def prefect_server(home: Path, port: int = 4291) -> Iterator[str]:
    """A Prefect server of its own (own PREFECT_HOME, so no user database is touched); yields its API URL."""
    import httpx

    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        else:
            raise RuntimeError("the bench's Prefect server did not start in 120 s")
        yield api
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def quality_runs() -> dict[str, tuple[dict[str, Any], str]]:
    """Each quality run's latest measurement and its date: ``quality.json``, replaced run by run by newer
    partial reruns (``python -m bench quality --only NAME`` writes ``quality-<names>.json``)."""
    latest: dict[str, tuple[dict[str, Any], str]] = {}
    for path in sorted(RESULTS.glob("quality*.json")):
        result = json.loads(path.read_text())
        date = result["machine"]["date"]
        for name, run_ in result.get("runs", {}).items():
            if "wall" in run_ and (name not in latest or date > latest[name][1]):
                latest[name] = (run_, date)
    return latest


def run(quick: bool = False, banking77: bool = False) -> dict[str, Any]:
    """Rows for the latest quality runs, then the demo three ways; ``banking77``: also the BANKING77 flow
    through a running Prefect server (~8 min)."""
    rows, runs = [], {}
    for name, (result, date) in quality_runs().items():
        rows.append(row(name, result, f"the quality suite's run of {date[:10]} (see its row)"))
    with tempfile.TemporaryDirectory() as tmp:
        overrides = ["search.enabled=false", "train.max_epochs=3"]
        print("overhead: demo without search", flush=True)
        demo = run_pipeline(ROOT / "configs" / "demo.yaml", overrides, Path(tmp) / "demo")
        runs["demo"] = demo
        rows.append(row("demo (no search)", demo, "chatbot intents (550 utterances), 3 epochs"))
        print(f"  {rows[-1]['result']}", flush=True)
        print("overhead: demo without search, temporary server started at the flow call", flush=True)
        late = run_pipeline(ROOT / "configs" / "demo.yaml", overrides, Path(tmp) / "late", early_boot=False)
        runs["demo_late_boot"] = late
        data = "as above, Prefect's temporary server started at the flow call (its default), not in imports"
        rows.append(row("demo (no search), server booted at the flow call", late, data))
        print(f"  {rows[-1]['result']}", flush=True)
        print("overhead: demo without search, reusing a running Prefect server", flush=True)
        with prefect_server(Path(tmp) / "prefect-home") as api:
            reused = run_pipeline(
                ROOT / "configs" / "demo.yaml", overrides, Path(tmp) / "reused", {"PREFECT_API_URL": api}
            )
        runs["demo_server"] = reused
        data = "as above, PREFECT_API_URL = a running `prefect server start` (what `tuneflow server` runs)"
        rows.append(row("demo (no search), running Prefect server", reused, data))
        print(f"  {rows[-1]['result']}", flush=True)
        if banking77:
            print("overhead: banking77, reusing a running Prefect server", flush=True)
            with prefect_server(Path(tmp) / "prefect-home-b77") as api:
                served = run_pipeline(
                    ROOT / "configs" / "banking77.yaml", [], Path(tmp) / "b77", {"PREFECT_API_URL": api}
                )
            runs["banking77_server"] = served
            data = "configs/banking77.yaml as in the quality suite; PREFECT_API_URL = a running server"
            rows.append(row("banking77, running Prefect server", served, data))
            print(f"  {rows[-1]['result']}", flush=True)
    return {"quick": quick, "runs": runs, "rows": rows}
