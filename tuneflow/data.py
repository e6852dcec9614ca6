"""Loading, splitting and tokenizing data for every task type.

Reading files is IO and lives here (the task-specific column handling is in :mod:`tuneflow.ner`,
:mod:`tuneflow.seq2seq` and :mod:`tuneflow.chat`); the quality checks on what was read are pure and live in
:mod:`tuneflow.validation`. Every frame carries a ``_line`` column (the line number in its source file)
so that a problem can be reported as ``file:line``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pandas as pd
import torch
from torch.utils.data import DataLoader

from tuneflow.config import DataConfig, FileSpec

SPLITS = ("train", "validation", "test")
TEXT, LABEL, LINE = "text", "label", "_line"
TAGS = "tags"  # token_classification: the BIO tag list of a sentence


@dataclass(frozen=True)
class Problem:
    """One data problem, located as precisely as we can."""

    message: str
    file: str | None = None
    line: int | None = None
    column: str | None = None

    def __str__(self) -> str:
        where = self.file or ""
        if self.line is not None:
            where += f":{self.line}"
        if self.column:
            where += f" [column '{self.column}']"
        return f"{where}: {self.message}" if where else self.message


@dataclass
class RawData:
    """Frames as read from their sources (``text``, ``label``, ``_line`` columns), before any split."""

    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


def _infer_format(spec: FileSpec) -> str:
    if spec.format != "auto":
        return spec.format
    suffix = Path(spec.path).suffix.lower()
    formats = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}
    formats.update(
        {".conll": "conll", ".bio": "conll", ".iob": "conll", ".parquet": "parquet", ".pq": "parquet"}
    )
    return formats.get(suffix, "csv")


def read_frame(spec: FileSpec) -> tuple[pd.DataFrame | None, int, list[Problem]]:
    """Read a CSV/TSV/JSONL/Parquet file as it is: the frame (None when unreadable), the file line of its
    first row, and the problems found (missing or unreadable file)."""
    path = Path(spec.path)
    if not path.is_file():
        return None, 1, [Problem("file not found", file=str(path))]
    fmt = _infer_format(spec)
    header_offset = 2 if spec.header and fmt in ("csv", "tsv") else 1
    if fmt == "conll":
        return (
            None,
            1,
            [Problem("CoNLL files hold token tags: use task: token_classification", file=str(path))],
        )
    try:
        if fmt in ("csv", "tsv"):
            df = pd.read_csv(
                path,
                sep="\t" if fmt == "tsv" else ",",
                # TSV corpora (SST-2, UCI sentences) have unbalanced quotes: " never quotes there.
                quoting=csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL,
                header=0 if spec.header else None,
                names=spec.column_names,
                dtype=str,
                keep_default_na=False,
                na_values=[""],
                skip_blank_lines=False,
            )
        elif fmt == "jsonl":
            df = pd.read_json(path, lines=True, dtype=False)
        else:
            df = pd.read_parquet(path)
    except Exception as exc:  # pandas raises many parser error types; all mean "unreadable"
        problem = Problem(f"cannot read as {fmt}: {type(exc).__name__}: {exc}".strip(), file=str(path))
        return None, header_offset, [problem]
    return df, header_offset, []


def missing_columns(df: pd.DataFrame, columns: Iterable[str], source: str) -> list[Problem]:
    """One problem per required column the frame lacks, listing the columns it has."""
    found = ", ".join(map(str, df.columns))
    return [
        Problem(f"missing column (found: {found})", file=source, column=c)
        for c in columns
        if c not in df.columns
    ]


def read_table(
    spec: FileSpec, text_column: str, label_column: str
) -> tuple[pd.DataFrame | None, list[Problem]]:
    """Read one file into a ``text``/``label``/``_line`` frame.

    Returns the frame (None when it cannot be read) and the problems found: a missing or unreadable file,
    missing columns. Cell-level problems are left to :func:`tuneflow.validation.validate_dataset`.
    """
    df, header_offset, problems = read_frame(spec)
    if df is None:
        return None, problems
    problems = missing_columns(df, (text_column, label_column), spec.path)
    if problems:
        return None, problems
    out = pd.DataFrame(
        {
            TEXT: df[text_column],
            LABEL: df[label_column].map(_label_to_str),
            LINE: range(header_offset, header_offset + len(df)),
        }
    )
    return out, []


def _label_to_str(value: Any) -> str | None:
    """Labels are strings everywhere (0/1 ints and "0"/"1" strings must mean the same class)."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def read_examples(
    spec: FileSpec, cfg: DataConfig, task: str = "sequence_classification"
) -> tuple[pd.DataFrame | None, list[Problem]]:
    """Read one file of ``task`` examples into its standard frame (always with ``text`` and ``_line``)."""
    if task == "token_classification":
        from tuneflow.ner import read_tagged

        return read_tagged(spec, cfg)
    if task == "seq2seq":
        from tuneflow.seq2seq import read_pairs

        return read_pairs(spec, cfg)
    if task == "causal_lm":
        from tuneflow.chat import read_chats

        return read_chats(spec, cfg)
    return read_table(spec, cfg.text_column, cfg.label_column)


