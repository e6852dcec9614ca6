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


def _indexed(tmp: Path, bad_row: int | None = None) -> tuple[Path, Path]:
    """The demo rows with their labels as indices into a labels.txt (one row's index out of range)."""
    rows = demo_rows()
    names = sorted({label for _, label in rows})
    indexed = [(t, "99" if i == bad_row else str(names.index(label))) for i, (t, label) in enumerate(rows)]
    (tmp / "labels.txt").write_text("\n".join(names) + "\n")
    return write_csv(tmp / "indexed.csv", indexed), tmp / "labels.txt"


@case
def label_index_out_of_range(tmp, model):
    train, names = _indexed(tmp, bad_row=7)
    path = _with_train(tmp, model, train, label_names=str(names))
    return ["validate", str(path)], 3, ["not an index into data.label_names", "line(s) 9", str(train)]


@case
def label_names_file_missing(tmp, model):
    train, _ = _indexed(tmp)
    path = _with_train(tmp, model, train, label_names=str(tmp / "names.txt"))
    return ["validate", str(path)], 3, [f"{tmp}/names.txt: file not found"]


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


# ---------------------------------------------------------------- the probe of 2026-12-06 (issue 45)


@case
def lora_target_modules_naming_no_module(tmp, model):
    path = _cfg(
        tmp, model, model={"name": model, "max_length": 32, "lora": {"target_modules": ["no_such_proj"]}}
    )
    return ["run", str(path)], 4, ["model.lora.target_modules: no_such_proj name no module", "query, value"]


@case
def conll_error_keeps_its_line_number_on_the_console(tmp, model):
    f = write_conll(tmp / "train.conll", ner_rows(60, 0))
    lines = f.read_text().splitlines()
    lines.insert(99, "lonelytoken")  # file line 100: Rich would print "train.conll:100:" as an emoji
    f.write_text("\n".join(lines) + "\n")
    path = _raw_cfg(
        tmp, model, lambda c: c.update(task="token_classification") or c["data"].update(train=str(f))
    )
    return ["validate", str(path)], 3, [f"{f}:100: expected 'token<TAB>tag'"]


