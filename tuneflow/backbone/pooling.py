"""A sequence classifier on the mean of the encoder's token states (``model.pooling: mean``).

transformers' ``AutoModelForSequenceClassification`` classifies the checkpoint's own summary of a text:
for BERT-family models the [CLS] state through its pooler. Sentence-transformers checkpoints
(all-MiniLM-L6-v2, the default model) were trained so that the *mean* of their token states carries the
sentence's meaning; their [CLS] state and pooler were never trained for it. This head classifies that mean.

The export stays a plain Hugging Face encoder directory (``AutoModel``) plus the head's weights in
:data:`HEAD_FILE`; ``tuneflow.json`` records ``pooling: mean`` so that
:func:`tuneflow.fitting.export.load_exported` rebuilds the same model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

HEAD_FILE = "mean_pooled_head.safetensors"


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The mean of ``hidden`` (n, tokens, dim) over the real (unmasked) tokens: (n, dim)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


class MeanPooledClassifier(torch.nn.Module):
    """Encoder -> mean over real tokens -> dropout -> linear head; returns transformers' classifier output
    (``loss`` when ``labels`` are given, ``logits``, ``hidden_states`` when asked), like the Auto class: the
    loss is cross-entropy, or binary cross-entropy per label for ``problem_type:
    multi_label_classification``."""

    def __init__(self, encoder: Any, num_labels: int):
        super().__init__()
        # The pooler is never used here; left in, its weights would get no gradient (DDP rejects that).
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None
        self.encoder = encoder
        self.config = cfg = encoder.config
        # BERT's own classifier dropout rule: classifier_dropout, else the hidden dropout (model.dropout).
        p = getattr(cfg, "classifier_dropout", None)
        self.dropout = torch.nn.Dropout(p if p is not None else getattr(cfg, "hidden_dropout_prob", 0.1))
        self.classifier = torch.nn.Linear(cfg.hidden_size, num_labels)
        torch.nn.init.normal_(self.classifier.weight, std=getattr(cfg, "initializer_range", 0.02))
        torch.nn.init.zeros_(self.classifier.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        from transformers.modeling_outputs import SequenceClassifierOutput

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = self.encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        logits = self.classifier(self.dropout(mean_pool(out.last_hidden_state, attention_mask)))
        loss = None
        if labels is not None and getattr(self.config, "problem_type", None) == "multi_label_classification":
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())
        elif labels is not None:
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)

    def save_pretrained(self, out_dir: str | Path, **kwargs: Any) -> None:
        """The encoder as a Hugging Face directory, the head's weights beside it (:data:`HEAD_FILE`)."""
        from safetensors.torch import save_file

        self.encoder.save_pretrained(out_dir, **kwargs)
        head = {k: v.detach().contiguous() for k, v in self.classifier.state_dict().items()}
        save_file(head, str(Path(out_dir) / HEAD_FILE))

    @classmethod
    def from_pretrained_encoder(
        cls, name: str | Path, num_labels: int, **kwargs: Any
    ) -> MeanPooledClassifier:
        """A pre-trained encoder with a fresh head: ``name`` is a model id, directory or bundled alias
        (:func:`tuneflow.backbone.pretrained.load_from`); ``kwargs`` go to ``AutoModel.from_pretrained``."""
        from transformers import AutoModel

        from tuneflow.backbone.pretrained import load_model, quiet_load_report

        # The checkpoint's pooler (or its absence) is irrelevant here: do not let the load report alarm.
        with quiet_load_report():
            encoder = load_model("model", AutoModel, str(name), **kwargs)
        return cls(encoder, num_labels)

    @classmethod
    def from_export(cls, model_dir: str | Path, num_labels: int) -> MeanPooledClassifier:
        """The model :meth:`save_pretrained` wrote, in eval mode."""
        from safetensors.torch import load_file

        head_path = Path(model_dir) / HEAD_FILE
        if not head_path.is_file():
            raise FileNotFoundError(f"{head_path}: the export says pooling: mean but has no head weights")
        model = cls.from_pretrained_encoder(model_dir, num_labels)
        model.classifier.load_state_dict(load_file(str(head_path)))
        return model.eval()
