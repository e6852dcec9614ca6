"""Training stage: Lightning fine-tuning with per-step metrics in the parent MLflow run."""

from __future__ import annotations

import json
import time

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.common import run_dir
from tuneflow import tracking
from tuneflow.config import PipelineConfig
from tuneflow.data import load_splits
from tuneflow.lora import dir_size
from tuneflow.model import load_tokenizer
from tuneflow.tasktypes import encode_for, inference_settings
from tuneflow.training import CrashPoint, export_model, fit


@task(cache_policy=NO_CACHE)  # no retries: a failed fit is a bug or bad settings, not a transient fault
def train(cfg: PipelineConfig, run_id: str, resume_from: str | None = None) -> dict:
    """Fine-tune, export the best checkpoint as a Hugging Face directory; returns paths and fit facts."""
    uri = tracking.configure(cfg.tracking.tracking_uri)
    tokenizer = load_tokenizer(cfg.model.name)
    splits = load_splits(cfg.data, cfg.train.seed, cfg.task)  # validated by the previous task
    out = run_dir(cfg, run_id)
    logger = tracking.MLflowMetricsLogger(run_id, uri)
    data = encode_for(cfg, splits, tokenizer)
    start = time.perf_counter()
    result = fit(cfg, data, out, logger=logger, resume_from=resume_from, callbacks=[CrashPoint("train")])
    fit_s = time.perf_counter() - start
    export_dir = export_model(
        result.best_checkpoint, out / "export", data.tokenizer, cfg.task, inference_settings(cfg)
    )
    (export_dir / "inference.json").write_text(json.dumps({"max_length": cfg.model.max_length}))
    weights = "adapter_model.*" if cfg.model.lora else "model*.safetensors"
    tracking.log_metrics(
        run_id,
        {
            "epochs_trained": result.epochs,
            # Stage timings (seconds): the benchmark's orchestration-overhead breakdown reads them.
            "time_fit_s": fit_s,
            "time_export_s": time.perf_counter() - start - fit_s,
            "best_" + result.monitor: result.best_score or 0.0,
            "params_trainable": result.params_trainable,
            "params_total": result.params_total,
            "params_trainable_share": result.params_trainable / max(result.params_total, 1),
            # What a deployment has to ship for this fine-tuning (the adapter alone with LoRA).
            "model_weights_bytes": dir_size(export_dir, weights),
        },
    )
    tracking.set_tags(
        run_id,
        {
            "tuneflow.stopped_early": result.stopped_early,
            "tuneflow.best_checkpoint": result.best_checkpoint,
            "tuneflow.lora": bool(cfg.model.lora),
        },
    )
    return {**result.to_dict(), "export_dir": str(export_dir)}
