"""The task-type protocol: everything that differs between task types, answered by one object per type.

Stages (validation, training, search, evaluation, registration, serving, promotion) ask a task type; none
of them branches on the task's name. A task type is a small protocol of components (torchtune's recipe
interface, litgpt's one module per method): its name and :class:`MetricSpec`, and a :class:`DataPart`,
:class:`TrainingPart`, :class:`ServingPart` and :class:`JudgingPart`, each with defaults. A new task type
subclasses the parts it changes and :class:`TaskType`, and is listed once in :mod:`tuneflow.tasktypes` (the
registry).

Task-type modules import torch and transformers inside their methods: reading and validating data (the
pre-flight check before any run) must stay fast and torch-free.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import pandas as pd

from tuneflow import names
from tuneflow.config import DataConfig, FileSpec, PipelineConfig
from tuneflow.data.encoding import EncodedData
from tuneflow.data.readers import Problem, RawData, load_raw
from tuneflow.data.splits import Splits, load_splits
from tuneflow.data.validation import ValidationReport
from tuneflow.judging.evaluation import Gap
from tuneflow.judging.promotion import decide_on_scores


@dataclass(frozen=True)
class MetricSpec:
    """What a task type measures, and which way is better.

    Attributes:
        monitors: validation metrics ``train.monitor`` / ``search.metric`` may name; the first is the default.
        gate_metrics: test metrics ``gates.metric`` may name (without the ``test/`` section); first = default.
        headline: the test metrics a summary shows first.
        history: per-step/per-epoch curves a run logs (plotted as learning curves).
        lower_is_better: the metrics (with or without a split prefix) where smaller values win.
    """

    monitors: tuple[str, ...]
    gate_metrics: tuple[str, ...]
    headline: tuple[str, ...]
    history: tuple[str, ...] = ("train/loss", "val/loss")
    lower_is_better: frozenset[str] = field(default_factory=lambda: frozenset({"loss"}))

    def lower_better(self, metric: str) -> bool:
        """True when smaller values of ``metric`` (e.g. ``val/loss``, ``perplexity``) are better."""
        base = names.base(metric)
        return base in self.lower_is_better or base.endswith("loss")

    def direction(self, metric: str) -> Literal["minimize", "maximize"]:
        """Optuna's direction for ``metric``."""
        return "minimize" if self.lower_better(metric) else "maximize"

    def mode(self, metric: str) -> Literal["min", "max"]:
        """Lightning's mode (early stopping, checkpointing) for ``metric``."""
        return "min" if self.lower_better(metric) else "max"


# Settings the generative task types (seq2seq, causal_lm) read.
GENERATION_CONFIG = (
    *("generation.", "eval.generation_metrics", "eval.max_generation_examples", "eval.sample_generations"),
)


def generative_draft(unit: str) -> dict[str, tuple[Any, str]]:
    """What ``tuneflow init`` sets for a generative task type, whose examples (``unit``) are long."""
    return {
        "train.batch_size": (8, f"{unit} are long: 8 per step keeps memory to a few GB"),
        "train.monitor": ("val/loss", "token loss on validation (generation metrics are scored on test)"),
        "train.gradient_checkpointing": (True, "recompute activations in backward: GBs less memory"),
    }


class Part:
    """A component of a task type; ``kind`` is the task type it belongs to (set when that class is made)."""

    kind: Any = None


