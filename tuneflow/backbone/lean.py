"""Lean generative fine-tuning: what a training step of a causal LM does not need to hold.

* :func:`causal_lm_loss` — the loss on the positions that have a label only. transformers' causal-LM forward
  computes the vocabulary-wide logits of every position (49k per token for SmolLM2: 0.8 GB in fp32 for a
  512-token batch of 8, then as much again for the log-softmax and for each gradient), although a chat
  fine-tune's loss reads the assistant tokens alone. Here the decoder's hidden states at labeled positions go
  through the output layer in chunks, each chunk's logits recomputed in the backward pass instead of held:
  the same loss and gradients (tests/test_lean.py), without the full logits, and the output layer runs on
  the labeled positions only (fewer FLOPs).
* :func:`enable_checkpointing` — ``train.gradient_checkpointing``: transformers' activation recomputation.

The allocator matters as much as the tensors: with glibc's malloc a process fine-tuning SmolLM2 kept three
times its live memory (freed blocks too fragmented to reuse); :mod:`tuneflow.allocator` runs ``tuneflow``
under jemalloc where it is installed.
"""

from __future__ import annotations

from typing import Any

import torch

CHUNK = 1024  # labeled positions per slice of logits: 1024 x 49k vocabulary x 4 bytes = 200 MB
IGNORE = -100
# Architectures whose logits are not just the output layer of the hidden states: the full forward is kept.
SCALED_LOGITS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def _parts(model: Any) -> tuple[Any, Any] | None:
    """The decoder stack and the output layer of a (LoRA-wrapped) causal LM, or None when the loss cannot be
    computed from them alone."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = getattr(base, "base_model", None)  # LlamaForCausalLM.model, GPT2LMHeadModel.transformer, ...
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if decoder is None or decoder is base or not isinstance(head, torch.nn.Linear):
        return None
    if any(getattr(base.config, key, None) for key in SCALED_LOGITS):
        return None
    return decoder, head


def _labeled(model: Any, batch: dict[str, torch.Tensor]) -> tuple[Any, ...] | None:
    """The output layer, the decoder's hidden states, those at labeled positions with their next-token
    targets, and the (rows, positions) mask of the labeled positions; None when the model cannot be taken
    apart or the batch has no labels."""
    parts = _parts(model)
    if parts is None or "labels" not in batch:
        return None
    decoder, head = parts
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    hidden = decoder(**inputs, use_cache=False).last_hidden_state
    target = batch["labels"][:, 1:]  # position t predicts token t + 1
    keep = target != IGNORE
    return head, hidden, hidden[:, :-1][keep], target[keep], keep


def _chunk_loss(head: torch.nn.Module, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # fp32 logits for the loss, as transformers computes it under autocast.
    return torch.nn.functional.cross_entropy(head(hidden).float(), target, reduction="sum")


def causal_lm_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The mean next-token loss over labeled positions (transformers' ``out.loss`` for the same batch), or
    None for an architecture it does not know how to take apart (the caller runs the full forward)."""
    from torch.utils.checkpoint import checkpoint

    labeled = _labeled(model, batch)
    if labeled is None:
        return None
    head, hidden, states, target, _ = labeled
    if not len(target):
        return hidden.sum() * 0.0  # nothing to learn from: a zero that keeps the graph
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, len(target), CHUNK):
        chunk = slice(start, start + CHUNK)
        total = total + checkpoint(_chunk_loss, head, states[chunk], target[chunk], use_reentrant=False)
    return total / len(target)


def position_losses(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Inference: the next-token loss of each labeled position and the row it belongs to, computed like
    :func:`causal_lm_loss` (output layer on labeled positions only, in chunks: an evaluation batch of 4 x 512
    tokens would otherwise hold 0.4 GB of logits and as much again for their log-softmax), or None for an
    architecture it does not know how to take apart."""
    labeled = _labeled(model, batch)
    if labeled is None:
        return None
    head, hidden, states, target, keep = labeled
    losses = [
        torch.nn.functional.cross_entropy(
            head(states[start : start + CHUNK]).float(), target[start : start + CHUNK], reduction="none"
        )
        for start in range(0, len(target), CHUNK)
    ]
    return (torch.cat(losses) if losses else hidden.new_zeros(0, dtype=torch.float32)), keep.nonzero()[:, 0]


def enable_checkpointing(model: Any) -> None:
    """transformers' gradient checkpointing (non-reentrant: works with frozen LoRA bases and no extra input
    gradients), on the model or, under LoRA, its base.

    Raises:
        ValueError: the model cannot recompute its layers (not a transformers model).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        base = getattr(base, "encoder", base)  # model.pooling: mean wraps a transformers encoder
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ValueError(
            f"train.gradient_checkpointing: {type(base).__name__} does not support gradient checkpointing"
        )
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
