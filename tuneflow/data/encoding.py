"""Tokenized examples and the order they are batched in: task-neutral, torch-free.

Each task type turns its splits into :class:`EncodedData` (token ids plus a label per example, or a label
sequence); :class:`LengthGroupedBatches` decides which examples share a batch. Padding happens per batch in
:mod:`tuneflow.data.datamodule`.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any


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
    task: str  # the task type's registry name

    @property
    def pool(self) -> Encoded:
        """Train then validation: what cross-validation re-splits (the test split is never touched)."""
        return self.train + self.validation

    def fold_indices(self, k: int, seed: int) -> list[tuple[Any, Any]]:
        """``(train, held-out)`` positions in :attr:`pool` of ``k`` stratified folds."""
        from sklearn.model_selection import StratifiedKFold

        pool = self.pool
        return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(pool.ids, pool.labels))

    def fold(self, train: Any, held_out: Any) -> EncodedData:
        """The fold that trains on ``train`` and validates on ``held_out`` (positions in :attr:`pool`)."""
        pool = self.pool
        return EncodedData(
            pool.take(train), pool.take(held_out), self.labels, self.tokenizer, self.max_length, self.task
        )

    def folds(self, k: int, seed: int) -> list[EncodedData]:
        """``k`` stratified folds over train+validation (the test split is never touched)."""
        return [self.fold(tr, va) for tr, va in self.fold_indices(k, seed)]


# -------------------------------------------------------------------------------------------- collation
# Callables (not closures) so DataLoader workers can pickle them; torch is imported on the first batch.


class PadInputs:
    """Batches of one class id per example: inputs padded with the pad token, labels a 1-D tensor."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def __call__(self, items: list[tuple[list[int], Any]]) -> dict[str, Any]:
        import torch

        batch = self.tokenizer.pad({"input_ids": [ids for ids, _ in items]}, return_tensors="pt")
        batch["labels"] = torch.tensor([label for _, label in items])
        return dict(batch)


class PadSequences:
    """Batches of label sequences (token tags, targets, LM labels): labels padded with -100 (no loss)."""

    def __init__(self, collator: Any):
        self.collator = collator  # a transformers data collator

    def __call__(self, items: list[tuple[list[int], Any]]) -> dict[str, Any]:
        return dict(self.collator([{"input_ids": ids, "labels": labels} for ids, labels in items]))