class DataPart(Part):
    """How a task type's examples are read, recognised, checked and split."""

    # ``tuneflow init``: data-section keys naming this type's columns, each with the column names that
    # usually hold it (a data set is recognised by them).
    column_roles: ClassVar[dict[str, tuple[str, ...]]] = {}
    reads_hub: ClassVar[bool] = False  # data.hub_dataset can feed it

    def recognise(
        self, sample: pd.DataFrame, conll: bool, given: dict[str, str]
    ) -> tuple[dict[str, str], int] | None:
        """The data keys naming this type's columns in a file whose first rows are ``sample`` (``given``:
        from flags), and how specific the match is; None when the file is not this type's data.

        Column names alone score 0; a type that also checks the values (list-valued labels) scores higher, so
        ``tuneflow init`` picks it over a type that matched the names only.
        """
        if conll or not self.column_roles:
            return None
        columns = [str(c) for c in sample.columns]
        lower = {c.lower(): c for c in columns}
        out = {}
        for key, usual in self.column_roles.items():
            column = given.get(key) or next((lower[n] for n in usual if n in lower), None)
            if column is None or column not in columns:
                return None
            out[key] = column
        return (out, 0) if len(set(out.values())) == len(out) else None

    def draft(self, train: pd.DataFrame, cfg: PipelineConfig) -> dict[str, tuple[Any, str]]:
        """Settings ``tuneflow init`` derives from the training split: dotted key -> (value, comment)."""
        return {}

    def read(self, spec: FileSpec, cfg: DataConfig) -> tuple[pd.DataFrame | None, list[Problem]]:
        """Read one file of this task's examples into its standard frame (``text`` and ``_line`` at least)."""
        raise NotImplementedError

    def load_raw(self, cfg: DataConfig) -> RawData:
        """Every configured source, read (not split, not checked)."""
        return load_raw(cfg, self.read, self.reads_hub, self.kind.name)

    def load_splits(self, cfg: DataConfig, seed: int) -> Splits:
        """Read and split already-validated data: every stage after validation sees the same splits."""
        return load_splits(cfg, seed, self.read, self.label_set, self.reads_hub, self.kind.name)

    def label_set(self, train: pd.DataFrame) -> list[str]:
        """The labels a model is built for, from the training frame (class names, BIO tags), in the order of
        the head's outputs; none for a type without a label head."""
        return []

    def check_frame(self, name: str, source: str, df: pd.DataFrame, cfg: PipelineConfig) -> list[Problem]:
        """Errors in one frame on its own (empty or malformed examples)."""
        return []

    def check_against_train(self, raw: RawData, cfg: PipelineConfig) -> list[Problem]:
        """Errors found by comparing the frames with the train frame (unknown labels or tags, too few)."""
        return []

    def describe(
        self, report: ValidationReport, splits: Splits, cfg: PipelineConfig, tokenizer: Any | None
    ) -> None:
        """Statistics and warnings on the split data (balance, lengths, truncation at ``max_length``)."""


class TrainingPart(Part):
    """The model a task type fine-tunes, how its batches are made and what is measured while training."""

    auto_class: ClassVar[str]  # the transformers Auto* class of its pre-trained model
    peft_task_type: ClassVar[str]  # peft's TaskType name for LoRA
    supports_cv: ClassVar[bool] = False  # stratified k-fold cross-validation (train.cv_folds)
    mean_pooled_head: ClassVar[bool] = False  # model.pooling: mean (tuneflow.pooling)
    labeled_positions_loss: ClassVar[bool] = False  # the loss from labeled positions only (backbone.lean)

    def head_config(self, labels: list[str]) -> dict[str, Any]:
        """Model-config settings for this type's head (a fresh classifier sized to ``labels``); none by
        default (the pre-trained head is kept)."""
        return {}

    def encode(self, splits: Splits, tokenizer: Any, cfg: PipelineConfig) -> EncodedData:
        """Tokenize the train and validation splits the way this task trains on them (no padding)."""
        raise NotImplementedError

    def init_head(self, model: Any, data: EncodedData) -> None:
        """Start a fresh head from what the training data says before any step (nothing by default)."""

    def collator(self, tokenizer: Any) -> Any:
        """The batch collator (pads per batch)."""
        raise NotImplementedError

    def build_metrics(self, module: Any) -> None:
        """Attach this task's torchmetrics to the LightningModule (as submodules)."""

    def on_train_batch(self, module: Any, batch: dict[str, Any], out: Any) -> None:
        """Update and log per-batch training metrics."""

    def on_validation_epoch_start(self, module: Any) -> None:
        """Reset what a validation epoch accumulates."""

    def on_validation_batch(self, module: Any, batch: dict[str, Any], out: Any) -> None:
        """Update and log per-batch validation metrics."""

    def on_validation_epoch_end(self, module: Any) -> None:
        """Log validation metrics computed over the whole epoch."""


