"""The Lightning DataModule: serves pre-tokenized examples in length-grouped, per-batch padded batches.

What a batch looks like (class ids, or label sequences padded with -100) is the task type's collator; this
module only decides order and batching, the same way for every task.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from tuneflow.encoding import Encoded, EncodedData, LengthGroupedBatches

Collate = Callable[[list[tuple[list[int], Any]]], dict[str, torch.Tensor]]


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

    def _dataset(self, name: str) -> list[tuple[list[int], Any]]:
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
