"""``fit``: the one place a Lightning Trainer is built."""

from __future__ import annotations

import gc
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from tuneflow import names
from tuneflow.allocator import release_free_memory
from tuneflow.backbone.lean import enable_checkpointing
from tuneflow.config import PipelineConfig, TrainConfig, apply_params
from tuneflow.data.datamodule import TextDataModule
from tuneflow.data.encoding import Encoded, EncodedData
from tuneflow.fitting.callbacks import (
    BoundedReuse,
    CompactProgressBar,
    CrashPoint,
    MemoryWatch,
    MLflowMetricsLogger,
    progress_callback,
)
from tuneflow.fitting.checkpointio import StreamingCheckpointIO
from tuneflow.fitting.export import export_model, load_predictor, quantize_export, weights_bytes
from tuneflow.fitting.fewshot import fewshot_active, tune_on_pairs
from tuneflow.fitting.model import FineTuner, load_module, load_tokenizer
from tuneflow.store import tracking

LAST_CHECKPOINT = "last.ckpt"


@dataclass(frozen=True)
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
    params_trainable: int = 0
    params_total: int = 0
    fewshot: dict[str, float] | None = None  # the few-shot phases' facts (FewShotFacts.metrics), if they ran

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bf16 matmuls in hardware (x86 AVX512-BF16 or AMX, Linux's cpuinfo flags).

    Elsewhere oneDNN emulates bf16 and autocast would be slower than fp32, so ``auto`` keeps fp32 there.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    lines = [line.split(":", 1)[-1] for line in cpuinfo.splitlines() if line.startswith("flags")]
    flags = {flag for line in lines for flag in line.split()}
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def resolve_precision(tcfg: TrainConfig) -> str:
    """bf16-mixed on a CUDA GPU or a CPU with native bf16, full fp32 elsewhere, unless the config says.

    Measured on full BANKING77 (bench/speed.py --suite tta): bf16 autocast on an AVX512-BF16 CPU trains
    1.4x faster than fp32 (65 vs 93 s an epoch) at the same test accuracy (92.6 vs 92.5); the weights and
    optimizer state stay fp32 (mixed precision).
    """
    if tcfg.precision != "auto":
        return tcfg.precision
    gpu = tcfg.accelerator in ("gpu", "cuda") or (tcfg.accelerator == "auto" and torch.cuda.is_available())
    cpu = tcfg.accelerator in ("auto", "cpu") and not gpu
    return "bf16-mixed" if gpu or (cpu and cpu_has_native_bf16()) else "32-true"


def _callbacks(
    tcfg: TrainConfig,
    mode: str,
    ckpt_dir: Path,
    callbacks: list[pl.Callback] | None,
    progress_bar: bool,
    resumable: bool,
) -> list[pl.Callback]:
    """Early stopping, the best (and last) checkpoint, the caller's callbacks, the progress bar."""
    checks = tcfg.evals_per_epoch
    cbs: list[pl.Callback] = [
        # Lightning counts patience in validations: keep it in epochs whatever the validation rate.
        EarlyStopping(monitor=tcfg.monitor, mode=mode, patience=tcfg.early_stopping_patience * checks),
        # The best checkpoint is only exported, never resumed from (last.ckpt is): weights only, a third of
        # the bytes (no AdamW moments) written at every improving epoch.
        ModelCheckpoint(
            dirpath=ckpt_dir,
            filename="best-{epoch}",
            monitor=tcfg.monitor,
            mode=mode,
            save_top_k=1,
            save_weights_only=True,
        ),
        *(callbacks or []),
        MemoryWatch(),
        BoundedReuse(),
    ]
    if resumable:
        last = Path(LAST_CHECKPOINT).stem
        cbs.append(
            ModelCheckpoint(dirpath=ckpt_dir, filename=last, save_top_k=1, enable_version_counter=False)
        )
    if progress_bar:
        cbs.append(progress_callback(tcfg.monitor))
    return cbs


def build_trainer(
    tcfg: TrainConfig,
    mode: str,
    ckpt_dir: Path,
    logger: Any = None,
    callbacks: list[pl.Callback] | None = None,
    progress_bar: bool = True,
    resumable: bool = True,
) -> pl.Trainer:
    """A Trainer with early stopping, best (+ last) checkpoints, lr logging and the configured scale-out.

    ``resumable`` writes ``last.ckpt`` after *every* validated epoch. Lightning's ``save_last`` only
    refreshes it when the monitored metric improved, so after an epoch without improvement a killed run
    would resume from an older epoch and train it twice; a second, monitor-less checkpoint fixes that.
    ``mode`` is ``min`` or ``max``: which way ``tcfg.monitor`` improves (the task type's metric spec).
    """
    cbs = _callbacks(tcfg, mode, ckpt_dir, callbacks, progress_bar, resumable)
    checks = tcfg.evals_per_epoch
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
        plugins=[StreamingCheckpointIO()],
        enable_progress_bar=any(isinstance(cb, CompactProgressBar) for cb in cbs),
        enable_model_summary=False,
        # No sanity validation before the first step: validation code is the task type's, covered by tests;
        # on a short CPU fit two extra validation batches cost a few percent of the wall time.
        num_sanity_val_steps=0,
        val_check_interval=1.0 / checks if checks > 1 else None,
        default_root_dir=str(ckpt_dir),
    )