@case
def an_excel_workbook_as_the_training_file(tmp, model):
    f = tmp / "tickets.xlsx"
    f.write_bytes(b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00\x84" + bytes(200))
    return (
        ["run", str(_with_train(tmp, model, f))],
        3,
        [f"{f}: a spreadsheet workbook", "save the sheet as CSV"],
    )


@case
def texts_of_only_zero_width_spaces(tmp, model):
    rows = demo_rows()[:40] + [("\u200b\u200b", "track_order"), ("\ufeff \u200d", "track_order")]
    f = write_csv(tmp / "zw.csv", rows)
    return ["validate", str(_with_train(tmp, model, f))], 3, [str(f), "empty or whitespace-only", "42, 43"]


@case
def a_named_pipe_as_the_training_file(tmp, model):
    import os

    f = tmp / "pipe.csv"
    os.mkfifo(f)
    return ["run", str(_with_train(tmp, model, f))], 3, [f"{f}: is not a regular file (a named pipe"]


@case
def a_yaml_alias_bomb(tmp, model):
    levels = ['  l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    path = tmp / "bomb.yaml"
    path.write_text(_cfg(tmp, model).read_text() + "junk:\n" + "\n".join(levels) + "\n")
    return ["validate", str(path)], 2, ["<yaml>: its aliases expand to over 100,000 values (an alias bomb?)"]


@case
def status_of_a_store_that_is_a_text_file(tmp, model):
    (tmp / "elsewhere").mkdir()
    (tmp / "elsewhere" / "mlflow.db").write_text("these are my notes\n")
    uri = f"sqlite:///{tmp}/elsewhere/mlflow.db"
    return ["status", "--tracking-uri", uri], 7, [f"{tmp}/elsewhere/mlflow.db is not an SQLite database file"]


@case
def status_of_a_truncated_store(tmp, model):
    import sqlite3

    (tmp / "elsewhere").mkdir()
    db = tmp / "elsewhere" / "mlflow.db"
    with sqlite3.connect(db) as conn:
        conn.execute("create table t (x text)")
        conn.executemany("insert into t values (?)", [("x" * 500,)] * 200)
    db.write_bytes(db.read_bytes()[:9000])
    args = ["status", "m", "--tracking-uri", f"sqlite:///{db}"]
    return args, 7, [f"{db} is truncated (9000 bytes of the"]


@case
def predict_with_an_unknown_tracking_scheme(tmp, model):
    args = ["predict", "--tracking-uri", "foo://bar", "--model", "models:/m/1", "hello"]
    return args, 2, ["--tracking-uri foo://bar: unknown scheme 'foo://'", "sqlite:///PATH"]


@case
def predict_with_a_model_folder_that_cannot_load(tmp, model):
    folder = tmp / "broken-model"
    folder.mkdir()
    (folder / "MLmodel").write_text(
        "flavors: {python_function: {loader_module: nowhere, python_model: x.pkl}}\n"
    )
    return ["predict", "--model", str(folder), "hello"], 4, [f"cannot load model '{folder}'"]


@case
def init_with_an_unknown_task(tmp, model):
    f = write_csv(tmp / "intents.csv", demo_rows()[:40])
    args = ["init", str(f), "--task", "nonsense", "--output", str(tmp / "x.yaml")]
    known = "auto, sequence_classification, multi_label_classification, token_classification"
    return args, 2, [f"--task nonsense: one of {known}"]


@case
def adapters_bundle_without_any_adapter(tmp, model):
    return ["adapters", "--bundle", "everything"], 2, ["no registered adapters to bundle"]


@case
def gc_with_a_file_as_the_checkpoint_folder(tmp, model):
    f = tmp / "not-a-folder"
    f.write_text("")
    return ["gc", "--dry-run", "--output-dir", str(f)], 2, [f"--output-dir {f} is a file"]


@case
def ui_on_a_port_out_of_range(tmp, model):
    return ["ui", "--port", "70000"], 2, ["--port"]


@case
def ui_on_a_port_in_use(tmp, model):
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    _HELD.append(taken)
    port = taken.getsockname()[1]
    return ["ui", "--port", str(port)], 2, [f"--port {port}: 127.0.0.1:{port} is in use"]


@case
def server_on_a_port_in_use(tmp, model):
    args, _, needles = ui_on_a_port_in_use(tmp, model)
    return ["server", *args[1:]], 2, needles


_HELD: list = []  # sockets a case keeps bound while its command runs


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


@pytest.mark.parametrize(
    "rows, extra, needle",
    [
        ([(f"text number {i}", "only") for i in range(30)], [], "train has 1 class(es)"),
        ([(f"text number {i}", f"label{i}") for i in range(3000)], [], "3000 class(es) with fewer than"),
        (demo_rows()[:60], ["--oos", "missing-oos.csv"], "missing-oos.csv"),
    ],
    ids=["one_class", "every_label_unique", "missing_oos_file"],
)
def test_init_writes_no_config_when_the_data_fails_its_check(
    rows: list, extra: list[str], needle: str, tmp_path: Path, tiny_model: str
) -> None:
    """A config whose data cannot pass would only be found (and run) later: ``init`` says why and writes
    nothing; a list of 3,000 labels is cut, not printed whole."""
    from tuneflow import cli

    f = write_csv(tmp_path / "data.csv", rows)
    output = tmp_path / "drafted.yaml"
    args = ["init", str(f), "--model", tiny_model, "--output", str(output), *extra]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code in (2, 3), result.output
    assert needle in result.output and "Traceback" not in result.output
    assert not output.exists()
    assert max(map(len, result.output.splitlines())) < 1000


def test_read_only_commands_never_create_a_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tuneflow import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    runner = CliRunner()
    assert runner.invoke(cli.app, ["status"]).output.strip() == "no registered models yet"
    unknown = runner.invoke(cli.app, ["status", "nope"])
    assert unknown.exit_code == 2 and "no registered model 'nope'" in unknown.output
    assert runner.invoke(cli.app, ["adapters"]).output.strip() == "no registered adapters"
    assert not (tmp_path / "mlruns").exists()


def test_serve_against_a_closed_prefect_port_is_exit_7_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket
    import time

    from tuneflow import cli

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{port}/api")
    start = time.monotonic()
    result = CliRunner().invoke(cli.app, ["serve"])
    assert result.exit_code == 7, result.output
    assert f"PREFECT_API_URL=http://127.0.0.1:{port}/api is not reachable" in result.output
    assert time.monotonic() - start < 30  # one 3 s probe; generous: shared machines


def test_data_emptied_after_validation_is_exit_3_naming_the_file(tmp_path: Path, tiny_model: str) -> None:
    """The training file emptied while a run starts: the stage that reads it again names the file (exit 3),
    instead of scikit-learn's "With n_samples=0" from inside a Prefect task."""
    from tuneflow import terminal
    from tuneflow.data.splits import DataChangedError
    from tuneflow.tasktypes.resolve import load_config

    cfg = load_config(_cfg(tmp_path, tiny_model), [])
    (tmp_path / "train.csv").write_text("text,intent\n")
    with pytest.raises(DataChangedError, match=f"{tmp_path}/train.csv: no rows -- the data changed"):
        cfg.kind.data.load_splits(cfg.data, cfg.train.seed)
    assert (DataChangedError, 3) in terminal.known_errors()


# ------------------------------------------------------------------------ the Hub, without a network flag


class _Hub:
    """A stand-in for the Hugging Face Hub on 127.0.0.1 (HF_ENDPOINT): answers 404, or never answers."""

    def __init__(self, mode: str) -> None:
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:  # noqa: N802
                if mode == "silent":
                    threading.Event().wait(10)
                self.send_response(404)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.mark.parametrize("mode", ["refused", "silent", "missing"])
def test_an_uncached_hub_id_without_the_offline_flag_fails_in_seconds(
    mode: str, tmp_path: Path, tiny_model: str, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No network and no HF_HUB_OFFLINE: one request with a short timeout decides before anything starts
    (was: 65 s of "Retrying in Ns" lines after the Prefect server had started, and a FAILED run)."""
    import socket
    import time

    from tuneflow import cli

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    if mode == "refused":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"
    else:
        hub = _Hub(mode)
        endpoint = hub.url
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    cfg = _cfg(tmp_path, tiny_model, model={"name": "no-such-org/no-such-model-v9"})
    start = time.monotonic()
    result = CliRunner().invoke(cli.app, ["run", str(cfg)])
    assert result.exit_code == 4, result.output
    assert time.monotonic() - start < 20  # ~2.5 s at most; was 65 s of retries (generous: shared machines)
    expected = "has no model 'no-such-org/no-such-model-v9'" if mode == "missing" else "did not answer within"
    assert expected in result.output and "Retrying" not in result.output
    assert not (tmp_path / "mlruns" / "mlflow.db").exists() or _store_is_empty(tracking_uri)


def test_an_unreachable_hub_uses_the_cached_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cached model with the Hub out of reach: the pre-flight passes and turns offline mode on, as
    HF_HUB_OFFLINE=1 would (no minute of retries at the first load)."""
    import socket

    from tuneflow.preflight import check_model_dir

    cache = tmp_path / "hub-cache"
    snapshot = cache / "models--org--cached-model" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (cache / "models--org--cached-model" / "refs").mkdir()
    (cache / "models--org--cached-model" / "refs" / "main").write_text("abc123")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    assert check_model_dir("org/cached-model") == []
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"
