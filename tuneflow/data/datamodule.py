"""The Lightning DataModule: serves pre-tokenized examples in length-grouped, per-batch padded batches.

What a batch looks like (class ids, or label sequences padded with -100) is the task type's collator; this
module only decides order and batching, the same way for every task.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Sampler

from tuneflow.data.encoding import Encoded, EncodedData, LengthGroupedBatches

Collate = Callable[[list[tuple[list[int], Any]]], dict[str, torch.Tensor]]


class EpochShuffle(Sampler[int]):
    """A fresh seeded permutation each epoch, ``randperm(n)`` seeded with ``seed + epoch``: the order a
    DistributedSampler deals out to its ranks. One process then sees the same global batches as N ranks
    with 1/N of the batch each, and a resumed run the same order as an uninterrupted one (Lightning calls
    ``set_epoch``)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())

    def __len__(self) -> int:
        return self.n


class TextDataModule(pl.LightningDataModule):
    """Serves pre-tokenized data, pads per batch (dynamic padding), optionally groups by length."""

    def __init__(
        self,
        data: EncodedData,
        collate: Collate,
        batch_size: int,
        eval_batch_size: int,
        seed: int,
        group_by_length: bool = True,
        num_workers: int = 0,
    ):
        super().__init__()
        self.data, self.collate = data, collate
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.seed, self.group_by_length, self.num_workers = seed, group_by_length, num_workers

    def _loader(self, data: list[tuple[list[int], Any]], **order: Any) -> DataLoader:
        # Pinned batches let Lightning copy them to a GPU without blocking: from pageable memory every
        # step's copy waits for the GPU to finish the previous step, so host and device never overlap.
        pin = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        return DataLoader(
            data, collate_fn=self.collate, num_workers=self.num_workers, pin_memory=pin, **order
        )

    def _dataset(self, name: str) -> list[tuple[list[int], Any]]:
        split: Encoded = getattr(self.data, name)
        return list(zip(split.ids, split.labels, strict=True))

    def train_dataloader(self) -> DataLoader:
        data = self._dataset("train")
        distributed = self.trainer is not None and self.trainer.world_size > 1
        if self.group_by_length and not distributed:
            sampler = LengthGroupedBatches([len(i) for i, _ in data], self.batch_size, self.seed)
            return self._loader(data, batch_sampler=sampler)
        if distributed:  # Lightning injects a DistributedSampler into a plain shuffling loader
            return self._loader(data, batch_size=self.batch_size, shuffle=True)
        return self._loader(data, batch_size=self.batch_size, sampler=EpochShuffle(len(data), self.seed))

    def val_dataloader(self) -> DataLoader:
        # Longest first, so batches hold similar lengths (little padding) and a memory problem shows at the
        # first batch; validation metrics are sums over examples, so the order changes nothing else.
        data = sorted(self._dataset("validation"), key=lambda item: len(item[0]), reverse=True)
        return self._loader(data, batch_size=self.eval_batch_size)
