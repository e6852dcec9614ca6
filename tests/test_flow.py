"""The finetune flow end to end on a tiny random model: MLflow state, registry, pyfunc, CLI, failures."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from tests.conftest import demo_rows, invoke, make_config, mlflow_process, write_csv
from tuneflow.cli import app
from tuneflow.store import registered, tracking

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, tiny_model: str, prefect_harness: None) -> dict:
    """One successful flow run shared by the assertions below (training is the expensive part)."""
    from unittest import mock

    import mlflow

    from tuneflow import config as config_package
    from tuneflow.flows.finetune import finetune
    from tuneflow.terminal import load_config_or_exit

    tmp = tmp_path_factory.mktemp("flow")
    uri = f"sqlite:///{tmp}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    ood = write_csv(tmp / "ood.csv", demo_rows("test")[:30])
    cfg = make_config(
        tmp,
        tiny_model,
        tracking={"tracking_uri": uri},
        data={"extra_eval": [{"name": "ood", "path": str(ood)}]},
    )
    parses: list[str] = []
    read = config_package.read_config

    def counted(path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        parses.append(str(path))
        return read(path, *args, **kwargs)

    with mock.patch.object(config_package, "read_config", counted):
        load_config_or_exit(cfg, ["train.max_epochs=3"])  # what `tuneflow run` checks before Prefect starts
        result = finetune(str(cfg), ["train.max_epochs=3"])
    return {"result": result, "uri": uri, "tmp": tmp, "config": cfg, "parses": parses}


def test_the_config_is_parsed_once_per_run(finished: dict) -> None:
    """The CLI's check before Prefect starts and the flow share one parsed config; every stage below gets it
    with its task type (``cfg.kind``)."""
    assert finished["parses"] == [str(finished["config"])]


def _client(uri: str) -> MlflowClient:
    tracking.configure(uri)
    return MlflowClient(tracking_uri=uri)


def test_parent_run_has_tags_params_and_inputs(finished: dict) -> None:
    c = _client(finished["uri"])
    run = c.get_run(finished["result"].run_id)
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    for key in (
        "tuneflow.config_hash",
        "tuneflow.data_fingerprint",
        "tuneflow.base_model",
        "tuneflow.task",
        "tuneflow.git_commit",
        "prefect.flow_run_id",
    ):
        assert tags.get(key) not in (None, "", "none"), key
    assert run.data.params["train.lr"] == "0.003"
    assert run.data.params["model.max_length"] == "32"
    contexts = {i.tags[0].value for i in run.inputs.dataset_inputs}
    assert {"train", "validation", "test", "eval:ood"} <= contexts


def test_metrics_per_step_per_epoch_and_test(finished: dict) -> None:
    c = _client(finished["uri"])
    run_id = finished["result"].run_id
    m = c.get_run(run_id).data.metrics
    for key in (
        "test/accuracy",
        "test/f1_macro",
        "test/f1_weighted",
        "fit/train_val_gap",
        "serving/latency_p50_ms",
        "serving/latency_p95_ms",
        "serving/throughput_examples_per_s",
        "ood/ood/accuracy",
        "fit/gap_val_accuracy",
    ):
        assert key in m, key
    # Every metric sits in a chart section of the MLflow UI (the prefix before "/"), none twice.
    sections = {k.split("/")[0] for k in m}
    assert all("/" in k for k in m), sorted(k for k in m if "/" not in k)
    known = {
        "train",
        "val",
        "test",
        "ood",
        "fit",
        "serving",
        "timing",
        "model",
        "calibration",
        "oos",
        "behavior",
        "memory",
    }
    known.add("system")  # MLflow's own CPU / memory sampling only: tuneflow's bookkeeping is timing/, model/
    assert not [k for k in m if k.startswith("system/") and ("time" in k or "params" in k)]
    assert sections <= known, sections
    assert m["memory/peak_train_mb"] > 0 and m["memory/peak_evaluate_mb"] > 0
    assert not any(k.startswith(("validation", "best_")) for k in m)
    assert 0 <= m["test/accuracy"] <= 1 and m["serving/latency_p95_ms"] >= m["serving/latency_p50_ms"] > 0
    steps = [x.step for x in c.get_metric_history(run_id, "train/loss")]
    assert len(steps) >= 5 and steps == sorted(steps)
    assert len(c.get_metric_history(run_id, "train/lr")) >= 5
    assert len(c.get_metric_history(run_id, "val/f1_macro")) == 3  # one point per epoch


def test_artifacts_exist_and_parse(finished: dict, tmp_path: Path) -> None:
    c = _client(finished["uri"])
    run_id = finished["result"].run_id
    local = Path(c.download_artifacts(run_id, "", str(tmp_path)))
    report = json.loads((local / "validation" / "report.json").read_text())
    assert report["ok"] is True and report["stats"]["num_classes"] == 10
    assert "# Data validation: passed" in (local / "validation" / "report.md").read_text()
    per_class = pd.read_csv(local / "per_class_metrics.csv")
    assert (
        set(per_class.columns) == {"label", "precision", "recall", "f1", "support"} and len(per_class) == 10
    )
    worst = pd.read_csv(local / "worst_errors.csv")
    assert {"line", "text", "label", "predicted", "p_predicted"} <= set(worst.columns)
    for png in ("confusion_matrix.png", "learning_curves.png"):
        assert (local / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "train:" in (local / "config" / "resolved.yaml").read_text()


def test_registered_version_and_pyfunc_predicts_labels(finished: dict) -> None:
    import mlflow

    c = _client(finished["uri"])
    model = finished["result"].model
    mv = c.get_model_version(model.name, model.version)
    assert mv.run_id == finished["result"].run_id
    assert mv.tags["tuneflow.data_fingerprint"]
    # The registry's pages say what a version is and what the aliases mean, without opening the run.
    accuracy = finished["result"].metrics["test/accuracy"]
    assert (
        mv.description.startswith(f"test accuracy {accuracy:.4f}, ")
        and "; sequence_classification from " in mv.description
    )
    assert mv.run_id in mv.description
    assert f"models:/{model.name}@champion" in c.get_registered_model(model.name).description
    pyfunc = mlflow.pyfunc.load_model(f"models:/{model.name}/{model.version}")
    out = pyfunc.predict(["where is my parcel", "hello there"])
    labels = {label for _, label in demo_rows("train")}
    assert list(out.columns) == ["label", "score", "in_scope", "oos_score", "threshold"] and len(out) == 2
    # A known intent, or the out-of-scope fallback exactly where the score is below the threshold.
    assert set(out.loc[out["in_scope"], "label"]) <= labels and set(out.loc[~out["in_scope"], "label"]) <= {
        "unknown"
    }
    assert ((out["score"] > 0) & (out["score"] <= 1)).all()
    # The predict type hints are the signature: a non-string is refused with the reason (HTTP 400 when
    # served), never answered.
    with pytest.raises(mlflow.exceptions.MlflowException, match="Expected type str, but got int"):
        pyfunc.predict([42])


def test_the_mlflow_ui_meets_a_readable_run(finished: dict) -> None:
    """What a person comparing runs sees: the model-training view, a recognizable run name, User/Source,
    only the params that define this run, the compare-view files at the top, the logged model registered."""
    c = _client(finished["uri"])
    result = finished["result"]
    run = c.get_run(result.run_id)
    experiment = c.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    # Start time to the second and what it did first (the run list shows ~24 characters), not "brave-otter".
    assert re.fullmatch(r"\d\d-\d\d \d\d:\d\d:\d\d fine-tune · tiny-intents", run.info.run_name)
    assert run.data.tags["mlflow.user"] and run.data.tags["mlflow.source.name"].startswith(
        "tuneflow finetune"
    )
    params = run.data.params
    assert not any(k.startswith(("search.", "generation.", "data.tags_column")) for k in params)
    assert "None" not in params.values() and "" not in params.values() and params["train.monitor"]
    top = {a.path for a in c.list_artifacts(result.run_id)}
    assert {"confusion_matrix.png", "learning_curves.png", "per_class_metrics.csv"} <= top
    mv = c.get_model_version(result.model.name, result.model.version)
    # The version's source is the logged model, whose page lists the version (the UI reads this tag).
    model_id = mv.source.removeprefix("models:/")
    assert mv.source.startswith("models:/m-")
    assert json.loads(c.get_logged_model(model_id).tags["mlflow.modelVersions"]) == [
        {"name": result.model.name, "version": result.model.version}
    ]
    assert mv.tags["tuneflow.config_hash"] == run.data.tags["tuneflow.config_hash"]  # one hash per run
    value = run.data.metrics["test/accuracy"]
    assert value == float(f"{value:.7g}")  # no float32 noise (1.0000001192)


def test_exported_model_files_are_readable_by_others(finished: dict, tmp_path: Path) -> None:
    import stat

    _client(finished["uri"])
    model = finished["result"].model
    local = Path(registered.download_export(f"models:/{model.name}/{model.version}", tmp_path))
    for path in local.iterdir():
        assert path.stat().st_mode & stat.S_IROTH, path


def test_the_export_is_a_plain_hugging_face_model(finished: dict, tmp_path: Path) -> None:
    """Whoever deploys without MLflow or tuneflow: the export folder loads with ``transformers.pipeline``."""
    from transformers import pipeline

    _client(finished["uri"])
    model = finished["result"].model
    export = registered.download_export(f"models:/{model.name}/{model.version}", tmp_path)
    classify = pipeline("text-classification", model=str(export), tokenizer=str(export))
    out = classify(["where is my parcel"])
    assert out[0]["label"] in {label for _, label in demo_rows("train")} and 0 < out[0]["score"] <= 1


def test_cli_scores_a_file(finished: dict, tmp_path: Path) -> None:
    model = finished["result"].model
    src = write_csv(tmp_path / "in.csv", demo_rows("test")[:40], header=("utterance", "intent"))
    args = ["predict", "--model", f"models:/{model.name}/{model.version}", "--tracking-uri", finished["uri"]]
    missing = CliRunner().invoke(app, [*args, "--input", str(src), "--output", str(tmp_path / "o.csv")])
    assert missing.exit_code == 2 and "no column 'text'" in missing.output and "utterance" in missing.output
    out = tmp_path / "preds.csv"
    ok = CliRunner().invoke(app, [*args, "--input", str(src), "--column", "utterance", "--output", str(out)])
    assert ok.exit_code == 0, ok.output
    preds = pd.read_csv(out)
    assert len(preds) == 40 and {"utterance", "intent", "predicted_label", "predicted_score"} <= set(
        preds.columns
    )
    labels = {label for _, label in demo_rows("train")}
    assert set(preds["predicted_label"]) <= labels | {"unknown"}
    assert (preds["predicted_in_scope"] == (preds["predicted_label"] != "unknown")).all()


def test_cli_predict(finished: dict) -> None:
    model = finished["result"].model
    result = CliRunner().invoke(
        app,
        [
            "predict",
            "--model",
            f"models:/{model.name}/{model.version}",
            "--tracking-uri",
            finished["uri"],
            "cancel my order",
        ],
    )
    assert result.exit_code == 0, result.output
    label, score, scope, text = result.output.strip().splitlines()[-1].split("\t")
    assert (
        label in {lbl for _, lbl in demo_rows("train")} | {"unknown"}
        and text == "cancel my order"
        and 0 < float(score) <= 1
    )
    assert (
        scope.startswith("in scope (" if label != "unknown" else "out of scope (") and "vs threshold" in scope
    )


def test_prefect_markdown_artifact(finished: dict) -> None:
    from prefect.artifacts import Artifact

    artifact = Artifact.get("finetune-tiny-intents")
    assert artifact is not None and finished["result"].run_id in artifact.data


def _bad_data_cases(tmp: Path) -> dict[str, tuple[Path, str]]:
    good = demo_rows("train")
    empty = [("   ", good[0][1])] + good[1:]
    unseen = write_csv(tmp / "test_unseen.csv", [("hi", "no_such_intent")])
    return {
        "empty text": (write_csv(tmp / "empty.csv", empty), "empty or whitespace-only"),
        "unseen label": (write_csv(tmp / "ok.csv", good), "never seen in train: 'no_such_intent'"),
        "missing file": (tmp / "missing.csv", "file not found"),
        "_unseen_test": (unseen, ""),
    }


@pytest.mark.parametrize("case", ["empty text", "unseen label", "missing file"])
def test_bad_data_exits_3_and_registers_nothing(
    case: str, tmp_path: Path, tiny_model: str, prefect_harness: None
) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cases = _bad_data_cases(tmp_path)
    train, expected = cases[case]
    test = cases["_unseen_test"][0] if case == "unseen label" else None
    cfg = make_config(
        tmp_path,
        tiny_model,
        name="bad-data",
        train_file=train,
        test_file=test,
        tracking={"tracking_uri": uri},
    )
    result = CliRunner().invoke(app, ["run", str(cfg)])
    assert result.exit_code == 3, result.output
    assert expected in " ".join(result.output.split())
    c = _client(uri)
    assert registered.count_versions("bad-data") == 0
    exp = c.get_experiment_by_name("bad-data")
    # Caught by the CLI's pre-flight check, before Prefect starts: no run exists.
    assert exp is None or not c.search_runs([exp.experiment_id])
    if case == "missing file":
        return
    # A flow started without the CLI (a deployment, Python) fails in its validation stage instead: the run
    # is FAILED, with its report, and nothing is registered.
    from tuneflow.data.validation import DataValidationError
    from tuneflow.flows.finetune import finetune

    with pytest.raises(DataValidationError, match=expected.split(":")[0]):
        finetune(str(cfg))
    exp = c.get_experiment_by_name("bad-data")
    runs = c.search_runs([exp.experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert runs[0].data.tags["tuneflow.validation"] == "failed"
    assert "report.json" in {Path(a.path).name for a in c.list_artifacts(runs[0].info.run_id, "validation")}


def test_unloadable_model_exits_4(tmp_path: Path, prefect_harness: None) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = make_config(
        tmp_path, str(tmp_path / "no-model-here"), name="no-model", tracking={"tracking_uri": uri}
    )
    result = CliRunner().invoke(app, ["run", str(cfg)])
    assert result.exit_code == 4, result.output
    assert "no-model-here does not exist" in " ".join(result.output.split())
    tracking.configure(uri)
    assert registered.count_versions("no-model") == 0


def test_the_logged_model_serves_over_rest_and_refuses_bad_requests(finished: dict, tmp_path: Path) -> None:
    """`mlflow models serve` on the registered model: predictions over REST; a non-string is a 400 naming
    the problem. The model carries its code and portable requirements."""
    import os
    import sys

    import mlflow

    _client(finished["uri"])  # earlier tests of this module point MLflow at other stores
    model = finished["result"].model
    uri = f"models:/{model.name}/{model.version}"
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path / "m")))
    assert (local / "code" / "tuneflow" / "serving.py").is_file()  # the inference code travels with it
    requirements = (local / "requirements.txt").read_text()
    assert "torch==" in requirements and "+" not in requirements and "peft" not in requirements
    # MLflow starts `uvicorn` by name: the environment's scripts must be on PATH.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    serve = ["models", "serve", "-m", str(local), "--env-manager", "local"]
    with mlflow_process(serve, "/ping", cwd=tmp_path, env=env) as base:  # cwd: not the checkout
        status, body = invoke(base, {"inputs": ["where is my parcel"]})
        assert status == 200 and json.loads(body)["predictions"][0]["label"]
        status, body = invoke(base, {"inputs": [42]})
        assert status == 400 and "Expected type str" in body
