"""int8 serving (``export.quantize: int8``) vs fp32, on the same fine-tuned weights, through the registered
model as ``mlflow models serve`` serves it.

``python -m bench.quantize [--datasets banking77 clinc150] [--seconds 15] [--quick]``: per dataset, one
``finetune`` flow (own process, ``export.quantize=int8``) trains, quantizes, scores and registers the int8
model; its fp32 twin is the same export without the graph, with its own temperature and out-of-scope
threshold refitted on fp32 (as a ``quantize: none`` run would have them), logged and registered beside it.
Then:

* accuracy on the test split for both (CLINC150: in-scope accuracy with the fallback and out-of-scope
  recall, each model with its own detector), with the same function the pipeline's evaluation uses;
* the four ways to run the model, predictor-level, one thread, single queries (p50 over 200 test queries,
  fastest of 3 per query) and test accuracy: PyTorch fp32, ``torch.ao`` dynamic int8, ONNX Runtime fp32 and
  ONNX Runtime int8 (what ``export.quantize: int8`` ships): the choice the docs explain;
* both registered models served by ``mlflow models serve`` (1 worker, ``OMP_NUM_THREADS=1``, so one
  thread), 1 and 4 clients sending one query per request, alternating rounds int8/fp32/fp32/int8: requests/s
  and p50/p95 (medians over the two rounds).

Target: served p50 >= 2x lower at <= 0.5 pt test-accuracy loss (CLINC150: in-scope accuracy and OOS recall
both within 0.5 pt). Writes ``bench/results/quantize.json`` and the RESULTS.md rows.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.common import keep_earlier, measured_on, write_result, write_table
from bench.pipeline import ROOT, run_pipeline

DATASETS: dict[str, tuple[Path, list[str]]] = {
    # 3 epochs (the config's 6 cost 5 more minutes): what is compared is one model's two formats.
    "banking77": (ROOT / "configs" / "banking77.yaml", ["train.max_epochs=3"]),
    "clinc150": (ROOT / "configs" / "clinc150.yaml", []),
}
QUICK = ["train.max_epochs=1"]
LATENCY_QUERIES = 200
CLIENTS = (1, 4)
TARGET = "served p50 >= 2x lower at <= 0.5 pt accuracy loss (CLINC150: in-scope acc and OOS recall)"


def _fp32_twin(int8_export: Path, twin: Path, cfg: Any, splits: Any) -> None:
    """The same weights served fp32: the export without its graph, calibrated and thresholded on fp32."""
    from tuneflow.fitting.export import META_FILE, load_predictor, read_meta
    from tuneflow.fitting.quantize import QUANTIZED_FILE

    shutil.copytree(int8_export, twin)
    (twin / QUANTIZED_FILE).unlink()
    meta = read_meta(twin)
    meta.pop("quantize"), meta.pop("model_dir")
    (twin / META_FILE).write_text(json.dumps(meta, indent=2))
    cfg.kind.serving.after_export(load_predictor(twin), twin, splits, cfg)


def _scores(predictor: Any, cfg: Any, splits: Any, out: Path) -> dict[str, float]:
    """Test accuracy (and out-of-scope metrics) as the pipeline's evaluation computes them."""

    metrics: dict[str, float] = {}
    out.mkdir(parents=True, exist_ok=True)
    cfg.kind.judging.evaluate_test(predictor, splits.test, out, cfg, metrics)
    keep = ("test/accuracy", "test/f1_macro", "oos/in_scope_accuracy", "oos/recall")
    return {k: metrics[k] for k in keep if k in metrics}


