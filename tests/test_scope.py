"""Calibration and out-of-scope detection: the maths on constructed cases, the config errors, and the
registered model answering the fallback through MLflow."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import OFF_TOPIC, ROOT, make_config, write_oos
from tuneflow.config import ConfigError
from tuneflow.judging.calibration import expected_calibration_error, fit_temperature, softmax
from tuneflow.judging.outofscope import (
    METHODS,
    Gaussian,
    Neighbors,
    ScopeDetector,
    in_scope_scores,
    scope_metrics,
    standardization,
    threshold_for_recall,
    threshold_on_oos,
)
from tuneflow.tasktypes.resolve import load_config


def test_temperature_scaling_fixes_an_overconfident_model() -> None:
    rng = np.random.default_rng(0)
    n, k = 6000, 5
    honest = rng.normal(0, 1.5, (n, k))  # labels drawn from softmax(honest): those probabilities are true
    p = softmax(honest)
    labels = np.array([rng.choice(k, p=row) for row in p])
    logits = 4 * honest  # the same ranking, four times too sure of itself
    val, test = slice(0, 3000), slice(3000, None)
    temperature = fit_temperature(logits[val], labels[val])
    before = expected_calibration_error(softmax(logits[test]), labels[test])
    after = expected_calibration_error(softmax(logits[test], temperature), labels[test])
    assert 3.3 < temperature < 4.8 and before > 0.15 and after < 0.04, (temperature, before, after)
    # The predicted class never changes: accuracy is untouched.
    assert (softmax(logits, temperature).argmax(1) == logits.argmax(1)).all()


def _constructed(seed: int = 0) -> dict[str, np.ndarray]:
    """Three well-separated classes in 8-d feature space, a linear head reading them, and out-of-scope
    points far from every class (near the origin: small logits as well)."""
    rng = np.random.default_rng(seed)
    means = np.zeros((3, 8))
    means[0, 0] = means[1, 1] = means[2, 2] = 6.0
    head = means.T / 6.0  # logits = features @ head
    labels = rng.integers(0, 3, 600)
    feats = means[labels] + rng.normal(0, 1, (600, 8))
    oos = rng.normal(0, 1, (200, 8))
    return {"labels": labels, "feats": feats, "logits": feats @ head, "oos": oos, "oos_logits": oos @ head}


def test_the_config_offers_exactly_the_methods_the_detector_knows() -> None:
    import typing

    from tuneflow.config import ScopeMethod

    assert typing.get_args(ScopeMethod) == METHODS


@pytest.mark.parametrize("method", METHODS)
def test_every_method_ranks_far_away_inputs_below_in_scope_ones(method: str) -> None:
    d = _constructed()
    gaussian = Gaussian.fit(d["feats"][:300], d["labels"][:300], 3)
    neighbors = Neighbors.fit(d["feats"][:300], k=5)
    inside = in_scope_scores(method, d["logits"][300:], d["feats"][300:], 1.0, gaussian, neighbors)
    outside = in_scope_scores(method, d["oos_logits"], d["oos"], 1.0, gaussian, neighbors)
    correct = np.ones(len(inside), dtype=bool)
    metrics = scope_metrics(inside, correct, outside, threshold_for_recall(inside, 0.95))
    assert metrics["oos/auroc"] > 0.95, metrics
    assert metrics["oos/fpr_at_95"] < 0.2, metrics


def test_thresholds_hit_their_targets() -> None:
    rng = np.random.default_rng(1)
    inside, outside = rng.normal(2, 1, 1000), rng.normal(-2, 1, 500)
    for recall in (0.8, 0.9, 0.95):
        t = threshold_for_recall(inside, recall)
        assert abs((inside >= t).mean() - recall) <= 0.002
    t = threshold_on_oos(inside, outside)
    assert -1 < t < 1  # the crossing point of two unit Gaussians at +-2 is 0
    m = scope_metrics(inside, np.ones(1000, dtype=bool), outside, t)
    assert m["oos/recall"] > 0.9 and m["oos/in_scope_recall"] > 0.9 and m["oos/precision"] > 0.9
    # In-scope accuracy counts a rejected in-scope query as wrong, like Larson et al.
    wrong = np.zeros(1000, dtype=bool)
    assert scope_metrics(inside, wrong, None, t)["oos/in_scope_accuracy"] == 0.0


def test_detector_round_trips_without_pickle(tmp_path: Path) -> None:
    d = _constructed()
    gaussian = Gaussian.fit(d["feats"], d["labels"], 3)
    ScopeDetector(("mahalanobis",), -12.5, "unknown", 2.0, gaussian).save(tmp_path)
    loaded = ScopeDetector.load(tmp_path, temperature=2.0)
    assert loaded is not None and loaded.method == "mahalanobis" and loaded.threshold == -12.5
    np.testing.assert_allclose(loaded.scores(d["logits"], d["feats"]), -gaussian.min_distance(d["feats"]))
    assert ScopeDetector.load(tmp_path / "nowhere") is None


def test_an_int8_bank_scores_like_the_float_one_and_round_trips(tmp_path: Path) -> None:
    """A quantized model's knn bank runs in int8 (ONNX Runtime, a scale per bank row): distances within a
    hundredth of the fp32 bank's for any k; scope.json keeps the choice, so serving scores as the threshold
    was fitted."""
    rng = np.random.default_rng(0)
    bank, queries = rng.normal(size=(2000, 64)), rng.normal(size=(300, 64))
    for k in (1, 3):
        exact, int8 = Neighbors.fit(bank, k), Neighbors.fit(bank, k, int8=True)
        assert int8.int8 and not exact.int8
        np.testing.assert_allclose(int8.kth_distance(queries), exact.kth_distance(queries), atol=0.01)
    # Near-duplicates of training rows (confidently in scope): the similarity keeps its accuracy (distances
    # there, sqrt(2 - 2 x similarity), magnify it; they are far from any threshold).
    close = rng.normal(size=(300, 64)) * 0.1 + bank[:300]
    exact, int8 = Neighbors.fit(bank, 1), Neighbors.fit(bank, 1, int8=True)
    similarity = lambda n: 1 - n.kth_distance(close) ** 2 / 2  # noqa: E731
    np.testing.assert_allclose(similarity(int8), similarity(exact), atol=0.005)
    ScopeDetector(("knn",), -0.5, "unknown", 1.0, None, "head", int8).save(tmp_path)
    loaded = ScopeDetector.load(tmp_path)
    assert loaded is not None and loaded.neighbors is not None and loaded.neighbors.int8
    np.testing.assert_allclose(loaded.neighbors.kth_distance(queries), int8.kth_distance(queries))
    assert json.loads((tmp_path / "scope.json").read_text())["knn_int8"] is True


def test_knn_scores_the_kth_neighbour_and_its_bank_round_trips(tmp_path: Path) -> None:
    """knn: minus the distance between unit vectors to the k-th nearest training row, computed in chunks
    exactly as all at once; the bank ships as .npz (no pickle) and serving gets the same scores."""
    bank = np.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    queries = np.array([[5.0, 0.0], [1.0, 1.0]])
    nearest = Neighbors.fit(bank, k=1)
    np.testing.assert_allclose(nearest.kth_distance(queries), [0.0, np.sqrt(2 - np.sqrt(2))], atol=1e-6)
    second = Neighbors.fit(bank, k=2)  # (5, 0): the 2nd nearest unit vector is (0, 1), at sqrt(2)
    np.testing.assert_allclose(second.kth_distance(queries)[0], np.sqrt(2), atol=1e-6)
    rng = np.random.default_rng(0)
    many = rng.normal(size=(300, 8))
    wide = Neighbors.fit(rng.normal(size=(50, 8)), k=3)
    np.testing.assert_allclose(wide.kth_distance(many, chunk=7), wide.kth_distance(many), atol=1e-6)
    with pytest.raises(ValueError, match="k=4 needs between 1 and 3"):
        Neighbors.fit(bank, k=4)

    ScopeDetector(("knn",), -0.5, "unknown", 1.0, None, "layer_mean", second).save(tmp_path)
    loaded = ScopeDetector.load(tmp_path)
    assert loaded is not None and loaded.feature_kind == "layer_mean" and loaded.neighbors is not None
    assert loaded.neighbors.k == 2 and loaded.gaussian is None
    np.testing.assert_allclose(loaded.scores(np.zeros((2, 3)), queries), -second.kth_distance(queries))
    with pytest.raises(ValueError, match="knn method needs"):
        in_scope_scores("knn", np.zeros((2, 3)), None, 1.0, None, second)


def test_combined_methods_sum_scores_standardized_on_validation(tmp_path: Path) -> None:
    """oos.method: [knn, mahalanobis]: each part is divided by its own in-scope validation spread, so a
    method in large units (squared Mahalanobis distances) cannot drown the other; the statistics ship with
    the detector, and the combination still ranks far-away inputs below in-scope ones."""
    d = _constructed()
    gaussian = Gaussian.fit(d["feats"][:300], d["labels"][:300], 3)
    neighbors = Neighbors.fit(d["feats"][:300], k=1)
    base = ScopeDetector(("knn", "mahalanobis"), 0.0, "unknown", 1.0, gaussian, "head", neighbors)
    val = base.part_scores(d["logits"][300:450], d["feats"][300:450])
    stats = standardization(val)
    assert set(stats) == {"knn", "mahalanobis"} and stats["mahalanobis"][1] > 10 * stats["knn"][1]
    detector = replace(base, standardize=stats)
    combined = detector.scores(d["logits"][300:450], d["feats"][300:450])
    assert abs(combined.mean()) < 1e-9 and 1.0 < combined.std() <= 2.0  # two unit-variance parts
    inside = detector.scores(d["logits"][450:], d["feats"][450:])
    outside = detector.scores(d["oos_logits"], d["oos"])
    metrics = scope_metrics(
        inside, np.ones(len(inside), dtype=bool), outside, threshold_for_recall(inside, 0.95)
    )
    assert metrics["oos/auroc"] > 0.95, metrics
    with pytest.raises(ValueError, match="needs each part's validation mean and std"):
        base.scores(d["logits"][:5], d["feats"][:5])

    replace(detector, threshold=-1.5).save(tmp_path)
    loaded = ScopeDetector.load(tmp_path)
    assert loaded is not None and loaded.method == "knn+mahalanobis" and loaded.standardize == stats
    np.testing.assert_allclose(loaded.scores(d["oos_logits"], d["oos"]), outside)


def test_mean_pooled_features_ignore_padding_and_ship_with_the_detector(
    tmp_path: Path, tiny_model: str
) -> None:
    """oos.features: mean_pooled averages the encoder's last hidden states over real tokens only: a text's
    features do not depend on the longer texts padded into its batch; the detector remembers its features."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tuneflow.tasktypes.classification import ClassificationPredictor

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2).eval()
    predictor = ClassificationPredictor(model, AutoTokenizer.from_pretrained(tiny_model), ["a", "b"], 48)
    texts = ["hi", "where is my parcel that i ordered last week from your shop", "cancel my order please"]
    logits, pooled = predictor.forward(texts, batch_size=8, features="mean_pooled")
    assert pooled is not None and pooled.shape == (3, 32)
    alone = np.concatenate([predictor.forward([t], 1, "mean_pooled")[1] for t in texts])
    np.testing.assert_allclose(pooled, alone, atol=1e-5)
    _, head = predictor.forward(texts, batch_size=8, features="head")
    assert head is not None and not np.allclose(head, pooled, atol=1e-3)  # a different feature
    np.testing.assert_allclose(logits, predictor.forward(texts, 8)[0], atol=1e-5)

    gaussian = Gaussian.fit(np.concatenate([pooled] * 4), np.array([0, 1, 2] * 4), 3)
    ScopeDetector(("mahalanobis",), -5.0, "unknown", 1.0, gaussian, "mean_pooled").save(tmp_path)
    loaded = ScopeDetector.load(tmp_path)
    assert loaded is not None and loaded.feature_kind == "mean_pooled"
    served = ClassificationPredictor(model, predictor.tokenizer, ["a", "b"], 48, 1.0, loaded)
    out = served.predict(texts)
    np.testing.assert_allclose(out["oos_score"], -gaussian.min_distance(pooled), rtol=1e-4)
    assert ScopeDetector(("energy",), 0.0, "unknown").feature_kind is None  # logits are enough


