"""Pruned vs unpruned Optuna search at the same trial budget: best validation score and epochs consumed.

Data: SST-2 from ../shared/data (a stratified 1,200-phrase subsample of train, 25% of it held out as
validation), fine-tuning the bundled all-MiniLM-L6-v2. Both arms use the same seeded TPE sampler, space,
trial count, per-trial epoch cap and early stopping; only the pruner differs. Runs the library's
``run_study`` (trials are real Lightning fits logged to a throw-away MLflow store).

Usage: ``python -m bench.search_pruning [--seed 42] [--trials 12] [--epochs 4] [--train 1200] [--evals 4]``
(about 20 min on 2 cores per seed; each seed's pair merges into the result, which reports medians over seeds;
``--evals N`` validates and reports N times per trial epoch).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, write_result, write_table

ROOT = Path(__file__).resolve().parent.parent
SPACE = (
    "search.space={train.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}, "
    "train.batch_size: {type: categorical, choices: [16, 32]}, "
    "model.dropout: {type: float, low: 0.0, high: 0.3}, "
    "train.weight_decay: {type: float, low: 0.0, high: 0.1}}"
)


def run_arm(pruner: str, args: argparse.Namespace, tmp: Path) -> dict:
    import optuna

    from tuneflow.fitting.search import EPOCHS_ATTR, open_study, run_study
    from tuneflow.store import tracking
    from tuneflow.tasktypes.resolve import load_config

    overrides = [
        f"name=bench-search-{pruner}",
        f"data.max_train_examples={args.train}",
        "data.validation_size=0.25",
        "data.extra_eval=[]",
        "model.max_length=64",
        f"train.max_epochs={args.epochs}",
        "train.early_stopping_patience=2",
        "train.monitor=val_accuracy",
        "train.log_every_n_steps=50",
        f"train.seed={args.seed}",
        f"search.n_trials={args.trials}",
        "search.sampler=tpe",
        f"search.pruner={pruner}",
        f"search.startup_trials={args.startup}",
        f"search.warmup_epochs={args.warmup}",
        f"search.evals_per_epoch={args.evals}",
        f"search.storage=sqlite:///{tmp}/optuna.db",
        f"tracking.tracking_uri=sqlite:///{tmp}/mlflow.db",
        SPACE,
    ]
    cfg = load_config(ROOT / "configs" / "sst2.yaml", overrides)
    tracking.configure(cfg.tracking.tracking_uri)
    parent = tracking.start_run(cfg.experiment_name, f"bench-{pruner}")
    start = time.perf_counter()
    recorder = tracking.RunRecorder(cfg.tracking.tracking_uri, cfg.experiment_name, parent)
    summary = run_study(cfg, recorder, tmp / f"work-{pruner}")
    wall = time.perf_counter() - start
    trials = [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "epochs": t.user_attrs.get(EPOCHS_ATTR),
            "params": t.params,
            "duration_s": t.duration.total_seconds() if t.duration else None,
        }
        for t in open_study(cfg).trials
    ]
    return {
        "pruner": pruner,
        "val/best_accuracy": summary.best_value,
        "best_params": summary.best_params,
        "epochs_total": summary.epochs_total,
        "complete": summary.n_complete,
        "pruned": summary.n_pruned,
        "failed": summary.n_failed,
        "wall_s": wall,
        "trials": trials,
        "optuna": optuna.__version__,
    }


PRUNERS = ("none", "median", "successive_halving", "hyperband")


def suite_name(args: argparse.Namespace) -> str:
    """One result file per trial count, data size and epoch budget (seeds and arms of one setup merge)."""
    evals = f"-{args.evals}evals" if args.evals > 1 else ""
    return f"search_pruning-{args.trials}t-{args.train}x{args.epochs}ep{evals}"


def arm_key(pruner: str, warmup: int) -> str:
    """An arm's name in the result: the pruner, and its warmup when it has one (the unpruned arm has none,
    so one ``none`` run per seed serves every pruner setting)."""
    return pruner if pruner == "none" or not warmup else f"{pruner}+warmup{warmup}"


def _load_runs(args: argparse.Namespace) -> dict[str, dict[str, dict]]:
    """``{seed: {arm: result}}`` of earlier invocations with the same setup (seeds and arms merge)."""
    path = RESULTS / f"{suite_name(args)}.json"
    if not path.exists():
        return {}
    old = json.loads(path.read_text())
    setup = ("trials", "epochs", "train", "startup", "evals")
    old.setdefault("args", {}).setdefault("evals", 1)  # results written before --evals
    if any(old.get("args", {}).get(k) != getattr(args, k) for k in setup):
        return {}
    warmup = old["args"].get("warmup", 0)  # results written before arms were keyed by their warmup
    runs = {}
    for seed, arms in old.get("runs", {}).items():
        arms = {a["pruner"]: a for a in arms} if isinstance(arms, list) else arms
        arms = [{"warmup": 0 if a["pruner"] == "none" else warmup, **a} for a in arms.values()]
        runs[seed] = {arm_key(a["pruner"], a["warmup"]): a for a in arms}
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train", type=int, default=1200, help="train phrases, 25%% of them as validation")
    parser.add_argument("--startup", type=int, default=2, help="median pruner: trials never pruned")
    parser.add_argument("--warmup", type=int, default=0, help="epochs of a trial never pruned")
    parser.add_argument("--seed", type=int, default=42, help="sampler/training seed; results merge per seed")
    parser.add_argument("--evals", type=int, default=1, help="validations (pruning reports) per trial epoch")
    parser.add_argument("--arms", nargs="*", choices=PRUNERS, default=["none", "median"], help="pruners")
    args = parser.parse_args()
    runs = _load_runs(args)
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        for pruner in args.arms:
            arm = {**run_arm(pruner, args, Path(tmp)), "warmup": 0 if pruner == "none" else args.warmup}
            runs.setdefault(str(args.seed), {})[arm_key(pruner, arm["warmup"])] = arm
    rows, summary = [], {}
    keys = sorted({key for arms in runs.values() for key in arms if key != "none"})
    for pruner in keys:
        pairs = {s: arms for s, arms in sorted(runs.items()) if "none" in arms and pruner in arms}
        if not pairs:
            continue
        warmup = next(iter(pairs.values()))[pruner]["warmup"]
        per_seed = {
            s: {
                "points_behind": (a["none"]["val/best_accuracy"] - a[pruner]["val/best_accuracy"]) * 100,
                "epoch_share": a[pruner]["epochs_total"] / a["none"]["epochs_total"],
                "detail": f"seed {s}: {a[pruner]['val/best_accuracy']:.4f} vs "
                f"{a['none']['val/best_accuracy']:.4f}, {a[pruner]['epochs_total']:g} vs "
                f"{a['none']['epochs_total']:g} epochs, "
                f"{a[pruner]['pruned']}/{args.trials} pruned",
            }
            for s, a in pairs.items()
        }
        behind = statistics.median(r["points_behind"] for r in per_seed.values())
        share = statistics.median(r["epoch_share"] for r in per_seed.values())
        summary[pruner] = {
            "median_points_behind": behind,
            "median_epoch_share": share,
            "meets_target": behind <= 0.5 and share <= 0.5,
            "per_seed": per_seed,
        }
        rows.append(
            {
                "what": f"{pruner} pruner vs none (same TPE seed and budget)",
                "result": f"median over {len(per_seed)} seed(s): best val accuracy {behind:+.2f} pt behind, "
                f"{share:.0%} of the epochs ({'; '.join(r['detail'] for r in per_seed.values())})",
                "target": "within 0.5 pt, <= 50% of epochs",
                "data": f"SST-2, {args.train} train phrases (25% = {args.train // 4} as validation), "
                f"{args.trials} trials x <= {args.epochs} epochs, early stopping (patience 2) in both arms, "
                f"pruning warmup {warmup} epoch(s), {args.evals} validation(s) per epoch"
                + (f", {args.startup} startup trials" if pruner.startswith("median") else ""),
            }
        )
    payload = {"args": vars(args), "summary": summary, "runs": runs, "rows": rows}
    path = write_result(suite_name(args), payload)
    write_table()
    print(f"wrote {path}")
    for row in rows:
        print(f"{row['what']}: {row['result']} (target {row['target']})")


if __name__ == "__main__":
    main()