def load_raw(cfg: DataConfig, task: str = "sequence_classification") -> RawData:
    """Read every configured source (local files or a hub dataset) without splitting or cleaning."""
    raw = RawData()
    if cfg.hub_dataset:
        if task == "sequence_classification":
            _load_hub(cfg, raw)
        else:
            raw.problems.append(
                Problem(
                    f"data.hub_dataset is only read for sequence_classification; for {task} use local files"
                )
            )
    specs: dict[str, FileSpec] = {s: getattr(cfg, s) for s in SPLITS if getattr(cfg, s) is not None}
    specs.update({f"extra:{e.name}": e for e in cfg.extra_eval})
    for name, spec in specs.items():
        frame, problems = read_examples(spec, cfg, task)
        raw.problems += problems
        raw.sources[name] = spec.path
        if frame is not None:
            raw.frames[name] = frame
    return raw


def _load_hub(cfg: DataConfig, raw: RawData) -> None:
    import datasets

    try:
        dsd = datasets.load_dataset(cfg.hub_dataset, cfg.hub_config)
    except Exception as exc:  # offline, unknown id, script dataset, ...
        raw.problems.append(
            Problem(
                f"cannot load hub dataset '{cfg.hub_dataset}': {type(exc).__name__}: {exc}. "
                "Without network access (HF_HUB_OFFLINE=1 here) use local files in "
                "data.train/validation/test."
            )
        )
        return
    aliases = {"train": ["train"], "validation": ["validation", "valid", "dev"], "test": ["test"]}
    for split, names in aliases.items():
        for n in names:
            if n in dsd:
                df = dsd[n].to_pandas()
                source = f"hf://{cfg.hub_dataset}/{n}"
                missing = [c for c in (cfg.text_column, cfg.label_column) if c not in df.columns]
                if missing:
                    raw.problems += [Problem("missing column", file=source, column=c) for c in missing]
                    break
                labels = df[cfg.label_column]
                feature = dsd[n].features.get(cfg.label_column)
                if hasattr(feature, "int2str"):  # ClassLabel: keep readable names
                    labels = labels.map(
                        lambda i, f=feature: f.int2str(int(i)) if i is not None and i >= 0 else None
                    )
                raw.frames[split] = pd.DataFrame(
                    {TEXT: df[cfg.text_column], LABEL: labels.map(_label_to_str), LINE: range(1, len(df) + 1)}
                )
                raw.sources[split] = source
                break


def clean_text(series: pd.Series) -> pd.Series:
    """Strip surrounding whitespace (GLUE/UCI files carry trailing spaces)."""
    return series.map(lambda t: t.strip() if isinstance(t, str) else t)


