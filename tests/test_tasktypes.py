"""The task-type contract: every registered task type reads, validates, encodes, trains a step, predicts and
scores through the same interface. The registry is the parameter list: a new task type is tested here as
soon as it is registered (add its tiny model and data to ``CASES``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from tests.conftest import (
    chat_rows,
    demo_rows,
    make_config,
    ner_rows,
    seq2seq_rows,
    write_conll,
    write_csv,
    write_jsonl,
)
from tuneflow.data.validation import validate_dataset
from tuneflow.judging.evaluation import Gap
from tuneflow.tasktypes import TASK_TYPES, TaskType, task_type
from tuneflow.tasktypes.resolve import load_config


def _classification(tmp: Path) -> tuple[dict, str]:
    rows = demo_rows("train")[:200]
    return {
        "train": str(write_csv(tmp / "train.csv", rows)),
        "test": str(write_csv(tmp / "test.csv", rows[:40])),
    }, "tiny_model"


def _multilabel(tmp: Path) -> tuple[dict, str]:
    from tests.test_multilabel import multilabel_rows

    rows = multilabel_rows(200, 0)
    return {
        "train": str(write_csv(tmp / "train.csv", rows)),
        "test": str(write_csv(tmp / "test.csv", rows[:40])),
    }, "tiny_model"


def _tagging(tmp: Path) -> tuple[dict, str]:
    return {
        "train": str(write_conll(tmp / "train.conll", ner_rows(60, 1))),
        "test": str(write_conll(tmp / "test.conll", ner_rows(12, 2))),
    }, "tiny_ner_model"


def _seq2seq(tmp: Path) -> tuple[dict, str]:
    return {
        "train": str(write_jsonl(tmp / "train.jsonl", seq2seq_rows(40, 1))),
        "test": str(write_jsonl(tmp / "test.jsonl", seq2seq_rows(8, 2))),
    }, "tiny_t5"


def _chat(tmp: Path) -> tuple[dict, str]:
    return {
        "train": str(write_jsonl(tmp / "train.jsonl", chat_rows(40, 1))),
        "test": str(write_jsonl(tmp / "test.jsonl", chat_rows(8, 2))),
    }, "tiny_gpt2"


CASES = {
    "sequence_classification": _classification,
    "multi_label_classification": _multilabel,
    "token_classification": _tagging,
    "seq2seq": _seq2seq,
    "causal_lm": _chat,
}


def test_every_registered_task_type_has_a_contract_case() -> None:
    assert set(CASES) == set(TASK_TYPES)


@pytest.mark.parametrize("name", sorted(TASK_TYPES))
def test_metric_spec_is_consistent(name: str) -> None:
    kind = task_type(name)
    assert kind.name == name and isinstance(kind, TaskType)
    spec = kind.metrics
    assert spec.monitors and spec.gate_metrics and spec.headline
    assert all(m.startswith("val/") for m in spec.monitors)
    assert all(h.split("/")[0] in ("test", "base", "fit", "serving") for h in spec.headline)
    assert spec.mode("val/loss") == "min" and spec.direction("val/loss") == "minimize"
    assert kind.training.auto_class.startswith("AutoModelFor") and kind.training.peft_task_type
    assert kind.serving.input_example and not kind.serving.output_example().empty


@pytest.mark.parametrize("name", sorted(TASK_TYPES))
def test_task_type_contract(name: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    data, model_fixture = CASES[name](tmp_path)
    model = request.getfixturevalue(model_fixture)
    kind = task_type(name)
    cfg = load_config(
        make_config(
            tmp_path,
            model,
            name=f"contract-{name.replace('_', '-')}",
            task=name,
            data={**data, "text_column": "text", "label_column": "intent"},
            model={"name": model, "max_length": 48},
            eval={"max_generation_examples": 4, "latency_examples": 2, "sample_generations": 2},
            generation={"max_new_tokens": 4},
            train={"batch_size": 4},
        )
    )
    # The config resolved the task type's defaults.
    assert cfg.train.monitor == kind.metrics.monitors[0] and cfg.gates.metric == kind.metrics.gate_metrics[0]

    # Reads and validates.
    raw = kind.data.load_raw(cfg.data)
    assert not raw.problems and {"train", "test"} <= set(raw.frames)
    from tuneflow.fitting.model import load_pretrained, load_tokenizer

    tokenizer = load_tokenizer(model)
    report, splits = validate_dataset(raw, cfg, kind, tokenizer)
    assert report.ok, report.errors
    assert report.stats["rows_train"] == len(splits.train) > 0

    # Encodes.
    encoded = kind.training.encode(splits, tokenizer, cfg)
    assert encoded.task == name and len(encoded.train) == len(splits.train) > 0
    assert all(len(ids) <= cfg.model.max_length for ids in encoded.train.ids)

    # Trains one step: the collated batch gives a finite loss whose gradient reaches the weights.
    from tuneflow.fitting.model import FineTuner

    module = FineTuner(model, encoded.labels, lr=1e-3, task=name)
    batch = kind.training.collator(encoded.tokenizer)(
        list(zip(encoded.train.ids[:4], encoded.train.labels[:4], strict=True))
    )
    loss = module(**batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

    # Predicts: the output frame has the shape the logged signature promises.
    pretrained, _ = load_pretrained(name, model, encoded.labels)
    meta = {"task": name, "labels": encoded.labels, **kind.serving.inference_settings(cfg)}
    predictor = kind.serving.predictor(pretrained.eval(), encoded.tokenizer, meta)
    out = predictor.predict(kind.serving.to_inputs(list(kind.serving.input_example)))
    assert isinstance(out, pd.DataFrame) and list(out.columns) == list(kind.serving.output_example().columns)
    assert len(out) == len(kind.serving.input_example)

    # Fits what inference needs from validation after export (a classifier's temperature and out-of-scope
    # detector), stores it beside the weights, and predicts with it.
    export = tmp_path / "export"
    export.mkdir()
    fitted = kind.serving.after_export(predictor, export, splits, cfg)
    assert all(math.isfinite(v) for v in fitted.values())
    predictor = kind.serving.predictor(
        pretrained.eval(), encoded.tokenizer, {**meta, "model_dir": str(export)}
    )
    assert len(predictor.predict(kind.serving.to_inputs(list(kind.serving.input_example)))) == len(
        kind.serving.input_example
    )

    # Scores: the test headline, the gap, another set, latency, promotion evidence.
    metrics: dict[str, float] = {}
    kept: dict[str, Any] = {}
    files = kind.judging.evaluate_test(predictor, splits.test, tmp_path, cfg, metrics, kept)
    assert kind.metrics.headline[0] in metrics and all((tmp_path / f).is_file() for f in files)
    assert f"test/{cfg.gates.metric}" in metrics
    gap = kind.judging.measure_gap(predictor, splits, cfg)
    assert isinstance(gap, Gap) and math.isfinite(gap.gap)
    ood = kind.judging.score_set(predictor, splits.test, cfg, prefix="ood/x/")
    assert f"ood/x/{cfg.gates.metric}" in ood
    assert "serving/latency_p95_ms" in kind.judging.measure_latency(predictor, splits.test, cfg)
    evidence = kind.judging.promotion_evidence(predictor, splits.test, cfg)
    # What evaluation keeps for promotion is exactly what promotion would measure (never a re-score).
    assert ("promotion" in kept) == (cfg.gates.metric != "perplexity"), kept
    if "promotion" in kept:
        assert kept["promotion"] == evidence
    decision = kind.judging.decide(cfg, "m", "1", splits.test, evidence, {}, None, None)
    assert decision.metric == cfg.gates.metric and decision.gates


def test_unknown_task_type_is_a_config_error_reported_with_the_others(
    tmp_path: Path, tiny_model: str
) -> None:
    from tuneflow.config import ConfigError

    path = make_config(tmp_path, tiny_model, task="summarisation", train={"lr": -1})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    keys = [k for k, _ in err.value.problems]
    assert "task" in keys and "train.lr" in keys  # every problem at once
    assert all(name in str(err.value) for name in TASK_TYPES)


def test_cli_lists_the_registered_task_types() -> None:
    from typer.testing import CliRunner

    from tuneflow.cli import app

    out = CliRunner().invoke(app, ["tasks"])
    assert out.exit_code == 0 and all(name in out.output for name in TASK_TYPES)


def test_latency_is_measured_like_for_like() -> None:
    """A busy machine only ever adds time: the fastest of the repeats per example keeps p95 steady, on a
    fixed thread count that is restored afterwards, and the conditions travel with the figures."""
    import time as clock

    from tuneflow.judging.metrics import LATENCY_REPEATS, LATENCY_THREADS, time_single

    calls = []

    def predict(batch: list[str]) -> None:
        calls.append(torch.get_num_threads())
        clock.sleep(0.05 if len(calls) % 3 == 0 else 0.002)  # every third call hit by interference

    threads = torch.get_num_threads()
    out = time_single(predict, [f"x{i}" for i in range(10)], 10)
    assert out["serving/latency_p95_ms"] < 20  # the 50 ms spikes are not what is reported
    assert out["serving/latency_threads"] == LATENCY_THREADS
    assert out["serving/latency_repeats"] == LATENCY_REPEATS
    assert set(calls) == {LATENCY_THREADS} and torch.get_num_threads() == threads
