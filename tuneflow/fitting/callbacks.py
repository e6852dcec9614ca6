"""What watches a fit: the MLflow logger of its curves and the callbacks that print, count and measure its
epochs (and inject faults in tests). May import: config, names, faults, allocator, store."""

from __future__ import annotations

import sys
import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities import rank_zero_only

from tuneflow import names
from tuneflow.allocator import DEFAULT_DECAY_MS, paced, release_free_memory, resident_mb, set_decay_ms
from tuneflow.faults import crash_point
from tuneflow.store import tracking


class MLflowMetricsLogger(Logger):
    """Lightning logger writing a fit's curves to an existing MLflow run, buffered into batches.

    Buffering keeps per-step logging cheap on a SQLite store (one write per ``flush_every`` metrics); the
    writes go through :func:`tuneflow.store.tracking.log_metric_batch`.
    """

    def __init__(self, run_id: str, tracking_uri: str, flush_every: int = 50):
        super().__init__()
        self.run_id, self.tracking_uri, self.flush_every = run_id, tracking_uri, flush_every
        self._buffer: list[tuple[str, float, int]] = []

    @property
    def name(self) -> str:
        return "mlflow"

    @property
    def version(self) -> str:
        return self.run_id

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass  # the flow logs the resolved config as params; module hparams would duplicate them

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._buffer += [(k, float(v), step or 0) for k, v in metrics.items() if k != "epoch"]
        # Flush at each validation too: a killed run keeps its per-epoch history for --resume.
        if len(self._buffer) >= self.flush_every or any(k.startswith(names.VAL) for k in metrics):
            self.save()

    @rank_zero_only
    def save(self) -> None:
        if self._buffer:
            batch, self._buffer = self._buffer, []
            tracking.log_metric_batch(self.tracking_uri, self.run_id, batch)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()


class CompactProgressBar(RichProgressBar):
    """One line per epoch: step, train loss and the monitored metric (not every logged value, no v_num)."""

    def __init__(self, monitor: str):
        super().__init__(leave=True)
        self.monitor = monitor

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        shown = super().get_metrics(trainer, pl_module)
        return {k: v for k, v in shown.items() if k in (f"{names.TRAIN}loss", self.monitor)}


class EpochLines(pl.Callback):
    """One printed line per epoch, for output that is not a terminal (a pipe, a worker's log, CI).

    A redrawn progress bar there becomes a stream of wrapped fragments; a line per validated epoch says
    the same: epoch, steps, wall time, the last train loss and the monitored metric.
    """

    def __init__(self, monitor: str):
        self.monitor = monitor
        self.started = time.perf_counter()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        shown = [
            f"{key} {float(trainer.callback_metrics[key]):.4f}"
            for key in (f"{names.TRAIN}loss", self.monitor)
            if key in trainer.callback_metrics
        ]
        rss = resident_mb()
        shown += [f"RSS {rss / 1024:.1f} GB"] if rss is not None else []
        print(
            f"  epoch {trainer.current_epoch + 1}/{trainer.max_epochs}  step {trainer.global_step}  "
            f"{time.perf_counter() - self.started:.1f} s  " + "  ".join(shown),
            flush=True,
        )