@dataclass
class Splits:
    """Cleaned train/validation/test frames plus extra evaluation sets and the label order."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    extra: dict[str, pd.DataFrame]
    labels: list[str]
    sources: dict[str, str]

    def frames(self) -> dict[str, pd.DataFrame]:
        return {"train": self.train, "validation": self.validation, "test": self.test, **self.extra}

    @property
    def label2id(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}


def _stratified_take(df: pd.DataFrame, size: float | int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    from sklearn.model_selection import train_test_split

    # Stratify only when every class can appear on both sides; otherwise (and for tasks without a
    # sentence label) fall back to a random split.
    stratify = df[LABEL] if LABEL in df.columns and df[LABEL].value_counts().min() >= 2 else None
    try:
        rest, taken = train_test_split(df, test_size=size, random_state=seed, stratify=stratify)
    except ValueError:
        rest, taken = train_test_split(df, test_size=size, random_state=seed)
    return rest.reset_index(drop=True), taken.reset_index(drop=True)


def split_dataset(raw: RawData, cfg: DataConfig, seed: int) -> Splits:
    """Clean the raw frames and carve missing validation/test splits out of train, stratified and seeded."""
    frames = {
        name: df.assign(**{TEXT: clean_text(df[TEXT])}).reset_index(drop=True)
        for name, df in raw.frames.items()
    }
    train = frames["train"]
    sources = dict(raw.sources)
    if cfg.max_train_examples and len(train) > cfg.max_train_examples:
        _, train = _stratified_take(train, cfg.max_train_examples, seed)
    if "test" not in frames:
        train, frames["test"] = _stratified_take(train, cfg.test_size, seed)
        sources["test"] = f"{sources['train']} (stratified {cfg.test_size:.0%} split, seed {seed})"
    if "validation" not in frames:
        train, frames["validation"] = _stratified_take(train, cfg.validation_size, seed + 1)
        sources["validation"] = (
            f"{sources['train']} (stratified {cfg.validation_size:.0%} split, seed {seed + 1})"
        )
    labels = labels_of(train)
    extra = {name.split(":", 1)[1]: df for name, df in frames.items() if name.startswith("extra:")}
    sources = {name.removeprefix("extra:"): src for name, src in sources.items()}
    return Splits(train, frames["validation"], frames["test"], extra, labels, sources)


def labels_of(train: pd.DataFrame) -> list[str]:
    """The label set a model is built for: sentence classes, or BIO tags ("O" first) for NER; none else."""
    if LABEL in train.columns:
        return sorted(train[LABEL].unique().tolist())
    if TAGS in train.columns:
        tags = {t for seq in train[TAGS] for t in seq}
        return ["O", *sorted(tags - {"O"})]
    return []


def load_splits(cfg: DataConfig, seed: int, task: str = "sequence_classification") -> Splits:
    """Read and split already-validated data: every stage after validation sees exactly the same splits."""
    return split_dataset(load_raw(cfg, task), cfg, seed)


def content_columns(df: pd.DataFrame) -> list[str]:
    """The columns that make up an example (everything but the source line number)."""
    return [c for c in df.columns if c != LINE]


def fingerprint(splits: Splits) -> str:
    """Content hash of all splits (every example column): identifies the exact data a model was trained on."""
    h = hashlib.sha256()
    for name, df in sorted(splits.frames().items()):
        h.update(name.encode())
        cols = content_columns(df)
        # Lists (tokens, tags, messages, references) are hashed through their JSON form.
        flat = df[cols].map(lambda v: json.dumps(v, sort_keys=True) if isinstance(v, list | dict) else v)
        h.update(pd.util.hash_pandas_object(flat, index=False).values.tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------- tokenizing


class LengthGroupedBatches:
    """Batch sampler that groups examples of similar length (less padding) while staying shuffled.

    Indices are shuffled, cut into mega-batches of ``50 * batch_size``, sorted by length inside each,
    then cut into batches whose order is shuffled again: the same idea as HF's ``group_by_length``.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed, self.epoch = lengths, batch_size, seed, 0

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed + self.epoch)
        self.epoch += 1
        idx = list(range(len(self.lengths)))
        rng.shuffle(idx)
        mega = self.batch_size * 50
        batches = []
        for start in range(0, len(idx), mega):
            chunk = sorted(idx[start : start + mega], key=self.lengths.__getitem__, reverse=True)
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        rng.shuffle(batches)
        return iter(batches)

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size