class ServingPart(Part):
    """What a served model of this type takes and answers, and what it needs besides its weights."""

    input_example: ClassVar[list[Any]] = []  # for the logged MLflow signature
    quantizable: ClassVar[bool] = False  # export.quantize: int8 (tuneflow.fitting.quantize)

    def inference_settings(self, cfg: PipelineConfig) -> dict[str, Any]:
        """What serving needs besides the weights (stored in the export's ``tuneflow.json``)."""
        return {"max_length": cfg.model.max_length}

    def feature_head(self, model: Any, meta: dict[str, Any]) -> Any | None:
        """For an int8 export: the layer whose input the graph answers too (the out-of-scope detector's
        ``head`` features), or None for logits only."""
        return None

    def predictor(self, model: Any, tokenizer: Any, meta: dict[str, Any]) -> Any:
        """The inference wrapper (``predict(inputs) -> DataFrame``) around a loaded model."""
        raise NotImplementedError

    def serving_params(self, meta: dict[str, Any]) -> dict[str, Any]:
        """Settings a serving request may pass as ``params`` (name -> default); none by default."""
        return {}

    def to_inputs(self, model_input: Any) -> list[Any]:
        """Normalize pyfunc / CLI input: texts by default."""
        return to_texts(model_input)

    def output_example(self) -> pd.DataFrame:
        """An output frame of this task's shape (for the logged MLflow signature)."""
        raise NotImplementedError

    def after_export(
        self, predictor: Any, export_dir: Path, splits: Splits, cfg: PipelineConfig
    ) -> dict[str, float]:
        """Fit what inference needs from held-out data once the model is exported (a classifier's temperature
        and out-of-scope threshold), store it in ``export_dir`` and return what to log. Nothing by default."""
        return {}


class JudgingPart(Part):
    """How a model of this type is scored on test and other sets, watched for drift and promoted."""

    detects_scope: ClassVar[bool] = False  # calibration + out-of-scope fallback (oos:, data.oos_*)
    supports_latency_objective: ClassVar[bool] = False  # search.latency_objective

    def evaluate_test(
        self,
        predictor: Any,
        test: pd.DataFrame,
        out: Path,
        cfg: PipelineConfig,
        metrics: dict[str, float],
        evidence: dict[str, Any] | None = None,
    ) -> list[str]:
        """Headline metrics on test (into ``metrics``) and the reports; returns the files written.

        Where the test predictions already hold what :meth:`promotion_evidence` would measure, the task type
        puts it in ``evidence["promotion"]`` (exactly that value): the registered version's evidence is then
        kept from evaluation instead of scoring the test set a second time at promotion.
        """
        raise NotImplementedError

    def measure_gap(self, predictor: Any, splits: Splits, cfg: PipelineConfig) -> Gap:
        """The train/validation gap, measured in eval mode on both sides."""
        raise NotImplementedError

    def score_set(
        self, predictor: Any, df: pd.DataFrame, cfg: PipelineConfig, prefix: str
    ) -> dict[str, float]:
        """This task's metrics on another labelled set (out-of-domain evaluation)."""
        raise NotImplementedError

    def measure_latency(self, predictor: Any, test: pd.DataFrame, cfg: PipelineConfig) -> dict[str, float]:
        """Single-example latency p50/p95 (ms) on the first test inputs
        (:func:`tuneflow.judging.metrics.time_single`)."""
        raise NotImplementedError

    def drift_labels(self, df: pd.DataFrame) -> list[str] | None:
        """The label values whose distribution drift compares (None: this task has no label to compare)."""
        return None

    def drift_confidences(
        self, load: Callable[[], Any], ref: pd.DataFrame, new: pd.DataFrame
    ) -> tuple[list[float] | None, list[float] | None]:
        """The champion's confidence on the reference and the new sample (``load()`` gives its predictor)."""
        return None, None

    def promotion_evidence(self, predictor: Any, test: pd.DataFrame, cfg: PipelineConfig) -> Any:
        """What a model is judged on at promotion: its score on the frozen test set (by default)."""
        raise NotImplementedError

    def decide(
        self,
        cfg: PipelineConfig,
        model: str,
        version: str,
        test: pd.DataFrame,
        evidence: Any,
        run_metrics: dict[str, float],
        champion: str | None,
        champion_evidence: Any,
    ) -> Any:
        """Apply the promotion gates to a challenger (and the champion, when there is one)."""
        return decide_on_scores(
            cfg.gates,
            model,
            version,
            evidence,
            run_metrics,
            champion,
            champion_evidence,
            n_examples=len(test),
            lower_is_better=self.kind.metrics.lower_better(cfg.gates.metric),
        )


PARTS = ("data", "training", "serving", "judging")


