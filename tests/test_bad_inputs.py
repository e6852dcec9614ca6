"""A corpus of bad inputs: each gets its exit code, a message naming the file+line or key, no traceback,
and leaves the MLflow store untouched. All of them are caught before Prefect or torch start."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import chat_rows, demo_rows, make_config, ner_rows, write_conll, write_csv, write_jsonl

Case = Callable[[Path, str], tuple[list[str], int, list[str]]]
CASES: dict[str, Case] = {}


def case(fn: Case) -> Case:
    CASES[fn.__name__] = fn
    return fn


def _cfg(tmp: Path, tiny: str, **sections: dict) -> Path:
    return make_config(tmp, tiny, **sections)


def _with_train(tmp: Path, model: str, train: Path, **data: object) -> Path:
    cfg = yaml.safe_load(_cfg(tmp, model).read_text())
    cfg["data"]["train"] = str(train)
    cfg["data"].update(data)
    path = tmp / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _raw_cfg(tmp: Path, model: str, mutate: Callable[[dict], None]) -> Path:
    cfg = yaml.safe_load(_cfg(tmp, model).read_text())
    mutate(cfg)
    if cfg.get("task", "sequence_classification") != "sequence_classification":
        cfg["data"].pop("test", None)  # the shared test file is a classification CSV
    path = tmp / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# ------------------------------------------------------------------------------------------ data (exit 3)


@case
def missing_train_file(tmp, model):
    path = _with_train(tmp, model, tmp / "nope.csv")
    return ["run", str(path)], 3, [f"{tmp}/nope.csv: file not found"]


@case
def train_file_is_a_folder(tmp, model):
    folder = tmp / "intents"
    folder.mkdir()
    write_csv(folder / "train.csv", demo_rows()[:20])
    path = _with_train(tmp, model, folder)
    return ["run", str(path)], 3, [f"{folder}: is a folder, not a file (it holds train.csv)"]


@case
def csv_without_a_header_line(tmp, model):
    f = write_csv(tmp / "headerless.csv", demo_rows()[:30])
    f.write_text(f.read_text().split("\n", 1)[1])  # the header line dropped
    return (
        ["run", str(_with_train(tmp, model, f))],
        3,
        ["missing column", "looks like data: add a header line", "column_names"],
    )


@case
def batch_larger_than_the_training_set(tmp, model):
    cfg = _cfg(tmp, model, train={"batch_size": 1_000_000_000})
    return ["run", str(cfg)], 3, ["train.batch_size 1000000000 is larger than the training set (", "rows)"]


@case
def max_length_beyond_the_model_positions(tmp, model):
    cfg = _cfg(tmp, model, model={"name": model, "max_length": 4096})
    return ["run", str(cfg)], 4, ["model.max_length 4096 is more than", "(128 positions)"]


@case
def latin1_csv(tmp, model):
    f = tmp / "latin.csv"
    f.write_bytes(b"text,intent\nhello there,greeting\ncaf\xe9 au lait,order\n")
    return ["run", str(_with_train(tmp, model, f))], 3, [f"{f}:3", "not UTF-8", "0xe9"]


@case
def latin1_csv_validate(tmp, model):
    f = tmp / "latin.csv"
    f.write_bytes(b"text,intent\nhello there,greeting\ncaf\xe9 au lait,order\n")
    return ["validate", str(_with_train(tmp, model, f))], 3, [f"{f}:3", "not UTF-8"]


@case
def broken_jsonl_after_blank_lines(tmp, model):
    f = tmp / "train.jsonl"
    good = "".join(json.dumps({"text": t, "intent": i}) + "\n" for t, i in demo_rows()[:20])
    f.write_text(good + "\n\n" + '{"text": "oops", "intent": \n')
    return ["run", str(_with_train(tmp, model, f))], 3, [f"{f}:23", "invalid JSON"]


@case
def jsonl_not_object(tmp, model):
    f = tmp / "train.jsonl"
    f.write_text(json.dumps({"text": "hi", "intent": "greeting"}) + "\n[1, 2]\n")
    return ["run", str(_with_train(tmp, model, f))], 3, [f"{f}:2", "expected a JSON object"]


@case
def jsonl_integer_texts(tmp, model):
    rows = [{"text": t, "intent": i} for t, i in demo_rows()]
    rows[4]["text"] = 42
    f = write_jsonl(tmp / "train.jsonl", rows)
    return ["validate", str(_with_train(tmp, model, f))], 3, ["non-text value(s)", "line(s) 5"]


@case
def semicolon_csv(tmp, model):
    f = tmp / "semi.csv"
    f.write_text("text;intent\n" + "".join(f"{t};{i}\n" for t, i in demo_rows()[:30]))
    return ["run", str(_with_train(tmp, model, f))], 3, [str(f), "';'-delimited"]


@case
def missing_text_column(tmp, model):
    f = write_csv(tmp / "cols.csv", demo_rows()[:30], header=("utterance", "intent"))
    return ["run", str(_with_train(tmp, model, f))], 3, [str(f), "column 'text'", "missing column"]


@case
def quoted_newlines_line_numbers(tmp, model):
    rows = demo_rows()[:40]
    rows[3] = ("first line\nsecond line\nthird line", rows[3][1])  # a record spanning 3 lines
    rows[20] = ("   ", rows[20][1])  # empty text: file line 2 + 20 + 2 extra lines = 24
    f = write_csv(tmp / "multi.csv", rows)
    return ["validate", str(_with_train(tmp, model, f))], 3, ["empty or whitespace-only", "line(s) 24"]


@case
def empty_label(tmp, model):
    rows = demo_rows()
    rows[7] = (rows[7][0], "")
    f = write_csv(tmp / "mine.csv", rows)
    return ["validate", str(_with_train(tmp, model, f))], 3, ["missing (NaN/empty) label", "line(s) 9"]


@case
def unseen_test_label(tmp, model):
    test = write_csv(tmp / "t.csv", demo_rows("test")[:20] + [("what is the weather", "weather")])
    cfg = yaml.safe_load(_cfg(tmp, model).read_text())
    cfg["data"]["test"] = str(test)
    path = tmp / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return ["validate", str(path)], 3, ["weather", str(test)]


@case
def class_too_small(tmp, model):
    rows = demo_rows() + [("a lonely example", "rare_intent")]
    f = write_csv(tmp / "mine.csv", rows)
    return ["validate", str(_with_train(tmp, model, f))], 3, ["rare_intent"]


@case
def empty_csv_file(tmp, model):
    f = tmp / "empty.csv"
    f.write_text("")
    return ["run", str(_with_train(tmp, model, f))], 3, [str(f), "cannot read as csv"]


@case
def header_only_csv(tmp, model):
    f = tmp / "header.csv"
    f.write_text("text,intent\n")
    return ["validate", str(_with_train(tmp, model, f))], 3, ["train"]


@case
def parquet_not_parquet(tmp, model):
    f = tmp / "train.parquet"
    f.write_text("not parquet at all")
    return ["run", str(_with_train(tmp, model, f))], 3, [str(f), "cannot read as parquet"]


@case
def conll_invalid_utf8(tmp, model):
    f = tmp / "train.conll"
    f.write_bytes(b"alice\tB-person\nwent\tO\n\nbob\tB-person\nate\tO\ncr\xe8me\tO\n")
    path = _raw_cfg(
        tmp, model, lambda c: c.update(task="token_classification") or c["data"].update(train=str(f))
    )
    return ["validate", str(path)], 3, [f"{f}:6", "not UTF-8"]


@case
def conll_line_without_tag(tmp, model):
    f = write_conll(tmp / "train.conll", ner_rows(30, 0))
    lines = f.read_text().splitlines()
    lines.insert(4, "lonelytoken")
    f.write_text("\n".join(lines) + "\n")
    path = _raw_cfg(
        tmp, model, lambda c: c.update(task="token_classification") or c["data"].update(train=str(f))
    )
    return ["run", str(path)], 3, [f"{f}:5", "expected 'token<TAB>tag'"]


@case
def conll_invalid_bio(tmp, model):
    rows = ner_rows(30, 0)
    rows[2] = (rows[2][0], ["I-person"] + rows[2][1][1:])
    f = write_conll(tmp / "train.conll", rows)
    path = _raw_cfg(
        tmp, model, lambda c: c.update(task="token_classification") or c["data"].update(train=str(f))
    )
    return ["validate", str(path)], 3, [str(f), "I-person"]


@case
def ner_jsonl_count_mismatch(tmp, model):
    rows = [{"tokens": w, "tags": t} for w, t in ner_rows(30, 0)]
    rows[5]["tags"] = rows[5]["tags"][:-1]
    f = write_jsonl(tmp / "train.jsonl", rows)
    path = _raw_cfg(
        tmp, model, lambda c: c.update(task="token_classification") or c["data"].update(train=str(f))
    )
    return ["run", str(path)], 3, [f"{f}:6", "tokens but"]


@case
def chat_bad_role(tmp, model):
    rows = chat_rows(20, 0)
    rows[3]["messages"][1]["role"] = "customer"
    f = write_jsonl(tmp / "chat.jsonl", rows)
    path = _raw_cfg(tmp, model, lambda c: c.update(task="causal_lm") or c["data"].update(train=str(f)))
    return ["run", str(path)], 3, [f"{f}:4", "customer"]


@case
def chat_no_assistant(tmp, model):
    rows = chat_rows(20, 0)
    rows[0]["messages"] = rows[0]["messages"][:2]
    f = write_jsonl(tmp / "chat.jsonl", rows)
    path = _raw_cfg(tmp, model, lambda c: c.update(task="causal_lm") or c["data"].update(train=str(f)))
    return ["run", str(path)], 3, [f"{f}:1", "no assistant message"]


@case
def seq2seq_missing_target(tmp, model):
    f = write_jsonl(tmp / "pairs.jsonl", [{"source": "a long text", "summary": "short"}] * 20)
    path = _raw_cfg(tmp, model, lambda c: c.update(task="seq2seq") or c["data"].update(train=str(f)))
    return ["run", str(path)], 3, [str(f), "column 'target'"]


@case
def data_path_is_directory(tmp, model):
    return (
        ["run", str(_with_train(tmp, model, tmp))],
        3,
        [f"{tmp}: is a folder, not a file (it holds bad.yaml"],
    )


# --------------------------------------------------------------------------------------- config (exit 2)


@case
def unknown_key(tmp, model):
    return ["run", str(_cfg(tmp, model, train={"lrr": 1e-3}))], 2, ["train.lrr", "unknown key"]


@case
def wrong_type(tmp, model):
    return ["run", str(_cfg(tmp, model)), "--set", "train.lr=abc"], 2, ["train.lr"]


@case
def negative_batch(tmp, model):
    return ["run", str(_cfg(tmp, model)), "--set", "train.batch_size=-1"], 2, ["train.batch_size"]


@case
def unparsable_override(tmp, model):
    return ["run", str(_cfg(tmp, model)), "--set", "train.lr=[1,"], 2, ["train.lr", "cannot parse value"]


@case
def override_without_equals(tmp, model):
    return ["run", str(_cfg(tmp, model)), "--set", "train.lr"], 2, ["train.lr", "KEY=VALUE"]


@case
def override_into_value(tmp, model):
    return ["run", str(_cfg(tmp, model)), "--set", "train.lr.x=1"], 2, ["train.lr.x", "not a section"]


@case
def non_utf8_config(tmp, model):
    path = tmp / "latin.yaml"
    path.write_bytes(_cfg(tmp, model).read_bytes() + b"# caf\xe9\n")
    n = path.read_bytes().count(b"\n")
    return ["run", str(path)], 2, [f"latin.yaml:{n}", "not UTF-8"]


@case
def yaml_syntax_error(tmp, model):
    path = tmp / "broken.yaml"
    path.write_text("name: x\ntrain: [1, 2\n")
    return ["run", str(path)], 2, ["<yaml>", "broken.yaml"]


@case
def config_not_mapping(tmp, model):
    path = tmp / "list.yaml"
    path.write_text("- a\n- b\n")
    return ["run", str(path)], 2, ["must be a mapping"]


@case
def config_missing(tmp, model):
    return ["run", str(tmp / "none.yaml")], 2, ["config file not found"]


@case
def name_with_slash(tmp, model):
    return ["run", str(_cfg(tmp, model)), "--set", "name=a/b"], 2, ["name", "not a safe name"]


@case
def experiment_escapes_store(tmp, model):
    args = ["run", str(_cfg(tmp, model)), "--set", "tracking.experiment=../../../tmp/x"]
    return args, 2, ["tracking.experiment", "not a safe name"]


@case
def name_dotdot(tmp, model):
    return ["run", str(_cfg(tmp, model)), "--set", "name=.."], 2, ["name", "not a safe name"]


@case
def registered_model_escapes(tmp, model):
    args = ["run", str(_cfg(tmp, model, tracking={"registered_model": "../../evil/x"}))]
    return args, 2, ["tracking.registered_model", "not a safe name"]


@case
def study_name_with_slash(tmp, model):
    search = {
        "n_trials": 2,
        "study_name": "a/b",
        "space": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2}},
    }
    return ["tune", str(_cfg(tmp, model, search=search))], 2, ["search.study_name"]


@case
def extra_eval_name_escapes(tmp, model):
    f = write_csv(tmp / "ood.csv", demo_rows("test")[:10])
    path = _raw_cfg(tmp, model, lambda c: c["data"].update(extra_eval=[{"name": "../x", "path": str(f)}]))
    return ["run", str(path)], 2, ["data.extra_eval.0.name"]


@case
def unset_environment_variable(tmp, model):
    args = ["run", str(_cfg(tmp, model)), "--set", "tracking.tracking_uri=${TUNEFLOW_TEST_UNSET_VAR}"]
    return args, 2, ["tracking.tracking_uri", "TUNEFLOW_TEST_UNSET_VAR is not set"]


@case
def search_unknown_key(tmp, model):
    search = {"n_trials": 2, "space": {"train.lrate": {"type": "float", "low": 1e-4, "high": 1e-2}}}
    return ["tune", str(_cfg(tmp, model, search=search))], 2, ["search.space.train.lrate"]


@case
def search_low_above_high(tmp, model):
    search = {"n_trials": 2, "space": {"train.lr": {"type": "float", "low": 1e-2, "high": 1e-4}}}
    return ["run", str(_cfg(tmp, model, search=search))], 2, ["search.space.train.lr", "low"]


@case
def search_empty_choices(tmp, model):
    search = {"n_trials": 2, "space": {"train.batch_size": {"type": "categorical", "choices": []}}}
    return ["run", str(_cfg(tmp, model, search=search))], 2, ["search.space.train.batch_size"]


@case
def search_value_rejected_by_schema(tmp, model):
    search = {"n_trials": 2, "space": {"train.batch_size": {"type": "int", "low": 0, "high": 8}}}
    return ["run", str(_cfg(tmp, model, search=search))], 2, ["search.space.train.batch_size", "value 0"]


@case
def monitor_wrong_for_task(tmp, model):
    path = _raw_cfg(
        tmp,
        model,
        lambda c: c.update(task="token_classification") or c["train"].update(monitor="val/accuracy"),
    )
    return ["run", str(path)], 2, ["train.monitor"]


@case
def min_epochs_above_max(tmp, model):
    return (
        ["run", str(_cfg(tmp, model, train={"min_epochs": 5, "max_epochs": 2}))],
        2,
        ["train", "min_epochs"],
    )


# ---------------------------------------------------------------------------------------- model (exit 4)


@case
def empty_model_dir(tmp, model):
    empty = tmp / "empty-model"
    empty.mkdir()
    return ["run", str(_cfg(tmp, model, model={"name": str(empty)}))], 4, [str(empty), "no config.json"]


@case
def corrupt_safetensors(tmp, model):
    copy = tmp / "corrupt-model"
    shutil.copytree(model, copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    return ["run", str(_cfg(tmp, model, model={"name": str(copy)}))], 4, [str(weights), "truncated"]


@case
def pickled_weights_only(tmp, model):
    copy = tmp / "pickled-model"
    shutil.copytree(model, copy)
    (copy / "model.safetensors").rename(copy / "pytorch_model.bin")
    return ["run", str(_cfg(tmp, model, model={"name": str(copy)}))], 4, ["pytorch_model.bin", "pickled"]


@case
def validate_reports_bad_data_before_any_model(tmp, model):
    # The data fast path runs first: a bad file is exit 3 even with a model that cannot load.
    cfg = yaml.safe_load(_with_train(tmp, model, tmp / "nope.csv").read_text())
    cfg["model"]["name"] = "./no/such/model"
    path = tmp / "bad-both.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return ["validate", str(path)], 3, [f"{tmp}/nope.csv: file not found"]


@case
def missing_local_model(tmp, model):
    return ["validate", str(_cfg(tmp, model, model={"name": "./no/such/model"}))], 4, ["./no/such/model"]


# --------------------------------------------------------------------------------------- CLI misuse (2)


@case
def run_without_config(tmp, model):
    return ["run"], 2, ["Missing argument"]


@case
def promote_without_version(tmp, model):
    return ["promote", "some-model"], 2, ["--version"]


@case
def force_without_reason(tmp, model):
    return ["promote", "some-model", "--version", "1", "--force"], 2, ["--reason"]


@case
def tune_without_search(tmp, model):
    return ["tune", str(_cfg(tmp, model))], 2, ["no search: section"]


# ------------------------------------------------------------------------------------------ stores (exit 7)
# Each fails in the pre-flight, in seconds, instead of MLflow's or Optuna's retry loops, and before any run.


@case
def store_on_a_path_that_cannot_be_created(tmp, model):
    cfg = _cfg(tmp, model, tracking={"tracking_uri": "sqlite:////proc/tuneflow/m.db"})
    return (
        ["run", str(cfg)],
        7,
        ["tracking.tracking_uri: sqlite:////proc/tuneflow/m.db: cannot write in /proc"],
    )


@case
def store_that_is_a_directory(tmp, model):
    cfg = _cfg(tmp, model, tracking={"tracking_uri": f"sqlite:///{tmp}"})
    return ["run", str(cfg)], 7, [f"{tmp} is a directory, not a database file"]


@case
def store_server_not_running(tmp, model):
    cfg = _cfg(tmp, model, tracking={"tracking_uri": "http://127.0.0.1:9"})
    return (
        ["run", str(cfg)],
        7,
        ["tracking.tracking_uri: the MLflow server http://127.0.0.1:9 did not answer"],
    )


@case
def optuna_storage_on_a_closed_port(tmp, model):
    cfg = _raw_cfg(
        tmp,
        model,
        lambda c: c.update(
            search={
                "n_trials": 2,
                "storage": "postgresql+psycopg://tuner:secret@127.0.0.1:9/optuna",
                "space": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-3}},
            }
        ),
    )
    # The password is never printed.
    return (
        ["tune", str(cfg)],
        7,
        ["search.storage: cannot connect to postgresql+psycopg://tuner:***@127.0.0.1:9"],
    )


@case
def output_dir_under_a_file(tmp, model):
    blocker = tmp / "blocker"
    blocker.write_text("")
    cfg = _cfg(tmp, model, output_dir=str(blocker / "checkpoints"))
    return ["run", str(cfg)], 7, [f"output_dir: {blocker} is a file"]


@case
def status_on_an_unwritable_store(tmp, model):
    return ["status", "m", "--tracking-uri", "sqlite:////proc/tuneflow/m.db"], 7, ["--tracking-uri", "/proc"]


# ----------------------------------------------------------------- registry commands (exit 2, no Prefect)


@case
def promote_unknown_model(tmp, model):
    return ["promote", "no-such-model", "--version", "1"], 2, ["no registered model 'no-such-model'"]


@case
def promote_version_not_a_number(tmp, model):
    return ["promote", "no-such-model", "--version", "abc"], 2, ["--version abc: a version is a number"]


@case
def rollback_unknown_model(tmp, model):
    return (
        ["rollback", "no-such-model"],
        2,
        ["no registered model 'no-such-model'", "no MLflow store at"],
    )


# ------------------------------------------------------------------------- predict (exit 2, before loading)


@case
def predict_an_empty_text(tmp, model):
    return ["predict", "--model", "models:/m/1", "hello", " "], 2, ["text 2 is empty: nothing to predict"]


@case
def predict_into_a_missing_folder(tmp, model):
    f = write_csv(tmp / "in.csv", [{"text": "hello"}])
    out = tmp / "no" / "such" / "preds.csv"
    args = ["predict", "--model", "models:/m/1", "--input", str(f), "--output", str(out)]
    return args, 2, [f"folder {tmp}/no/such does not exist"]


@case
def predict_input_with_empty_cells(tmp, model):
    f = tmp / "in.csv"
    f.write_text("text,id\nhello,1\n,2\nNaN,3\n   ,4\n")
    args = ["predict", "--model", "models:/m/1", "--input", str(f), "--output", str(tmp / "p.csv")]
    return args, 2, [f"{f}: 2 empty 'text' value(s), line 3, 5", "--skip-empty"]


@case
def predict_input_is_a_directory(tmp, model):
    args = ["predict", "--model", "models:/m/1", "--input", str(tmp), "--output", str(tmp / "p.csv")]
    return args, 2, [f"--input {tmp} is a directory"]


@case
def predict_with_a_bare_model_name(tmp, model):
    return (
        ["predict", "--model", "chatbot-intents", "hello"],
        2,
        ["--model chatbot-intents: not a model URI", "models:/chatbot-intents@champion"],
    )


@case
def predict_with_an_unknown_registered_model(tmp, model):
    return ["predict", "--model", "models:/nope@champion", "hello"], 2, ["no registered model 'nope'"]


# ----------------------------------------------------------------------------- init (exit 2, nothing written)


@case
def init_an_empty_csv(tmp, model):
    f = tmp / "empty.csv"
    f.write_text("")
    return ["init", str(f), "--output", str(tmp / "x.yaml")], 2, [f"{f}: cannot read it as a csv file"]


@case
def init_a_folder_without_a_training_file(tmp, model):
    folder = tmp / "data"
    folder.mkdir()
    write_csv(folder / "notes.csv", demo_rows()[:10])
    write_csv(folder / "more.csv", demo_rows()[:10])
    return ["init", str(folder)], 2, [f"{folder}: no training file", "it holds more.csv, notes.csv"]


@case
def init_output_under_a_file(tmp, model):
    blocker = tmp / "blocker"
    blocker.write_text("")
    f = write_csv(tmp / "intents.csv", demo_rows()[:40])
    args = ["init", str(f), "--model", model, "--output", str(blocker / "x.yaml")]
    return args, 2, [f"--output {blocker}/x.yaml: cannot create {blocker}"]


def test_an_offline_hub_id_that_is_not_cached_fails_before_any_run(
    tmp_path: Path, tiny_model: str, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mistyped hub id offline: exit 4 from the pre-flight, not after Prefect, a FAILED run and torch."""
    from tuneflow import cli

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = _cfg(tmp_path, tiny_model, model={"name": "sentence-transformers/all-MiniLM-L6-v3"})
    result = CliRunner().invoke(cli.app, ["run", str(cfg)])
    assert result.exit_code == 4, result.output
    assert "'sentence-transformers/all-MiniLM-L6-v3' is neither a local directory nor in the" in result.output
    assert not (tmp_path / "mlruns" / "mlflow.db").exists() or _store_is_empty(tracking_uri)


