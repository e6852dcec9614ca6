"""Where a training step's time goes: forward, backward (+ clipping) and optimizer, per setting.

The same 40 length-grouped BANKING77 batches (32 queries, max_length 64) through the same MiniLM in a bare
loop, each setting in its own process, 2 threads: fp32 vs bf16 autocast, the per-tensor (foreach) AdamW vs
the fused one, and ``torch.compile`` (its compile time counted in the total). The first 5 steps are warm-up,
left out of the per-phase medians; ``total_s`` is the whole loop, compilation included. This is what chose
tuneflow's defaults (bf16 where the CPU has it, fused AdamW, no compile, the [CLS]-only last layer, bf16
weights with fp32 masters); ``bench/speed.py`` measures the
resulting ``fit`` against the Hugging Face Trainer.

``python -m bench.step [--steps 40]`` writes ``bench/results/step.json`` and the RESULTS.md rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import write_result, write_table

ROOT = Path(__file__).resolve().parent.parent
_PLAIN = {"compile": False, "cls": False, "master": False}
SETTINGS = {
    "fp32, AdamW foreach": {**_PLAIN, "bf16": False, "fused": False},
    "fp32, AdamW fused": {**_PLAIN, "bf16": False, "fused": True},
    "bf16 autocast, AdamW foreach": {**_PLAIN, "bf16": True, "fused": False},
    "bf16 autocast, AdamW fused": {**_PLAIN, "bf16": True, "fused": True},
    "bf16 autocast, AdamW fused, torch.compile": {**_PLAIN, "bf16": True, "fused": True, "compile": True},
    "bf16 autocast, AdamW fused, [CLS]-only last layer": {**_PLAIN, "bf16": True, "fused": True, "cls": True},
    "bf16 autocast, AdamW fused, bf16 weights + fp32 masters": {
        **_PLAIN,
        "bf16": True,
        "fused": True,
        "master": True,
    },
    "bf16 autocast, AdamW fused, both (tuneflow default)": {
        **_PLAIN,
        "bf16": True,
        "fused": True,
        "cls": True,
        "master": True,
    },
}
WARMUP = 5


def measure(setting: dict[str, bool], steps: int, threads: int) -> dict[str, Any]:
    import contextlib

    import torch

    from tuneflow.backbone import clsonly
    from tuneflow.data.encoding import LengthGroupedBatches
    from tuneflow.fitting.master import MasterWeights
    from tuneflow.fitting.model import load_pretrained, load_tokenizer
    from tuneflow.tasktypes.resolve import load_config

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = load_config(ROOT / "configs" / "banking77.yaml", ["data.max_train_examples=3000"])
    kind = cfg.kind
    tokenizer = load_tokenizer(cfg.model.name)
    data = kind.training.encode(kind.data.load_splits(cfg.data, cfg.train.seed), tokenizer, cfg)
    items = list(zip(data.train.ids, data.train.labels, strict=True))
    batches = list(LengthGroupedBatches([len(i) for i, _ in items], 32, cfg.train.seed))[:steps]
    collate = kind.training.collator(tokenizer)
    model = load_pretrained(cfg.task, cfg.model.name, data.labels, 0.1)[0].train()
    clsonly.enable(model)
    masters = MasterWeights(model) if setting["master"] else None
    params = masters.optimizer_params(model.parameters()) if masters else list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=setting["fused"] or None)
    if setting["compile"]:
        model = torch.compile(model, dynamic=True)

    def autocast() -> Any:
        return torch.autocast("cpu", dtype=torch.bfloat16) if setting["bf16"] else contextlib.nullcontext()

    def last_layer() -> Any:
        return clsonly.cls_only(model) if setting["cls"] else contextlib.nullcontext()

    phases: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": []}
    start = time.perf_counter()
    for i, batch_idx in enumerate(batches):
        batch = collate([items[j] for j in batch_idx])
        t0 = time.perf_counter()
        with autocast(), last_layer():
            loss = model(**batch).loss
        t1 = time.perf_counter()
        loss.backward()
        if masters:
            masters.grads_to_masters()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        t2 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if masters:
            masters.masters_to_weights()
        t3 = time.perf_counter()
        if i >= WARMUP:
            for name, seconds in zip(phases, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                phases[name].append(seconds)
    total = time.perf_counter() - start
    steady = sum(map(sum, phases.values()))
    return {
        **{f"{k}_ms": 1000 * statistics.median(v) for k, v in phases.items()},
        "total_s": total,
        "steady_samples_per_s": 32 * (len(batches) - WARMUP) / steady,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.step", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-compile", action="store_true", help="leave out torch.compile (~1-3 min)")
    parser.add_argument("--setting", choices=list(SETTINGS), help=argparse.SUPPRESS)  # one child process
    args = parser.parse_args()
    if args.setting:
        print("STEP " + json.dumps(measure(SETTINGS[args.setting], args.steps, args.threads)))
        return
    results = {}
    for name in [n for n, s in SETTINGS.items() if not (args.skip_compile and s["compile"])]:
        cmd = [sys.executable, "-m", "bench.step", "--setting", name, "--steps", str(args.steps)]
        cmd += ["--threads", str(args.threads)]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("STEP ")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"step setting {name!r} failed:\n{proc.stderr[-3000:]}")
        results[name] = json.loads(lines[-1][5:])
        print(name, results[name], flush=True)
    data = (
        f"BANKING77, {args.steps} length-grouped batches of 32 (max_length 64), MiniLM-L6, {args.threads} "
        f"threads, bare loop; medians after {WARMUP} warm-up steps"
    )
    rows = [
        {
            "what": f"training step: {name}",
            "result": f"forward {r['forward_ms']:.0f} ms, backward + clip {r['backward_ms']:.0f} ms, "
            f"optimizer {r['optimizer_ms']:.0f} ms; {r['steady_samples_per_s']:.0f} samples/s steady, "
            f"{r['total_s']:.1f} s for all {args.steps} steps",
            "target": "report (chooses the defaults)",
            "data": data,
        }
        for name, r in results.items()
    ]
    path = write_result("step", {"args": vars(args), "results": results, "rows": rows})
    print(f"wrote {path} and {write_table()}")


if __name__ == "__main__":
    main()
