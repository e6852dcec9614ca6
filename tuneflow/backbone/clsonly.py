"""The last encoder layer computed for the [CLS] position only, where the head reads nothing else.

A BERT-family sequence classifier (``BertForSequenceClassification``, RoBERTa's and ELECTRA's) turns only the
first token's final state into logits. In the last layer every other position's query, attention output
and feed-forward block are computed and thrown away: 1/L of the encoder's work (1/6 for MiniLM-L6) for
nothing. Here the last layer attends from [CLS] to every key and value (which still need every position's
previous state) and runs its output and feed-forward blocks on [CLS] alone. The logits equal the full
computation to floating-point tolerance (tests/test_clsonly.py) and the gradients reach the same weights,
so it is the same training with less work.

The switch is per call (:func:`cls_only`): with it off, the layer is the model's own, so hidden states,
exports and every predictor that reads token states (out-of-scope features, attributions) are unchanged.
Parameter names are untouched: checkpoints and exports are the same files as without it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

# Sequence classifiers whose head reads the final state of position 0 only (and the encoder attribute).
CLS_HEADS = {
    "BertForSequenceClassification": "bert",
    "RobertaForSequenceClassification": "roberta",
    "XLMRobertaForSequenceClassification": "roberta",
    "ElectraForSequenceClassification": "electra",
}
_FLAG = "_tuneflow_cls_only"


def last_layer(model: torch.nn.Module) -> torch.nn.Module | None:
    """The last encoder layer of ``model`` when its head reads [CLS] only and the layer has BERT's shape
    (``attention.self`` / ``attention.output`` / ``feed_forward_chunk``); None otherwise (LoRA-wrapped
    models are looked through)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    attr = CLS_HEADS.get(type(base).__name__)
    encoder = getattr(getattr(base, attr, None), "encoder", None) if attr else None
    layers = getattr(encoder, "layer", None)
    if not layers:
        return None
    layer = layers[-1]
    attention = getattr(layer, "attention", None)
    shaped = all(hasattr(attention, a) for a in ("self", "output")) and hasattr(layer, "feed_forward_chunk")
    cross = getattr(layer, "add_cross_attention", False) or getattr(layer, "is_decoder", False)
    return layer if shaped and not cross else None


def enable(model: torch.nn.Module) -> bool:
    """Give ``model``'s last layer the [CLS]-only path (off until :func:`cls_only` turns it on).

    Returns:
        Whether the model qualifies (see :func:`last_layer`); False leaves it untouched.
    """
    layer = last_layer(model)
    if layer is None:
        return False
    setattr(layer, _FLAG, False)
    layer.forward = _Forward(layer)  # an object, not a bound method: spawned DDP workers unpickle it
    return True


class _Forward:
    """The patched ``forward`` of a last layer (module level, so the model still pickles)."""

    def __init__(self, layer: torch.nn.Module):
        self.layer = layer

    def __call__(self, hidden_states: torch.Tensor, attention_mask: Any = None, *args: Any, **kwargs: Any):
        return _forward(self.layer, hidden_states, attention_mask, *args, **kwargs)


@contextlib.contextmanager
def cls_only(model: torch.nn.Module) -> Iterator[None]:
    """Within this block, ``model``'s last layer (if :func:`enable` d) computes [CLS] only."""
    layer = last_layer(model)
    if layer is None or not hasattr(layer, _FLAG):
        yield
        return
    setattr(layer, _FLAG, True)
    try:
        yield
    finally:
        setattr(layer, _FLAG, False)


def _forward(layer: Any, hidden_states: torch.Tensor, attention_mask: Any = None, *args: Any, **kwargs: Any):
    if not getattr(layer, _FLAG):
        return type(layer).forward(layer, hidden_states, attention_mask, *args, **kwargs)
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.bert.modeling_bert import eager_attention_forward

    attn = layer.attention.self
    n, length, _ = hidden_states.shape
    head = attn.attention_head_size
    cls = hidden_states[:, :1]
    query = attn.query(cls).view(n, 1, -1, head).transpose(1, 2)
    key = attn.key(hidden_states).view(n, length, -1, head).transpose(1, 2)
    value = attn.value(hidden_states).view(n, length, -1, head).transpose(1, 2)
    mask = attention_mask
    if isinstance(mask, torch.Tensor) and mask.dim() == 4 and mask.shape[-2] > 1:
        mask = mask[:, :, :1]  # the [CLS] query's row
    interface = ALL_ATTENTION_FUNCTIONS.get_interface(
        attn.config._attn_implementation, eager_attention_forward
    )
    out, _ = interface(
        attn,
        query,
        key,
        value,
        mask,
        dropout=attn.dropout.p if attn.training else 0.0,
        scaling=attn.scaling,
        is_causal=False,
    )
    attention_output = layer.attention.output(out.reshape(n, 1, -1).contiguous(), cls)
    return layer.feed_forward_chunk(attention_output)
