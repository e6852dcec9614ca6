"""``python -m bench field``: the real CLI on every data set in ``../shared/data`` and on generated edge
shapes, as a new user runs it: ``tuneflow init DATA`` then ``tuneflow run CONFIG``, the drafted config
unedited.

Per row: the exit codes of both commands, wall time, time per stage, peak resident memory of the run, RSS at
the end of each epoch and its growth from epoch 2 to the last, and the headline test metric. What a row
cannot do as-is (a task type without an offline model, multi-label data) is recorded as the CLI answered,
not skipped. ``--quick`` trains one epoch per row (``--set train.max_epochs=1``; the slow test tier).

Writes bench/results/field.json (``field-quick.json`` with ``--quick``) and regenerates bench/RESULTS.md.
One run at a time: two torch processes on 2 cores slow each other 10-30x.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import keep_earlier, measured_on, write_result, write_table
from bench.watch import watch

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
CLASSIFICATION = ("sequence_classification", "token_classification")
RSS_TARGET_MB = {"causal_lm": 4096}  # chat LoRA; classification and NER 3 GB


def _write_csv(path: Path, rows: list[tuple[str, str]], header: tuple[str, str] = ("text", "label")) -> Path:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _csv_rows(path: Path, text: str, label: str) -> list[tuple[str, str]]:
    import csv

    with open(path, newline="") as fh:
        return [(r[text], r[label]) for r in csv.DictReader(fh)]


def _jsonl_head(src: Path, dest: Path, n: int) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    lines = [line for line in src.read_text().splitlines() if line.strip()]
    dest.write_text("\n".join(lines[:n]) + "\n")
    return dest


# --------------------------------------------------------------------------------------- data, as brought


def shared(name: str) -> Callable[[Path], Path]:
    return lambda tmp: SHARED / name


def sst2_subset(tmp: Path, n: int = 5000) -> Path:
    """SST-2's first ``n`` training phrases and the whole GLUE dev set (the time budget of a matrix)."""
    import csv

    folder = tmp / "sst2"
    folder.mkdir()
    for split, dest, limit in (("train", "train.tsv", n), ("dev", "test.tsv", None)):
        with open(SHARED / "sst2" / f"{split}.tsv", newline="") as fh:
            rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
        (folder / dest).write_text(
            "\n".join("\t".join(r) for r in rows[: (limit + 1) if limit else None]) + "\n"
        )
    return folder


def clinc150_subset(tmp: Path, per_intent: int = 40) -> Path:
    """CLINC150 with ``per_intent`` training queries per intent, its validation and test splits and its
    off-topic files (the fallback's threshold and recall)."""
    import shutil

    folder = tmp / "clinc150"
    folder.mkdir()
    rows = _csv_rows(SHARED / "clinc150" / "train.csv", "text", "intent")
    random.Random(0).shuffle(rows)
    kept, seen = [], {}
    for text, intent in rows:
        if seen.get(intent, 0) < per_intent:
            kept.append((text, intent))
            seen[intent] = seen.get(intent, 0) + 1
    _write_csv(folder / "train.csv", kept, ("text", "intent"))
    for name in ("validation.csv", "test.csv", "oos_validation.csv", "oos_test.csv"):
        shutil.copy(SHARED / "clinc150" / name, folder / name)
    return folder


def sgd_subset(tmp: Path, n: int = 120) -> Path:
    folder = tmp / "sgd_support"
    for split, count in (("train", n), ("validation", 40), ("test", 40)):
        _jsonl_head(SHARED / "sgd_support" / f"{split}.jsonl", folder / f"{split}.jsonl", count)
    return folder


def scitldr_subset(tmp: Path, n: int = 400) -> Path:
    folder = tmp / "scitldr"
    for split, count in (("train", n), ("dev", 100), ("test", 100)):
        _jsonl_head(SHARED / "scitldr" / f"{split}.jsonl", folder / f"{split}.jsonl", count)
    return folder


def _demo_texts() -> list[str]:
    return [t for t, _ in _csv_rows(ROOT / "data" / "chatbot_intents" / "train.csv", "text", "intent")]


def tiny_10x10(tmp: Path) -> Path:
    """10 classes x 10 rows: the smallest set a fine-tuning should still handle (or refuse clearly)."""
    rows = _csv_rows(ROOT / "data" / "chatbot_intents" / "train.csv", "text", "intent")
    by: dict[str, list[tuple[str, str]]] = {}
    for text, intent in rows:
        by.setdefault(intent, []).append((text, intent))
    return _write_csv(tmp / "tiny_10x10.csv", [r for group in by.values() for r in group[:10]])


