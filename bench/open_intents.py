"""Open intent detection: recognising questions about intents the model was never taught.

``python -m bench open_intents``: the protocol of Shu et al. (2017) / Lin & Xu (2019) as the ADB paper
(Zhang et al., AAAI 2021) runs it, through the real pipeline. For BANKING77 and CLINC150's 150 in-scope
intents (its own ``oos`` class stays out), a share of the intents (25 / 50 / 75 %) is drawn at random
(seeds 0, 1, 2) as *known*. A folder is written the way a user would bring the data: train (and
CLINC150's validation) with known intents only, test with known intents only, and ``oos_test.csv`` holding
the test questions of every other intent. ``tuneflow init``'s drafting (``draft_config``) makes the config,
the finetune flow trains, fits the fallback and registers the model; then the *registered* model answers
every test question as it would when served. No unknown-intent text is read before that last step (the
flow reads ``oos_test`` only to report ``oos/recall`` after the threshold is fixed).

Metrics (the ADB paper's): accuracy over N+1 classes (the unknown ones are one "open" class), macro F1
over N+1, F1 of the open class, macro F1 over the known classes; and the flow's wall time. Rows give the
median over the seeds beside the published figures (BERT-base, 110M; the models here: MiniLM-L6, 22.7M).

``--variants`` also scores every out-of-scope method x threshold rule on the same model (from features
cached per cell): what the method registry was chosen by. Cells are cached under ``--keep`` so a run can
be resumed or extended (``--seeds 1 2`` adds seeds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.common import keep_earlier, measured_on, write_result, write_table
from bench.pipeline import run_pipeline

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
DATASETS = ("banking77", "clinc150")
RATIOS = (0.25, 0.5, 0.75)
OPEN = "unknown"  # the fallback label tuneflow's drafted config answers
# Published, BERT-base: accuracy / macro F1 over N+1 classes.
ADB = {  # Zhang et al., AAAI 2021 (Adaptive Decision Boundary), as filed in issue 47
    ("banking77", 0.25): (78.85, 71.62),
    ("banking77", 0.5): (78.86, 80.90),
    ("banking77", 0.75): (81.08, 85.96),
    ("clinc150", 0.25): (87.59, 77.19),
    ("clinc150", 0.5): (86.54, 85.05),
    ("clinc150", 0.75): (86.32, 88.53),
}
METRIC_LEARNING = {  # metric learning + adaptive boundary, accuracy (issue 47's target row)
    ("banking77", 0.25): 85.71,
    ("banking77", 0.5): 83.78,
    ("banking77", 0.75): 84.40,
    ("clinc150", 0.25): 91.81,
    ("clinc150", 0.5): 88.81,
    ("clinc150", 0.75): 88.54,
}


def _read(dataset: str) -> dict[str, pd.DataFrame]:
    """The data set's splits as (text, label) frames."""
    folder = DATA / dataset
    label = "category" if dataset == "banking77" else "intent"
    splits = {"train": "train.csv", "test": "test.csv"}
    if (folder / "validation.csv").is_file():
        splits["validation"] = "validation.csv"
    return {
        split: pd.read_csv(folder / name)[["text", label]].rename(columns={label: "label"})
        for split, name in splits.items()
    }


