"""The GPU suite's arithmetic and bookkeeping (runs without a GPU), and ``train.compile``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bench import gpu
from tests.conftest import make_config
from tuneflow.tasktypes.resolve import load_config


def test_model_flops_count_encoder_tokens_attention_and_the_head_once() -> None:
    # Two examples of 3 and 5 real tokens, 10 encoder params, 4 once-per-example params, 2 layers x width 8.
    flops = gpu.example_flops([3, 5], encoder_params=10, once_params=4, layers=2, width=8)
    assert flops == 6 * 10 * 8 + 12 * 2 * 8 * (9 + 25) + 6 * 4 * 2


@pytest.mark.parametrize("arch", ["tiny", "minilm"])
def test_encoder_parameter_count_matches_the_real_bert(arch: str) -> None:
    import transformers

    config = transformers.BertConfig(vocab_size=100, **gpu.ARCHS[arch])
    model = transformers.BertModel(config)
    assert gpu.encoder_params(config.to_dict()) == sum(p.numel() for p in model.encoder.parameters())


def test_steady_rates_take_the_median_epoch_after_the_first() -> None:
    epochs = [
        {
            "seconds": 100.0,
            "examples": 10,
            "tokens": 100,
            "padded_tokens": 110,
            "model_tflop": 1.0,
        },  # compile
        {"seconds": 2.0, "examples": 10, "tokens": 100, "padded_tokens": 110, "model_tflop": 1.0},
        {
            "seconds": 9.0,
            "examples": 10,
            "tokens": 100,
            "padded_tokens": 110,
            "model_tflop": 1.0,
        },  # recompile
        {"seconds": 1.0, "examples": 10, "tokens": 100, "padded_tokens": 110, "model_tflop": 1.0},
    ]
    rates = gpu.steady_rates(epochs)
    assert rates["steady_samples_per_s"] == 5.0 and rates["steady_model_tflops"] == 0.5
    assert rates["padding_share"] == pytest.approx(1 / 11)


def test_collected_runs_report_mfu_against_their_own_peak_and_name_failures(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    epoch = {"seconds": 1.0, "examples": 64, "tokens": 1000, "padded_tokens": 1000, "model_tflop": 200.0}
    arm = {
        "arm": "base-sgd256",
        **gpu.ARMS["base-sgd256"],
        "params_total": 109_000_000,
        "per_epoch": [epoch, epoch],
        "first_epoch_s": 3.0,
        "fit_wall_s": 9.0,
        "peak_gpu_gib": 8.0,
    }
    (run / "base-sgd256.json").write_text(json.dumps(arm))
    (run / "peak.json").write_text(json.dumps({"peak_tflops": 800.0}))
    (run / "failures.json").write_text(
        json.dumps({"base-sgd256-compile": "Traceback...\nRuntimeError: boom"})
    )
    payload = gpu.collect([f"{run}=after the fix"])
    ok, failed = payload["rows"]
    assert "**25.0% MFU**" in ok["result"] and "[after the fix]" in ok["what"]
    assert ok["target"].startswith(">= 40% MFU")
    assert failed["result"] == "failed: RuntimeError: boom"


def test_the_suite_records_a_skip_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    payload = gpu.run(argparse.Namespace())
    assert payload["skipped"] and payload["rows"][0]["result"].startswith("skipped")


@pytest.mark.slow
def test_the_driver_runs_each_arm_in_its_own_process_on_real_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the arms themselves run on the CPU
    monkeypatch.setattr(gpu, "matmul_peak_tflops", lambda: 0.01)
    monkeypatch.setattr("bench.common.machine_info", lambda: {"gpu": None})
    args = argparse.Namespace(
        arms=["base-sgd256-nodet", "base-sgd256-nodet-bare"], out=str(tmp_path), smoke=True, arm_timeout=600
    )
    payload = gpu.run(args)
    (fit_row, bare_row) = payload["rows"]
    assert "MFU" in fit_row["result"] and "bare loop" in bare_row["what"]
    fit_arm = json.loads((tmp_path / "base-sgd256-nodet.json").read_text())
    assert [e["examples"] for e in fit_arm["per_epoch"]] == [fit_arm["per_epoch"][0]["examples"]] * 2
    assert 0 < fit_arm["padding_share"] < 0.5 and fit_arm["best_score"] is not None


def test_compiled_training_keeps_eager_parameter_names(
    tmp_path: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from torch._dynamo.utils import counters

    from tuneflow.fitting.export import export_model
    from tuneflow.fitting.model import load_tokenizer
    from tuneflow.fitting.training import fit

    # The names are the point here, not inductor's kernels: its C++ code generation takes a minute on 2
    # cores. aot_eager still traces the model with dynamo and AOTAutograd, as inductor's front end does.
    in_place = torch.nn.Module.compile
    monkeypatch.setattr(
        torch.nn.Module, "compile", lambda self, *a, **k: in_place(self, *a, **{**k, "backend": "aot_eager"})
    )
    cfg = load_config(make_config(tmp_path, tiny_model, train={"max_epochs": 1, "compile": True}))
    assert cfg.train.compile
    kind = cfg.kind
    data = kind.training.encode(kind.data.load_splits(cfg.data, 0), load_tokenizer(tiny_model), cfg)
    captured = counters["stats"]["calls_captured"]
    result = fit(cfg, data, tmp_path / "ckpt", progress_bar=False, resumable=False)
    assert counters["stats"]["calls_captured"] > captured  # the model did run compiled
    state = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    assert state and not any("_orig_mod" in key for key in state)
    export_model(result.best_checkpoint, tmp_path / "export", data.tokenizer, cfg)
    assert (tmp_path / "export" / "model.safetensors").exists()


def test_pruning_bench_keeps_one_unpruned_arm_per_seed_for_every_warmup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bench import search_pruning

    args = argparse.Namespace(trials=24, epochs=4, train=1200, startup=2, warmup=1, evals=4, seed=1)
    old = {
        "args": {**vars(args), "warmup": 0},
        "runs": {"42": {"none": {"pruner": "none"}, "median": {"pruner": "median"}}},
    }
    monkeypatch.setattr(search_pruning, "RESULTS", tmp_path)
    (tmp_path / f"{search_pruning.suite_name(args)}.json").write_text(json.dumps(old))
    runs = search_pruning._load_runs(args)  # an earlier run without warmup: its arms keep their meaning
    assert set(runs["42"]) == {"none", "median"} and runs["42"]["median"]["warmup"] == 0
    assert (
        search_pruning.arm_key("median", 1) == "median+warmup1"
        and search_pruning.arm_key("none", 1) == "none"
    )