def test_layer_averaged_features_ignore_padding_and_differ_from_the_last_layer(tiny_model: str) -> None:
    """features="layer_mean" (Avg-Avg) averages each layer's token mean over the transformer layers: padding
    in a batch does not move it, and it equals the layer-by-layer average computed by hand."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tuneflow.tasktypes.classification import ClassificationPredictor

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    predictor = ClassificationPredictor(model, tokenizer, ["a", "b"], 48)
    texts = ["hi", "where is my parcel that i ordered last week from your shop", "cancel my order please"]
    _, layered = predictor.forward(texts, batch_size=8, features="layer_mean")
    assert layered is not None and layered.shape == (3, 32)
    alone = np.concatenate([predictor.forward([t], 1, "layer_mean")[1] for t in texts])
    np.testing.assert_allclose(layered, alone, atol=1e-5)
    with torch.inference_mode():
        states = model(**tokenizer(texts[1:2], return_tensors="pt"), output_hidden_states=True).hidden_states
    by_hand = torch.stack([h[0].mean(0) for h in states[1:]]).mean(0).numpy()
    np.testing.assert_allclose(layered[1], by_hand, atol=1e-5)
    _, last = predictor.forward(texts, batch_size=8, features="mean_pooled")
    assert last is not None and not np.allclose(layered, last, atol=1e-3)
    # Every kind from one forward pass: the same logits and features as one pass per kind.
    logits, every = predictor.forward_kinds(texts, 8, ("head", "mean_pooled", "layer_mean"))
    _, head = predictor.forward(texts, 8, "head")
    np.testing.assert_allclose(logits, predictor.forward(texts, 8)[0], atol=1e-6)
    for kind, single in (("head", head), ("mean_pooled", last), ("layer_mean", layered)):
        np.testing.assert_allclose(every[kind], single, atol=1e-6)
    empty_logits, nothing = predictor.forward([], 8, "layer_mean")
    assert empty_logits.shape == (0, 2) and nothing is None
    with pytest.raises(ValueError, match="unknown feature kind 'cls'"):
        predictor.forward(texts, 8, "cls")


def test_bad_oos_settings_are_errors_naming_the_key(tmp_path: Path, tiny_model: str) -> None:
    demo = ROOT / "configs" / "demo.yaml"
    with pytest.raises(ConfigError) as err:
        load_config(demo, ["oos.method=cosine", "oos.target_in_scope_recall=1.5", "oos.threshold=3"])
    text = str(err.value)
    assert "oos.method" in text and "oos.target_in_scope_recall" in text and "oos.threshold" in text
    with pytest.raises(ConfigError, match="oos.features"):
        load_config(demo, ["oos.features=cls"])
    with pytest.raises(
        ConfigError, match=r"oos.features: mean_pooled only applies to method: mahalanobis or knn"
    ):
        load_config(demo, ["oos.method=energy", "oos.features=mean_pooled"])
    with pytest.raises(ConfigError, match=r"oos.knn_k only applies to method: knn"):
        load_config(demo, ["oos.knn_k=5"])
    with pytest.raises(ConfigError, match="oos.knn_k"):
        load_config(demo, ["oos.method=knn", "oos.knn_k=0"])
    assert load_config(demo, ["oos.method=knn", "oos.features=layer_mean", "oos.knn_k=3"]).oos.knn_k == 3
    with pytest.raises(ConfigError, match="a list combines two or more different methods"):
        load_config(demo, ["oos.method=[knn, knn]"])
    combined = load_config(demo, ["oos.method=[knn, mahalanobis]", "oos.features=layer_mean"]).oos
    assert combined.methods == ("knn", "mahalanobis")
    ner = ROOT / "configs" / "wnut17.yaml"
    with pytest.raises(ConfigError, match="data.oos_test"):
        load_config(ner, [f"data.oos_test={demo}"])
    # A fallback label the model is trained on, a missing out-of-scope file: data validation errors.
    from typer.testing import CliRunner

    from tuneflow.cli import app

    cfg = make_config(
        tmp_path,
        tiny_model,
        oos={"fallback_label": "greeting"},
        data={"oos_test": str(tmp_path / "missing.csv")},
    )
    result = CliRunner().invoke(app, ["validate", str(cfg)])
    assert result.exit_code != 0
    out = " ".join(result.output.split())
    assert "oos.fallback_label 'greeting' is also a label in train" in out
    assert "missing.csv" in out


@pytest.mark.integration
@pytest.mark.parametrize(
    ("method", "features", "shipped"),
    [
        ("mahalanobis", "head", ["scope_gaussian.npz"]),
        (["knn", "mahalanobis"], "layer_mean", ["scope_gaussian.npz", "scope_neighbors.npz"]),
    ],
)
def test_registered_model_answers_the_fallback(
    tmp_path: Path,
    tiny_model: str,
    prefect_harness: None,
    method: str | list[str],
    features: str,
    shipped: list[str],
) -> None:
    """Through the real flow: calibration and scope metrics logged, the detector shipped with the model,
    and the MLflow pyfunc answering ``unknown`` (with ``in_scope: false``) below the threshold."""
    import mlflow
    import pandas as pd

    from tuneflow.flows.finetune import finetune

    oos, oos_file = OFF_TOPIC, write_oos(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = make_config(
        tmp_path,
        tiny_model,
        name="scope-intents",
        tracking={"tracking_uri": uri},
        data={"oos_validation": str(oos_file), "oos_test": str(oos_file)},
        oos={"method": method, "features": features},  # methods that ship fitted state with the model
        gates={"max_val_degradation": None, "min_oos_recall": 0.0},
    )
    result = finetune(str(cfg), ["train.max_epochs=2"])
    m = result.metrics
    for key in ("calibration/temperature", "calibration/ece", "calibration/ece_before", "oos/threshold"):
        assert key in m, key
    for key in ("oos/recall", "oos/precision", "oos/auroc", "oos/fpr_at_95", "oos/in_scope_accuracy"):
        assert 0 <= m[key] <= 1, key
    assert any(g.name.startswith("min out-of-scope recall") for g in result.promotion.gates)

    mlflow.set_tracking_uri(uri)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/scope-intents/{result.model.version}"))
    export = local / "artifacts" / "export"
    assert json.loads((export / "scope.json").read_text())["fallback_label"] == "unknown"
    assert (export / "calibration.json").is_file() and all((export / f).is_file() for f in shipped)
    texts = ["where is my parcel", *oos]
    out = pd.DataFrame(mlflow.pyfunc.load_model(str(local)).predict(texts))
    assert {"label", "score", "in_scope", "oos_score", "threshold"} <= set(out.columns)
    assert (out.loc[~out["in_scope"], "label"] == "unknown").all()
    assert (out["in_scope"] == (out["oos_score"] >= out["threshold"])).all()
    # Raise the threshold above every score: every query falls back.
    spec = json.loads((export / "scope.json").read_text())
    (export / "scope.json").write_text(json.dumps({**spec, "threshold": 1e30}))
    out = pd.DataFrame(mlflow.pyfunc.load_model(str(local)).predict(texts))
    assert (out["label"] == "unknown").all() and not out["in_scope"].any()


@pytest.mark.integration
def test_without_off_topic_examples_the_default_detector_is_knn_keeping_90_percent(
    tmp_path: Path, tiny_model: str, prefect_harness: None
) -> None:
    """The default fallback: knn on layer-averaged features, its threshold keeping 90% of the in-scope
    validation questions (logged), shipped with the registered model."""
    import mlflow

    from tuneflow.flows.finetune import finetune

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = make_config(tmp_path, tiny_model, name="default-scope", tracking={"tracking_uri": uri})
    result = finetune(str(cfg), ["train.max_epochs=1"])
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["default-scope"], output_format="list")
    m = next(r.data.metrics for r in runs if "oos/val_in_scope_recall" in r.data.metrics)
    assert 0.9 <= m["oos/val_in_scope_recall"] < 0.95, m  # at least 90%, up to one step of a small split
    local = Path(mlflow.artifacts.download_artifacts(f"models:/default-scope/{result.model.version}"))
    spec = json.loads((local / "artifacts" / "export" / "scope.json").read_text())
    assert (spec["method"], spec["features"]) == ("knn", "layer_mean")
    assert spec["threshold"] == pytest.approx(m["oos/threshold"], rel=1e-5)  # MLflow keeps metrics in float32