class MemoryWatch(pl.Callback):
    """Resident memory at the end of each validated epoch: logged as ``memory/rss_mb``, shown on the epoch
    line, and a console warning when it keeps growing.

    A fit's steps repeat the same work, so from the second epoch on its memory should stay level; growth
    means memory that is never handed back (an allocator keeping freed pages, a leak) and, run long enough,
    the kernel's OOM killer.
    """

    GROWTH = 0.10  # over the epoch-2 level, and at least MIN_MB: warn
    MIN_MB = 200.0

    def __init__(self) -> None:
        self.rss: list[float] = []
        self.warned = False

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        mb = resident_mb()
        if trainer.sanity_checking or not trainer.is_global_zero or mb is None:
            return
        self.rss.append(mb)
        if trainer.logger is not None:
            trainer.logger.log_metrics({f"{names.MEMORY}rss_mb": round(mb, 1)}, step=trainer.global_step)
        if len(self.rss) >= 3 and not self.warned:
            level = self.rss[1]
            if mb > level * (1 + self.GROWTH) and mb - level > self.MIN_MB:
                self.warned = True
                print(
                    f"  warning: resident memory grows from epoch to epoch ({level / 1024:.1f} GB after "
                    f"epoch 2, {mb / 1024:.1f} GB after epoch {len(self.rss)}); if it keeps growing, try "
                    "TUNEFLOW_ALLOCATOR=system and report it (docs: failure modes)",
                    flush=True,
                )


class BoundedReuse(pl.Callback):
    """While a fit trains, jemalloc keeps the pages its steps free (the next steps reuse them) and hands them
    all back whenever resident memory passes a bound (:mod:`tuneflow.allocator`, ``bench.allocator``).

    A finite decay hands a freed block of more than a few MB back at once, so every step faulted in again
    what the previous one freed: 1.7x slower chat epochs, NER's first epoch 1.36x. Keeping every freed page
    grows memory without bound where batches vary in shape (their blocks fit no later batch): 1.5-3 GB an
    epoch. Here the bound is the largest resident size seen at the end of the first step after a purge (the
    live tensors plus one step's blocks, so it grows to the largest batch) plus 20 %, at least 256 MB; past
    it, one purge hands every kept page back and the next step faults its blocks in again.
    """

    HEADROOM, MIN_HEADROOM_MB = 0.2, 256.0

    def __init__(self) -> None:
        self.active = paced()
        self.floor: float | None = None  # the largest RSS right after a step that started from a purge
        self.fresh = False  # the next step ends the first step after a purge
        self.purges = 0

    @property
    def bound(self) -> float | None:
        if self.floor is None:
            return None
        return self.floor + max(self.floor * self.HEADROOM, self.MIN_HEADROOM_MB)

    def _purge(self) -> None:
        release_free_memory()
        self.fresh = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.active:
            self.active = set_decay_ms(-1)
            self._purge()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._check()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(after_step=False)  # validation batches have other shapes: their blocks count too

    def _check(self, after_step: bool = True) -> None:
        if not self.active:
            return
        rss = resident_mb()
        if rss is None:
            return
        if self.fresh and after_step:
            self.floor, self.fresh = max(self.floor or 0.0, rss), False
        elif self.bound is not None and rss > self.bound:
            self.purges += 1
            self._purge()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self.active:
            return
        set_decay_ms(DEFAULT_DECAY_MS)  # the stage's end hands what was kept back (release_free_memory)
        self.active = False
        if trainer is not None and trainer.logger is not None:
            trainer.logger.log_metrics({f"{names.MEMORY}purges": self.purges}, step=trainer.global_step)


def progress_callback(monitor: str) -> pl.Callback:
    """A one-line progress bar on a terminal, one line per epoch elsewhere."""
    return CompactProgressBar(monitor) if sys.stdout.isatty() else EpochLines(monitor)


class EpochCounter(pl.Callback):
    """Counts trained epochs up to the last validation, also when a fit ends by an exception (a pruned
    trial); with several validations per epoch a fraction (1.25 = one epoch and a quarter)."""

    def __init__(self, evals_per_epoch: int = 1) -> None:
        self.evals_per_epoch, self.checks = evals_per_epoch, 0

    @property
    def epochs(self) -> float:
        epochs = self.checks / self.evals_per_epoch
        return int(epochs) if epochs.is_integer() else round(epochs, 3)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.checks += 1


class CrashPoint(pl.Callback):
    """Fault injection: ``crash_point(point)`` at the start of the second epoch (one checkpoint exists)."""

    def __init__(self, point: str) -> None:
        self.point = point

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 1:
            crash_point(self.point)
