"""A load test of the registered model as MLflow serves it: ``mlflow models serve`` on 127.0.0.1, a bounded
number of concurrent clients for a bounded time, and malformed requests mixed into the valid ones.

``python -m bench.serve_load [--model-uri models:/NAME@champion --tracking-uri URI] [--clients 1 4 8]
[--seconds 20]``: without ``--model-uri`` the demo config is fine-tuned first (search off) into a temporary
store and its champion is served. For each client count: requests/s, p50/p95/p99 latency of the valid
requests, errors among them (target: 0), and what the malformed ones got (target: every one a 400, the valid
ones around them unaffected). Each client keeps one HTTP connection and sends one utterance per request, as a
chatbot front end does.
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
import threading
import time
import urllib.request
from pathlib import Path

from bench.common import write_result, write_table

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "data" / "chatbot_intents"
MALFORMED_EVERY = 10  # one request in ten from the first client is malformed
# Two kinds of bad request a client can send: a body that is not JSON, and a text that is not a string.
MALFORMED = [b'{"inputs": ["where is my parcel"', json.dumps({"inputs": [42]}).encode()]


def _texts() -> list[str]:
    with open(DEMO / "test.csv", newline="") as fh:
        return [r["text"] for r in csv.DictReader(fh)]


def _register_demo(store: Path) -> tuple[str, str]:
    """Fine-tune the demo (no search) into ``store``; the champion's URI and the store's URI."""
    uri = f"sqlite:///{store}/mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "tuneflow.cli", "run", str(ROOT / "configs" / "demo.yaml")]
    cmd += ["--set", "search.enabled=false", "--set", f"output_dir={store}/checkpoints"]
    subprocess.run(cmd, check=True, env=env, cwd=store, stdout=subprocess.DEVNULL)
    return "models:/chatbot-intents@champion", uri


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(
    model_uri: str, tracking_uri: str, workers: int, cwd: Path, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {
        **os.environ,
        **(extra_env or {}),
        "MLFLOW_TRACKING_URI": tracking_uri,
        # MLflow starts uvicorn by name: this environment's scripts must be on PATH.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    log = open(cwd / "serve.log", "w")  # noqa: SIM115  (closed with the process)
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while True:
        try:
            urllib.request.urlopen(f"{base}/ping", timeout=2).close()
            return proc, base
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                log = (cwd / "serve.log").read_text()[-2000:]
                raise RuntimeError(f"`mlflow models serve` did not start: {log}") from None
            time.sleep(0.5)


def _client(base: str, texts: list[str], offset: int, until: float, malformed: bool, out: dict) -> None:
    """One client: one connection, one request at a time until ``until``."""
    import http.client

    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    headers = {"Content-Type": "application/json"}
    n = 0
    while time.perf_counter() < until:
        n += 1
        bad = malformed and n % MALFORMED_EVERY == 0
        body = (
            MALFORMED[(n // MALFORMED_EVERY) % 2]
            if bad
            else json.dumps({"inputs": [texts[(offset + n) % len(texts)]]}).encode()
        )
        start = time.perf_counter()
        try:
            conn.request("POST", "/invocations", body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            status = response.status
        except OSError as exc:
            status, payload = None, str(exc).encode()
            conn.close()
            conn = http.client.HTTPConnection(host, int(port), timeout=60)
        elapsed = time.perf_counter() - start
        if bad:
            out["malformed"].append(status)
        elif status == 200 and json.loads(payload)["predictions"][0].get("label"):
            out["latencies"].append(elapsed)
        else:
            out["errors"].append(f"{status}: {payload[:200]!r}")
    conn.close()


def load(base: str, clients: int, seconds: float, texts: list[str]) -> dict:
    """``clients`` concurrent clients for ``seconds`` against a scoring server: requests/s, p50/p95/p99."""
    out: dict[str, list] = {"latencies": [], "errors": [], "malformed": []}
    _client(base, texts, 0, time.perf_counter() + 2, False, {"latencies": [], "errors": [], "malformed": []})
    until = time.perf_counter() + seconds
    threads = [
        threading.Thread(target=_client, args=(base, texts, 97 * i, until, i == 0, out))
        for i in range(clients)
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat = sorted(out["latencies"])
    q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else [lat[0] * 1000] * 99
    return {
        "clients": clients,
        "seconds": round(wall, 2),
        "requests": len(lat),
        "requests_per_s": round(len(lat) / wall, 1),
        "p50_ms": round(q[49] * 1000, 1),
        "p95_ms": round(q[94] * 1000, 1),
        "p99_ms": round(q[98] * 1000, 1),
        "errors": len(out["errors"]),
        "error_examples": out["errors"][:3],
        "malformed_sent": len(out["malformed"]),
        "malformed_status": sorted({str(s) for s in out["malformed"]}),
    }


def run(
    model_uri: str | None, tracking_uri: str | None, clients: list[int], seconds: float, workers: int
) -> dict:
    texts = _texts()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if model_uri is None:
            print("fine-tuning the demo (search off) to have a registered model ...", flush=True)
            model_uri, tracking_uri = _register_demo(work)
        tracking_uri = tracking_uri or os.environ.get(
            "MLFLOW_TRACKING_URI", f"sqlite:///{ROOT}/mlruns/mlflow.db"
        )
        proc, base = serve(model_uri, tracking_uri, workers, work)  # cwd: outside the checkout
        try:
            levels = [load(base, c, seconds, texts) for c in clients]
        finally:
            proc.terminate()
            proc.wait(30)
    rows = []
    for r in levels:
        print(json.dumps(r), flush=True)
        malformed_ok = r["malformed_sent"] > 0 and r["malformed_status"] == ["400"]
        rows.append(
            {
                "what": f"served model under load: {r['clients']} client(s)",
                "result": (
                    f"{r['requests_per_s']} req/s; p50 {r['p50_ms']} / p95 {r['p95_ms']} / "
                    f"p99 {r['p99_ms']} ms; {r['errors']} errors in {r['requests']} valid requests; "
                    f"{r['malformed_sent']} malformed: "
                    f"{'all 400' if malformed_ok else ', '.join(r['malformed_status'])}"
                ),
                "target": "0 errors; every malformed request a 400",
                "data": (
                    f"`mlflow models serve` ({workers} worker) of {model_uri}, one utterance per request, "
                    f"{seconds:g} s per level, clients on the same machine"
                ),
            }
        )
    return {"model_uri": model_uri, "workers": workers, "levels": levels, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serve_load", description=__doc__.split("\n")[0])
    parser.add_argument("--model-uri", help="a registered model (default: fine-tune the demo first)")
    parser.add_argument("--tracking-uri", help="the store --model-uri is in (default: MLFLOW_TRACKING_URI)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers of the scoring server")
    args = parser.parse_args()
    payload = run(args.model_uri, args.tracking_uri, args.clients, args.seconds, args.workers)
    print(f"wrote {write_result('serve_load', payload)}")
    write_table()


if __name__ == "__main__":
    main()
