"""Shared fixtures: a tiny random BERT + tokenizer trained on the fly, temporary MLflow/Prefect stores."""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
DEMO_DATA = ROOT / "data" / "chatbot_intents"

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer, hidden-32 BERT with random weights and a WordPiece tokenizer trained on the demo texts."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-bert")
    texts = [text for text, _ in demo_rows("train")]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(
        texts * 3,
        trainers.WordPieceTrainer(
            vocab_size=600, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        ),
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    )
    fast.save_pretrained(out)
    config = BertConfig(
        vocab_size=fast.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=2,
    )
    import torch

    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(out)
    return str(out)


def write_csv(path: Path, rows: list[tuple[str, str]], header: tuple[str, str] = ("text", "intent")) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def demo_rows(split: str = "train") -> list[tuple[str, str]]:
    with open(DEMO_DATA / f"{split}.csv", newline="") as fh:
        return [(r["text"], r["intent"]) for r in csv.DictReader(fh)]


@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite MLflow store per test."""
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    (tmp_path / "mlruns").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    import mlflow

    mlflow.set_tracking_uri(uri)
    return uri


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def make_config(
    tmp_path: Path,
    tiny_model: str,
    name: str = "tiny-intents",
    train_file: Path | None = None,
    test_file: Path | None = None,
    **sections: dict,
) -> Path:
    """Write a config for the tiny model on (a subset of) the demo data; ``sections`` override keys."""
    train, test = train_file, test_file
    if train is None:
        rng = random.Random(0)
        rows = demo_rows("train")
        rng.shuffle(rows)
        train = write_csv(tmp_path / "train.csv", rows[:300])
    if test is None:
        test = write_csv(tmp_path / "test.csv", demo_rows("test"))
    cfg = {
        "name": name,
        "data": {"train": str(train), "test": str(test), "text_column": "text", "label_column": "intent"},
        "validation": {"min_examples_per_class": 3},
        "model": {"name": tiny_model, "max_length": 32},
        "train": {
            "lr": 3e-3,
            "batch_size": 16,
            "max_epochs": 3,
            "early_stopping_patience": 3,
            "seed": 0,
            "log_every_n_steps": 2,
        },
        "eval": {"latency_examples": 5, "worst_examples": 10},
        "output_dir": str(tmp_path / "checkpoints"),
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
