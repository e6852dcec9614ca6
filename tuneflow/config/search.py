"""The ``search`` section: the Optuna study (space, sampler, pruner, storage)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from tuneflow import names
from tuneflow.config.base import _Section, check_name

SEARCHABLE_SECTIONS = ("model", "train")
UNSEARCHABLE_KEYS = (
    "train.cv_folds",
    "train.accelerator",
    "train.devices",
    "train.strategy",
    "train.num_nodes",
    "train.rdzv_endpoint",
)


class ParamSpec(_Section):
    """One dimension of the search space (Optuna distribution)."""

    type: Literal["float", "int", "categorical"] = Field(description="Distribution type.")
    low: float | None = Field(None, description="Lower bound (float/int).")
    high: float | None = Field(None, description="Upper bound, inclusive (float/int).")
    log: bool = Field(False, description="Sample on a log scale (float/int; needs low > 0).")
    step: float | None = Field(None, gt=0, description="Discretization step (float/int; not with log).")
    choices: list[str | int | float | bool | None] | None = Field(
        None, description="Candidate values (categorical)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> ParamSpec:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty 'choices' list")
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("categorical takes only 'choices' (no low/high/log/step)")
            return self
        if self.choices is not None:
            raise ValueError(f"{self.type} takes low/high, not 'choices'")
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} needs both 'low' and 'high'")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0 (got {self.low})")
        if self.log and self.step is not None:
            raise ValueError("'step' cannot be combined with log=true")
        if self.type == "int":
            for bound in ("low", "high", "step"):
                value = getattr(self, bound)
                if value is not None and value != int(value):
                    raise ValueError(f"int needs an integer '{bound}' (got {value})")
        return self

    def bounds(self) -> list[Any]:
        """The extreme values a trial can get: checked against the config schema before any trial."""
        if self.type == "categorical":
            return list(self.choices or [])
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]


class SearchConfig(_Section):
    """Optuna hyperparameter search over dotted config keys."""

    enabled: bool = Field(
        True, description="Run the search (`tuneflow tune`, and `tuneflow run` before training)."
    )
    n_trials: int | None = Field(
        20,
        ge=1,
        description="Finished (complete + pruned) trials the study should hold; null = until timeout.",
    )
    timeout: float | None = Field(
        None, gt=0, description="Stop starting new trials after this many seconds per worker."
    )
    metric: str | None = Field(
        None,
        description=(
            "Objective: best validation value of this metric (one of the task type's monitors); null = "
            "train.monitor. Trials early-stop and checkpoint on it."
        ),
    )

    @field_validator("metric")
    @classmethod
    def _sectioned_metric(cls, v: str | None) -> str | None:
        return None if v is None else names.from_legacy(v)

    direction: Literal["maximize", "minimize"] | None = Field(
        None, description="Optimization direction; null = minimize for losses, maximize otherwise."
    )
    latency_objective: bool = Field(
        False,
        description=(
            "Multi-objective: also minimize single-example validation latency (ms). Pruning is unavailable "
            "for multi-objective studies; the retrained trial is the Pareto-optimal one with the best metric."
        ),
    )
    sampler: Literal["tpe", "random"] = Field(
        "tpe",
        description=(
            "Optuna sampler (seeded with train.seed). TPE learns from pruned trials too, ranked by the rung "
            "they reached, then by their last value."
        ),
    )
    pruner: Literal["median", "successive_halving", "hyperband", "none"] = Field(
        "median",
        description=(
            "Stops unpromising trials on their validation values. successive_halving / hyperband keep the "
            "best 1 / reduction_factor of the trials at each rung (first rung: warmup_epochs, or the first "
            "validation when 0)."
        ),
    )
    reduction_factor: int = Field(
        3, ge=2, le=10, description="successive_halving / hyperband: rung k is min_resource x this^k reports."
    )
    startup_trials: int = Field(
        3,
        ge=0,
        description="Trials run to the end before the median pruner may prune (and TPE's random start).",
    )
    max_epochs: int | None = Field(
        None,
        ge=1,
        description="Epoch cap per trial (cheaper than the final training); null = train.max_epochs.",
    )
    warmup_epochs: int = Field(
        1,
        ge=0,
        description=(
            "Epochs of each trial that are never pruned; for successive_halving / hyperband the first rung "
            "(0: the first validation, a 1 / evals_per_epoch share of the training set)."
        ),
    )
    evals_per_epoch: int = Field(
        1,
        ge=1,
        le=20,
        description=(
            "Validations, hence pruning reports, per trial epoch: with 4 a weak trial can be stopped after a "
            "quarter epoch. Pruner resources (warmup_epochs, max_epochs) stay in epochs."
        ),
    )
    final: Literal["reuse_best", "continue", "retrain"] = Field(
        "reuse_best",
        description=(
            "The final training after the search. reuse_best: when the best trial trained exactly the final "
            "config (same parameters, epoch budget and data; search.max_epochs null or equal to "
            "train.max_epochs), its kept checkpoint is the model: no second training. continue: as "
            "reuse_best, and when train.max_epochs is larger, start from the best trial's weights and train "
            "the added epochs (fresh warmup and decay). retrain: always train the best parameters from the "
            "pre-trained weights. Cross-validated trials have no single checkpoint: they always retrain."
        ),
    )
    space: dict[str, ParamSpec] = Field(
        default_factory=dict,
        description="Dotted config key -> distribution, e.g. train.lr: {type: float, ...}.",
    )
    storage: str = Field(
        "sqlite:///mlruns/optuna.db",
        description="Optuna RDB storage URL (PostgreSQL for several machines); the study resumes from it.",
    )
    study_name: str | None = Field(None, description="Study name; null = the config's name.")
    heartbeat_interval: int = Field(
        30, ge=1, description="Seconds between trial heartbeats; a silent trial is failed and retried."
    )
    grace_period: int | None = Field(
        None,
        ge=1,
        description="Seconds without heartbeat before a trial counts as dead; null = 2 x interval.",
    )
    max_retry: int = Field(1, ge=0, description="Times a trial killed with its worker is re-queued.")

    @field_validator("study_name")
    @classmethod
    def _safe_study(cls, v: str | None) -> str | None:
        return check_name(v)

    @model_validator(mode="after")
    def _budget(self) -> SearchConfig:
        if self.n_trials is None and self.timeout is None:
            raise ValueError("set n_trials and/or timeout (a search needs a budget)")
        if self.latency_objective and self.pruner != "none":
            raise ValueError("pruning needs a single objective: set pruner: none with latency_objective")
        return self


# Where successive halving first compares trials, as a share of a trial's budget. A trial must be the best so
# far at a rung to go on (Optuna's asynchronous rule with few trials), so an early, noisy rung decides the
# study: on full BANKING77 (2-epoch trials) a rung after 1/6 of the budget (94 steps) kept a trial at lr 6e-5
# (validation F1 0.57) and cut one at 1.4e-4 that reached 0.86 elsewhere; rungs after a third (the end of
# epoch 1 of 3) chose well (bench/HISTORY.md). Earlier still, after ~9 steps, every SST-2 trial sat at the
# majority class.
FIRST_RUNG_SHARE = 1 / 3


def rung_plan(epochs: int) -> dict[str, int]:
    """One validation per trial epoch and the first rung after :data:`FIRST_RUNG_SHARE` of the ``epochs``
    budget, never before the end of the first epoch."""
    return {"evals_per_epoch": 1, "warmup_epochs": max(1, round(epochs * FIRST_RUNG_SHARE))}
