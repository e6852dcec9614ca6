"""``fit``: the one place a Lightning Trainer is built."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar

from tuneflow.config import PipelineConfig, TrainConfig
from tuneflow.data import EncodedData, TextDataModule
from tuneflow.model import TextClassifier

LAST_CHECKPOINT = "last.ckpt"


class EpochCounter(pl.Callback):
    """Counts validated epochs, also when a fit ends by an exception (a pruned trial)."""

    def __init__(self) -> None:
        self.epochs = 0

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.epochs += 1


@dataclass
class FitResult:
    """What a fit produced (plain values: it crosses Prefect task boundaries)."""

    best_checkpoint: str
    last_checkpoint: str
    best_score: float | None
    monitor: str
    epochs: int
    global_step: int
    stopped_early: bool
    resumed_from: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_precision(tcfg: TrainConfig) -> str:
    """bf16-mixed on a CUDA GPU, full fp32 elsewhere, unless the config says otherwise."""
    if tcfg.precision != "auto":
        return tcfg.precision
    gpu = tcfg.accelerator in ("gpu", "cuda") or (tcfg.accelerator == "auto" and torch.cuda.is_available())
    return "bf16-mixed" if gpu else "32-true"


def monitor_mode(monitor: str) -> str:
    return "min" if monitor.endswith("loss") else "max"


def build_trainer(
    tcfg: TrainConfig,
    ckpt_dir: Path,
    logger: Any = None,
    callbacks: list[pl.Callback] | None = None,
    progress_bar: bool = True,
) -> pl.Trainer:
    """A Trainer with early stopping, best+last checkpoints, lr logging and the configured scale-out."""
    mode = monitor_mode(tcfg.monitor)
    cbs: list[pl.Callback] = [
        EarlyStopping(monitor=tcfg.monitor, mode=mode, patience=tcfg.early_stopping_patience),
        ModelCheckpoint(
            dirpath=ckpt_dir,
            filename="best-{epoch}",
            monitor=tcfg.monitor,
            mode=mode,
            save_top_k=1,
            save_last=True,
        ),
        *(callbacks or []),
    ]
    if progress_bar:
        cbs.append(RichProgressBar(leave=True))
    return pl.Trainer(
        accelerator=tcfg.accelerator,
        devices=tcfg.devices,
        strategy=tcfg.strategy,
        num_nodes=tcfg.num_nodes,
        precision=resolve_precision(tcfg),
        max_epochs=tcfg.max_epochs,
        min_epochs=tcfg.min_epochs,
        accumulate_grad_batches=tcfg.grad_accumulation,
        gradient_clip_val=tcfg.grad_clip,
        deterministic=tcfg.deterministic,
        log_every_n_steps=tcfg.log_every_n_steps,
        logger=logger if logger is not None else False,
        callbacks=cbs,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        default_root_dir=str(ckpt_dir),
    )


def fit(
    cfg: PipelineConfig,
    data: EncodedData,
    ckpt_dir: str | Path,
    logger: Any = None,
    resume_from: str | None = None,
    callbacks: list[pl.Callback] | None = None,
    progress_bar: bool = True,
) -> FitResult:
    """Fine-tune ``cfg.model.name`` on ``splits``.

    Args:
        cfg: pipeline config (model and train sections are used).
        data: tokenized train/validation splits (see :func:`tuneflow.data.encode`).
        ckpt_dir: where best and last checkpoints go.
        logger: a Lightning logger (e.g. :class:`tuneflow.tracking.MLflowMetricsLogger`).
        resume_from: a ``last.ckpt`` to continue from (epoch, optimizer, scheduler and early-stopping state).
        callbacks: extra callbacks (e.g. Optuna pruning).
        progress_bar: show Lightning's rich progress bar.
    """
    tcfg = cfg.train
    if tcfg.torch_threads:
        torch.set_num_threads(tcfg.torch_threads)
    pl.seed_everything(tcfg.seed, workers=True, verbose=False)
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    dm = TextDataModule(
        data,
        tcfg.batch_size,
        tcfg.eval_batch_size,
        tcfg.seed,
        tcfg.group_by_length,
        tcfg.num_workers,
    )
    module = TextClassifier(
        cfg.model.name,
        data.labels,
        lr=tcfg.lr,
        weight_decay=tcfg.weight_decay,
        warmup_ratio=tcfg.warmup_ratio,
        dropout=cfg.model.dropout,
    )
    trainer = build_trainer(tcfg, ckpt_dir, logger, callbacks, progress_bar)
    trainer.fit(module, datamodule=dm, ckpt_path=resume_from)
    ckpt_cb = trainer.checkpoint_callback
    best, score = ckpt_cb.best_model_path, ckpt_cb.best_model_score
    epochs, step = trainer.current_epoch, trainer.global_step
    early = next((c for c in trainer.callbacks if isinstance(c, EarlyStopping)), None)
    stopped_early = bool(early and early.stopped_epoch > 0)
    last = ckpt_dir / LAST_CHECKPOINT
    if step == 0 and last.exists():
        # Spawn-based strategies train in worker processes: this Trainer's counters stay at 0, so read the
        # facts from the last checkpoint the workers wrote.
        state = torch.load(last, map_location="cpu", weights_only=False, mmap=True)
        epochs, step = state["epoch"] + 1, state["global_step"]
        for key, cb_state in state.get("callbacks", {}).items():
            if key.startswith("ModelCheckpoint"):
                best = best or cb_state.get("best_model_path", "")
                score = cb_state.get("best_model_score", score)
            elif key.startswith("EarlyStopping"):
                stopped_early = cb_state.get("stopped_epoch", 0) > 0
    result = FitResult(
        best_checkpoint=best or str(last),
        last_checkpoint=str(last),
        best_score=float(score) if score is not None else None,
        monitor=tcfg.monitor,
        epochs=epochs,
        global_step=step,
        stopped_early=stopped_early,
        resumed_from=resume_from,
    )
    (ckpt_dir / "fit_result.json").write_text(json.dumps(result.to_dict(), indent=2))
    return result


def export_model(checkpoint: str | Path, out_dir: str | Path, tokenizer: Any) -> Path:
    """Write the checkpoint's weights as a plain Hugging Face model directory (+ tokenizer, labels).

    The export is what evaluation, the MLflow pyfunc model and ``tuneflow predict`` load: no Lightning needed.
    """
    out_dir = Path(out_dir)
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    hp = state["hyper_parameters"]
    module = TextClassifier(hp["model_name"], list(hp["labels"]), dropout=hp.get("dropout"))
    module.load_state_dict(state["state_dict"])
    module.model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "labels.json").write_text(json.dumps({"labels": list(hp["labels"])}, indent=2))
    return out_dir