def test_scoring_input_keeps_na_like_texts_and_skips_empty_ones(tmp_path: Path) -> None:
    """ "NaN", "null", "N/A" are texts someone typed, not missing values; --skip-empty drops blank rows."""
    from tuneflow.registry import scoring

    f = tmp_path / "in.csv"
    f.write_text("text\nNaN\nnull\nN/A\n\nok\n")
    frame, _ = scoring.read_scoring_input(f, "text", skip_empty=True)
    assert frame["text"].tolist() == ["NaN", "null", "N/A", "ok"]


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name: str, tmp_path: Path, tiny_model: str, tracking_uri: str) -> None:
    from tuneflow import cli

    args, code, needles = CASES[name](tmp_path, tiny_model)
    cli.console.width = 4000  # one line per message: paths are not wrapped
    result = CliRunner().invoke(cli.app, args)
    output = result.output
    assert result.exit_code == code, output
    assert "Traceback" not in output
    for needle in needles:
        assert needle in output, (needle, output)
    # Nothing reached the store: bad input never leaves a run, a version or an alias behind.
    store = tmp_path / "mlruns"
    assert not (store / "mlflow.db").exists() or _store_is_empty(tracking_uri)


def _store_is_empty(uri: str) -> bool:
    from mlflow import MlflowClient

    client = MlflowClient(uri, registry_uri=uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return not runs and not client.search_registered_models()
