"""A newcomer's data to a registered model without writing YAML: `tuneflow init DATA` drafts a commented
config (task, columns, lengths, budget, gates), `tuneflow run CONFIG` or `tuneflow run DATA` trains it."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import chat_rows, demo_rows, ner_rows, write_conll, write_csv, write_jsonl
from tuneflow.tasktypes.resolve import load_config


def _cli(*args: str):  # noqa: ANN202
    from tuneflow import cli

    cli.console.width = 4000  # one line per message: paths are not wrapped
    try:
        return CliRunner().invoke(cli.app, list(args))
    finally:
        _rebind_prefect_console()


def _rebind_prefect_console() -> None:
    """Prefect's console log handler keeps the stream it was created with; CliRunner closes its captured
    streams after each call, so a second flow in this process would log into a closed file (a person runs
    one command per process and never meets this)."""
    import logging
    import sys

    loggers = [logging.root, *(logging.getLogger(n) for n in list(logging.root.manager.loggerDict))]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if getattr(handler, "console", None) is not None:
                handler.console.file = handler.stream = sys.__stderr__


def _imbalanced_intents(folder: Path) -> Path:
    """Three intents with 40 examples, two with 10: the largest class is 4x the smallest."""
    rng = random.Random(0)
    by_intent: dict[str, list[tuple[str, str]]] = {}
    for text, intent in demo_rows():
        by_intent.setdefault(intent, []).append((text, intent))
    sizes = dict(zip(sorted(by_intent)[:5], (40, 40, 40, 10, 10), strict=True))
    rows = [row for intent, n in sizes.items() for row in rng.sample(by_intent[intent], n)]
    rng.shuffle(rows)
    folder.mkdir()
    return write_csv(folder / "support_tickets.csv", rows, header=("utterance", "category"))


def _registered(tracking_uri: str, name: str) -> list[str]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    return [str(v.version) for v in client.search_model_versions(f"name = '{name}'")]


def test_a_classification_csv_becomes_a_commented_config_and_a_registered_model(
    tmp_path: Path, tiny_model: str, tracking_uri: str, prefect_harness: None
) -> None:
    data = _imbalanced_intents(tmp_path / "tickets")
    config = tmp_path / "tickets.yaml"
    result = _cli("init", str(data), "--model", tiny_model, "--output", str(config))
    assert result.exit_code == 0, result.output
    assert f"next            tuneflow run {config}" in result.output
    assert "sequence_classification; " in result.output and "5 classes" in result.output
    text = config.read_text()
    cfg = yaml.safe_load(text)
    assert cfg["task"] == "sequence_classification"
    assert (cfg["data"]["text_column"], cfg["data"]["label_column"]) == ("utterance", "category")
    # Imbalanced: macro F1 is what early stopping and the gates follow; the floor comes from the data.
    assert cfg["train"]["monitor"] == "val/f1_macro" and cfg["gates"]["metric"] == "f1_macro"
    majority_f1 = 2 * (40 / 140) / (1 + 40 / 140) / 5
    assert cfg["gates"]["min"] == pytest.approx(majority_f1 + 0.5 * (1 - majority_f1), abs=0.01)
    assert re.search(r"largest class [34]\.\dx the smallest", text)
    # The study lives beside the MLflow store, not in the checkout; every setting says where it came from.
    store = Path(tracking_uri.removeprefix("sqlite:///")).parent
    assert cfg["search"]["storage"] == f"sqlite:///{store.resolve() / 'optuna.db'}"
    said = {line.split(":")[0].strip() for line in text.splitlines() if "  # " in line}
    derived = {"name", "task", "text_column", "label_column", "max_length", "batch_size", "max_epochs"}
    assert derived | {"monitor", "metric", "min", "n_trials", "storage", "registered_model"} <= said
    # Never over an existing file.
    again = _cli("init", str(data), "--model", tiny_model, "--output", str(config))
    assert again.exit_code == 2 and "pass --force" in again.output
    run = _cli("run", str(config))
    assert run.exit_code == 0, run.output
    assert _registered(tracking_uri, "support_tickets") == ["1"]


def test_a_conll_folder_runs_straight_from_the_data(
    tmp_path: Path, tiny_ner_model: str, tracking_uri: str, prefect_harness: None
) -> None:
    """`tuneflow run DATA`: the config is drafted in place, saved beside the store, and the run uses it."""
    folder = tmp_path / "wnut_like"
    folder.mkdir()
    write_conll(folder / "train.conll", ner_rows(80, 1))
    write_conll(folder / "test.conll", ner_rows(20, 2))
    result = _cli("run", str(folder), "--set", f"model.name={tiny_ner_model}", "--set", "train.max_epochs=2")
    assert result.exit_code == 0, result.output
    store = Path(tracking_uri.removeprefix("sqlite:///")).parent
    drafted = store / "configs" / "wnut_like.yaml"
    assert f"drafted config  {drafted}" in result.output
    assert yaml.safe_load(drafted.read_text())["task"] == "token_classification"
    assert _registered(tracking_uri, "wnut_like") == ["1"]


def test_a_chat_jsonl_becomes_a_causal_lm_config_and_a_registered_model(
    tmp_path: Path, tiny_gpt2: str, tracking_uri: str, prefect_harness: None
) -> None:
    folder = tmp_path / "support_chat"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", chat_rows(60, 1))
    write_jsonl(folder / "test.jsonl", chat_rows(10, 2))
    config = tmp_path / "chat.yaml"
    result = _cli("init", str(folder), "--model", tiny_gpt2, "--output", str(config))
    assert result.exit_code == 0, result.output
    cfg = yaml.safe_load(config.read_text())
    assert cfg["task"] == "causal_lm" and cfg["data"]["messages_column"] == "messages"
    assert cfg["model"]["max_length"] <= 128  # capped at the tiny model's positions
    run = _cli("run", str(config), "--set", "train.max_epochs=2", "--set", "generation.max_new_tokens=8")
    assert run.exit_code == 0, run.output
    assert _registered(tracking_uri, "support_chat") == ["1"]


@pytest.mark.parametrize(
    ("header", "flag"),
    [
        (("a", "b"), "pass --task"),
        (
            ("text", "summary", "label"),
            "fit several task types (sequence_classification, seq2seq); pass --task",
        ),
    ],
)
def test_columns_it_cannot_decide_are_exit_2_naming_the_flag(
    tmp_path: Path, header: tuple, flag: str
) -> None:
    f = tmp_path / "data.csv"
    f.write_text(
        ",".join(header) + "\n" + "\n".join(",".join(f"v{i}{c}" for c in header) for i in range(5)) + "\n"
    )
    result = _cli("init", str(f), "--output", str(tmp_path / "x.yaml"))
    assert result.exit_code == 2, result.output
    assert flag in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x.yaml").exists()


def test_flags_name_the_columns_the_names_do_not_give_away(tmp_path: Path, tiny_model: str) -> None:
    f = write_csv(tmp_path / "data.csv", demo_rows()[:60], header=("phrase", "bucket"))
    out = tmp_path / "x.yaml"
    flags = (
        "--text-column",
        "phrase",
        "--label-column",
        "bucket",
        "--model",
        tiny_model,
        "--output",
        str(out),
    )
    result = _cli("init", str(f), *flags)
    assert result.exit_code in (0, 3), result.output
    cfg = yaml.safe_load(out.read_text())
    assert (cfg["data"]["text_column"], cfg["data"]["label_column"]) == ("phrase", "bucket")


def test_split_files_are_recognised_by_their_usual_names(tmp_path: Path) -> None:
    from tuneflow.tasktypes.draft import find_splits

    for name in ("wnut17train.conll", "emerging.dev.conll", "oos_validation.csv", "notes.md", "test.csv"):
        (tmp_path / name).write_text("x\n")
    found = {split: path.name for split, path in find_splits(tmp_path).items()}
    # Off-topic examples are never a split; a file with another suffix is not data.
    assert found == {"train": "wnut17train.conll", "validation": "emerging.dev.conll", "test": "test.csv"}


def test_on_a_terminal_it_asks_for_what_the_columns_do_not_say(
    tmp_path: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import typer

    from tuneflow import terminal

    f = write_csv(tmp_path / "data.csv", demo_rows()[:60], header=("phrase", "bucket"))
    answers = iter(["sequence_classification", "text_column=phrase, label_column=bucket"])
    asked: list[str] = []
    monkeypatch.setattr(terminal.sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr(typer, "prompt", lambda text, **kw: asked.append(text) or next(answers))
    cfg, _ = terminal.draft(f, "auto", {}, tiny_model, None, None)
    assert (cfg.task, cfg.data.text_column, cfg.data.label_column) == (
        "sequence_classification",
        "phrase",
        "bucket",
    )
    assert asked[0].startswith("task type (auto, sequence_classification") and len(asked) == 2


def test_off_topic_test_examples_turn_the_fallback_on(tmp_path: Path, tiny_model: str) -> None:
    """A folder with ``oos_test.csv`` but no off-topic validation file: the bot will meet such queries, so
    the fallback is on (its threshold from in-scope validation), and the test file measures it."""
    folder = tmp_path / "tickets"
    folder.mkdir()
    write_csv(folder / "train.csv", demo_rows())
    write_csv(folder / "test.csv", demo_rows("test"))
    (folder / "oos_test.csv").write_text("text\nwhat's the weather like\ntell me a joke\n")
    output = tmp_path / "drafted.yaml"
    result = _cli("init", str(folder), "--model", tiny_model, "--output", str(output))
    assert result.exit_code == 0, result.output
    drafted = yaml.safe_load(output.read_text())
    assert drafted["oos"]["enabled"] is True
    assert drafted["data"]["oos_test"]["path"].endswith("oos_test.csv")
    assert "oos_validation" not in drafted["data"]


@pytest.mark.parametrize(("classes", "words", "on"), [(12, 6, True), (12, 60, False), (2, 6, False)])
def test_the_fallback_is_drafted_on_for_intent_like_data(
    tmp_path: Path, tiny_model: str, classes: int, words: int, on: bool
) -> None:
    """Many classes of short texts look like a bot's intents: the fallback is on, its threshold from the known
    intents alone (the comment says how); sentiment-like (2 classes) or long documents: off."""
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(50)]
    rows = [
        (" ".join([f"topic{c}", *rng.choices(vocab, k=words - 1)]), f"label_{c}")
        for c in range(classes)
        for _ in range(12)
    ]
    folder = tmp_path / "data"
    folder.mkdir()
    write_csv(folder / "train.csv", rows)
    output = tmp_path / "drafted.yaml"
    result = _cli("init", str(folder), "--model", tiny_model, "--output", str(output))
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(output.read_text())["oos"]["enabled"] is on
    line = next(line for line in output.read_text().splitlines() if line.strip().startswith("enabled:"))
    assert ("target_in_scope_recall (90%)" in line) is on, line


def test_a_two_column_file_without_a_header_line_is_read_as_text_and_label(
    tmp_path: Path, tiny_model: str
) -> None:
    """UCI's sentiment sentences: ``sentence<TAB>0|1`` lines, no header. The first line is a record, so the
    drafted config names the columns itself (header: false) instead of asking for columns that have no
    names."""
    rng = random.Random(0)
    lines = [
        f"{text} and {rng.choice(['good', 'fine', 'bad'])} service\t{i % 2}"
        for i, (text, _) in enumerate(demo_rows())
    ]
    data = tmp_path / "reviews_labelled.txt"
    data.write_text("\n".join(lines) + "\n")
    output = tmp_path / "drafted.yaml"
    result = _cli("init", str(data), "--model", tiny_model, "--output", str(output))
    assert result.exit_code == 0, result.output
    drafted = yaml.safe_load(output.read_text())
    assert drafted["task"] == "sequence_classification"
    assert drafted["data"]["train"]["header"] is False
    assert drafted["data"]["train"]["column_names"] == ["text", "label"]
    assert "2 classes" in result.output


def test_a_file_without_a_header_line_it_cannot_read_asks_for_one(tmp_path: Path) -> None:
    """Five columns and no header: too many to name by position, so the answer is to add a header line."""
    data = tmp_path / "train.tsv"
    data.write_text(
        "My favourite food is anything I did not cook myself.\t27\teebbqej\tx\ty\nok then\t4\ta\tb\tc\n"
    )
    result = _cli("init", str(data), "--output", str(tmp_path / "x.yaml"))
    assert result.exit_code == 2, result.output
    assert "its first line reads like a record, not column names" in result.output
    assert not (tmp_path / "x.yaml").exists()


def test_label_indices_with_a_labels_file_are_named_by_it(tmp_path: Path, tiny_model: str) -> None:
    """Header-less text<TAB>index rows beside a labels.txt: init names the file in data.label_names, and
    the run's labels are the names, not the indices."""
    rows = demo_rows()
    names = sorted({label for _, label in rows})
    (tmp_path / "train.tsv").write_text("".join(f"{t}\t{names.index(label)}\n" for t, label in rows))
    (tmp_path / "labels.txt").write_text("\n".join(names) + "\n")
    output = tmp_path / "drafted.yaml"
    result = _cli("init", str(tmp_path), "--model", tiny_model, "--output", str(output))
    assert result.exit_code == 0, result.output
    drafted = yaml.safe_load(output.read_text())
    assert drafted["data"]["label_names"] == str(tmp_path / "labels.txt")
    assert "labels.txt names them" in output.read_text()
    cfg = load_config(output)
    assert sorted(cfg.kind.data.load_splits(cfg.data, 0).labels) == names


