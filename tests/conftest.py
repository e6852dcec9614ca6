"""Shared fixtures: a tiny random BERT + tokenizer trained on the fly, temporary MLflow/Prefect stores."""

from __future__ import annotations

import csv
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
DEMO_DATA = ROOT / "data" / "chatbot_intents"

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config: pytest.Config) -> None:
    """absl's log handler (imported with rouge_score by the seq2seq metrics) writes to the sys.stderr of the
    moment it is created: under pytest, a capture buffer. The next ``logging.config.dictConfig`` (Prefect's,
    on its first import) closes every handler, and absl's close() closes its stream unless it is a real
    standard stream: the capture buffer of a later test then reads as "I/O operation on closed file". Pointed
    at the process's real stderr, the handler leaves the buffers alone (outside pytest it already is)."""
    import sys

    try:
        from absl import logging as absl_logging
    except ImportError:  # no seq2seq metrics installed
        return
    absl_logging.get_absl_handler().python_handler.stream = sys.__stderr__


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer, hidden-32 BERT with random weights and a WordPiece tokenizer trained on the demo texts."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

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
    save_bert(out, fast.vocab_size, hidden=32, ffn=64, heads=2, positions=128)
    return str(out)


def save_bert(out: Path, vocab_size: int, hidden: int, ffn: int, heads: int, positions: int) -> None:
    """A 2-layer BERT classifier with random (seeded) weights, saved to ``out``."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=positions,
        num_labels=2,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(out)


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
    from tuneflow.store import tracking

    tracking.configure(uri)  # what a process entry does: tracking and registry both point at this store
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


OFF_TOPIC = ["what's the weather like", "tell me a joke", "asdf qwerty", "who won the match", "sing a song"]


def write_oos(tmp_path: Path) -> Path:
    """A file of off-topic queries (each twice), for ``data.oos_validation`` / ``data.oos_test``."""
    path = tmp_path / "oos.csv"
    path.write_text("text\n" + "".join(f'"{t}"\n' for t in OFF_TOPIC * 2))
    return path


# ---------------------------------------------------------------- other task types (tiny, random)

PEOPLE = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]
PLACES = ["paris", "london", "berlin", "madrid", "rome", "oslo", "vienna", "lisbon"]
ORGS = ["acme", "globex", "initech", "umbrella", "hooli"]


def ner_rows(n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """Synthetic sentences with person / location / org entities (multi-word ones too)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        person, place, org = rng.choice(PEOPLE), rng.choice(PLACES), rng.choice(ORGS)
        pattern = rng.randrange(3)
        if pattern == 0:
            words = [person, "smith", "moved", "to", place, "last", "year"]
            tags = ["B-person", "I-person", "O", "O", "B-location", "O", "O"]
        elif pattern == 1:
            words = [person, "works", "for", org, "corp", "in", place]
            tags = ["B-person", "O", "O", "B-org", "I-org", "O", "B-location"]
        else:
            words = ["the", "office", "of", org, "is", "near", place, "station"]
            tags = ["O", "O", "O", "B-org", "O", "O", "B-location", "O"]
        out.append((words, tags))
    return out


def write_conll(path: Path, rows: list[tuple[list[str], list[str]]]) -> Path:
    with open(path, "w") as fh:
        for words, tags in rows:
            fh.writelines(f"{w}\t{t}\n" for w, t in zip(words, tags, strict=True))
            fh.write("\t\n")  # WNUT-17 style separator: a line holding only a tab
    return path


