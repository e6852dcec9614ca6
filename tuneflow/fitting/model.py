"""The LightningModule that fine-tunes any task type's Hugging Face model, and pre-trained model loading.

What differs between task types (the Auto class, the head, the validation metrics) comes from the task
type; the optimization (AdamW, warmup/decay, LoRA, adapter-only checkpoints) is the same for all.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from tuneflow.backbone import attention, clsonly
from tuneflow.backbone.lean import causal_lm_loss
from tuneflow.backbone.lora import apply_lora, weights_hash
from tuneflow.backbone.pretrained import (  # noqa: F401 (re-exported: callers load models through this module)
    ModelLoadError,
    load_from,
    load_model,
    load_tokenizer,
    quiet_load_report,
    resolve_model,
    resolve_model_path,
    smollm2_gguf,
)
from tuneflow.config import LoraConfig
from tuneflow.fitting.loading import DROPOUT_ATTRS, load_pretrained  # noqa: F401 (re-exported)
from tuneflow.fitting.master import MasterWeights
from tuneflow.tasktypes import task_type


def load_module(checkpoint: str | Path) -> FineTuner:
    """A checkpoint written by ``fit`` as a FineTuner in eval mode (weights only: no pickled code runs).
    LoRA checkpoints hold the adapter and head only: the frozen base comes from its pre-trained weights."""
    # Memory-mapped: the weights are copied into the model from the file's pages, not from a second copy.
    state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    hp = dict(state["hyper_parameters"])
    module = FineTuner(**hp)
    module.load_state_dict(state["state_dict"], strict=not hp.get("lora"))
    return module.eval()


@dataclass(frozen=True)
class LossOnly:
    """A step's output when only the loss was computed (no logits)."""

    loss: torch.Tensor


