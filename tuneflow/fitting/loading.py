"""A pre-trained model with the task type's head, ready to fine-tune or to carry exported weights.

Kept apart from :mod:`tuneflow.fitting.model` (the LightningModule): loading a served model needs this and
never Lightning.
"""

from __future__ import annotations

import torch

from tuneflow.backbone.pretrained import load_from, load_model, quiet_load_report
from tuneflow.tasktypes import task_type

DROPOUT_ATTRS = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "classifier_dropout",
    "dropout",
    "dropout_rate",
    "attention_dropout",
    "seq_classif_dropout",
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
)


def load_pretrained(
    task: str, name: str, labels: list[str], dropout: float | None = None, pooling: str = "cls"
) -> tuple[torch.nn.Module, set[str]]:
    """The pre-trained model for ``task`` (with a fresh head for ``labels`` on classifiers; ``pooling:
    mean``: a :class:`tuneflow.backbone.pooling.MeanPooledClassifier` on the bare encoder).

    Returns:
        The model and the names of the weights that did not come from the checkpoint (a new head): they
        are left out of the base hash an adapter is tied to.
    """
    import transformers

    kind = task_type(task)
    kwargs = kind.training.head_config(labels)
    config = load_from("model config", transformers.AutoConfig, name, **kwargs)
    if dropout is not None:
        for attr in DROPOUT_ATTRS:
            if hasattr(config, attr):
                setattr(config, attr, dropout)
    if pooling == "mean":
        from tuneflow.backbone.pooling import MeanPooledClassifier

        model = MeanPooledClassifier.from_pretrained_encoder(name, len(labels), config=config)
        return model, {f"classifier.{k}" for k in model.classifier.state_dict()}
    loader = getattr(transformers, kind.training.auto_class)
    # Starting from a model that already has a head of another size (e.g. a sentiment checkpoint) is normal:
    # the head is re-initialized for our labels.
    # The head is new on purpose: transformers' "missing keys" load report would only alarm (the fresh
    # weights are returned in ``info`` and left out of the base hash below).
    with quiet_load_report():
        model, info = load_model(
            "model", loader, name, config=config, ignore_mismatched_sizes=True, output_loading_info=True
        )
    fresh = set(info.get("missing_keys") or []) | {k[0] for k in info.get("mismatched_keys") or []}
    return model, fresh
