"""Few-shot mode against today's fine-tuning on the same few examples per class.

``python -m bench fewshot [--data banking77 clinc150 sst2] [--shots 10] [--seeds 0 1 2 3 4]``: for each data
set, number of train examples per class and seed, a folder is written the way a user with that little data
would bring it (``k`` texts per class drawn at random from the official train split; the official test
split, CLINC150's in-scope part and SST-2's dev set; no validation file: the flow holds out part of the
``k`` as it would for that user). ``tuneflow init``'s drafting makes the config; the arms (``--arms``;
default finetune and fewshot) run the real finetune flow on it:

- ``finetune``: the drafted config with ``fewshot.enabled: false`` (today's fine-tuning without the pair
  phase: since 2026-12-07 the draft gives the bundled model its mean-pooled head at every size);
- ``cls``: the same with ``model.pooling: cls``, the [CLS] head that drafts had before (BANKING77's first
  10-shot ``finetune`` cells were drafted before ``init`` gave intent-like data mean pooling: they are this
  arm, relabelled; CLINC150's were already mean-pooled and reran to the same figures);
- ``fewshot``: the drafted config with ``fewshot.enabled: true`` and ``model.pooling: mean`` (since
  2026-12-07 its contrastive phase is the supervised contrastive loss, ``fewshot.loss: supcon``);
- ``pairs``: the same with ``fewshot.loss: pairs``, SetFit's cosine pairs (the ``fewshot`` cells measured
  before supcon became the default are this arm, relabelled);
- ``fullrate``: ``fewshot`` with ``fewshot.finetune_lr_scale: 1``, the fine-tune after the phases at
  ``train.lr`` itself (the default until 2026-12-08).

Reported: test accuracy (the registered model's top label, no fallback), median over the draws, beside the
published 10-shot figures (Casanueva et al. 2020, "Efficient Intent Detection with Dual Sentence Encoders":
USE+ConveRT, their best). Cells are cached under ``--keep``; a rerun adds what is missing.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import pandas as pd

from bench.common import keep_earlier, machine_info, write_result, write_table
from bench.pipeline import run_pipeline

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
SHOTS = {"banking77": (5, 10, 30), "clinc150": (5, 10, 30), "sst2": (8, 16, 64)}
# Accuracy at 10 examples per intent, USE+ConveRT (Casanueva et al. 2020, Table 3): the bar.
PUBLISHED = {("banking77", 10): 85.19, ("clinc150", 10): 93.26}
ARMS = {
    "finetune": ["fewshot.enabled=false"],
    "cls": ["fewshot.enabled=false", "model.pooling=cls"],
    "fewshot": ["fewshot.enabled=true", "model.pooling=mean"],
    "pairs": ["fewshot.enabled=true", "model.pooling=mean", "fewshot.loss=pairs"],
    "fullrate": ["fewshot.enabled=true", "model.pooling=mean", "fewshot.finetune_lr_scale=1"],
}


def read_splits(dataset: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The data set's official train and test splits as (text, label) frames (SST-2: dev is the test)."""
    folder = DATA / dataset
    if dataset == "sst2":
        train, test = (pd.read_csv(folder / f, sep="\t") for f in ("train.tsv", "dev.tsv"))
        column = "label"
        names = {0: "negative", 1: "positive"}
        train, test = (
            f.assign(label=f[column].map(names)).rename(columns={"sentence": "text"}) for f in (train, test)
        )
    else:
        column = "category" if dataset == "banking77" else "intent"
        train, test = (
            pd.read_csv(folder / f).rename(columns={column: "label"}) for f in ("train.csv", "test.csv")
        )
    return train[["text", "label"]], test[["text", "label"]]


def write_folder(dataset: str, shots: int, seed: int, folder: Path) -> dict[str, Any]:
    """``shots`` train texts per class, drawn with ``seed``; the official test split."""
    train, test = read_splits(dataset)
    drawn = train.groupby("label", group_keys=False).sample(n=shots, random_state=seed)
    folder.mkdir(parents=True, exist_ok=True)
    drawn.sample(frac=1.0, random_state=seed).to_csv(folder / "train.csv", index=False)
    test.to_csv(folder / "test.csv", index=False)
    return {"train": len(drawn), "classes": int(drawn["label"].nunique()), "test": len(test)}


def cell_name(dataset: str, shots: int, seed: int, arm: str) -> str:
    return f"{dataset}-{shots}shot-{seed}-{arm}"