class FineTuner(pl.LightningModule):
    """Fine-tunes a Hugging Face model (train.optimizer, train.scheduler: AdamW with linear warmup/decay by
    default); optionally only a LoRA adapter.

    The task type adds its validation metrics through hooks. Hyperparameters are primitives only, so
    checkpoints reload under torch's ``weights_only`` default. With LoRA, checkpoints hold the trainable
    weights only (adapter and task head), never the frozen base.
    """

    def __init__(
        self,
        model_name: str,
        labels: list[str],
        lr: float = 5e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        dropout: float | None = None,
        lora: dict[str, Any] | None = None,
        task: str = "sequence_classification",
        pooling: str = "cls",
        optimizer: str = "adamw",
        scheduler: str = "linear",
    ):
        super().__init__()
        self.save_hyperparameters()
        self.task_type = task_type(task)
        model, fresh = load_pretrained(task, model_name, labels, dropout, pooling)
        self.base_hash: str | None = None
        if lora:
            self.base_hash = weights_hash(model, fresh)
            model = apply_lora(model, self.task_type.training.peft_task_type, LoraConfig(**lora))
            # A checkpoint holds only the trainable weights: the frozen base comes from the hub/disk again.
            self.strict_loading = False
        # transformers 5 returns pretrained models in eval mode and Lightning 2.6 keeps submodule modes,
        # so without this dropout would silently stay off during training.
        self.model = model.train()
        self.task_type.training.build_metrics(self)
        # Training-time switches (train.cls_only_last_layer, train.bf16_weights, train.attention), set by
        # whoever fits; not hyperparameters: they change how a step is computed, not what is learned.
        clsonly.enable(self.model)
        self.cls_only = False
        self.bf16_weights = False
        self.attention = "model"
        self._masters: MasterWeights | None = None

    def _attention_for(self, training: bool) -> None:
        """train.attention ``auto``: eager attention while training on a CPU with attention dropout, the
        model's own kernel in validation and after the fit (:mod:`tuneflow.backbone.attention`)."""
        if self.attention == "auto":
            attention.follow_mode(self.model, training, self.device)

    def on_train_epoch_start(self) -> None:
        self._attention_for(training=True)

    def on_validation_model_eval(self) -> None:
        super().on_validation_model_eval()
        self._attention_for(training=False)

    def on_validation_model_train(self) -> None:
        super().on_validation_model_train()
        self._attention_for(training=self.trainer.training)

    def on_train_end(self) -> None:
        self._attention_for(training=False)

    def forward(self, **batch: torch.Tensor) -> Any:
        return self.model(**batch)

    def _step_forward(self, batch: dict[str, torch.Tensor]) -> Any:
        """The model on a batch; its last layer on [CLS] only when that is on (the loss reads no other); a
        causal LM's loss from its labeled positions only (:func:`tuneflow.backbone.lean.causal_lm_loss`)."""
        if self.task_type.training.labeled_positions_loss:
            loss = causal_lm_loss(self.model, batch)
            if loss is not None:
                return LossOnly(loss)
        if not self.cls_only:
            return self.model(**batch)
        with clsonly.cls_only(self.model):
            return self.model(**batch)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self._step_forward(batch)
        # sync_dist: under DDP the curve is the mean over all ranks' batches (one global batch), not rank 0's.
        self.log("train/loss", out.loss, on_step=True, on_epoch=False, prog_bar=True, sync_dist=True)
        # A CPU tensor: Lightning would turn a float into a tensor on the GPU, a host-to-device copy that
        # waits for the GPU every step (the value is read on the host anyway, at logging steps).
        lr = torch.tensor(self.lr_schedulers().get_last_lr()[0])
        self.log("train/lr", lr, on_step=True, on_epoch=False)
        self.task_type.training.on_train_batch(self, batch, out)
        return out.loss

    def on_validation_epoch_start(self) -> None:
        self.task_type.training.on_validation_epoch_start(self)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self._step_forward(batch)
        size = batch["labels"].shape[0]
        self.log("val/loss", out.loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=size)
        self.task_type.training.on_validation_batch(self, batch, out)

    def on_validation_epoch_end(self) -> None:
        self.task_type.training.on_validation_epoch_end(self)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._masters:
            # The fp32 masters are the weights; the bf16 copies are only what the next forward reads.
            for name, p in self.named_parameters():
                if name in checkpoint["state_dict"]:
                    checkpoint["state_dict"][name] = self._masters.master(p).detach().clone()
        if self.hparams.get("lora"):
            keep = {name for name, p in self.named_parameters() if p.requires_grad}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._masters:
            self._masters.grads_to_masters()

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self._masters:
            self._masters.masters_to_weights()

    def on_fit_end(self) -> None:
        if self._masters:
            self._masters.restore_fp32()
            self._masters = None

    def fp32_weights(self) -> Any:
        """A context in which the model has its fp32 weights (the masters, under ``train.bf16_weights``): for
        scoring it mid-training outside autocast (a callback's evaluation). A no-op without masters."""
        return self._masters.fp32() if self._masters else contextlib.nullcontext()

    def _master_weights_fit(self) -> bool:
        """bf16 weights with fp32 masters (:mod:`tuneflow.fitting.master`) when asked for and the same
        arithmetic as plain bf16-mixed: bf16-mixed, one device, no gradient accumulation."""
        trainer = self._trainer
        return bool(
            self.bf16_weights
            and trainer is not None
            and str(trainer.precision) == "bf16-mixed"
            and type(trainer.strategy).__name__ == "SingleDeviceStrategy"
            and trainer.accumulate_grad_batches == 1
        )

    def _fused_optimizer_fits(self) -> bool:
        """Fused AdamW where the gradients it receives are true values and plain tensors: fp32 or bf16 (no
        fp16 GradScaler, whose unscaling a fused step does internally, after clipping would have run), on
        one device or DDP (FSDP/DeepSpeed shard or wrap the optimizer their own way)."""
        trainer = self._trainer
        if trainer is None:
            return False
        strategy = type(trainer.strategy).__name__
        return str(trainer.precision) in ("32-true", "bf16-mixed") and strategy in (
            "SingleDeviceStrategy",
            "DDPStrategy",
        )

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        if gradient_clip_val and optimizer.defaults.get("fused"):
            # Lightning's mixed-precision plugin refuses to clip for any fused optimizer because of fp16's
            # GradScaler; under bf16 or fp32 there is no scaler and the gradients are final: clip them here.
            # The optimizer's parameters: the fp32 masters where the weights are bf16 copies.
            params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self) -> Any:
        from transformers import get_scheduler

        hp = self.hparams
        if self._master_weights_fit() and self._masters is None:
            self._masters = MasterWeights(self.model)
        master = self._masters.master if self._masters else (lambda p: p)
        # Decoupled weight decay regularizes weights, not biases or LayerNorm gains.
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or "LayerNorm" in name or "bias" in name else decay).append(master(p))
        groups = [
            {"params": decay, "weight_decay": hp.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        optimizer = self._optimizer(groups)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        scheduler = get_scheduler(
            "constant_with_warmup" if hp.scheduler == "constant" else hp.scheduler,
            optimizer,
            num_warmup_steps=int(hp.warmup_ratio * total),
            num_training_steps=total,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _optimizer(self, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        """train.optimizer over the parameter groups (decay / no decay)."""
        name, lr = self.hparams.optimizer, self.hparams.lr
        if name == "adafactor":
            return torch.optim.Adafactor(groups, lr=lr)
        if name == "sgd":
            return torch.optim.SGD(groups, lr=lr, momentum=0.9)
        # The fused kernel (one pass over all parameters; the Trainer's default, adamw_torch_fused) is ~5x
        # faster than the per-tensor loop on CPU: 10 vs 50-65 ms a MiniLM step, a third of a bf16 step.
        fused = self._fused_optimizer_fits() and all(
            p.device.type in ("cpu", "cuda") and p.is_floating_point() for g in groups for p in g["params"]
        )
        return torch.optim.AdamW(groups, lr=lr, fused=fused or None)
