"""``python -m bench.allocator``: which allocator and settings ``tuneflow run`` should train under, measured
on the workloads it serves: intent classification, NER and a LoRA chat fine-tune, each through the real CLI.

Every arm runs the same command; only the allocator environment differs (as ``tuneflow run`` would set it
for itself); the ``default`` arm is tuneflow as shipped, with ``train.attention: auto`` (eager attention
while training on a CPU), where the others keep the model's SDPA kernel as every fit did before. Per run:
peak RSS, RSS at the end of each epoch and its growth from epoch 2 to the last, the
median epoch time (the step-time measure: same steps in every arm), and wall time. One process at a time.

Writes bench/results/allocator.json and regenerates bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import keep_earlier, measured_on, write_result, write_table
from bench.watch import watch
from tuneflow.allocator import MALLOC_CONF

ROOT = Path(__file__).resolve().parent.parent
KEEP = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
# name -> (allocator, MALLOC_CONF, extra --set); "glibc" runs with TUNEFLOW_ALLOCATOR=system. Every arm but
# "default" trains with the model's own attention kernel (SDPA), as every fit did before train.attention.
SDPA = ["train.attention=model"]
ARMS: dict[str, tuple[str, str | None, list[str]]] = {
    # the default before this benchmark: freed pages never returned
    "jemalloc_keep": ("jemalloc", KEEP, SDPA),
    "jemalloc_decay1s": ("jemalloc", "background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0", SDPA),
    "jemalloc_decay10s": ("jemalloc", "background_thread:true,dirty_decay_ms:10000,muzzy_decay_ms:0", SDPA),
    # Without jemalloc's background purging thread: on 2 cores a third thread preempts a torch worker, and
    # the other spins at OpenMP barriers (the chat arms above ran at 0.55x with it).
    "jemalloc_decay10s_inline": ("jemalloc", "dirty_decay_ms:10000,muzzy_decay_ms:0", SDPA),
    "jemalloc_decay30s_inline": ("jemalloc", "dirty_decay_ms:30000,muzzy_decay_ms:0", SDPA),
    # tuneflow's allocator: a 10 s decay outside fits; a fit keeps its pages and purges them all when resident
    # memory passes its bound (BoundedReuse). Its rows before 2026-12-06 18:40 ("jemalloc_paced") were the
    # first version: fits whose steps took >= 2 s kept their pages, others ran under the 10 s decay.
    "jemalloc_bounded": ("jemalloc", MALLOC_CONF, SDPA),
    "glibc": ("glibc", None, SDPA),
    # tuneflow's default as shipped: the paced allocator and train.attention auto (eager on a CPU).
    "default": ("jemalloc", MALLOC_CONF, []),
}
# name -> (config, overrides): small enough for a matrix, long enough (4 epochs) to show growth per epoch.
WORKLOADS: dict[str, tuple[str, list[str]]] = {
    "intents": (
        "configs/banking77.yaml",
        [
            "data.max_train_examples=3000",
            "validation.min_examples_per_class=5",
            "train.max_epochs=4",
            "train.early_stopping_patience=10",
        ],
    ),
    "ner": (
        "configs/wnut17.yaml",
        ["data.max_train_examples=1500", "train.max_epochs=4", "train.early_stopping_patience=10"],
    ),
    "chat_lora": (
        "configs/support_chat.yaml",
        [
            "data.max_train_examples=48",
            "train.max_epochs=3",
            "train.early_stopping_patience=10",
            "eval.max_generation_examples=8",
            "eval.compare_base=false",
        ],
    ),
}


def arm_env(arm: str, store: Path) -> dict[str, str]:
    """The environment ``tuneflow run`` trains under in ``arm`` (no re-exec: the switch is already set)."""
    from tuneflow.allocator import SWITCH, jemalloc

    kind, conf, _ = ARMS[arm]
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF", SWITCH)}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}/mlflow.db"
    env["HF_HUB_OFFLINE"] = "1"
    if kind == "glibc":
        return {**env, SWITCH: "system"}
    lib = jemalloc()
    if lib is None:
        raise SystemExit("no libjemalloc on this system (apt install libjemalloc2)")
    return {**env, SWITCH: "jemalloc", "LD_PRELOAD": lib, "MALLOC_CONF": conf or ""}


def run_one(workload: str, arm: str) -> dict[str, Any]:
    config, overrides = WORKLOADS[workload]
    with tempfile.TemporaryDirectory(prefix="bench-alloc-") as tmp:
        sets = [*overrides, *ARMS[arm][2], f"tracking.registered_model=alloc-{workload}"]
        sets.append(f"output_dir={tmp}/ckpt")
        cmd = [sys.executable, "-m", "tuneflow", "run", config, *(x for s in sets for x in ("--set", s))]
        out = watch(cmd, arm_env(arm, Path(tmp)), ROOT)
    if out["exit"] != 0:
        print("\n".join(out["tail"]), file=sys.stderr)
    epochs = out["epoch_s"]
    return {
        "key": f"{workload}/{arm}",
        "workload": workload,
        "arm": arm,
        "malloc_conf": ARMS[arm][1],
        "sets": ARMS[arm][2],
        **{k: v for k, v in out.items() if k != "tail"},
        "median_epoch_s": statistics.median(epochs[1:] or epochs) if epochs else None,
    }


def rows(results: list[dict[str, Any]]) -> list[dict[str, str]]:
    out = []
    # Ratios within one machine and run only (kept results carry theirs).
    base = {(r["workload"], str(r.get("machine"))): r for r in results if r["arm"] == "jemalloc_keep"}
    for r in results:
        b = base.get((r["workload"], str(r.get("machine"))))
        speed = (
            f", epoch time x{r['median_epoch_s'] / b['median_epoch_s']:.3f} vs jemalloc_keep"
            if b and b["median_epoch_s"] and r["median_epoch_s"]
            else ""
        )
        grow = "n/a" if r["rss_growth"] is None else f"{r['rss_growth']:+.0%}"
        epochs = " / ".join(f"{x / 1024:.1f}" for x in r["epoch_rss_mb"])
        out.append(
            {
                "what": f"{r['workload']}, {r['arm']}",
                "result": (
                    f"exit {r['exit']}; peak RSS {r['peak_rss_mb'] / 1024:.2f} GB; RSS per epoch {epochs} GB "
                    f"(growth epoch 2 -> last {grow}); median epoch {r['median_epoch_s']} s{speed}; "
                    f"wall {r['wall_s']:.0f} s"
                ),
                "target": "cls/NER peak <= 3 GB, chat LoRA <= 4 GB; growth <= 10%; epoch time <= 1.05x",
                "data": " ".join(WORKLOADS[r["workload"]][1]),
                **measured_on(r),
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.allocator", description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", nargs="*", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--arms", nargs="*", default=list(ARMS), choices=list(ARMS))
    args = parser.parse_args()
    results = []
    for workload in args.workloads:
        for arm in args.arms:
            print(f"== {workload} {arm}", flush=True)
            results.append(run_one(workload, arm))
            r = results[-1]
            print(
                f"   exit {r['exit']} peak {r['peak_rss_mb']} MB epochs {r['epoch_rss_mb']} "
                f"epoch_s {r['epoch_s']} wall {r['wall_s']}",
                flush=True,
            )
    results = [*keep_earlier("allocator", results, "key"), *results]
    write_result("allocator", {"results": results, "rows": rows(results)})
    write_table()


if __name__ == "__main__":
    main()