def _seed_torch(tcfg: TrainConfig) -> None:
    if tcfg.torch_threads:
        torch.set_num_threads(tcfg.torch_threads)
    pl.seed_everything(tcfg.seed, workers=True, verbose=False)
    # Deterministic algorithms (train.deterministic) also make torch fill every new tensor with NaN, a
    # debugging aid for code that reads uninitialized memory, which ours does not: results stay deterministic
    # without it, and the fill cost ~8% of a MiniLM step on CPU (bench.speed, README -> speed).
    torch.utils.deterministic.fill_uninitialized_memory = False


def build_module(cfg: PipelineConfig, data: EncodedData, kind: Any) -> tuple[FineTuner, TextDataModule]:
    """The LightningModule and the DataModule of a fine-tuning (``kind``: its task type)."""
    tcfg = cfg.train
    dm = TextDataModule(
        data,
        kind.training.collator(data.tokenizer),
        tcfg.batch_size,
        tcfg.eval_batch_size,
        tcfg.seed,
        tcfg.group_by_length,
        tcfg.num_workers,
    )
    module = FineTuner(
        cfg.model.name,
        data.labels,
        lr=tcfg.lr,
        weight_decay=tcfg.weight_decay,
        warmup_ratio=tcfg.warmup_ratio,
        dropout=cfg.model.dropout,
        lora=cfg.model.lora.model_dump() if cfg.model.lora else None,
        task=cfg.task,
        pooling=cfg.model.pooling,
        optimizer=tcfg.optimizer,
        scheduler=tcfg.scheduler,
    )
    kind.training.init_head(module.model, data)
    module.cls_only = tcfg.cls_only_last_layer
    module.bf16_weights = tcfg.bf16_weights
    module.attention = tcfg.attention
    if tcfg.gradient_checkpointing:
        enable_checkpointing(module.model)
    if tcfg.compile:
        # In place (nn.Module.compile): parameter names, hence checkpoints and the export, stay the eager
        # model's; variable batch shapes make dynamo mark the dimensions dynamic after the first recompile.
        module.model.compile()
    return module, dm


def _fit_facts(trainer: pl.Trainer, last: Path, monitor: str) -> tuple[str, Any, int, int, bool]:
    """Best checkpoint and score, epochs, steps and whether early stopping ended the fit."""
    ckpt_cb = trainer.checkpoint_callback
    best, score = ckpt_cb.best_model_path, ckpt_cb.best_model_score
    epochs, step = trainer.current_epoch, trainer.global_step
    early = next((c for c in trainer.callbacks if isinstance(c, EarlyStopping)), None)
    stopped_early = bool(early and early.stopped_epoch > 0)
    if step == 0 and last.exists():
        # Spawn-based strategies train in worker processes: this Trainer's counters stay at 0, so read the
        # facts from the last checkpoint the workers wrote.
        state = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
        epochs, step = state["epoch"] + 1, state["global_step"]
        for key, cb_state in state.get("callbacks", {}).items():
            if key.startswith("ModelCheckpoint") and cb_state.get("monitor") == monitor:
                best = best or cb_state.get("best_model_path", "")
                score = cb_state.get("best_model_score", score)
            elif key.startswith("EarlyStopping"):
                stopped_early = cb_state.get("stopped_epoch", 0) > 0
    return best, score, epochs, step, stopped_early


