"""Pruned vs unpruned Optuna search at the same trial budget: best validation score and epochs consumed.

Data: SST-2 from ../shared/data (a stratified 1,200-phrase subsample of train, 25% of it held out as
validation), fine-tuning the bundled all-MiniLM-L6-v2. Both arms use the same seeded TPE sampler, space,
trial count, per-trial epoch cap and early stopping; only the pruner differs. Runs the library's
``run_study`` (trials are real Lightning fits logged to a throw-away MLflow store).

Usage: ``python -m bench.search_pruning [--trials 12] [--epochs 4] [--train 1200]`` (about 20 min on 2 cores)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.common import write_result, write_table

ROOT = Path(__file__).resolve().parent.parent
SPACE = (
    "search.space={train.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}, "
    "train.batch_size: {type: categorical, choices: [16, 32]}, "
    "model.dropout: {type: float, low: 0.0, high: 0.3}, "
    "train.weight_decay: {type: float, low: 0.0, high: 0.1}}"
)


def run_arm(pruner: str, args: argparse.Namespace, tmp: Path) -> dict:
    import optuna

    from tuneflow import tracking
    from tuneflow.config import load_config
    from tuneflow.search import EPOCHS_ATTR, open_study, run_study

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
        f"search.n_trials={args.trials}",
        "search.sampler=tpe",
        f"search.pruner={pruner}",
        f"search.startup_trials={args.startup}",
        f"search.warmup_epochs={args.warmup}",
        f"search.storage=sqlite:///{tmp}/optuna.db",
        f"tracking.tracking_uri=sqlite:///{tmp}/mlflow.db",
        SPACE,
    ]
    cfg = load_config(ROOT / "configs" / "sst2.yaml", overrides)
    tracking.configure(cfg.tracking.tracking_uri)
    parent = tracking.start_run(cfg.experiment_name, f"bench-{pruner}")
    start = time.perf_counter()
    summary = run_study(cfg, parent, tmp / f"work-{pruner}")
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
        "best_val_accuracy": summary.best_value,
        "best_params": summary.best_params,
        "epochs_total": summary.epochs_total,
        "complete": summary.n_complete,
        "pruned": summary.n_pruned,
        "failed": summary.n_failed,
        "wall_s": wall,
        "trials": trials,
        "optuna": optuna.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train", type=int, default=1200, help="train phrases, 25%% of them as validation")
    parser.add_argument("--startup", type=int, default=2, help="trials never pruned (pruner reference)")
    parser.add_argument("--warmup", type=int, default=0, help="epochs of a trial never pruned")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        arms = [run_arm(p, args, Path(tmp)) for p in ("none", "median")]
    unpruned, pruned = arms
    gap = (unpruned["best_val_accuracy"] - pruned["best_val_accuracy"]) * 100
    share = pruned["epochs_total"] / unpruned["epochs_total"]
    data = (
        f"SST-2, {args.train} train phrases (25% of them as validation), {args.trials} trials x <= "
        f"{args.epochs} epochs, median pruner: {args.startup} startup trials, {args.warmup} warmup epochs"
    )
    rows = [
        {
            "what": "median pruner vs none: best val accuracy",
            "result": f"{pruned['best_val_accuracy']:.4f} vs {unpruned['best_val_accuracy']:.4f} "
            f"({gap:+.2f} pt behind)",
            "target": "within 0.5 pt",
            "data": data,
        },
        {
            "what": "median pruner vs none: training epochs",
            "result": f"{pruned['epochs_total']} vs {unpruned['epochs_total']} ({share:.0%}); "
            f"{pruned['pruned']} of {args.trials} trials pruned",
            "target": "<= 50%",
            "data": data,
        },
    ]
    path = write_result(
        "search_pruning",
        {
            "args": vars(args),
            "points_behind": gap,
            "epoch_share": share,
            "meets_target": gap <= 0.5 and share <= 0.5,
            "arms": arms,
            "rows": rows,
        },
    )
    write_table()
    print(f"wrote {path}")
    for row in rows:
        print(f"{row['what']}: {row['result']} (target {row['target']})")


if __name__ == "__main__":
    main()
