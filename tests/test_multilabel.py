"""Multi-label classification: label sets read in every usual spelling, recognised by `tuneflow init`
without catching single-label data, trained with per-label thresholds, registered and served as label sets."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import demo_rows, write_csv
from tuneflow.tasktypes.multilabel import fit_thresholds, parse_labels


def multilabel_rows(n: int, seed: int) -> list[tuple[str, str]]:
    """Demo utterances, 40% of them joined in pairs of different intents labelled with both ("a, b")."""
    rng, rows = random.Random(seed), demo_rows("train")
    out = []
    for _ in range(n):
        (t1, l1), (t2, l2) = rng.sample(rows, 2)
        out.append((f"{t1} {t2}", f"{l1}, {l2}") if rng.random() < 0.4 and l1 != l2 else (t1, l1))
    return out


def _cli(*args: str):  # noqa: ANN202
    from tuneflow.cli import app

    return CliRunner().invoke(app, list(args))


def _goemotions_like(folder: Path, n: int = 240) -> Path:
    """GoEmotions' layout: header-less text<TAB>label indices<TAB>comment id, and a labels.txt."""
    folder.mkdir()
    rows = multilabel_rows(n, 1)
    names = sorted({x for _, labels in rows for x in labels.split(", ")})
    (folder / "labels.txt").write_text("\n".join(names) + "\n")
    for split, part in (("train", rows[: n * 3 // 4]), ("test", rows[n * 3 // 4 :])):
        lines = [
            f"{text}\t{','.join(str(names.index(x)) for x in labels.split(', '))}\tc{i}"
            for i, (text, labels) in enumerate(part)
        ]
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return folder


def test_label_cells_in_every_usual_spelling() -> None:
    assert parse_labels('["joy", "love"]') == ("joy", "love")
    assert parse_labels("joy; love |anger") == ("joy", "love", "anger")
    assert parse_labels(["joy", "joy"]) == ("joy",)
    assert parse_labels("4,2", ["a", "b", "c", "d", "e"]) == ("e", "c")
    assert parse_labels("[]") == ()
    assert parse_labels("") is None and parse_labels(None) is None
    assert parse_labels("4,9", ["a", "b", "c", "d", "e"]) is None  # 9 names no label
    assert parse_labels("[broken") is None


def test_each_label_gets_the_threshold_that_maximizes_its_f1() -> None:
    import numpy as np

    truth = np.array([[1, 0], [1, 0], [0, 1], [0, 0]])
    proba = np.array([[0.3, 0.1], [0.25, 0.2], [0.1, 0.9], [0.05, 0.6]])
    thresholds = fit_thresholds(proba, truth)
    assert 0.1 < thresholds[0] <= 0.25  # a rare label's probabilities stay low: 0.5 would never answer it
    assert 0.6 < thresholds[1] <= 0.9


def test_a_fresh_head_starts_at_each_labels_base_rate(tiny_model: str) -> None:
    """Before its first step the sigmoid head predicts each label's share of the training set, not 0.5 (which
    spent GoEmotions' first epoch on learning the base rates: validation macro F1 0.0 after it)."""
    import torch

    from tuneflow.data.encoding import Encoded, EncodedData
    from tuneflow.fitting.loading import load_pretrained
    from tuneflow.tasktypes import task_type

    kind, labels = task_type("multi_label_classification"), ["joy", "anger", "grief"]
    model, _ = load_pretrained(kind.name, tiny_model, labels)
    rows = [[1.0, 0.0, 0.0]] * 6 + [[0.0, 1.0, 0.0]] * 3 + [[1.0, 0.0, 1.0]]
    data = EncodedData(Encoded([[1]] * 10, rows), Encoded([], []), labels, None, 8, kind.name)
    kind.training.init_head(model, data)
    assert torch.sigmoid(model.classifier.bias).tolist() == pytest.approx([0.7, 0.3, 0.1], abs=1e-5)


def test_init_tells_label_sets_from_single_labels(tmp_path: Path, tiny_model: str) -> None:
    sets = tmp_path / "sets"
    sets.mkdir()
    write_csv(sets / "train.csv", multilabel_rows(200, 0), header=("comment", "labels"))
    single = tmp_path / "single"
    single.mkdir()
    # Intent names with commas in prose do not make single-label data multi-label.
    write_csv(single / "train.csv", demo_rows("train")[:200], header=("text", "labels"))
    goemotions = _goemotions_like(tmp_path / "goemotions")
    tasks = {}
    for folder in (sets, single, goemotions):
        out = tmp_path / f"{folder.name}.yaml"
        result = _cli("init", str(folder), "--model", tiny_model, "--output", str(out))
        assert result.exit_code == 0, result.output
        tasks[folder.name] = yaml.safe_load(out.read_text())
    assert tasks["sets"]["task"] == "multi_label_classification"
    assert tasks["single"]["task"] == "sequence_classification"
    drafted = tasks["goemotions"]
    assert drafted["task"] == "multi_label_classification"
    assert drafted["data"]["label_names"] == str(goemotions / "labels.txt")
    assert drafted["data"]["train"]["column_names"] == ["text", "label", "column_3"]
    assert drafted["gates"]["metric"] == "f1_macro"
    assert (
        "pooling" not in drafted["model"] and "lr" not in drafted["train"]
    )  # a model we measured nothing on
    # The bundled sentence encoder: mean pooling and lr 2e-4, what GoEmotions chose (bench/HISTORY.md).
    out = tmp_path / "bundled.yaml"
    result = _cli("init", str(sets), "--output", str(out))
    assert result.exit_code == 0, result.output
    bundled = yaml.safe_load(out.read_text())
    assert (bundled["model"]["pooling"], bundled["train"]["lr"]) == ("mean", 2.0e-4)


def test_a_label_index_the_names_file_lacks_is_exit_3_naming_the_line(
    tmp_path: Path, tiny_model: str
) -> None:
    folder = _goemotions_like(tmp_path / "data")
    out = tmp_path / "c.yaml"
    assert _cli("init", str(folder), "--model", tiny_model, "--output", str(out)).exit_code == 0
    train = folder / "train.tsv"
    lines = train.read_text().splitlines()
    lines[4] = lines[4].split("\t")[0] + "\t3,99\tx"
    train.write_text("\n".join(lines) + "\n")
    result = _cli("validate", str(out))
    assert result.exit_code == 3, result.output
    assert "not indices into data.label_names" in result.output and "line(s) 5" in result.output
    assert str(train) in result.output


def test_goemotions_layout_to_a_served_label_set(
    tmp_path: Path, tiny_model: str, tracking_uri: str, prefect_harness: None
) -> None:
    """init + run on GoEmotions' layout: registered, thresholds shipped with the weights, per-label report
    logged, and the registered model (loaded as MLflow serves it) answers label sets with scores."""
    import mlflow
    from mlflow import MlflowClient

    folder = _goemotions_like(tmp_path / "emotions", n=320)
    config = tmp_path / "emotions.yaml"
    assert _cli("init", str(folder), "--model", tiny_model, "--output", str(config)).exit_code == 0
    run = _cli("run", str(config), "--set", "train.max_epochs=3", "--set", "train.lr=0.003")
    assert run.exit_code == 0, run.output
    assert "test/f1_macro" in run.output
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    (version,) = client.search_model_versions("name = 'emotions'")
    metrics = client.get_run(version.run_id).data.metrics
    assert 0 <= metrics["test/f1_macro"] <= 1 and "test/f1_micro" in metrics
    assert metrics["calibration/val_f1_macro_tuned"] >= metrics["calibration/val_f1_macro_at_0.5"]
    artifacts = {a.path for a in client.list_artifacts(version.run_id)}
    assert {"per_label_metrics.csv", "worst_errors.csv"} <= artifacts, artifacts
    model = mlflow.pyfunc.load_model(f"models:/emotions/{version.version}")
    out = model.predict(["I want to check my balance please", "thanks a lot"])
    assert list(out.columns) == ["labels", "scores"] and len(out) == 2
    names = set((folder / "labels.txt").read_text().split())
    for labels, scores in zip(out["labels"], out["scores"], strict=True):
        assert labels and set(labels) <= names and len(scores) == len(labels)  # at least one label each
        assert list(scores) == sorted(scores, reverse=True)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/emotions/{version.version}"))
    thresholds = json.loads(next(local.rglob("thresholds.json")).read_text())
    assert set(thresholds["thresholds"]) == names and thresholds["at_least_one"] is True


@pytest.mark.parametrize("spelling", ["json", "semicolon"])
def test_label_sets_read_the_same_in_json_and_separated_cells(tmp_path: Path, spelling: str) -> None:
    from tuneflow.config import DataConfig, FileSpec
    from tuneflow.tasktypes import task_type

    rows = multilabel_rows(30, 2)
    if spelling == "json":
        rows = [(t, json.dumps(labels.split(", "))) for t, labels in rows]
    else:
        rows = [(t, labels.replace(", ", ";")) for t, labels in rows]
    path = write_csv(tmp_path / "train.csv", rows, header=("text", "labels"))
    frame, problems = task_type("multi_label_classification").data.read(
        FileSpec(path=str(path)), DataConfig(train=FileSpec(path=str(path)), label_column="labels")
    )
    assert not problems
    assert [", ".join(s) for s in frame["labels"]] == [labels for _, labels in multilabel_rows(30, 2)]
