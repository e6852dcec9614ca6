"""Each validation error and warning, asserted on the message a user sees."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import demo_rows, write_csv
from tuneflow.data.validation import validate_dataset
from tuneflow.tasktypes.resolve import config_from_dict


def _cfg(train: Path, test: Path | None = None, validation: Path | None = None, **extra: object):
    data = {"train": {"path": str(train)}, "text_column": "text", "label_column": "intent"}
    if test:
        data["test"] = {"path": str(test)}
    if validation:
        data["validation"] = {"path": str(validation)}
    extra.setdefault("train", {"batch_size": 4})  # the toy training sets here hold 12 to 60 rows
    return config_from_dict({"name": "t", "data": data, "validation": {"min_examples_per_class": 3}, **extra})


def _rows(n_per_class: int = 6, classes: tuple[str, ...] = ("a", "b", "c")) -> list[tuple[str, str]]:
    return [(f"example number {i} of class {c}", c) for c in classes for i in range(n_per_class)]


def _check(cfg, tokenizer=None):
    return validate_dataset(cfg.kind.data.load_raw(cfg.data), cfg, cfg.kind, tokenizer)


def test_clean_data_passes_and_splits(tmp_path: Path) -> None:
    report, splits = _check(_cfg(write_csv(tmp_path / "train.csv", _rows(20))))
    assert report.ok, report.errors
    assert splits is not None and splits.labels == ["a", "b", "c"]
    assert len(splits.train) + len(splits.validation) + len(splits.test) == 60
    # stratified: every class in every split
    assert set(splits.test["label"]) == {"a", "b", "c"} and set(splits.validation["label"]) == {"a", "b", "c"}


def test_missing_file(tmp_path: Path) -> None:
    report, splits = _check(_cfg(tmp_path / "nope.csv"))
    assert splits is None
    assert any("nope.csv" in e and "file not found" in e for e in report.errors)


def test_missing_column(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", _rows(), header=("text", "category"))
    report, _ = _check(_cfg(train))
    assert any("train.csv" in e and "column 'intent'" in e and "missing column" in e for e in report.errors)


def test_unreadable_file(tmp_path: Path) -> None:
    bad = tmp_path / "train.parquet"
    bad.write_bytes(b"this is not parquet at all")
    report, _ = _check(_cfg(bad))
    assert any("train.parquet" in e and "cannot read as parquet" in e for e in report.errors)


def test_empty_and_whitespace_texts_named_by_line(tmp_path: Path) -> None:
    rows = _rows()
    rows[2] = ("   ", "a")
    rows[4] = ("", "a")
    report, _ = _check(_cfg(write_csv(tmp_path / "train.csv", rows)))
    err = next(e for e in report.errors if "empty or whitespace-only" in e)
    # header is line 1, so rows[2] is line 4 and rows[4] is line 6
    assert "train.csv" in err and "line(s) 4, 6" in err and "column 'text'" in err


def test_nan_labels(tmp_path: Path) -> None:
    rows = _rows()
    rows[0] = ("some text", "")
    report, _ = _check(_cfg(write_csv(tmp_path / "train.csv", rows)))
    assert any(
        "missing (NaN/empty) label" in e and "line(s) 2" in e and "column 'intent'" in e
        for e in report.errors
    )


def test_label_unseen_in_train(tmp_path: Path) -> None:
    test = write_csv(tmp_path / "test.csv", [("a new thing", "zzz"), ("x y", "a")])
    report, _ = _check(_cfg(write_csv(tmp_path / "train.csv", _rows()), test=test))
    assert any(
        "test.csv" in e and "never seen in train: 'zzz'" in e and "line(s) 2" in e for e in report.errors
    )


def test_fewer_than_two_classes(tmp_path: Path) -> None:
    report, _ = _check(_cfg(write_csv(tmp_path / "train.csv", _rows(classes=("a",)))))
    assert any("1 class(es); at least 2 are needed" in e for e in report.errors)


def test_min_examples_per_class(tmp_path: Path) -> None:
    rows = _rows(6) + [("rare one", "rare"), ("rare two", "rare")]
    report, _ = _check(_cfg(write_csv(tmp_path / "train.csv", rows)))
    assert any("min_examples_per_class=3" in e and "'rare' (2)" in e for e in report.errors)


def test_warnings_duplicates_leakage_imbalance(tmp_path: Path) -> None:
    rows = _rows(40, ("a",)) + _rows(3, ("b",)) + [("Exact Dup!", "a"), ("exact dup", "a")]
    test = write_csv(tmp_path / "test.csv", [("EXACT DUP", "a"), ("fresh text", "b")])
    cfg = _cfg(write_csv(tmp_path / "train.csv", rows), test=test)
    report, splits = _check(cfg)
    assert report.ok, report.errors
    text = "\n".join(report.warnings)
    assert "duplicate text(s) in train" in text
    assert "test text(s) also in train (leakage" in text and "test.csv" in text
    assert "class imbalance" in text
    assert report.stats["imbalance_ratio"] > 10


def test_leakage_can_be_an_error(tmp_path: Path) -> None:
    test = write_csv(tmp_path / "test.csv", [("example number 1 of class a", "a")])
    cfg = _cfg(
        write_csv(tmp_path / "train.csv", _rows()),
        test=test,
        validation={"min_examples_per_class": 3, "fail_on_leakage": True},
    )
    report, _ = _check(cfg)
    assert any("leakage" in e for e in report.errors)


def test_truncation_share_uses_the_real_tokenizer(tmp_path: Path, tiny_model: str) -> None:
    from tuneflow.fitting.model import load_tokenizer

    long = " ".join(["order"] * 50)
    rows = [(long + f" {i}", c) for c in ("a", "b") for i in range(10)]
    cfg = _cfg(write_csv(tmp_path / "train.csv", rows), model={"name": tiny_model, "max_length": 16})
    report, _ = _check(cfg, load_tokenizer(tiny_model))
    assert report.stats["truncated_share_train"] == 1.0
    assert any("longer than model.max_length=16" in w for w in report.warnings)


def test_tsv_without_header_and_unbalanced_quotes(tmp_path: Path) -> None:
    path = tmp_path / "reviews.txt"
    path.write_text('a "quoted start  \t1\nplain text\t0\n' * 4)
    cfg = config_from_dict(
        {
            "name": "t",
            "data": {
                "train": {"path": str(path), "header": False, "column_names": ["sentence", "label"]},
                "text_column": "sentence",
                "label_column": "label",
            },
            "validation": {"min_examples_per_class": 2},
        }
    )
    raw = cfg.kind.data.load_raw(cfg.data)
    assert len(raw.frames["train"]) == 8 and not raw.problems
    assert raw.frames["train"]["label"].tolist()[:2] == ["1", "0"]


def test_hub_dataset_offline_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    cfg = config_from_dict({"name": "t", "data": {"hub_dataset": "tuneflow-test/no-such-dataset"}})
    report, splits = validate_dataset(cfg.kind.data.load_raw(cfg.data), cfg, cfg.kind)
    assert splits is None
    assert any(
        "cannot load hub dataset 'tuneflow-test/no-such-dataset'" in e and "local files" in e
        for e in report.errors
    )


def test_demo_dataset_is_clean() -> None:
    assert len(demo_rows("train")) + len(demo_rows("test")) >= 400
    assert len({label for _, label in demo_rows("train")}) >= 8


def test_a_train_subsample_too_small_for_every_class_is_an_error(tmp_path: Path) -> None:
    """Subsampled after reading, a class could end up with examples in validation but none in train."""
    train = write_csv(tmp_path / "train.csv", _rows(40, ("a", "b")) + _rows(8, ("rare",)))
    cfg = _cfg(train)
    assert _check(cfg)[0].ok
    small = cfg.model_copy(update={"data": cfg.data.model_copy(update={"max_train_examples": 20})})
    report, _ = _check(small)
    assert any(
        "data.max_train_examples=20 leaves the smallest class ('rare') about 1 train example(s)" in e
        and "raise it to about" in e
        for e in report.errors
    ), report.errors
