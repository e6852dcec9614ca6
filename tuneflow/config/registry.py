"""The ``gates``, ``retrain`` and ``tracking`` sections: promotion, retraining and where runs go."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from tuneflow.config.base import _Section, check_name


class GatesConfig(_Section):
    """Promotion gates: what a registered challenger must show before it becomes the champion."""

    metric: str | None = Field(
        None,
        description=(
            "Primary test metric; null = the task type's default: f1_macro (sequence_classification), entity "
            "f1 (token_classification), rougeL (seq2seq), chrf (causal_lm; or perplexity, lower is better)."
        ),
    )
    min: float | None = Field(
        None,
        ge=0,
        description="Absolute bound of the primary test metric (a maximum for perplexity, else a minimum).",
    )
    min_improvement: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Required gain over the champion (its lower confidence bound, with bootstrap).",
    )
    max_class_regression: float | None = Field(
        0.05,
        ge=0,
        le=1,
        description="Largest allowed drop of any class's F1 against the champion; null = off.",
    )
    max_val_degradation: float | None = Field(
        0.05,
        ge=0,
        description=(
            "Overfitting gate: largest allowed fall of the monitored validation metric (train.monitor) "
            "from its best epoch to the last one: absolute for scores (0.05 = 5 points of F1), relative for "
            "a loss (0.05 = 5% above the best loss); null = off."
        ),
    )
    max_train_val_gap: float | None = Field(
        None,
        ge=0,
        le=1,
        description=(
            "Largest allowed train-minus-validation gap (accuracy, entity F1, or loss for generation); "
            "null = report it only. Off by default: converged fine-tunings have large gaps."
        ),
    )
    min_oos_recall: float | None = Field(
        None, ge=0, le=1, description="Smallest out-of-scope recall on data.oos_test; null = off."
    )
    min_in_scope_accuracy: float | None = Field(
        None, ge=0, le=1, description="Smallest in-scope test accuracy with the fallback applied; null = off."
    )
    min_behavior_pass_rate: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Smallest pass rate allowed for any behaviour test (with >= 5 cases); null = off.",
    )
    max_ece: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Largest expected calibration error on test (after calibration); null = off.",
    )
    max_latency_p95_ms: float | None = Field(
        None, gt=0, description="Largest allowed single-example p95 latency in ms; null = off."
    )
    max_quantization_loss: float | None = Field(
        None,
        ge=0,
        le=1,
        description=(
            "With export.quantize: int8, the largest allowed fall of the primary test metric from the fp32 "
            "weights to the served int8 model (0.005 = half a point); null = report it only."
        ),
    )
    min_ood: dict[str, float] = Field(
        default_factory=dict,
        description="data.extra_eval set name -> minimum primary metric on it (generalization).",
    )
    significance: Literal["bootstrap", "mcnemar", "none"] = Field(
        "bootstrap",
        description=(
            "Paired test of the improvement: bootstrap confidence interval of the metric difference (over "
            "per-example scores for generation), McNemar's exact test on per-example correctness "
            "(classification only), or none (point estimate)."
        ),
    )
    alpha: float = Field(0.05, gt=0, lt=0.5, description="Significance level (1 - confidence).")
    bootstrap_samples: int = Field(2000, ge=100, description="Paired bootstrap resamples.")
    promote: bool = Field(True, description="Run the promotion decision after registration.")


class RetrainConfig(_Section):
    """Scheduled retraining: when to run, and what counts as drift."""

    schedule: str | None = Field(
        "0 3 * * 1",
        description="Cron schedule of the retrain deployment (default Mondays 03:00); null = manual.",
    )
    timezone: str = Field("UTC", description="Time zone of the cron schedule.")
    max_label_psi: float = Field(0.2, ge=0, description="Label-distribution PSI above this is drift.")
    max_length_ks: float = Field(0.2, ge=0, le=1, description="Text-length KS statistic above this is drift.")
    max_oov_rate: float = Field(
        0.1, ge=0, le=1, description="Share of new words unseen in training above this."
    )
    max_confidence_drop: float = Field(
        0.05, ge=0, le=1, description="Drop of the champion's mean top-class probability above this is drift."
    )
    search_on_drift: bool = Field(
        True,
        description="On drift, search afresh (needs search:) rather than reuse the champion's params.",
    )
    reference_sample: int = Field(
        5000, ge=100, description="Training rows logged with each run as the drift reference."
    )


class TrackingConfig(_Section):
    """MLflow tracking and registry."""

    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; null = $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db."
    )
    experiment: str | None = Field(None, description="MLflow experiment name; null = the config's name.")
    registered_model: str | None = Field(None, description="Registered model name; null = the config's name.")
    register_after_eval: bool = Field(True, description="Register the model after a successful evaluation.")
    system_metrics: bool = Field(
        False,
        description=(
            "Sample CPU, memory, disk and network into the run's system/ metrics while the model trains "
            "(MLflow's monitor: the run page's System metrics tab). Off by default: those keys are logged "
            "first and would open the run overview's metrics table; memory/ has the resident memory anyway."
        ),
    )
    heartbeat_interval: float = Field(
        30,
        gt=0,
        le=3600,
        description=(
            "Seconds between heartbeats of a running flow's MLflow run; a run silent for 4 intervals is "
            "marked KILLED by the next run of the experiment (and `--resume` can continue it)."
        ),
    )
    lock_url: str | None = Field(
        None,
        description=(
            "SQLAlchemy URL of the promotion-lock table (one decision at a time per model); null = "
            "sqlite:///<store>/locks.db beside a local store. Several machines: a shared PostgreSQL URL."
        ),
    )
    lock_ttl: float = Field(
        60,
        ge=5,
        le=600,
        description="Seconds a promotion lock lives without renewal: a killed holder frees it after this.",
    )

    @field_validator("experiment", "registered_model")
    @classmethod
    def _safe_names(cls, v: str | None) -> str | None:
        return check_name(v)