def test_too_few_rows_to_split_is_exit_2_naming_the_file(tmp_path: Path, tiny_model: str) -> None:
    """A header-less three-column file (GoEmotions' text, label ids, comment id) is read by position; two
    rows cannot give a validation and a test split: exit 2 naming the file, no config written."""
    data = tmp_path / "train.tsv"
    data.write_text("My favourite food is anything I did not cook myself.\t27\teebbqej\nok then\t4\tab12\n")
    result = _cli("init", str(data), "--model", tiny_model, "--output", str(tmp_path / "x.yaml"))
    assert result.exit_code == 2, result.output
    assert "train.tsv" in result.output and "too few" in result.output
    assert not (tmp_path / "x.yaml").exists()


@pytest.mark.parametrize(("words", "batch"), [(8, 32), (150, 16)])
def test_long_texts_get_a_batch_bounded_in_tokens(
    tmp_path: Path, tiny_model: str, words: int, batch: int
) -> None:
    """Activations grow with the padded tokens of a batch: long documents get fewer per batch than short
    queries of the same data size (at most 2,048 tokens), and the search explores around that."""
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(50)]
    rows = [(" ".join(rng.choices(vocab, k=words)), f"label_{i % 4}") for i in range(3000)]
    data = tmp_path / "docs.csv"
    write_csv(data, rows)
    output = tmp_path / "drafted.yaml"
    result = _cli("init", str(data), "--model", tiny_model, "--output", str(output))
    assert result.exit_code == 0, result.output
    cfg = yaml.safe_load(output.read_text())
    assert cfg["train"]["batch_size"] == batch
    assert cfg["train"]["batch_size"] * cfg["model"]["max_length"] <= 2048 or batch == 32
    assert cfg["search"]["space"]["train.batch_size"]["choices"] == [batch // 2, batch]
    assert ("at most 2048 tokens a batch" in output.read_text()) is (batch < 32)
    # The drafted search lets a trial train the final budget (its best checkpoint is the final model) and
    # puts successive halving's first rung after a third of it: epoch 2 of the 6 drafted for 2,100 rows.
    search = cfg["search"]
    assert "max_epochs" not in search and search["pruner"] == "successive_halving"
    assert cfg["train"]["max_epochs"] == 6
    assert (search["evals_per_epoch"], search["warmup_epochs"]) == (1, 2)
