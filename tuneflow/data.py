"""Splitting, fingerprinting and tokenizing data for every task type.

Reading files lives in :mod:`tuneflow.readers` (pandas only, re-exported here); the quality checks on what
was read are pure and live in :mod:`tuneflow.validation`.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import pandas as pd
import torch
from torch.utils.data import DataLoader

from tuneflow.readers import (  # noqa: F401  (re-exported: the stages read data through this module)
    LABEL,
    LINE,
    SPLITS,
    TAGS,
    TEXT,
    Problem,
    RawData,
    load_raw,
    missing_columns,
    read_examples,
    read_frame,
)
from tuneflow.splits import (  # noqa: F401  (re-exported)
    Splits,
    clean_text,
    content_columns,
    fingerprint,
    labels_of,
    load_splits,
    split_dataset,
)

# --------------------------------------------------------------------------------------------- tokenizing


class _EpochSetter:
    """The ``sampler`` of :class:`LengthGroupedBatches` as Lightning sees it: forwards ``set_epoch``."""

    def __init__(self, owner: LengthGroupedBatches):
        self.owner = owner

    def set_epoch(self, epoch: int) -> None:
        self.owner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.owner.lengths)


class LengthGroupedBatches:
    """Batch sampler that groups examples of similar length (less padding) while staying shuffled.

    Indices are shuffled, cut into mega-batches of ``50 * batch_size``, sorted by length inside each,
    then cut into batches whose order is shuffled again: the same idea as HF's ``group_by_length``.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed, self.epoch = lengths, batch_size, seed, 0
        # Lightning calls ``set_epoch`` on ``batch_sampler.sampler`` at every epoch start (not on the batch
        # sampler itself): through it a resumed run draws the same batches for its epoch as an
        # uninterrupted one, instead of restarting the sequence at epoch 0.
        self.sampler = _EpochSetter(self)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        # A generator: the order is drawn at the first batch, after Lightning's set_epoch (Lightning creates
        # the iterator of an epoch before it sets the epoch).
        yield from self._batches()

    def _batches(self) -> list[list[int]]:
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
        return batches

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