def known_intents(labels: list[str], ratio: float, seed: int) -> list[str]:
    """The known intents of one draw: ``ratio`` of the sorted labels, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(sorted(labels), size=round(ratio * len(labels)), replace=False)
    return sorted(str(c) for c in chosen)


def write_folder(dataset: str, ratio: float, seed: int, folder: Path) -> dict[str, Any]:
    """The data folder a user would bring: known intents in train/validation/test, the unknown intents'
    test questions in ``oos_test.csv``."""
    splits = _read(dataset)
    known = known_intents(splits["train"]["label"].unique().tolist(), ratio, seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, frame in splits.items():
        frame[frame["label"].isin(known)].to_csv(folder / f"{split}.csv", index=False)
    test = splits["test"]
    test[~test["label"].isin(known)].assign(label=OPEN).to_csv(folder / "oos_test.csv", index=False)
    return {"known": known, "n_classes": int(splits["train"]["label"].nunique())}


def open_metrics(truth: list[str], answer: list[str], known: list[str]) -> dict[str, float]:
    """Accuracy and macro F1 over the known classes + the open one, F1 of the open class, F1 of the known
    classes (their mean), in percent."""
    from sklearn.metrics import f1_score

    labels = [*known, OPEN]
    f1 = f1_score(truth, answer, labels=labels, average=None, zero_division=0)
    return {
        "accuracy": 100 * float(np.mean(np.asarray(truth) == np.asarray(answer))),
        "macro_f1": 100 * float(f1.mean()),
        "f1_open": 100 * float(f1[-1]),
        "f1_known": 100 * float(f1[:-1].mean()),
    }


def cell_name(dataset: str, ratio: float, seed: int) -> str:
    """A draw's name: its results' key and its cache folder under ``--keep``."""
    return f"{dataset}-{round(100 * ratio)}-{seed}"


def run_cell(dataset: str, ratio: float, seed: int, keep: Path, overrides: list[str]) -> dict[str, Any]:
    """One draw through init's drafting + the finetune flow; the registered model scored as served."""
    cell = keep / cell_name(dataset, ratio, seed)
    done = cell / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    from tuneflow.tasktypes.draft import draft_config

    meta = write_folder(dataset, ratio, seed, cell / "data")
    cfg, draft = draft_config(cell / "data")
    config = cell / "config.yaml"
    config.write_text(draft.to_yaml(f"drafted for the open-intent bench: {cell.name}"))
    print(f"open_intents: {cell.name}: {len(meta['known'])} known intents; pipeline", flush=True)
    pipeline = run_pipeline(config, overrides, cell / "store")
    answers = served_answers(pipeline, cell)
    truth = answers["truth"].tolist()
    result = {
        "dataset": dataset,
        "ratio": ratio,
        "seed": seed,
        "known": meta["known"],
        "overrides": overrides,
        "config": {k: v for k, v in draft.raw.items() if k in ("model", "train", "oos")},
        "served": {
            **open_metrics(truth, answers["label"].tolist(), meta["known"]),
            "closed_accuracy": 100 * float(answers["closed_correct"][answers["truth"] != OPEN].mean()),
        },
        "flow_metrics": {k: v for k, v in pipeline["metrics"].items() if k.startswith(("oos/", "test/"))},
        "wall_min": pipeline["wall"]["flow_s"] / 60,
        "peak_rss_mb": pipeline["peak_rss_mb"],
    }
    done.write_text(json.dumps(result, indent=2))
    return result


def served_answers(pipeline: dict[str, Any], cell: Path) -> pd.DataFrame:
    """The registered model's answer to every test question (known + unknown) as served, and whether its
    top label (no fallback) is right; caches logits and every feature kind for ``--variants``."""
    import mlflow

    from tuneflow.fitting.export import load_predictor
    from tuneflow.tasktypes.classification_predictor import FEATURE_KINDS

    model = pipeline["registered"]
    mlflow.set_tracking_uri(f"sqlite:///{cell / 'store'}/mlflow.db")
    local = Path(
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model['name']}/{model['version']}")
    )
    predictor = load_predictor(local / "artifacts" / "export")
    test = pd.concat(
        [pd.read_csv(cell / "data" / "test.csv"), pd.read_csv(cell / "data" / "oos_test.csv")],
        ignore_index=True,
    )
    texts = test["text"].astype(str).tolist()
    out = predictor.predict(texts, 256)
    closed = predictor.labels_of(texts, 256)
    # The splits as the flow read them (BANKING77's validation is held out of train by the flow).
    from tuneflow.tasktypes.resolve import load_config

    cfg = load_config(cell / "config.yaml", [])
    splits = cfg.kind.data.load_splits(cfg.data, cfg.train.seed)
    sets = {
        "train": splits.train,
        "validation": splits.validation,
        "test": splits.test,
        "oos_test": pd.read_csv(cell / "data" / "oos_test.csv"),
    }
    features: dict[str, np.ndarray] = {}
    for split, frame in sets.items():
        logits, kinds = predictor.forward_kinds(frame["text"].astype(str).tolist(), 256, FEATURE_KINDS)
        features[f"{split}/logits"] = logits
        features[f"{split}/y"] = np.asarray(frame["label"].astype(str), dtype=str)
        features.update({f"{split}/{k}": v for k, v in kinds.items()})
    # The pre-trained encoder's embeddings: a rule that was tried reads them (--variants)
    encode = base_encoder(cfg)
    features.update({f"{split}/base": encode(sets[split]["text"].astype(str).tolist()) for split in sets})
    np.savez_compressed(cell / "features.npz", labels=np.asarray(predictor.labels), **features)
    return pd.DataFrame(
        {"truth": test["label"], "label": out["label"], "closed_correct": np.asarray(closed) == test["label"]}
    )


