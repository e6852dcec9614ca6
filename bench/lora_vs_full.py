"""LoRA vs full fine-tuning of all-MiniLM-L6-v2 on BANKING77: accuracy, speed, peak memory, artifact size.

Both arms train the same model on the same stratified subsample of train for the same fixed number of
epochs (early stopping cannot end either sooner) with the library's ``fit`` / ``export_model`` / predictor
(the code the flow runs), then score the full official test split (3,080 queries). Each arm runs in its
own process, so its peak RSS is its own; arms alternate (full, lora, full, lora, ...), medians reported.

- samples/s = training examples x epochs / wall time of ``fit`` (validation passes included, the same for
  both arms), the way HF's ``speed_metrics`` counts ``train_samples_per_second``.
- artifact = the weights file a deployment of this fine-tuning must ship: ``model.safetensors`` (full) vs
  ``adapter_model.safetensors`` (LoRA adapter + the 77-way head; the base is shared).

Usage: ``python -m bench.lora_vs_full [--train 4000] [--epochs 3] [--repeats 2]`` (~15 min on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import write_result, write_table

ROOT = Path(__file__).resolve().parent.parent
ARMS = {
    "full": ["train.lr=1.5e-4"],
    # LoRA wants a higher learning rate: only the low-rank updates and the head move.
    "lora": ["train.lr=1.0e-3", "model.lora={r: 16, alpha: 32, dropout: 0.05, target_modules: all-linear}"],
}


def run_arm(arm: str, args: argparse.Namespace, work: Path) -> dict:
    """One arm, in this process: fit, export, evaluate on test; returns its measurements."""
    from tuneflow.data.readers import LABEL
    from tuneflow.fitting.export import export_model, load_predictor, weights_bytes
    from tuneflow.fitting.model import load_tokenizer
    from tuneflow.fitting.training import fit
    from tuneflow.judging.metrics import classification_metrics
    from tuneflow.tasktypes.resolve import load_config

    overrides = [
        f"data.max_train_examples={args.train}",
        f"train.max_epochs={args.epochs}",
        f"train.min_epochs={args.epochs}",
        f"train.early_stopping_patience={args.epochs}",
        "train.torch_threads=2",
        *ARMS[arm],
    ]
    cfg = load_config(ROOT / "configs" / "banking77.yaml", overrides)
    kind = cfg.kind
    splits = kind.data.load_splits(cfg.data, cfg.train.seed)
    data = kind.training.encode(splits, load_tokenizer(cfg.model.name), cfg)
    # Libraries, data and tokenizer are loaded: what the peak adds on top of this is the training's own cost.
    rss_before_fit = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    result = fit(cfg, data, work / "ckpt", progress_bar=False)
    fit_s = time.perf_counter() - start
    peak_fit = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    export = export_model(result.best_checkpoint, work / "export", data.tokenizer, cfg)
    predictor = load_predictor(export)
    pred = predictor.predict(splits.test["text"].tolist())["label"].tolist()
    metrics = classification_metrics(splits.test[LABEL].tolist(), pred)
    return {
        "arm": arm,
        "test/accuracy": metrics["accuracy"],
        "test/f1_macro": metrics["f1_macro"],
        "train_examples": len(data.train),
        "epochs": result.epochs,
        "fit_seconds": fit_s,
        "samples_per_second": len(data.train) * result.epochs / fit_s,
        "model/params_trainable": result.params_trainable,
        "model/params_total": result.params_total,
        "artifact_bytes": weights_bytes(export),
        "checkpoint_bytes": Path(result.best_checkpoint).stat().st_size,
        "rss_before_fit_mb": rss_before_fit,
        "peak_rss_mb": peak_fit,
        "peak_rss_mb_with_eval": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=4000, help="stratified train subsample")
    parser.add_argument("--epochs", type=int, default=3, help="fixed epochs per arm")
    parser.add_argument("--repeats", type=int, default=2, help="alternating (full, lora) pairs")
    parser.add_argument("--arm", help=argparse.SUPPRESS)  # internal: run one arm and print its JSON
    args = parser.parse_args()
    if args.arm:
        with tempfile.TemporaryDirectory() as tmp:
            print("RESULT " + json.dumps(run_arm(args.arm, args, Path(tmp))))
        return
    runs = []
    for i in range(args.repeats):
        for arm in ARMS:
            cmd = [sys.executable, "-m", "bench.lora_vs_full", "--arm", arm]
            cmd += ["--train", str(args.train), "--epochs", str(args.epochs)]
            out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
            run = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
            run["repeat"] = i
            runs.append(run)
            print(
                f"{arm} #{i}: acc {run['test/accuracy']:.4f}, {run['samples_per_second']:.1f} samples/s, "
                f"peak RSS {run['peak_rss_mb']:.0f} MB (before fit {run['rss_before_fit_mb']:.0f}), "
                f"artifact {run['artifact_bytes'] / 1e6:.2f} MB"
            )

    def med(arm: str, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["arm"] == arm)

    full, lora = (lambda k: med("full", k)), (lambda k: med("lora", k))
    speed_ratios = [
        lo["samples_per_second"] / fu["samples_per_second"]
        for fu, lo in zip(
            [r for r in runs if r["arm"] == "full"], [r for r in runs if r["arm"] == "lora"], strict=True
        )
    ]
    data = f"BANKING77, {args.train} train x {args.epochs} epochs, full test (3,080); MiniLM-L6"
    rows = [
        {
            "what": "LoRA vs full: test accuracy (median)",
            "result": f"LoRA {lora('test/accuracy'):.4f} vs full {full('test/accuracy'):.4f} "
            f"({100 * (lora('test/accuracy') - full('test/accuracy')):+.1f} pt)",
            "target": "report",
            "data": data,
        },
        {
            "what": "LoRA vs full: training samples/s (median; per-pair ratios)",
            "result": f"LoRA {lora('samples_per_second'):.1f} vs full {full('samples_per_second'):.1f} "
            f"(x{statistics.median(speed_ratios):.2f}; pairs {', '.join(f'{r:.2f}' for r in speed_ratios)})",
            "target": "report",
            "data": data,
        },
        {
            "what": "LoRA vs full: peak RSS during fit (median), and its growth over the loaded process",
            "result": f"LoRA {lora('peak_rss_mb'):.0f} MB vs full {full('peak_rss_mb'):.0f} MB (+"
            f"{lora('peak_rss_mb') - lora('rss_before_fit_mb'):.0f} vs +"
            f"{full('peak_rss_mb') - full('rss_before_fit_mb'):.0f} MB over libraries + data)",
            "target": "report",
            "data": data,
        },
        {
            "what": "LoRA vs full: weights to ship per fine-tuning",
            "result": f"LoRA {lora('artifact_bytes') / 1e6:.2f} MB vs full "
            f"{full('artifact_bytes') / 1e6:.1f} MB "
            f"(trainable {lora('model/params_trainable') / lora('model/params_total'):.1%} of params)",
            "target": "report",
            "data": data,
        },
    ]
    path = write_result("lora_vs_full", {"args": vars(args), "runs": runs, "rows": rows})
    write_table()
    print(f"wrote {path} and bench/RESULTS.md")


if __name__ == "__main__":
    main()
