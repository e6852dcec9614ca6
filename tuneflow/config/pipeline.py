"""The whole experiment (:class:`PipelineConfig`): the sections together, with cross-section checks."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import Field, PrivateAttr, field_validator

from tuneflow.config.base import _Section, check_name, redact_tree
from tuneflow.config.data import DataConfig, OOSConfig, ValidationConfig
from tuneflow.config.fitting import (
    EvalConfig,
    ExportConfig,
    FewShotConfig,
    GenerationConfig,
    ModelConfig,
    TrainConfig,
)
from tuneflow.config.registry import GatesConfig, RetrainConfig, TrackingConfig
from tuneflow.config.search import SearchConfig


class PipelineConfig(_Section):
    """A whole fine-tuning experiment."""

    name: str = Field(description="Experiment name: MLflow experiment and registered model default to it.")
    task: str = Field(
        "sequence_classification",
        description=(
            "Task type, by its registry name (e.g. sequence_classification for sentiment, topics, intents); "
            "`tuneflow tasks` lists every registered one with what it is for."
        ),
    )
    data: DataConfig = Field(description="Dataset files, columns and splits.")
    validation: ValidationConfig = Field(default_factory=ValidationConfig, description="Data-quality checks.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Pre-trained model.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Fine-tuning settings.")
    fewshot: FewShotConfig = Field(
        default_factory=FewShotConfig,
        description="Few-shot mode (classification): contrastive pairs, then the head, then the fine-tune.",
    )
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation settings.")
    oos: OOSConfig = Field(
        default_factory=OOSConfig,
        description="Out-of-scope detection and fallback (sequence_classification).",
    )
    generation: GenerationConfig = Field(
        default_factory=GenerationConfig, description="Decoding settings (seq2seq, causal_lm)."
    )
    export: ExportConfig = Field(
        default_factory=ExportConfig, description="What the registered model serves (int8 quantization)."
    )
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow settings.")
    search: SearchConfig | None = Field(None, description="Optuna hyperparameter search (null = none).")
    gates: GatesConfig = Field(
        default_factory=GatesConfig, description="Champion/challenger promotion gates."
    )
    retrain: RetrainConfig = Field(
        default_factory=RetrainConfig, description="Scheduled retraining and drift thresholds."
    )
    output_dir: str = Field(
        "mlruns/checkpoints", description="Where checkpoints go (relative to the working directory)."
    )

    # The task type, resolved once when the config is loaded and handed down with it (pickled to workers
    # too): no stage below the loader looks a task type up by name.
    _kind: Any = PrivateAttr(default=None)

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        return check_name(v)  # type: ignore[return-value]

    @property
    def kind(self) -> Any:
        """The task type (a :class:`tuneflow.tasktypes.base.TaskType`) this config fine-tunes for, set when it
        was loaded (:func:`tuneflow.tasktypes.resolve.load_config`; the schema knows no task type)."""
        if self._kind is None:
            raise RuntimeError(
                f"config {self.name!r} was not resolved for its task type: load it with "
                "tuneflow.tasktypes.resolve.load_config (or config_from_dict)"
            )
        return self._kind

    def resolved(self, kind: Any) -> PipelineConfig:
        """This config carrying ``kind`` (its ``task``'s registered type)."""
        copy = self.model_copy()
        copy._kind = kind
        return copy

    @property
    def searching(self) -> bool:
        return self.search is not None and self.search.enabled

    @property
    def study_name(self) -> str:
        return (self.search.study_name if self.search else None) or self.name

    @property
    def search_metric(self) -> str:
        return (self.search.metric if self.search else None) or self.train.monitor

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def registered_model_name(self) -> str:
        return self.tracking.registered_model or self.name

    def fingerprint(self) -> str:
        """A short hash of the resolved config (identifies identical experiments)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def recorded(self) -> dict[str, Any]:
        """The config as it may be written anywhere (MLflow params, artifacts): URL passwords masked."""
        return redact_tree(self.model_dump(mode="json"))


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts into dotted keys (``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out