def _runtimes(
    twin: Path, int8_export: Path, cfg: Any, splits: Any, work: Path
) -> dict[str, dict[str, float]]:
    """PyTorch fp32, torch.ao int8, ONNX Runtime fp32 and int8: single-query p50 (1 thread), accuracy."""
    import warnings

    import torch

    from tuneflow.data.readers import LABEL, TEXT
    from tuneflow.fitting.export import load_exported, load_predictor
    from tuneflow.fitting.quantize import OnnxModel, write_onnx
    from tuneflow.judging.metrics import time_single

    kind = cfg.kind
    model, tokenizer, meta = load_exported(twin)
    graph = write_onnx(
        model, tokenizer, kind.serving.feature_head(model, meta), work / "fp32.onnx", int8=False
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated: that is part of the finding
        from torch.ao.quantization import quantize_dynamic

        torch_int8 = quantize_dynamic(load_exported(twin)[0], {torch.nn.Linear}, dtype=torch.qint8)
    arms = {
        "pytorch_fp32": kind.serving.predictor(model, tokenizer, meta),
        "torch_ao_int8": kind.serving.predictor(torch_int8, tokenizer, meta),
        "onnxruntime_fp32": kind.serving.predictor(OnnxModel(graph, int8=False), tokenizer, meta),
        "onnxruntime_int8": load_predictor(int8_export),
    }
    texts, truth = splits.test[TEXT].tolist(), splits.test[LABEL].tolist()
    out = {}
    for name, predictor in arms.items():
        # predict() on one query: what the pyfunc does per request (with the out-of-scope detector).
        latency = time_single(predictor.predict, texts, LATENCY_QUERIES)
        labels = predictor.labels_of(texts, cfg.train.eval_batch_size)
        out[name] = {
            "p50_ms": latency["serving/latency_p50_ms"],
            "p95_ms": latency["serving/latency_p95_ms"],
            "accuracy": sum(a == b for a, b in zip(labels, truth, strict=True)) / len(truth),
        }
        print(name, out[name], flush=True)
    return out


def _register_twin(twin: Path, name: str, tracking_uri: str) -> str:
    import mlflow

    from tuneflow.registry.packaging import log_model

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(f"{name}-fp32-twin")
    with mlflow.start_run() as run:
        run_id = run.info.run_id
    model_uri = log_model(run_id, twin, "sequence_classification")
    version = mlflow.register_model(model_uri, f"{name}-fp32")
    mlflow.MlflowClient().set_terminated(run_id)
    return f"models:/{name}-fp32/{version.version}"


def _served(uris: dict[str, str], tracking_uri: str, texts: list[str], seconds: float, work: Path) -> dict:
    """Alternating rounds (int8, fp32, fp32, int8): per arm and client count, medians of the rounds."""
    from bench.serve_load import load, serve

    rounds: dict[str, list[list[dict]]] = {arm: [] for arm in uris}
    for arm in ("int8", "fp32", "fp32", "int8"):
        proc, base = serve(uris[arm], tracking_uri, 1, work, {"OMP_NUM_THREADS": "1"})
        try:
            rounds[arm].append([load(base, c, seconds, texts) for c in CLIENTS])
        finally:
            proc.terminate()
            proc.wait(30)
        print(arm, json.dumps(rounds[arm][-1]), flush=True)
    out: dict[str, dict[str, Any]] = {}
    for arm, levels in rounds.items():
        out[arm] = {}
        for i, clients in enumerate(CLIENTS):
            runs = [level[i] for level in levels]
            summary = {
                k: statistics.median(r[k] for r in runs) for k in ("requests_per_s", "p50_ms", "p95_ms")
            }
            out[arm][str(clients)] = {**summary, "errors": sum(r["errors"] for r in runs), "rounds": runs}
    return out


def run_dataset(name: str, quick: bool, seconds: float, work: Path) -> dict[str, Any]:
    import mlflow

    from tuneflow.tasktypes.resolve import load_config

    config, overrides = DATASETS[name]
    overrides = [*overrides, "export.quantize=int8", *(QUICK if quick else [])]
    store = work / name
    done = store / "pipeline.json"  # --work: a store kept from an earlier invocation is measured again
    if done.exists():
        print(f"== {name}: the model registered in {store}", flush=True)
        pipeline = json.loads(done.read_text())
        shutil.rmtree(store / "int8", ignore_errors=True)
        shutil.rmtree(store / "fp32-export", ignore_errors=True)
    else:
        print(f"== {name}: fine-tuning with export.quantize=int8 ...", flush=True)
        pipeline = run_pipeline(config, overrides, store)
        done.write_text(json.dumps(pipeline))
    tracking_uri = f"sqlite:///{store}/mlflow.db"
    registered = pipeline["registered"]
    int8_uri = f"models:/{registered['name']}/{registered['version']}"
    mlflow.set_tracking_uri(tracking_uri)
    local = Path(mlflow.artifacts.download_artifacts(int8_uri, dst_path=str(store / "int8")))
    int8_export = local / "artifacts" / "export"
    cfg = load_config(config, overrides)

    splits = cfg.kind.data.load_splits(cfg.data, cfg.train.seed)
    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"behavior_checks": False})})
    twin = store / "fp32-export"
    _fp32_twin(int8_export, twin, cfg, splits)
    from tuneflow.fitting.export import load_predictor

    accuracy = {
        "int8": _scores(load_predictor(int8_export), cfg, splits, store / "eval-int8"),
        "fp32": _scores(load_predictor(twin), cfg, splits, store / "eval-fp32"),
    }
    print("accuracy", accuracy, flush=True)
    runtimes = _runtimes(twin, int8_export, cfg, splits, store)
    uris = {"int8": int8_uri, "fp32": _register_twin(twin, registered["name"], tracking_uri)}
    from tuneflow.data.readers import TEXT

    served = _served(uris, tracking_uri, splits.test[TEXT].tolist(), seconds, store)
    keys = (
        "quantization/loss",
        "quantization/fp32_accuracy",
        "test/accuracy",
        "quantization/latency_speedup",
    )
    return {
        "dataset": name,
        "overrides": overrides,
        "pipeline_metrics": {k: pipeline["metrics"].get(k) for k in keys},
        "accuracy": accuracy,
        "runtimes": runtimes,
        "served": served,
        "int8_mb": (int8_export / "model_int8.onnx").stat().st_size / 1e6,
        "fp32_mb": (int8_export / "model.safetensors").stat().st_size / 1e6,
    }