def _starting_weights(
    module: FineTuner,
    cfg: PipelineConfig,
    data: EncodedData,
    init_from: str | None,
    resume_from: str | None,
    logger: Any,
) -> dict[str, float] | None:
    """Where training starts, unless it resumes: a checkpoint's weights (``init_from``), or the few-shot
    phases on the pre-trained ones when they apply (returns their facts). In few-shot mode the fine-tune
    runs at ``train.lr x fewshot.finetune_lr_scale``, also when it continues a few-shot trial's weights."""
    if resume_from:
        return None  # the rate comes back with the optimizer and scheduler state of last.ckpt
    if init_from:
        state = torch.load(init_from, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state, strict=not cfg.model.lora)
    if not fewshot_active(cfg, data):
        return None
    module.hparams.lr = cfg.train.lr * cfg.fewshot.finetune_lr_scale
    if init_from:
        return None  # a few-shot trial's weights: they went through the phases already
    facts = tune_on_pairs(module.model, data, cfg, resolve_precision(cfg.train), logger).metrics()
    return {**facts, "fewshot/finetune_lr": module.hparams.lr}


def fit(
    cfg: PipelineConfig,
    data: EncodedData,
    ckpt_dir: str | Path,
    logger: Any = None,
    resume_from: str | None = None,
    callbacks: list[pl.Callback] | None = None,
    progress_bar: bool = True,
    resumable: bool = True,
    init_from: str | None = None,
) -> FitResult:
    """Fine-tune ``cfg.model.name`` on ``splits``.

    Args:
        cfg: pipeline config (model and train sections are used).
        data: tokenized train/validation splits (the task type's ``encode``).
        ckpt_dir: where best and last checkpoints go.
        logger: a Lightning logger (e.g. :class:`MLflowMetricsLogger`).
        resume_from: a ``last.ckpt`` to continue from (epoch, optimizer, scheduler and early-stopping state).
        callbacks: extra callbacks (e.g. Optuna pruning).
        progress_bar: show Lightning's rich progress bar.
        resumable: keep ``last.ckpt`` current every epoch (``--resume``); search trials and CV folds never
            resume, so they skip it.
        init_from: a checkpoint of this config's model whose weights training starts from (``search.final:
            continue``), with a fresh optimizer and schedule.
    """
    tcfg = cfg.train
    _seed_torch(tcfg)
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    kind = cfg.kind
    module, dm = build_module(cfg, data, kind)
    fewshot = _starting_weights(module, cfg, data, init_from, resume_from, logger)
    n_trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in module.parameters())
    mode = kind.metrics.mode(tcfg.monitor)
    trainer = build_trainer(tcfg, mode, ckpt_dir, logger, callbacks, progress_bar, resumable)
    trainer.fit(module, datamodule=dm, ckpt_path=resume_from)
    last = ckpt_dir / LAST_CHECKPOINT
    best, score, epochs, step, stopped_early = _fit_facts(trainer, last, tcfg.monitor)
    result = FitResult(
        best_checkpoint=best or str(last),
        last_checkpoint=str(last),
        best_score=float(score) if score is not None else None,
        monitor=tcfg.monitor,
        epochs=epochs,
        global_step=step,
        stopped_early=stopped_early,
        resumed_from=resume_from,
        params_trainable=n_trainable,
        params_total=n_total,
        fewshot=fewshot,
    )
    (ckpt_dir / "fit_result.json").write_text(json.dumps(result.to_dict(), indent=2))
    # Trainer and module reference each other: collected now, not while the export loads the model again.
    del trainer, module, dm
    gc.collect()
    release_free_memory()  # what the steps kept for reuse: a search's next trial or the export start afresh
    return result