def _word_level_tokenizer(texts: list[str], specials: list[str], **named: str):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token=named["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=specials))
    return tok, PreTrainedTokenizerFast


@pytest.fixture(scope="session")
def tiny_ner_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer BERT whose WordPiece vocabulary covers the synthetic NER words (sub-words included)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForTokenClassification, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-ner-bert")
    texts = [" ".join(words) for words, _ in ner_rows(200, 0)]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # A small vocabulary forces some words into several sub-tokens: alignment is exercised.
    tok.train_from_iterator(
        texts, trainers.WordPieceTrainer(vocab_size=90, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    )
    fast.save_pretrained(out)
    import torch

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=fast.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
    )
    BertForTokenClassification(config).save_pretrained(out)
    return str(out)


def ner_config(tmp_path: Path, model: str, **sections: dict) -> Path:
    """A token-classification config for the tiny NER model on synthetic sentences."""
    train = write_conll(tmp_path / "train.conll", ner_rows(160, 1))
    test = write_conll(tmp_path / "test.conll", ner_rows(40, 2))
    return make_config(
        tmp_path,
        model,
        name="tiny-ner",
        task="token_classification",
        data={"train": str(train), "test": str(test)},
        train={"lr": 5e-3, "max_epochs": 4, "monitor": "val/f1"},
        **sections,
    )


def seq2seq_rows(n: int, seed: int) -> list[dict]:
    """'Summaries' = the first sentence of a few: learnable by copying, enough to move ROUGE."""
    rng = random.Random(seed)
    words = PEOPLE + PLACES + ORGS
    out = []
    for _ in range(n):
        sentences = [
            f"{rng.choice(words)} met {rng.choice(words)} in {rng.choice(PLACES)} ." for _ in range(3)
        ]
        out.append({"source": sentences, "target": [sentences[0], sentences[0].replace(" .", "")]})
    return out


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer random T5 with a word-level tokenizer (pad 0, eos 1, unk 2) that appends </s>."""
    from tokenizers import processors
    from transformers import T5Config, T5ForConditionalGeneration

    out = tmp_path_factory.mktemp("tiny-t5")
    texts = [" ".join(r["source"]) for r in seq2seq_rows(200, 0)] + ["summarize :"]
    tok, fast_cls = _word_level_tokenizer(texts, ["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = fast_cls(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(out)
    import torch

    torch.manual_seed(0)
    config = T5Config(
        vocab_size=fast.vocab_size,
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    T5ForConditionalGeneration(config).save_pretrained(out)
    return str(out)


def chat_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        place = rng.choice(PLACES)
        messages = [
            {"role": "system", "content": "you are a travel helper ."},
            {"role": "user", "content": f"where is {place} ?"},
            {"role": "assistant", "content": f"{place} is in europe ."},
        ]
        out.append({"messages": messages})
    return out


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer random GPT-2 with a word-level tokenizer and no chat template (the fallback is used)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from tuneflow.tasktypes.chat import FALLBACK_TEMPLATE

    out = tmp_path_factory.mktemp("tiny-gpt2")
    rendered = []
    for row in chat_rows(100, 0):
        rendered += [f"<|{m['role']}|> {m['content']}" for m in row["messages"]]
    tok, fast_cls = _word_level_tokenizer(rendered, ["<unk>", "<eos>"], unk_token="<unk>")
    fast = fast_cls(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>", bos_token="<eos>")
    assert not fast.chat_template and "eos_token" in FALLBACK_TEMPLATE
    fast.save_pretrained(out)
    import torch

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=fast.vocab_size,
        n_positions=128,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=1,
        eos_token_id=1,
    )
    GPT2LMHeadModel(config).save_pretrained(out)
    return str(out)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@contextmanager
def mlflow_process(args: list[str], ready: str, timeout: float = 180, **popen: object) -> Iterator[str]:
    """``python -m mlflow ARGS --host 127.0.0.1 --port <free port>`` running until the block ends; yields its
    base URL once ``GET ready`` answers (the UI server's ``/health``, a scoring server's ``/ping``)."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    cmd = [sys.executable, "-m", "mlflow", *args, "--host", "127.0.0.1", "--port", str(port)]
    popen = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, **popen}
    proc = subprocess.Popen(cmd, **popen)  # type: ignore[call-overload]
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{base}{ready}", timeout=2)
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None, (
                    f"`mlflow {' '.join(args[:2])}` did not start{_log_tail(popen.get('stdout'))}"
                )
                time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _log_tail(out: object) -> str:
    """The end of a server's log file, when its output went to one."""
    name = getattr(out, "name", None)
    if not isinstance(name, str) or not Path(name).is_file():
        return ""
    return ":\n" + Path(name).read_text(errors="replace")[-4000:]


def invoke(base: str, body: dict, timeout: float = 120) -> tuple[int, str]:
    """POST ``body`` to a scoring server's ``/invocations``: the status and the response text (4xx too)."""
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"{base}/invocations", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