def skewed_95(tmp: Path) -> Path:
    """One class 95 % of 1,000 rows; four others share the rest."""
    rng, texts = random.Random(0), _demo_texts()
    rows = [(rng.choice(texts), "billing") for _ in range(950)]
    rows += [(f"{rng.choice(texts)} please", f"other_{i % 4}") for i in range(50)]
    rng.shuffle(rows)
    return _write_csv(tmp / "skewed_95.csv", rows)


def long_2000(tmp: Path) -> Path:
    """200 texts of ~2,000 tokens each, 4 classes (the model reads its first 512)."""
    rng, texts = random.Random(0), _demo_texts()
    rows = []
    for i in range(200):
        label = f"topic_{i % 4}"
        words = " ".join(rng.choice(texts) for _ in range(220))
        rows.append((f"{label.replace('_', ' ')} {words}", label))
    return _write_csv(tmp / "long_2000.csv", rows)


def classes_500(tmp: Path) -> Path:
    """500 classes x 8 rows: synthetic queries, each class with its own two keywords."""
    rng = random.Random(0)
    vocab = [
        f"{a}{b}"
        for a in ("ka", "lo", "mi", "nu", "pe", "ra", "si", "tu")
        for b in ("bar", "cen", "dol", "fis")
    ]
    rows = []
    for c in range(500):
        key = f"{rng.choice(vocab)} {rng.choice(vocab)} item{c}"
        rows += [
            (f"{' '.join(rng.sample(vocab, 4))} {key} {' '.join(rng.sample(vocab, 3))}", f"c{c:03d}")
            for _ in range(8)
        ]
    rng.shuffle(rows)
    return _write_csv(tmp / "classes_500.csv", rows)


# name -> (prepare data, extra init flags, what the row is)
ROWS: dict[str, tuple[Callable[[Path], Path], list[str], str]] = {
    "banking77": (shared("banking77"), [], "BANKING77, all 10,003 training queries, 77 intents"),
    "clinc150_oos": (clinc150_subset, [], "CLINC150, 40 per intent (6,000), its off-topic files"),
    "sst2_5k": (sst2_subset, [], "SST-2, first 5,000 training phrases, GLUE dev"),
    "wnut17": (shared("wnut17"), [], "WNUT-17 NER, all 3,394 training sentences"),
    "sentiment_amazon": (
        lambda tmp: SHARED / "sentiment_labelled_sentences" / "amazon_cells_labelled.txt",
        [],
        "UCI sentiment sentences (Amazon, 1,000, headerless TSV)",
    ),
    "scitldr": (scitldr_subset, [], "SciTLDR, 400 papers (seq2seq: no offline default model)"),
    "sgd_support_lora": (
        sgd_subset,
        [],
        "SGD customer-service dialogues, 120 (causal LM), LoRA r=16 and 2 epochs given with --set",
    ),
    "goemotions": (
        shared("goemotions"),
        [],
        "GoEmotions, all 43,410 training comments, 28 labels (multi-label, header-less TSV + labels.txt)",
    ),
    "tiny_10x10": (tiny_10x10, [], "10 classes x 10 rows"),
    "skewed_95": (skewed_95, [], "one class 95 % of 1,000 rows"),
    "long_2000": (long_2000, [], "200 texts of ~2,000 tokens"),
    "classes_500": (classes_500, [], "500 classes x 8 rows"),
}


RUN_SETS = {"sgd_support_lora": ["train.max_epochs=2", "model.lora.r=16", "model.lora.alpha=32"]}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tuneflow", *args]


def _headline(store: Path, config: Path) -> dict[str, float]:
    """The parent run's test metrics (the task type's headline first)."""
    import yaml
    from mlflow import MlflowClient

    from tuneflow.tasktypes import task_type

    cfg = yaml.safe_load(config.read_text())
    uri = f"sqlite:///{store}/mlflow.db"
    client = MlflowClient(uri, registry_uri=uri)
    exp = client.get_experiment_by_name(cfg["name"])
    if exp is None:
        return {}
    runs = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" not in r.data.tags]
    if not runs:
        return {}
    metrics = runs[0].data.metrics
    kind = task_type(cfg.get("task", "sequence_classification"))
    names = [m for m in kind.metrics.headline if m in metrics] + [m for m in metrics if m.startswith("oos/")]
    return {m: round(metrics[m], 4) for m in names[:4]}


def _champion(store: Path, config: Path) -> str | None:
    """The version the run's registered model's ``champion`` alias points at; None when not promoted."""
    import yaml
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    cfg = yaml.safe_load(config.read_text())
    name = (cfg.get("tracking") or {}).get("registered_model") or cfg["name"]
    uri = f"sqlite:///{store}/mlflow.db"
    try:
        return str(MlflowClient(uri, registry_uri=uri).get_model_version_by_alias(name, "champion").version)
    except MlflowException:
        return None