def _pct(scores: dict[str, float], key: str) -> str:
    return f"{100 * scores[key]:.2f}"


def _accuracy_text(a: dict[str, dict[str, float]]) -> str:
    """fp32 -> int8 for each score both arms have."""
    names = {"test/accuracy": "test accuracy", "oos/in_scope_accuracy": "in-scope accuracy"}
    names["oos/recall"] = "OOS recall"
    return ", ".join(
        f"{label} {_pct(a['fp32'], key)} -> {_pct(a['int8'], key)}"
        for key, label in names.items()
        if key in a["int8"]
    )


def _served_text(s: dict[str, Any]) -> str:
    one_8, one_32 = s["int8"]["1"], s["fp32"]["1"]

    def rate(arm: str, clients: int) -> str:
        return f"{s[arm][str(clients)]['requests_per_s']:.0f}"

    def who(clients: int) -> str:
        return f"{clients} client{'s' if clients > 1 else ''}"

    rps = ", ".join(f"{rate('fp32', c)} -> {rate('int8', c)} req/s ({who(c)})" for c in CLIENTS)
    return (
        f"p50 {one_32['p50_ms']:.1f} -> {one_8['p50_ms']:.1f} ms (x{one_32['p50_ms'] / one_8['p50_ms']:.2f} "
        f"lower), p95 {one_32['p95_ms']:.1f} -> {one_8['p95_ms']:.1f} ms, {rps}"
    )


def rows(results: list[dict[str, Any]], quick: bool, seconds: float) -> list[dict[str, str]]:
    out = []
    for r in results:
        data = (
            "`mlflow models serve` of both registered models, 1 worker, OMP_NUM_THREADS=1, one query per "
            f"request, {seconds:g} s per level, rounds int8/fp32/fp32/int8 (medians); {r['overrides']}"
        )
        weights = f"weights {r['fp32_mb']:.0f} -> {r['int8_mb']:.0f} MB"
        out.append(
            {
                "what": f"{r['dataset']}: served int8 (ONNX Runtime) vs fp32 (PyTorch), same weights",
                "result": f"{_served_text(r['served'])}; {_accuracy_text(r['accuracy'])}; {weights}",
                "target": TARGET,
                "data": data + ("; QUICK (1 epoch)" if quick else ""),
                **measured_on(r),
            }
        )
        arms = ", ".join(
            f"{name} {v['p50_ms']:.1f} ms / {100 * v['accuracy']:.2f}%" for name, v in r["runtimes"].items()
        )
        out.append(
            {
                "what": f"{r['dataset']}: the four ways to run the model (predictor, 1 thread)",
                "result": f"single-query p50 / test accuracy: {arms}",
                "target": "choose the runtime for export.quantize",
                "data": f"{LATENCY_QUERIES} test queries, fastest of 3 each, out-of-scope detector included",
                **measured_on(r),
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.quantize", description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="*", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--seconds", type=float, default=15, help="load per client level and round")
    parser.add_argument("--quick", action="store_true", help="1 epoch: checks the bench runs")
    parser.add_argument("--work", type=Path, help="keep the stores here; a dataset's store there is reused")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-quantize-") as tmp:
        work = args.work or Path(tmp)
        results = [run_dataset(d, args.quick, args.seconds, work) for d in args.datasets]
    suite = "quantize-quick" if args.quick else "quantize"
    kept = keep_earlier(suite, results, "dataset")  # datasets run in separate invocations
    results = sorted(kept + results, key=lambda r: list(DATASETS).index(r["dataset"]))
    payload = {"quick": args.quick, "results": results, "rows": rows(results, args.quick, args.seconds)}
    print(f"wrote {write_result(suite, payload)} and {write_table()}")


if __name__ == "__main__":
    main()