def keep_best(result: FitResult, dest: Path) -> None:
    """Move a fit's best checkpoint to ``dest`` and write its facts beside it (``dest`` with ``.json``)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(result.best_checkpoint, dest)
    kept = {**result.to_dict(), "best_checkpoint": str(dest), "last_checkpoint": ""}
    dest.with_suffix(".json").write_text(json.dumps(kept, indent=2))


@dataclass(frozen=True)
class FinalStart:
    """How the final training after a search starts (:func:`tuneflow.fitting.reuse.plan_final`).

    ``mode``: ``retrain`` (from the pre-trained weights), ``reuse`` (the best trial's checkpoint is the model:
    no training) or ``continue`` (``added_epochs`` more from the best trial's weights). ``reason`` says why,
    for the console and the run's tags.
    """

    mode: str
    reason: str
    trial: int | None = None
    trial_run_id: str | None = None
    checkpoint: str | None = None
    added_epochs: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _reused_fit(start: FinalStart, cfg: PipelineConfig, run_id: str, uri: str) -> FitResult:
    """The best trial's fit as this run's: its facts, and its curves copied into the run for the UI."""
    assert start.checkpoint is not None
    facts = json.loads(Path(start.checkpoint).with_suffix(".json").read_text())
    if start.trial_run_id:
        history = tracking.metric_history(start.trial_run_id, cfg.kind.metrics.history)
        batch = [(key, value, step) for key, points in history.items() for step, value in points]
        tracking.log_metric_batch(uri, run_id, batch)
    return FitResult(**facts)


def predict_logits(
    checkpoint: str | Path, encoded: Encoded, data: EncodedData, cfg: PipelineConfig
) -> np.ndarray:
    """Logits of a checkpoint on already-encoded examples (a fold's held-out part), shape (n, labels)."""
    module = load_module(checkpoint)
    collate = cfg.kind.training.collator(data.tokenizer)
    batch_size = cfg.train.eval_batch_size
    out = []
    with torch.inference_mode():
        for start in range(0, len(encoded), batch_size):
            part = encoded.take(range(start, min(start + batch_size, len(encoded))))
            batch = collate(list(zip(part.ids, part.labels, strict=True)))
            batch.pop("labels", None)
            out.append(module(**batch).logits.float().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(data.labels)), dtype=np.float32)


@dataclass(frozen=True)
class Trained:
    """A fine-tuning that was fitted and exported: what evaluation and registration take next."""

    fit: FitResult
    export_dir: str


def global_rank() -> int:
    """This process's rank among all nodes of a torchrun launch (0 outside one)."""
    return int(os.environ.get("RANK", "0"))


def _final_fit(
    cfg: PipelineConfig,
    data: EncodedData,
    out_dir: Path,
    run_id: str,
    uri: str,
    resume_from: str | None,
    start: FinalStart | None,
) -> FitResult:
    """The final fit: the best trial's as it is (reuse), its weights trained further (continue), or a fit
    from the pre-trained weights."""
    mode = start.mode if start else "retrain"
    if mode == "reuse":
        assert start is not None
        return _reused_fit(start, cfg, run_id, uri)
    fit_cfg, init_from = cfg, None
    if mode == "continue":
        assert start is not None
        added = {"train.max_epochs": start.added_epochs, "train.min_epochs": 1}
        fit_cfg, init_from = apply_params(cfg, added), start.checkpoint
    result = fit(
        fit_cfg,
        data,
        out_dir,
        logger=MLflowMetricsLogger(run_id, uri),
        resume_from=resume_from,
        callbacks=[CrashPoint("train")],
        init_from=init_from,
    )
    if init_from and result.fewshot is None:
        # Continued from the best trial's weights: its few-shot phases are this model's too.
        trial = json.loads(Path(init_from).with_suffix(".json").read_text())
        result = replace(result, fewshot=trial.get("fewshot"))
    return result


def _timing(seconds: dict[str, float]) -> dict[str, float]:
    return {f"{names.TIMING}{k}": v for k, v in seconds.items()}


def _log_fit(
    run_id: str,
    cfg: PipelineConfig,
    result: FitResult,
    export_dir: Path,
    metrics: dict[str, float],
    tokens: int,
    start: FinalStart | None,
) -> None:
    """The final fit's facts on the run: epochs, best score, sizes, throughput and how it started."""
    tracking.log_metrics(
        run_id,
        {
            **metrics,
            f"{names.FIT}epochs_trained": result.epochs,
            names.best(result.monitor): result.best_score or 0.0,
            f"{names.MODEL}params_trainable": result.params_trainable,
            f"{names.MODEL}params_total": result.params_total,
            f"{names.MODEL}params_trainable_share": result.params_trainable / max(result.params_total, 1),
            # What a deployment has to ship for this fine-tuning (the adapter alone with LoRA).
            f"{names.MODEL}weights_bytes": weights_bytes(export_dir),
            **(result.fewshot or {}),
        },
    )
    if tokens:
        # Training throughput (validation passes included in the time): the unit a CPU budget is set in.
        fit_s = metrics[f"{names.TIMING}fit_s"]
        tracking.log_metrics(run_id, {f"{names.TIMING}train_tokens_per_s": tokens / fit_s})
    tracking.set_tags(
        run_id,
        {
            "tuneflow.stopped_early": result.stopped_early,
            # The file's name (its epoch): the folder is this machine's and is deleted after registration.
            "tuneflow.best_checkpoint": Path(result.best_checkpoint).name,
            "tuneflow.lora": bool(cfg.model.lora),
            "tuneflow.fewshot": result.fewshot is not None,
            **({"tuneflow.final": f"{start.mode}: {start.reason}"} if start else {}),
        },
    )


def train_and_export(
    cfg: PipelineConfig,
    run_id: str,
    out_dir: Path,
    resume_from: str | None = None,
    start: FinalStart | None = None,
) -> Trained | None:
    """The training stage: encode, fit (curves into ``run_id``), export the best checkpoint, log the facts.

    Under torchrun every rank fits; only global rank 0 exports and logs (the others return None).

    Args:
        cfg: the run's (final) config.
        run_id: the parent MLflow run.
        out_dir: the run's checkpoint folder (``export/`` is written inside).
        resume_from: a ``last.ckpt`` of this run to continue from.
        start: after a search, whether to reuse or continue from the best trial (None: train from the
            pre-trained weights).
    """
    uri = tracking.current_uri()
    kind = cfg.kind
    tokenizer = load_tokenizer(cfg.model.name)
    splits = kind.data.load_splits(cfg.data, cfg.train.seed)  # validated before
    data = kind.training.encode(splits, tokenizer, cfg)
    began = time.perf_counter()
    mode = start.mode if start else "retrain"
    result = _final_fit(cfg, data, out_dir, run_id, uri, resume_from, start)
    fit_s = time.perf_counter() - began
    if global_rank() != 0:
        return None
    export_dir = export_model(result.best_checkpoint, out_dir / "export", data.tokenizer, cfg)
    if cfg.export.quantize == "int8":
        # Before the temperature and the out-of-scope threshold: they are fitted on what will be served.
        quantize_export(export_dir)
    export_s = time.perf_counter() - began - fit_s
    # Fitted on held-out data after training and stored with the weights (a classifier's temperature and
    # out-of-scope threshold): part of the model that gets registered.
    fitted = kind.serving.after_export(load_predictor(export_dir), export_dir, splits, cfg)
    timings = {"after_export_s": time.perf_counter() - began - fit_s - export_s, "fit_s": fit_s}
    timings["export_s"] = export_s
    # A resumed fit's time covers only the epochs after the restart; a reused one trained nothing.
    tokens = sum(map(len, data.train.ids)) * result.epochs if resume_from is None and mode != "reuse" else 0
    _log_fit(run_id, cfg, result, export_dir, {**fitted, **_timing(timings)}, tokens, start)
    return Trained(result, str(export_dir))
