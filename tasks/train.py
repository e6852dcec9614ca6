"""Training stage: Lightning fine-tuning with per-step metrics in the parent MLflow run, then the export."""

from __future__ import annotations

import contextlib

from prefect import task
from prefect.cache_policies import NO_CACHE

from tuneflow.config import PipelineConfig
from tuneflow.fitting.distributed import launch, under_launcher
from tuneflow.fitting.runs import run_dir
from tuneflow.fitting.training import FinalStart, FitResult, Trained, train_and_export
from tuneflow.store import tracking
from tuneflow.tasks.common import stage


@task(cache_policy=NO_CACHE)  # no retries: a failed fit is a bug or bad settings, not a transient fault
def train(
    cfg: PipelineConfig, run_id: str, resume_from: str | None = None, start: FinalStart | None = None
) -> Trained:
    """Fine-tune and export the best checkpoint (see :func:`tuneflow.fitting.training.train_and_export`);
    after a search, ``start`` may reuse or continue from the best trial (:mod:`tuneflow.fitting.reuse`).

    ``train.strategy: ddp`` runs the stage under torchrun (:mod:`tuneflow.fitting.distributed`): this
    machine is node 0 and owns the run; with ``train.num_nodes > 1`` the other machines join at
    ``train.rdzv_endpoint``.
    """
    t = cfg.train
    mode = start.mode if start else "retrain"
    if mode == "reuse":
        print(f"… train      reusing the best trial's checkpoint: {start.reason}")
    else:
        what = f"{start.added_epochs} more epoch(s)" if mode == "continue" else f"up to {t.max_epochs} epochs"
        print(f"… train      {cfg.model.name}, {what}, early stop on {t.monitor}")
        if start is not None:
            print(f"  {mode}: {start.reason}")
    # MLflow's own CPU / memory / disk sampling while the model trains (the run page's System metrics).
    sampling = tracking.system_metrics(run_id) if cfg.tracking.system_metrics else contextlib.nullcontext()
    with stage("train", run_id) as note, sampling:
        if t.strategy == "ddp" and not under_launcher() and mode != "reuse":
            if t.num_nodes > 1:
                print(
                    f"  waiting for {t.num_nodes - 1} more node(s) at {t.rdzv_endpoint}: on each, run "
                    "`python -m torch.distributed.run --nnodes "
                    f"{t.num_nodes} --node-rank K ... -m tuneflow.fitting.distributed "
                    "--config <this config>` "
                    "(README: Training across machines)"
                )
            out = launch(cfg, run_id, run_dir(cfg, run_id), resume_from)
            trained = Trained(FitResult(**out["fit"]), out["export_dir"])
        else:
            done = train_and_export(cfg, run_id, run_dir(cfg, run_id), resume_from, start)
            assert done is not None, "the flow's own process is global rank 0"
            trained = done
        fit = trained.fit
        best = "n/a" if fit.best_score is None else f"{fit.best_score:.4f}"
        note(
            f"{fit.epochs} epoch(s){' (early stop)' if fit.stopped_early else ''}, best {fit.monitor} {best}"
        )
    return trained