def run_row(name: str, quick: bool) -> dict[str, Any]:
    import os

    prepare, flags, what = ROWS[name]
    with tempfile.TemporaryDirectory(prefix=f"bench-field-{name}-") as tmp_dir:
        tmp = Path(tmp_dir)
        data = prepare(tmp)
        config = tmp / "config.yaml"
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("LD_PRELOAD", "MALLOC_CONF", "TUNEFLOW_ALLOCATOR")
        }
        env.update(MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlruns/mlflow.db", HF_HUB_OFFLINE="1")
        env["PREFECT_HOME"] = str(tmp / "prefect")
        init = subprocess.run(
            _cli("init", str(data), "--output", str(config), *flags),
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            stdin=subprocess.DEVNULL,
        )
        row: dict[str, Any] = {"row": name, "what": what, "init_exit": init.returncode}
        if init.returncode != 0:
            row["answer"] = (init.stdout + init.stderr).strip().splitlines()[-3:]
            return row
        drafted = config.read_text()
        import yaml

        row["task"] = yaml.safe_load(drafted).get("task", "")
        # Overrides a row carries are named in its description (a drafted chat config trains all weights
        # for up to 10 epochs: ~45 min on 2 cores); --quick trains one epoch.
        overrides = [*RUN_SETS.get(name, []), *(["train.max_epochs=1"] if quick else [])]
        sets = [x for o in overrides for x in ("--set", o)]
        out = watch(_cli("run", str(config), *sets), env, tmp, timeout_s=7200)
        row.update({k: v for k, v in out.items() if k != "tail"})
        if out["exit"] != 0:
            row["answer"] = [line for line in out["tail"] if line.strip()][-4:]
        row["metrics"] = _headline(tmp / "mlruns", config)
        row["champion"] = _champion(tmp / "mlruns", config)
        row["lora"] = "lora:" in drafted or any(o.startswith("model.lora") for o in overrides)
    return row


def rows(results: list[dict[str, Any]], quick: bool) -> list[dict[str, str]]:
    out = []
    for r in results:
        if r["init_exit"] != 0:
            result = f"init exit {r['init_exit']}: {' / '.join(r.get('answer', []))[:300]}"
            target = "a clear answer, no config written"
        else:
            limit = RSS_TARGET_MB.get(r.get("task", ""), 3072)
            grow = "n/a (< 3 epochs)" if r.get("rss_growth") is None else f"{r['rss_growth']:+.1%}"
            metrics = ", ".join(f"{k} {v}" for k, v in r.get("metrics", {}).items()) or "none"
            if "champion" in r:  # rows measured before the alias was recorded say nothing of it
                metrics += f"; champion v{r['champion']}" if r["champion"] else "; not promoted"
            stages = ", ".join(f"{k} {v:.0f} s" for k, v in r.get("stage_s", {}).items())
            fail = f" ({' / '.join(r['answer'])[:200]})" if r.get("exit") else ""
            result = (
                f"{r.get('task')}{' LoRA' if r.get('lora') else ''}: run exit {r['exit']}{fail}; wall "
                f"{r['wall_s'] / 60:.1f} min ({stages}); peak RSS {r['peak_rss_mb'] / 1024:.2f} GB "
                f"(target <= {limit / 1024:.0f}); RSS growth epoch 2 -> last {grow} over "
                f"{len(r['epoch_rss_mb'])} epoch(s); {metrics}"
            )
            target = f"exit 0, peak RSS <= {limit / 1024:.0f} GB, growth <= 10%"
        out.append(
            {
                "what": f"{r['row']}{' (1 epoch)' if quick else ''}: {r['what']}",
                "result": result,
                "target": target,
                "data": "`tuneflow init DATA` then `tuneflow run CONFIG`, drafted config unedited",
                **measured_on(r),
            }
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench field", description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", choices=list(ROWS), help="these rows (default: all)")
    parser.add_argument("--quick", action="store_true", help="one epoch per row (the slow test tier)")
    args = parser.parse_args(argv)
    fresh: list[dict[str, Any]] = []
    suite = "field-quick" if args.quick else "field"
    for name in args.only or list(ROWS):
        print(f"== {name}", flush=True)
        fresh.append(run_row(name, args.quick))
        shown = {k: v for k, v in fresh[-1].items() if k not in ("epoch_s",)}
        print(json.dumps(shown, default=str), flush=True)
        # Written after every row: a matrix stopped part-way keeps what it measured.
        results = [*keep_earlier(suite, fresh, "row"), *fresh]
        write_result(suite, {"quick": args.quick, "results": results, "rows": rows(results, args.quick)})
        write_table()


if __name__ == "__main__":
    main()