class TaskType:
    """One task type (see the module docstring): its name and metrics, and four components a subclass
    fills in: ``data`` (read, recognise, check, split), ``training`` (model head, batches, training
    metrics), ``serving`` (predictor, inputs and outputs, what is fitted after export) and ``judging``
    (test metrics, gap, drift, promotion)."""

    name: ClassVar[str]
    summary: ClassVar[str]
    metrics: ClassVar[MetricSpec]
    default_model: ClassVar[str | None] = None  # its bundled model (None: --model is required)
    # Config keys (dotted prefixes) that only some task types read, this one among them; the others' are
    # left out of its runs' MLflow params (tuneflow.tasktypes.unused_config).
    own_config: ClassVar[tuple[str, ...]] = ()
    data: ClassVar[DataPart] = DataPart()
    training: ClassVar[TrainingPart] = TrainingPart()
    serving: ClassVar[ServingPart] = ServingPart()
    judging: ClassVar[JudgingPart] = JudgingPart()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for part in PARTS:  # each class its own components, each knowing its task type
            bound = copy.copy(getattr(cls, part))
            bound.kind = cls
            setattr(cls, part, bound)

    def config_problems(self, cfg: PipelineConfig) -> list[tuple[str, str]]:
        """Settings that exist for every task type but do not apply to this one, by dotted key."""
        monitors, gates = self.metrics.monitors, self.metrics.gate_metrics
        training, serving, judging = self.training, self.serving, self.judging
        problems = []
        if cfg.train.monitor not in monitors:
            problems.append(
                ("train.monitor", f"'{cfg.train.monitor}' is not one of {monitors} for task {self.name}")
            )
        if cfg.search and cfg.search.metric and cfg.search.metric not in monitors:
            problems.append(
                ("search.metric", f"'{cfg.search.metric}' is not one of {monitors} for task {self.name}")
            )
        if cfg.gates.metric not in gates:
            problems.append(
                ("gates.metric", f"'{cfg.gates.metric}' is not one of {gates} for task {self.name}")
            )
        if cfg.model.pooling != "cls":
            if not training.mean_pooled_head:
                problems.append(("model.pooling", f"'{cfg.model.pooling}' is not supported for {self.name}"))
            elif cfg.model.lora is not None:
                problems.append(
                    ("model.pooling", f"'{cfg.model.pooling}' is not supported with model.lora yet: use cls")
                )
        if cfg.fewshot.enabled is True:
            if not training.mean_pooled_head:
                problems.append(("fewshot.enabled", f"few-shot mode is not supported for {self.name}"))
            elif cfg.model.pooling != "mean" or cfg.model.lora is not None:
                problems.append(
                    (
                        "fewshot.enabled",
                        "few-shot mode tunes the mean of the token states: set model.pooling: mean (no "
                        "model.lora)",
                    )
                )
            elif cfg.train.num_nodes > 1 or str(cfg.train.devices) != "1":
                problems.append(("fewshot.enabled", "few-shot mode runs on one device: set train.devices: 1"))
        if cfg.train.cv_folds and not training.supports_cv:
            problems.append(("train.cv_folds", f"stratified k-fold is not supported for {self.name}"))
        if cfg.search and cfg.search.latency_objective and not judging.supports_latency_objective:
            problems.append(("search.latency_objective", f"not supported for {self.name}"))
        if cfg.export.quantize != "none" and not serving.quantizable:
            problems.append(("export.quantize", f"'{cfg.export.quantize}' is not supported for {self.name}"))
        if cfg.gates.max_quantization_loss is not None and cfg.export.quantize == "none":
            problems.append(("gates.max_quantization_loss", "nothing to gate: set export.quantize: int8"))
        if not judging.detects_scope:
            scope_keys = ("data.oos_validation", "data.oos_test", "gates.min_oos_recall", "gates.max_ece")
            for key in (*scope_keys, "gates.min_behavior_pass_rate", "eval.positive_label"):
                section, _, field = key.partition(".")
                if getattr(getattr(cfg, section), field) is not None:
                    problems.append(
                        (key, f"out-of-scope detection and calibration are not supported for {self.name}")
                    )
        return problems


def label_head(labels: list[str]) -> dict[str, Any]:
    """The model-config settings of a fresh classification head for ``labels`` (in this order)."""
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }


def to_texts(model_input: Any) -> list[str]:
    """Accept a str, a list of str, a Series, an array or a DataFrame (column ``text`` or the first one)."""
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, pd.DataFrame):
        col = "text" if "text" in model_input.columns else model_input.columns[0]
        return model_input[col].astype(str).tolist()
    return [str(t) for t in list(model_input)]
