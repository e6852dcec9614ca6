"""LoRA adapters: adapter-only checkpoints and exports, round trip, base mismatch, registry, adapter sets."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import demo_rows, make_config, write_csv
from tuneflow.backbone.lora import AdapterMismatchError
from tuneflow.cli import app
from tuneflow.fitting.export import export_model, load_predictor, read_meta
from tuneflow.fitting.training import fit
from tuneflow.tasktypes.resolve import load_config

TEXTS = ["where is my order", "i want a refund please", "how do i reset my password"]


def _train_adapter(tmp_path: Path, tiny_model: str, name: str, labels: set[str] | None = None):
    rows = [r for r in demo_rows("train") if labels is None or r[1] in labels][:240]
    test = [r for r in demo_rows("test") if labels is None or r[1] in labels]
    work = tmp_path / name
    work.mkdir()
    cfg_path = make_config(
        work,
        tiny_model,
        name=name,
        train_file=write_csv(work / "train.csv", rows),
        test_file=write_csv(work / "test.csv", test),
        model={
            "name": tiny_model,
            "max_length": 32,
            "lora": {"r": 4, "alpha": 8, "target_modules": ["query", "value"]},
        },
        train={"max_epochs": 1, "lr": 5e-3},
    )
    cfg = load_config(cfg_path)
    kind = cfg.kind
    from tuneflow.fitting.model import load_tokenizer

    data = kind.training.encode(
        kind.data.load_splits(cfg.data, cfg.train.seed), load_tokenizer(tiny_model), cfg
    )
    result = fit(cfg, data, work / "ckpt", progress_bar=False)
    export = export_model(result.best_checkpoint, work / "export", data.tokenizer, cfg)
    return cfg, result, export


def test_lora_round_trip_and_adapter_only_artifacts(tmp_path, tiny_model):
    from tuneflow.fitting.model import FineTuner

    cfg, result, export = _train_adapter(tmp_path, tiny_model, "lora-intents")
    files = {p.name for p in export.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tuneflow.json"} <= files
    assert "model.safetensors" not in files  # the frozen base is not exported
    state = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)
    assert state["state_dict"] and all("lora_" in k or "classifier" in k for k in state["state_dict"])
    assert 0 < result.params_trainable < 0.2 * result.params_total
    meta = read_meta(export)
    assert meta["base_model"] == tiny_model and len(meta["base_hash"]) == 16 and meta["lora"]["r"] == 4

    # The module rebuilt from the (adapter-only) checkpoint and the export loaded on the base agree.
    module = FineTuner(**state["hyper_parameters"])
    module.load_state_dict(state["state_dict"], strict=False)
    module.eval()
    predictor = load_predictor(export)
    enc = predictor.tokenizer(TEXTS, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.inference_mode():
        expected = torch.softmax(module.model(**enc).logits, -1).numpy()
    assert predictor.predict_proba(TEXTS) == pytest.approx(expected, abs=1e-5)


def test_adapter_refuses_another_base(tmp_path, tiny_model, tiny_ner_model):
    _, _, export = _train_adapter(tmp_path, tiny_model, "lora-mismatch")
    with pytest.raises(AdapterMismatchError, match="base weights hash .* tokenizer hash"):
        load_predictor(export, base=tiny_ner_model)
    # Same architecture and tokenizer, one weight changed: still refused, by the weights hash alone.
    other = tmp_path / "tweaked-base"
    shutil.copytree(tiny_model, other)
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(other)
    with torch.no_grad():
        model.bert.embeddings.word_embeddings.weight[5, 0] += 1.0
    model.save_pretrained(other)
    with pytest.raises(AdapterMismatchError) as err:
        load_predictor(export, base=str(other))
    assert "base weights hash" in str(err.value) and "tokenizer hash" not in str(err.value)


def test_adapter_registry_cli_and_adapter_set(tmp_path, tiny_model, tiny_ner_model, tracking_uri):
    from tuneflow.store import tracking
    from tuneflow.tasks.registry import register

    small = {"track_order", "refund_request", "account_login"}
    exports = {}
    for name, labels in (("intents-all", None), ("intents-three", small)):
        cfg, _, export = _train_adapter(tmp_path, tiny_model, name, labels)
        run_id = tracking.start_run(cfg.experiment_name, run_name="t")
        register.fn(cfg, run_id, str(export), "fp")
        tracking.end_run(run_id)
        exports[name] = export
    runner = CliRunner()
    listed = runner.invoke(app, ["adapters", "--base", tiny_model, "--tracking-uri", tracking_uri])
    assert listed.exit_code == 0, listed.output
    assert "intents-all" in listed.output and "intents-three" in listed.output
    assert runner.invoke(
        app, ["adapters", "--base", "nope", "--tracking-uri", tracking_uri]
    ).output.startswith("no registered adapters")

    # predict --adapter: the adapter on its base; on another base it is refused with exit code 4.
    ok = runner.invoke(
        app,
        [
            "predict",
            "where is my order",
            "--model",
            tiny_model,
            "--adapter",
            "intents-three/1",
            "--tracking-uri",
            tracking_uri,
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert ok.output.split("\t")[0] in small
    bad = runner.invoke(
        app,
        [
            "predict",
            "x",
            "--model",
            tiny_ner_model,
            "--adapter",
            "intents-three/1",
            "--tracking-uri",
            tracking_uri,
        ],
    )
    assert bad.exit_code == 4 and "cannot run on base" in " ".join(bad.output.split())

    # One servable model, one base in memory, adapters switched per request.
    bundled = runner.invoke(app, ["adapters", "--bundle", "intents-set", "--tracking-uri", tracking_uri])
    assert bundled.exit_code == 0, bundled.output
    model = mlflow.pyfunc.load_model("models:/intents-set/1")
    described = mlflow.MlflowClient().get_model_version("intents-set", "1").description
    assert described.startswith("sequence_classification adapter set on ")
    assert all(f"{name} (v" in described for name in exports)
    for name, export in exports.items():
        alone = load_predictor(export).predict(TEXTS)
        together = model.predict(TEXTS, params={"adapter": name})
        assert together["label"].tolist() == alone["label"].tolist()
        assert together["score"].to_numpy() == pytest.approx(alone["score"].to_numpy(), abs=1e-5)
    assert set(model.predict(TEXTS, params={"adapter": "intents-three"})["label"]) <= small
    with pytest.raises(Exception, match="unknown adapter 'nope'"):
        model.predict(TEXTS, params={"adapter": "nope"})
