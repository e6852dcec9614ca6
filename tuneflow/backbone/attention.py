"""Which attention kernel a model trains with: the eager one on a CPU when attention dropout is on.

transformers loads models with PyTorch's ``scaled_dot_product_attention`` (SDPA). On a CPU its fused
kernels have no dropout: with attention dropout on (BERT-family encoders train with 0.1) SDPA falls back to
a composite that materializes the attention matrix several times. Measured on MiniLM-L6 (2 cores, bf16
autocast, one forward + backward + AdamW step; ``bench/HISTORY.md``): eager attention was 7 % faster
at 32 x 64 tokens, 12 % at 32 x 128, 9 % at 16 x 256, 16 % at 8 x 512, and its peak resident memory at
8 x 512 was 2.1 GB against SDPA's 3.2 GB. Without dropout (evaluation, serving, and models trained
without attention dropout such as SmolLM2) SDPA's fused kernel holds less memory (1.3 vs 1.6 GB at
8 x 512) for 6-15 % more time per training step, and within 4 % in inference; on a GPU SDPA's kernels
do have dropout: there the model keeps its own choice.

The switch follows the module's train/eval mode (:func:`follow_mode`), so validation, evaluation and the
export run the model's own kernel; the choice is not saved with the weights.
"""

from __future__ import annotations

import torch

# Config attributes that hold the dropout on attention probabilities (BERT, Llama/DistilBERT, GPT-2).
ATTENTION_DROPOUT = ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop")
_ORIGINAL = "_tuneflow_attention"


def _pretrained(model: torch.nn.Module) -> torch.nn.Module | None:
    """The outermost transformers model inside ``model`` (a PEFT wrapper or a pooling head is looked
    through)."""
    from transformers import PreTrainedModel

    return next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)


def _wants_eager(base: torch.nn.Module, device: torch.device) -> bool:
    """Whether transformers model ``base`` trains faster with eager attention on ``device``: a CPU, SDPA,
    attention dropout on."""
    if device.type != "cpu":
        return False
    config = base.config
    if getattr(config, "_attn_implementation", None) != "sdpa" and not hasattr(base, _ORIGINAL):
        return False
    return any((getattr(config, attr, 0) or 0) > 0 for attr in ATTENTION_DROPOUT)


def follow_mode(model: torch.nn.Module, training: bool, device: torch.device) -> None:
    """Eager attention while ``model`` trains on a CPU with attention dropout on; the model's own kernel
    in eval mode and everywhere else."""
    base = _pretrained(model)
    if base is None or not _wants_eager(base, device):
        return
    if training and not hasattr(base, _ORIGINAL):
        setattr(base, _ORIGINAL, base.config._attn_implementation)
        base.set_attn_implementation("eager")
    elif not training and hasattr(base, _ORIGINAL):
        base.set_attn_implementation(getattr(base, _ORIGINAL))
        delattr(base, _ORIGINAL)