def run_cell(dataset: str, shots: int, seed: int, arm: str, keep: Path) -> dict[str, Any]:
    """One draw and arm through init's drafting + the finetune flow (cached under ``keep``)."""
    cell = keep / cell_name(dataset, shots, seed, arm)
    done = cell / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    from tuneflow.tasktypes.draft import draft_config

    meta = write_folder(dataset, shots, seed, cell / "data")
    _, draft = draft_config(cell / "data")
    config = cell / "config.yaml"
    config.write_text(draft.to_yaml(f"drafted for the few-shot bench: {cell.name}"))
    print(f"fewshot: {cell.name}: {meta['train']} train texts, {meta['classes']} classes", flush=True)
    pipeline = run_pipeline(config, ARMS[arm], cell / "store")
    m = pipeline["metrics"]
    result = {
        "cell": cell.name,
        "dataset": dataset,
        "shots": shots,
        "seed": seed,
        "arm": arm,
        **meta,
        "config": {k: v for k, v in draft.raw.items() if k in ("model", "train")},
        "test_accuracy": 100 * m["test/accuracy"],
        "test_f1_macro": 100 * m.get("test/f1_macro", float("nan")),
        "fewshot": {k: v for k, v in m.items() if k.startswith("fewshot/")},
        "epochs": m.get("fit/epochs_trained"),
        "wall_min": pipeline["wall"]["flow_s"] / 60,
        "peak_rss_mb": pipeline["peak_rss_mb"],
    }
    done.write_text(json.dumps(result, indent=2))
    print(
        f"fewshot: {cell.name}: test accuracy {result['test_accuracy']:.2f}, {result['wall_min']:.1f} min",
        flush=True,
    )
    return result


def machines(results: list[dict[str, Any]]) -> str:
    """Where a row's draws ran, when not all on one CPU (the machine column shows the latest run's)."""
    here = None
    seeds: dict[str, set[int]] = {}
    for r in results:
        cpu = r.get("machine", {}).get("cpu")
        if cpu is None:
            here = here or machine_info()["cpu"]
            cpu = here
        seeds.setdefault(cpu, set()).add(r["seed"])
    if len(seeds) < 2:
        return ""
    return "; draws " + " and ".join(
        f"{', '.join(map(str, sorted(s)))} on {cpu}" for cpu, s in sorted(seeds.items())
    )


def kept_machine(results: list[dict[str, Any]]) -> dict[str, Any]:
    """A row whose draws all come from earlier runs shows their machine (the latest), not this run's."""
    if not results or any("machine" not in r for r in results):
        return {}
    return {"machine": max((r["machine"] for r in results), key=lambda m: m["date"])}


def rows_for(results: list[dict[str, Any]]) -> list[dict[str, str]]:
    """One row per data set and shot count: medians of both arms, the gain, the published figure."""
    rows = []
    cells = sorted({(r["dataset"], r["shots"]) for r in results})
    for dataset, shots in cells:
        by = {
            arm: [r for r in results if (r["dataset"], r["shots"], r["arm"]) == (dataset, shots, arm)]
            for arm in ARMS
        }
        if not (by["finetune"] and by["fewshot"]):
            continue
        med = {arm: statistics.median(r["test_accuracy"] for r in rs) for arm, rs in by.items() if rs}
        wall = {arm: statistics.median(r["wall_min"] for r in rs) for arm, rs in by.items() if rs}
        cls = f"; [CLS] head {med['cls']:.2f}" if "cls" in med else ""
        cls += f"; SetFit's pairs {med['pairs']:.2f}" if "pairs" in med else ""
        cls += f"; fine-tune at full train.lr {med['fullrate']:.2f}" if "fullrate" in med else ""
        published = PUBLISHED.get((dataset, shots))
        cells = [r for rs in by.values() for r in rs]
        rows.append(
            {
                "what": f"few-shot mode vs fine-tuning, {dataset} {shots} per class: test accuracy (median)",
                "result": f"fewshot {med['fewshot']:.2f} vs finetune {med['finetune']:.2f} "
                f"({med['fewshot'] - med['finetune']:+.2f} pt; "
                f"{wall['fewshot']:.1f} vs {wall['finetune']:.1f} min{cls})",
                "target": ">= 5 pt above fine-tuning"
                + (f" and >= {published} (USE+ConveRT, Casanueva et al. 2020)" if published else ""),
                "data": f"{dataset}: {shots} train texts per class drawn per seed "
                f"({', '.join(str(r['seed']) for r in by['fewshot'])}), official test split; drafted config "
                "(tuneflow init), bundled MiniLM-L6" + machines(cells),
                **kept_machine(cells),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench fewshot", description=__doc__.split("\n")[0])
    parser.add_argument("--data", nargs="+", choices=list(SHOTS), default=list(SHOTS))
    parser.add_argument("--shots", nargs="+", type=int, help="per class (default: each data set's three)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=["finetune", "fewshot"])
    parser.add_argument("--keep", type=Path, default=Path("/tmp/tuneflow-fewshot"), help="cell cache")
    args = parser.parse_args(argv)
    results = []
    for dataset in args.data:
        for shots in args.shots or SHOTS[dataset]:
            for seed in args.seeds:
                for arm in args.arms:
                    results.append(run_cell(dataset, shots, seed, arm, args.keep))
    results += keep_earlier("fewshot", results, "cell")  # earlier cells not rerun this time stay
    payload = {"results": results, "rows": rows_for(results)}
    print(f"wrote {write_result('fewshot', payload)} and {write_table()}")


if __name__ == "__main__":
    main()
