"""The labelling loop: picking texts (uncertain, varied), the served model's opt-in request log, labelled
rounds joining train with their lineage, and ``tuneflow label`` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tests.conftest import demo_rows, make_config, write_csv
from tuneflow.cli import app
from tuneflow.config import ConfigError
from tuneflow.data.selection import margins, pick
from tuneflow.tasktypes.resolve import load_config


def test_margins_are_the_gap_between_the_two_likeliest_labels() -> None:
    proba = np.array([[0.5, 0.3, 0.2], [0.34, 0.33, 0.33], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(margins(proba), [0.2, 0.01, 1.0], atol=1e-9)


def test_uncertain_diverse_picks_spread_over_clusters_instead_of_near_copies() -> None:
    """Three tight groups; the most uncertain texts all sit in group 0. Uncertainty alone takes three near
    copies from it; the default takes one from each group, the most uncertain first."""
    rng = np.random.default_rng(0)
    centres = np.eye(3) * 10
    feats = np.concatenate([centres[g] + rng.normal(0, 0.1, (20, 3)) for g in range(3)])
    top = np.concatenate([np.full(20, 0.40), np.full(20, 0.60), np.full(20, 0.70)])
    top[:20] -= np.linspace(0, 0.05, 20)  # group 0 holds the 20 smallest margins
    proba = np.stack([top, 1 - top - 0.05, np.full(60, 0.05)], axis=1)
    by_margin = pick(proba, feats, 3, strategy="uncertain")
    assert (by_margin < 20).all()
    picked = pick(proba, feats, 3, seed=0, prefilter=20)
    assert sorted(p // 20 for p in picked) == [0, 1, 2]
    assert margins(proba[picked]).tolist() == sorted(margins(proba[picked]).tolist())
    random = pick(proba, feats, 5, seed=3, strategy="random")
    assert len(set(random)) == 5 and (random == pick(proba, feats, 5, seed=3, strategy="random")).all()
    assert len(pick(proba, feats, 100)) == 60  # fewer rows than asked: all of them
    with pytest.raises(ValueError, match="unknown strategy"):
        pick(proba, feats, 3, strategy="entropy")


def _rounds_config(tmp_path: Path, tiny_model: str, rounds: list, **sections: dict) -> Path:
    rows = demo_rows("train")[::4]  # every intent
    train = write_csv(tmp_path / "train.csv", rows)
    return make_config(tmp_path, tiny_model, train_file=train, data={"labelled": rounds}, **sections)


def test_labelled_rounds_join_train_after_validation_and_test_are_split_off(
    tmp_path: Path, tiny_model: str
) -> None:
    """Validation and test are the same examples with or without rounds; a round may bring a label the
    train file lacks; the run's lineage names each round's examples with file and line."""
    from tuneflow.data.splits import round_lineage

    (tmp_path / "labels").mkdir()
    write_csv(
        tmp_path / "labels" / "round 1.csv", [("freeze my card now", "payment_issue"), ("hi!", "greeting")]
    )
    write_csv(tmp_path / "labels" / "r2.csv", [("can I speak to a human", "talk_to_agent")] * 3)
    without = load_config(_rounds_config(tmp_path, tiny_model, []), [])
    cfg_path = _rounds_config(
        tmp_path, tiny_model, ["labels/round 1.csv", {"path": "labels/r2.csv", "round": "second"}]
    )
    cfg = load_config(cfg_path, [])
    assert [s.round_name for s in cfg.data.labelled] == ["round-1", "second"]
    assert Path(cfg.data.labelled[0].path).is_absolute()  # resolved against the config's folder
    base = without.kind.data.load_splits(without.data, 0)
    grown = cfg.kind.data.load_splits(cfg.data, 0)
    pd.testing.assert_frame_equal(base.validation, grown.validation)
    pd.testing.assert_frame_equal(base.test, grown.test)
    assert len(grown.train) == len(base.train) + 5 and "talk_to_agent" in grown.labels
    lineage = round_lineage(grown)
    assert lineage["round"].tolist() == ["round-1", "round-1", "second", "second", "second"]
    assert lineage["line"].tolist() == [2, 3, 2, 3, 4] and lineage["file"].str.endswith("r2.csv").sum() == 3


def test_a_round_left_unlabelled_or_named_twice_is_an_error_naming_it(
    tmp_path: Path, tiny_model: str
) -> None:
    write_csv(tmp_path / "r1.csv", [("freeze my card", "payment_issue"), ("where is my parcel", "")])
    result = CliRunner().invoke(app, ["validate", str(_rounds_config(tmp_path, tiny_model, ["r1.csv"]))])
    out = " ".join(result.output.split())
    assert result.exit_code == 3 and "r1.csv" in out and "missing (NaN/empty) label(s)" in out and "3" in out
    with pytest.raises(ConfigError, match="round name.*r1.*twice"):
        load_config(_rounds_config(tmp_path, tiny_model, ["r1.csv", "r1.csv"]), [])


def test_the_request_log_is_off_unless_asked_and_reads_back_what_was_answered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuneflow.registry import requestlog

    monkeypatch.delenv(requestlog.ENV, raising=False)
    assert requestlog.log_path() is None
    log = tmp_path / "requests.jsonl"
    monkeypatch.setenv(requestlog.ENV, str(log))
    assert requestlog.log_path() == log
    answers = pd.DataFrame(
        {"label": ["a", "unknown"], "score": np.array([0.9, 0.2]), "in_scope": [True, False]}
    )
    requestlog.append(log, ["first", "second"], answers, "sequence_classification")
    back = requestlog.read_requests(log)
    assert back[["text", "label", "in_scope", "line"]].values.tolist() == [
        ["first", "a", True, 1],
        ["second", "unknown", False, 2],
    ]
    with log.open("a") as out:
        out.write('{"text": "cut off by a kill')  # a server killed mid-write: skipped
    assert len(requestlog.read_requests(log)) == 2
    log.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(requestlog.RequestLogError, match=r"requests.jsonl:2: not a JSON line"):
        requestlog.read_requests(log)


@pytest.mark.integration
def test_label_picks_from_a_pool_and_served_answers_then_the_round_trains_with_lineage(
    tmp_path: Path, tiny_model: str, prefect_harness: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model served with the request log on; ``tuneflow label`` picks from an unlabelled file and that log
    (never texts the data has), writes the config's columns for the annotator (CSV and Label Studio); the
    labelled file listed under data.labelled trains the next run, whose lineage names the round."""
    import mlflow

    from tuneflow.flows.finetune import finetune
    from tuneflow.registry import requestlog

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sections = {
        "tracking": {"tracking_uri": uri},
        "oos": {"enabled": True},
        "gates": {"max_val_degradation": None},
    }
    cfg = make_config(tmp_path, tiny_model, name="loop", **sections)
    first = finetune(str(cfg), ["train.max_epochs=1"])
    model = f"models:/loop/{first.model.version}"
    log = tmp_path / "requests.jsonl"
    monkeypatch.setenv(requestlog.ENV, str(log))
    served = mlflow.pyfunc.load_model(model)
    asked = ["is my card blocked forever", "do you sell pizza", "where is my parcel"]
    served.predict(asked)
    assert [json.loads(line)["text"] for line in log.read_text().splitlines()] == asked
    monkeypatch.delenv(requestlog.ENV)

    known = pd.read_csv(tmp_path / "train.csv")["text"][0]  # already in the data: never offered
    pool = write_csv(tmp_path / "pool.csv", [(t, "") for t in [known, "lost my wallet", "hello there", "hi"]])
    out = tmp_path / "round1.csv"
    args = ["label", str(cfg), "--pool", str(pool), "--served", str(log), "--below", "1.0", "--model", model]
    result = CliRunner().invoke(app, [*args, "--output", str(out), "-n", "4"])
    assert result.exit_code == 0, result.output
    picked = pd.read_csv(out, keep_default_na=False)
    assert list(picked.columns[:4]) == ["text", "intent", "suggested", "confidence"]
    assert len(picked) == 4 and known not in set(picked["text"]) and (picked["intent"] == "").all()
    assert set(picked["source"]) <= {"pool", "served"} and "labelled:" in result.output
    assert "picked 4 of 4 candidates (1 from --pool, 3 from --served; 3 already in the data" in result.output
    only_known = write_csv(tmp_path / "known.csv", [(known, "")])
    spent = CliRunner().invoke(
        app, [*args[:2], "--pool", str(only_known), "--model", model, "--output", "x.csv"]
    )
    assert (
        spent.exit_code == 2 and "already in the data" in spent.output and not (tmp_path / "x.csv").exists()
    )
    again = CliRunner().invoke(app, [*args, "--output", str(out)])
    assert again.exit_code == 2 and "exists" in again.output  # a file being labelled is never overwritten
    studio = CliRunner().invoke(app, [*args, "--output", str(tmp_path / "round1.json"), "-n", "2"])
    assert studio.exit_code == 0, studio.output
    tasks = json.loads((tmp_path / "round1.json").read_text())
    assert len(tasks) == 2 and tasks[0]["predictions"][0]["result"][0]["from_name"] == "intent"
    assert 'toName="text"' in (tmp_path / "round1.xml").read_text()

    picked["intent"] = picked["suggested"]  # the annotator agrees with the model
    picked.to_csv(out, index=False)
    second = finetune(str(cfg), ["train.max_epochs=1", f"data.labelled=[{out}]"])
    client = mlflow.MlflowClient(uri)
    run_id = client.get_model_version("loop", second.model.version).run_id
    run = client.get_run(run_id)
    assert run.data.tags["tuneflow.labelled_rounds"] == "round1 (4)"
    contexts = {tag.value for i in run.inputs.dataset_inputs for tag in i.tags}
    assert "train:round1" in contexts
    lineage = pd.read_csv(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/data/rounds.csv"))
    assert lineage["text"].tolist() == picked["text"].tolist() and set(lineage["round"]) == {"round1"}


def test_label_refuses_bad_requests_before_loading_a_model(tmp_path: Path, tiny_model: str) -> None:
    cfg = make_config(tmp_path, tiny_model)
    runner = CliRunner()
    nothing = runner.invoke(app, ["label", str(cfg), "--output", str(tmp_path / "r.csv")])
    assert nothing.exit_code == 2 and "nothing to pick from" in nothing.output
    wrong = runner.invoke(app, ["label", str(cfg), "--pool", str(cfg), "--output", str(tmp_path / "r.txt")])
    assert wrong.exit_code == 2 and ".csv" in wrong.output
    missing = runner.invoke(
        app, ["label", str(cfg), "--pool", "nope.csv", "--output", str(tmp_path / "r.csv")]
    )
    assert missing.exit_code == 2 and "nope.csv" in missing.output