def base_encoder(cfg: Any, batch_size: int = 128) -> Any:
    """A function embedding texts with the *pre-trained* model (``model.name``, before fine-tuning): the mean
    of its last hidden states over the real tokens, as sentence-transformers models embed a sentence."""
    import torch
    from transformers import AutoModel

    from tuneflow.backbone.pooling import mean_pool
    from tuneflow.backbone.pretrained import load_model, load_tokenizer, quiet_load_report

    with quiet_load_report():
        model = load_model("the pre-trained model", AutoModel, cfg.model.name).eval()
    tokenizer = load_tokenizer(cfg.model.name)

    def encode(texts: list[str]) -> np.ndarray:
        order = np.argsort([len(t) for t in texts])
        out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                idx = order[start : start + batch_size]
                enc = tokenizer(
                    [texts[i] for i in idx],
                    truncation=True,
                    max_length=cfg.model.max_length,
                    padding=True,
                    return_tensors="pt",
                )
                out[idx] = mean_pool(model(**enc).last_hidden_state, enc["attention_mask"]).float().numpy()
        return out

    return encode


def summary(results: list[dict[str, Any]]) -> dict[tuple[str, float], dict[str, float]]:
    """Median over seeds of each served metric, per (dataset, ratio)."""
    cells: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in results:
        cells.setdefault((r["dataset"], r["ratio"]), []).append(r)
    out = {}
    for key, rs in sorted(cells.items()):
        metrics = ("accuracy", "macro_f1", "f1_open", "f1_known", "closed_accuracy")
        out[key] = {m: statistics.median(r["served"][m] for r in rs) for m in metrics}
        out[key]["wall_min"] = statistics.median(r["wall_min"] for r in rs)
        out[key]["seeds"] = sorted(r["seed"] for r in rs)
    return out


def rows_for(results: list[dict[str, Any]]) -> list[dict[str, str]]:
    rows = []
    for (dataset, ratio), m in summary(results).items():
        acc_target, f1_adb = METRIC_LEARNING[(dataset, ratio)], ADB[(dataset, ratio)][1]
        met = m["accuracy"] >= acc_target and m["macro_f1"] >= f1_adb
        rows.append(
            {
                "what": f"open intents, {dataset} {round(100 * ratio)}% known, MiniLM-L6 as served "
                f"(median of seeds {', '.join(map(str, m['seeds']))})",
                "result": f"acc {m['accuracy']:.2f}, macro F1 {m['macro_f1']:.2f}, "
                f"F1 open {m['f1_open']:.2f}, "
                f"F1 known {m['f1_known']:.2f}; closed-set acc on known {m['closed_accuracy']:.2f}; "
                f"flow {m['wall_min']:.1f} min" + (" (met)" if met else " (not met)"),
                "target": f"acc >= {acc_target} (metric learning + ADB), macro F1 >= {f1_adb} (ADB); "
                f"BERT-base ADB acc {ADB[(dataset, ratio)][0]}",
                "data": "known intents drawn at random; train/val known only; test = all test questions, "
                "unknown ones as one open class; config drafted by tuneflow init",
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench open_intents", description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--ratios", nargs="+", type=float, default=list(RATIOS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--keep", type=Path, default=Path("/tmp/tuneflow-open-intents"), help="cell cache")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--variants", action="store_true", help="also score every method x rule per cell")
    parser.add_argument(
        "--cached-only", action="store_true", help="results from the cells --keep holds; train none"
    )
    args = parser.parse_args(argv)
    results = []
    for seed in args.seeds:  # every cell of a seed before the next seed: a cut-short run has all cells
        for dataset in args.datasets:
            for ratio in args.ratios:
                cell = args.keep / cell_name(dataset, ratio, seed)
                if args.cached_only and not (cell / "result.json").is_file():
                    continue
                start = time.perf_counter()
                r = run_cell(dataset, ratio, seed, args.keep, args.set)
                s = r["served"]
                print(
                    f"  {dataset} {ratio:.0%} seed {seed}: acc {s['accuracy']:.2f} "
                    f"macro F1 {s['macro_f1']:.2f} "
                    f"open F1 {s['f1_open']:.2f} ({time.perf_counter() - start:.0f} s)",
                    flush=True,
                )
                if args.variants:
                    from bench.open_intents_variants import score_variants

                    r["variants"] = score_variants(cell, r)
                results.append(r)
    if not results:
        print(f"no cell of these draws under {args.keep}: nothing written", flush=True)
        return
    key = "cell"
    for r in results:
        r[key] = cell_name(r["dataset"], r["ratio"], r["seed"])
    kept = keep_earlier("open_intents", results, key)
    everything = kept + results
    from bench.open_intents_variants import variant_rows

    rows = rows_for(everything) + variant_rows(everything)
    for r in kept:
        r.update(measured_on(r))
    print(f"wrote {write_result('open_intents', {'results': everything, 'rows': rows})}", flush=True)
    write_table()


if __name__ == "__main__":
    main()
