"""int8 serving (``export.quantize: int8``): the ONNX Runtime graph answers what the fp32 model answers, the
pipeline scores and gates the model that is served, and the registered int8 model serves with its fallback."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import (
    OFF_TOPIC,
    demo_rows,
    invoke,
    make_config,
    mlflow_process,
    ner_config,
    ner_rows,
    write_oos,
)

TEXTS = ["where is my parcel", "hi", "i would like to cancel the order i placed last week please", "refund"]


def _export(tmp_path: Path, model_dir: str, task: str, labels: list[str]) -> Path:
    """A fp32 export of ``model_dir`` (random weights) as training writes it."""
    from transformers import AutoTokenizer

    from tuneflow.fitting.export import META_FILE
    from tuneflow.fitting.model import load_pretrained

    out = tmp_path / "export"
    model, _ = load_pretrained(task, model_dir, labels, None)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    meta = {"task": task, "labels": labels, "base_model": model_dir, "lora": None, "max_length": 32}
    (out / META_FILE).write_text(json.dumps(meta))
    return out


def test_the_graph_computes_what_the_torch_model_computes_padded_or_not(
    tmp_path: Path, tiny_model: str
) -> None:
    """The traced graph (before quantization) equals the torch model, logits and every out-of-scope feature,
    in padded batches and one text at a time: the trace kept the attention mask."""
    from tuneflow.fitting.export import load_exported
    from tuneflow.fitting.quantize import OnnxModel, write_onnx
    from tuneflow.tasktypes import task_type
    from tuneflow.tasktypes.classification_predictor import FEATURE_KINDS

    labels = sorted({label for _, label in demo_rows()})
    export = _export(tmp_path, tiny_model, "sequence_classification", labels)
    model, tokenizer, meta = load_exported(export)
    kind = task_type("sequence_classification")
    graph = write_onnx(
        model, tokenizer, kind.serving.feature_head(model, meta), tmp_path / "fp32.onnx", int8=False
    )
    torch_predictor = kind.serving.predictor(model, tokenizer, meta)
    onnx_predictor = kind.serving.predictor(OnnxModel(graph), tokenizer, meta)
    texts = [text for text, _ in demo_rows("test")][:40] + TEXTS
    for batch in (16, 1):
        t_logits, t_feats = torch_predictor.forward_kinds(texts, batch, FEATURE_KINDS)
        o_logits, o_feats = onnx_predictor.forward_kinds(texts, batch, FEATURE_KINDS)
        assert np.allclose(o_logits, t_logits, atol=1e-5)
        for kind_name in FEATURE_KINDS:
            assert np.allclose(o_feats[kind_name], t_feats[kind_name], atol=1e-4), kind_name


def test_int8_model_answers_like_the_fp32_model(tmp_path: Path, tiny_model: str) -> None:
    """Same top labels and features within int8 error; the fp32 weights stay loadable beside the graph."""
    from tuneflow.fitting.export import load_predictor, quantize_export, read_meta
    from tuneflow.fitting.quantize import QUANTIZED_FILE, OnnxModel
    from tuneflow.tasktypes.classification_predictor import FEATURE_KINDS

    labels = sorted({label for _, label in demo_rows()})
    export = _export(tmp_path, tiny_model, "sequence_classification", labels)
    quantize_export(export)
    assert read_meta(export)["quantize"] == "int8" and (export / QUANTIZED_FILE).is_file()
    served, fp32 = load_predictor(export), load_predictor(export, quantized=False)
    assert isinstance(served.model, OnnxModel) and not isinstance(fp32.model, OnnxModel)
    texts = [text for text, _ in demo_rows("test")][:40] + TEXTS
    q_logits, q_feats = served.forward_kinds(texts, 16, FEATURE_KINDS)
    f_logits, f_feats = fp32.forward_kinds(texts, 16, FEATURE_KINDS)
    # A random tiny model's logits are ~0.03: int8 rounding is a larger share of them than of a trained one's.
    assert np.abs(q_logits - f_logits).max() < 0.25 * np.abs(f_logits).max()
    assert (q_logits.argmax(-1) == f_logits.argmax(-1)).mean() > 0.8
    for kind in FEATURE_KINDS:
        a, b = q_feats[kind], f_feats[kind]
        cosine = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
        assert cosine.min() > 0.98, kind


def test_int8_token_classifier_tags_like_the_fp32_one(tmp_path: Path, tiny_ner_model: str) -> None:
    from tuneflow.fitting.export import load_predictor, quantize_export

    sentences = [words for words, _ in ner_rows(30, seed=3)]
    labels = sorted({tag for _, tags in ner_rows(200, seed=0) for tag in tags})
    export = _export(tmp_path, tiny_ner_model, "token_classification", labels)
    quantize_export(export)
    q_tags, _ = load_predictor(export).predict_words(sentences, 8)
    f_tags, _ = load_predictor(export, quantized=False).predict_words(sentences, 8)
    agree = np.mean(
        [a == b for qs, fs in zip(q_tags, f_tags, strict=True) for a, b in zip(qs, fs, strict=True)]
    )
    assert agree > 0.9
    assert [len(t) for t in q_tags] == [len(s) for s in sentences]


def test_quantize_is_refused_where_it_does_not_apply(tmp_path: Path, tiny_model: str) -> None:
    from tuneflow.config import ConfigError
    from tuneflow.tasktypes.resolve import load_config

    cfg = make_config(tmp_path, tiny_model)
    with pytest.raises(ConfigError, match="gates.max_quantization_loss"):
        load_config(cfg, ["gates.max_quantization_loss=0.01"])
    with pytest.raises(ConfigError, match="export.quantize"):
        load_config(cfg, ["export.quantize=int4"])
    assert load_config(cfg, ["export.quantize=int8"]).export.quantize == "int8"


def test_the_quantization_gate_fails_with_advice() -> None:
    from tuneflow.config import GatesConfig
    from tuneflow.judging.gates import absolute_gates

    metrics = {"quantization/loss": 0.012, "quantization/latency_speedup": 3.1}
    gates = GatesConfig(metric="accuracy", max_quantization_loss=0.005, max_val_degradation=None)
    (gate,) = [g for g in absolute_gates(gates, 0.9, metrics) if "quantization" in g.name]
    assert not gate.passed and gate.value == 0.012
    assert "3.1x faster" in gate.detail and "export.quantize: none" in gate.detail
    (gate,) = [g for g in absolute_gates(gates, 0.9, {}) if "quantization" in g.name]
    assert not gate.passed and "export.quantize: int8" in gate.detail


@pytest.mark.integration
def test_the_flow_scores_gates_and_serves_the_int8_model(
    tmp_path: Path, tiny_model: str, prefect_harness: None
) -> None:
    """Through the real flow with an out-of-scope fallback: the test metrics are the int8 model's, the fp32
    weights' scores and the loss are logged and gated, and the registered model (requirements with
    onnxruntime) answers the fallback through the pyfunc and `mlflow models serve`."""
    import mlflow
    import pandas as pd

    from tuneflow.fitting.export import load_predictor
    from tuneflow.flows.finetune import finetune
    from tuneflow.judging.metrics import classification_metrics

    oos, oos_file = OFF_TOPIC, write_oos(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = make_config(
        tmp_path,
        tiny_model,
        name="int8-intents",
        tracking={"tracking_uri": uri},
        data={"oos_validation": str(oos_file), "oos_test": str(oos_file)},
        oos={"method": ["knn", "mahalanobis"], "features": "head"},
        export={"quantize": "int8"},
        gates={"max_val_degradation": None, "max_quantization_loss": 1.0},
    )
    result = finetune(str(cfg), ["train.max_epochs=2"])
    m = result.metrics
    for key in ("quantization/loss", "quantization/fp32_accuracy", "quantization/latency_speedup"):
        assert key in m, key
    (gate,) = [g for g in result.promotion.gates if g.name.startswith("max quantization loss")]
    assert gate.value == pytest.approx(m["quantization/loss"]) and gate.passed

    mlflow.set_tracking_uri(uri)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/int8-intents/{result.model.version}"))
    export = local / "artifacts" / "export"
    assert json.loads((export / "tuneflow.json").read_text())["quantize"] == "int8"
    assert "onnxruntime==" in (local / "requirements.txt").read_text()
    # The logged test score is the served (int8) model's; the fp32 one is the weights it was made from.
    test = pd.read_csv(tmp_path / "test.csv")
    for quantized, key in ((True, "test/accuracy"), (False, "quantization/fp32_accuracy")):
        pred = load_predictor(export, quantized=quantized).labels_of(test["text"].tolist())
        scored = classification_metrics(test["intent"].tolist(), pred)["accuracy"]
        assert scored == pytest.approx(m[key]), key
    assert m["quantization/loss"] == pytest.approx(m["quantization/fp32_accuracy"] - m["test/accuracy"])

    # The knn bank is served in int8 as well, and the scores the threshold was fitted on are those.
    spec = json.loads((export / "scope.json").read_text())
    assert spec["method"] == "knn+mahalanobis" and spec["knn_int8"] is True
    served = load_predictor(export)
    assert served.scope is not None and served.scope.neighbors is not None and served.scope.neighbors.int8
    texts = ["where is my parcel", *oos]
    out = pd.DataFrame(mlflow.pyfunc.load_model(str(local)).predict(texts))
    np.testing.assert_allclose(out["oos_score"], served.predict(texts)["oos_score"], rtol=1e-5)
    assert {"label", "score", "in_scope", "oos_score", "threshold"} <= set(out.columns)
    assert (out.loc[~out["in_scope"], "label"] == "unknown").all()
    (export / "scope.json").write_text(json.dumps({**spec, "threshold": 1e30}))  # everything falls back
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    serve = ["models", "serve", "-m", str(local), "--env-manager", "local"]
    with mlflow_process(serve, "/ping", cwd=tmp_path, env=env) as base:  # cwd: not the checkout
        status, body = invoke(base, {"inputs": texts})
        assert status == 200, body
        predictions = json.loads(body)["predictions"]
        assert [p["label"] for p in predictions] == ["unknown"] * len(texts)
        assert not any(p["in_scope"] for p in predictions)
        status, body = invoke(base, {"inputs": [42]})
        assert status == 400 and "Expected type str" in body


@pytest.mark.integration
def test_token_classification_flow_with_int8_logs_its_entity_f1_loss(
    tmp_path: Path, tiny_ner_model: str, prefect_harness: None
) -> None:
    from tuneflow.flows.finetune import finetune

    cfg = ner_config(
        tmp_path,
        tiny_ner_model,
        tracking={"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"},
        export={"quantize": "int8"},
        gates={"max_val_degradation": None},
    )
    m = finetune(str(cfg), ["train.max_epochs=1"]).metrics
    assert "quantization/f1_loss" in m and m["quantization/loss"] == m["quantization/f1_loss"]


def test_a_served_model_loads_and_predicts_without_lightning(tmp_path: Path, tiny_model: str) -> None:
    """Serving imports what inference needs: the pyfunc's loader and a prediction never import Lightning
    (the training loop's framework: seconds of import time and memory in every serving process)."""
    import subprocess
    import sys

    export = _export(tmp_path, tiny_model, "sequence_classification", ["a", "b"])
    code = (
        "import sys\n"
        "import tuneflow.registry.serving\n"
        "from tuneflow.fitting.export import load_predictor\n"
        f"print(load_predictor({str(export)!r}, quantized=False).labels_of(['where is my parcel']))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    labels, lightning = out.stdout.strip().splitlines()[-2:]
    assert labels in ("['a']", "['b']") and lightning == "[]", out.stdout
