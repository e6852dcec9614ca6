"""Machine facts recorded with every benchmark result, and the RESULTS.md table writer."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
TABLE = Path(__file__).resolve().parent / "RESULTS.md"
HISTORY = Path(__file__).resolve().parent / "HISTORY.md"
PACKAGES = ("torch", "lightning", "transformers", "optuna", "optuna-integration", "mlflow", "prefect")


def machine_info() -> dict[str, Any]:
    import torch

    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu": _cpu(),
        "packages": {p: _version(p) for p in PACKAGES},
    }


def _cpu() -> str:
    """The CPU model and whether it computes bf16 natively: throughput rows from different machines of the
    same core count differ 2-3x (AMX bf16 vs AVX2 fp32), so every result says which one it ran on."""
    from tuneflow.fitting.training import cpu_has_native_bf16

    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
    return f"{names[0] if names else 'unknown CPU'}, {'bf16' if cpu_has_native_bf16(text) else 'no bf16'}"


def _version(package: str) -> str | None:
    # A GPU machine runs the training suites without the tracking/orchestration packages installed.
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def write_result(suite: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{suite}.json"
    path.write_text(json.dumps({"suite": suite, "machine": machine_info(), **payload}, indent=2, default=str))
    return path


ANCHORS = Path(__file__).resolve().parent / "ANCHORS.md"


def keep_earlier(suite: str, fresh: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """The results of ``suite``'s committed JSON that ``fresh`` does not replace (matched on ``key``): suites
    run part by part keep the other parts. Each kept result carries the machine and date it was measured on
    (``machine``), which its rows show in RESULTS.md instead of the newer run's."""
    path = RESULTS / f"{suite}.json"
    if not path.exists():
        return []
    earlier = json.loads(path.read_text())
    replaced = {r[key] for r in fresh}
    kept = [r for r in earlier["results"] if r[key] not in replaced]
    return [{"machine": earlier["machine"], **r} for r in kept]


def measured_on(result: dict[str, Any]) -> dict[str, Any]:
    """A row's ``machine`` entry for a result kept by :func:`keep_earlier` (nothing for a fresh one)."""
    return {"machine": result["machine"]} if "machine" in result else {}


def write_table() -> Path:
    """Regenerate RESULTS.md from every committed result's ``rows`` (one markdown row per entry)."""
    lines = [
        "# Benchmark results",
        "",
        "Generated from `bench/results/*.json` (`python -m bench.<suite>` rewrites its JSON and this table).",
        "Each JSON also holds per-trial details (state, value, epochs, params, duration) and machine facts.",
        "",
        "| suite | what | result | target | data / budget | machine | date |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for path in sorted(RESULTS.glob("*.json")):
        result = json.loads(path.read_text())
        for row in result.get("rows", []):
            m = row.get("machine") or result["machine"]  # a row kept from an earlier run: its own machine
            machine = (
                f"{m['cpu_count']} cores, {m['torch_threads']} torch threads"
                + (f", {m['cpu']}" if m.get("cpu") else "")
                + (f", {m['gpu']}" if m["gpu"] else "")
            )
            lines.append(
                f"| {result['suite']} | {row['what']} | {row['result']} | {row['target']} | {row['data']} | "
                f"{machine} | {m['date'][:10]} |"
            )
    if ANCHORS.is_file():  # the published figures the quality rows are compared with, and their sources
        lines += ["", ANCHORS.read_text().rstrip()]
    if HISTORY.is_file():  # what each suite measured over time and what was tried (the docs keep the present)
        lines += ["", HISTORY.read_text().rstrip()]
    TABLE.write_text("\n".join(lines) + "\n")
    return TABLE


def run_arm(module: str, arm: str, args: Any, keys: tuple[str, ...]) -> tuple[dict[str, Any], str]:
    """Run one benchmark arm in its own process (``python -m MODULE --arm ARM --KEY VALUE ...``); returns the
    JSON it printed on its ``ARM `` line and its whole stdout."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", module, "--arm", arm]
    for key in keys:
        cmd += [f"--{key}", str(getattr(args, key))]
    proc = subprocess.run(cmd, cwd=RESULTS.parent.parent, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("ARM ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{module} arm {arm} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][4:]), proc.stdout