def tokenize(tokenizer: Any, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids per text, truncated at ``max_length``, not padded (padding happens per batch)."""
    return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]


@dataclass
class Encoded:
    """Token ids and label ids of one split."""

    ids: list[list[int]]
    labels: list[Any]  # a class id per example, or a label-id list (token tags, target or LM labels)

    def take(self, index: Iterable[int]) -> Encoded:
        index = list(index)
        return Encoded([self.ids[i] for i in index], [self.labels[i] for i in index])

    def __add__(self, other: Encoded) -> Encoded:
        return Encoded(self.ids + other.ids, self.labels + other.labels)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class EncodedData:
    """Tokenized train/validation splits: built once and reused by every trial and fold of a study."""

    train: Encoded
    validation: Encoded
    labels: list[str]
    tokenizer: Any
    max_length: int
    task: str = "sequence_classification"

    def folds(self, k: int, seed: int) -> list[EncodedData]:
        """``k`` stratified folds over train+validation (the test split is never touched)."""
        from sklearn.model_selection import StratifiedKFold

        pool = self.train + self.validation
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        return [
            EncodedData(pool.take(tr), pool.take(va), self.labels, self.tokenizer, self.max_length)
            for tr, va in splitter.split(pool.ids, pool.labels)
        ]


def encode(splits: Splits, tokenizer: Any, max_length: int) -> EncodedData:
    """Tokenize the train and validation splits once (no padding: batches pad dynamically)."""
    label2id = splits.label2id

    def one(df: pd.DataFrame) -> Encoded:
        return Encoded(tokenize(tokenizer, df[TEXT].tolist(), max_length), [label2id[x] for x in df[LABEL]])

    return EncodedData(one(splits.train), one(splits.validation), splits.labels, tokenizer, max_length)


def collator_for(task: str, tokenizer: Any) -> Any:
    """transformers' collator padding inputs with the pad token and label sequences with -100."""
    from transformers import DataCollatorForSeq2Seq, DataCollatorForTokenClassification

    if task == "token_classification":
        return DataCollatorForTokenClassification(tokenizer, return_tensors="pt")
    # Seq2seq targets and causal-LM labels (same length as the inputs) are both padded with -100 by it.
    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, return_tensors="pt")


class TextDataModule(pl.LightningDataModule):
    """Serves pre-tokenized data, pads per batch (dynamic padding), optionally groups by length."""

    def __init__(
        self,
        data: EncodedData,
        batch_size: int,
        eval_batch_size: int,
        seed: int,
        group_by_length: bool = True,
        num_workers: int = 0,
    ):
        super().__init__()
        self.data, self.tokenizer = data, data.tokenizer
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.seed, self.group_by_length, self.num_workers = seed, group_by_length, num_workers
        self.pad_labels = (
            None if data.task == "sequence_classification" else collator_for(data.task, self.tokenizer)
        )

    def collate(self, items: list[tuple[list[int], Any]]) -> dict[str, torch.Tensor]:
        if self.pad_labels is not None:  # label sequences are padded with -100 (ignored by the loss)
            return dict(self.pad_labels([{"input_ids": ids, "labels": labels} for ids, labels in items]))
        batch = self.tokenizer.pad({"input_ids": [ids for ids, _ in items]}, return_tensors="pt")
        batch["labels"] = torch.tensor([label for _, label in items])
        return dict(batch)

    def _dataset(self, name: str) -> list[tuple[list[int], int]]:
        split: Encoded = getattr(self.data, name)
        return list(zip(split.ids, split.labels, strict=True))

    def train_dataloader(self) -> DataLoader:
        data = self._dataset("train")
        distributed = self.trainer is not None and self.trainer.world_size > 1
        if self.group_by_length and not distributed:
            sampler = LengthGroupedBatches([len(i) for i, _ in data], self.batch_size, self.seed)
            return DataLoader(
                data, batch_sampler=sampler, collate_fn=self.collate, num_workers=self.num_workers
            )
        # Under DDP Lightning injects a DistributedSampler; plain seeded shuffling keeps that working.
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            data,
            batch_size=self.batch_size,
            shuffle=True,
            generator=gen,
            collate_fn=self.collate,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self._dataset("validation"),
            batch_size=self.eval_batch_size,
            collate_fn=self.collate,
            num_workers=self.num_workers,
        )
