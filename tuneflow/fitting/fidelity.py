"""How a study spends its budget: the sampler that proposes trials and the pruner that stops them.

Multi-fidelity search is Optuna's: trials report validation values as they train (several per epoch with
``search.evals_per_epoch``, so the first rungs have seen only part of the training set), successive halving
or Hyperband stops the weak ones at rungs ``min_resource * reduction_factor**k``, and the trial that
survives to the full budget is the final model (``search.final: reuse_best``). Optuna's TPE already learns
from every rung: it ranks pruned trials by the rung they reached, then by their last value. A BOHB-style
variant (TPE fit on the highest rung with d + 1 trials) was tried and found no better (bench/HISTORY.md).
"""

from __future__ import annotations

import os

import optuna

from tuneflow.config import PipelineConfig, SearchConfig


def build_sampler(scfg: SearchConfig, seed: int) -> optuna.samplers.BaseSampler:
    """Seeded TPE (constant liar, so parallel workers do not propose the same point) or random sampling."""
    if scfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=max(scfg.startup_trials, 1), multivariate=True, constant_liar=True
    )


def build_pruner(scfg: SearchConfig, max_epochs: int, per_epoch: int = 1) -> optuna.pruners.BasePruner:
    """Pruner over the validation values a trial reports, ``per_epoch`` of them per epoch (per-fold running
    means with cross-validation). Resources are counted in reports; the config states them in epochs, so
    ``warmup_epochs: 0`` with 3 reports per epoch puts the first rung after a third of the training set."""
    warmup = scfg.warmup_epochs * per_epoch
    if scfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=scfg.startup_trials, n_warmup_steps=warmup)
    if scfg.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=max(warmup, 1), reduction_factor=scfg.reduction_factor
        )
    if scfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=max(warmup, 1),
            max_resource=max_epochs * per_epoch,
            reduction_factor=scfg.reduction_factor,
        )
    return optuna.pruners.NopPruner()


# `--workers auto` on a CPU: torch threads per search worker. 2 workers x 1 thread ran a 4-trial study's
# trials 1.13x faster than 1 x 2 but the whole `tuneflow tune` 0.94x (each spawned worker imports, reads and
# tokenizes again; bench/results/workers.json), so a worker gets 2 cores. And the memory one fine-tuning
# worker of the default model holds at its peak (~2.2 GB measured), with headroom.
THREADS_PER_WORKER = 2
WORKER_MEMORY_BYTES = 3 * 2**30


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container's share, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def plan_workers(requested: int | str, remaining: int | None, cfg: PipelineConfig) -> int:
    """Worker processes for the missing trials: ``requested``, or for ``"auto"`` one per
    :data:`THREADS_PER_WORKER` cores (``train.torch_threads`` when set), no more than the trials left or
    the memory available allows; one on a GPU (one device per process) and for a latency objective (a
    neighbour would skew the timings)."""
    if requested != "auto":
        return int(requested)
    import psutil
    import torch

    if torch.cuda.is_available() or (cfg.search is not None and cfg.search.latency_objective):
        return 1
    by_cores = usable_cores() // (cfg.train.torch_threads or THREADS_PER_WORKER)
    by_memory = psutil.virtual_memory().available // WORKER_MEMORY_BYTES
    return max(1, min(by_cores, by_memory, remaining if remaining is not None else by_cores))
