"""Checkpoints written straight to disk.

Lightning's ``TorchCheckpointIO`` serializes a checkpoint into an in-memory buffer and then writes the
buffer (what an object store's atomic upload needs). For a full fine-tune of SmolLM2-135M a ``last.ckpt``
holds the weights and both AdamW moments, 1.6 GB: the buffer, its growth and its copy for the write held
several times that in RAM at every save (bench/RESULTS.md, the chat memory rows). A local path is written to
a temporary file beside the target and renamed over it: as atomic (a killed save leaves the previous
checkpoint), without the buffer. Remote paths keep Lightning's way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO


class StreamingCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that streams local checkpoints to disk instead of through a memory buffer."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        from fsspec.implementations.local import LocalFileSystem

        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        try:
            torch.save(checkpoint, partial)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
