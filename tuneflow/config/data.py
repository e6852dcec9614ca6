"""The ``data``, ``oos`` and ``validation`` sections: what is read, and what the data must satisfy."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tuneflow.config.base import _Section, check_name


class FileSpec(_Section):
    """One local file of examples."""

    path: str = Field(description="File path; relative paths are resolved against the config file's folder.")
    format: Literal["auto", "csv", "tsv", "jsonl", "parquet", "conll"] = Field(
        "auto",
        description=(
            "File format; 'auto' infers it from the extension (.txt is read as TSV; .conll/.bio/.iob as "
            "CoNLL token<whitespace>tag lines, for token_classification)."
        ),
    )
    header: bool = Field(True, description="Whether a CSV/TSV file has a header row.")
    column_names: list[str] | None = Field(
        None, description="Column names for a header-less CSV/TSV file, in file order."
    )


class EvalSetSpec(FileSpec):
    """An extra evaluation set, e.g. an out-of-domain check of generalization."""

    name: str = Field(description="Short name used in metric keys (e.g. 'yelp' -> ood/yelp/accuracy).")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str | None) -> str | None:
        return check_name(v)


class LabelledSpec(FileSpec):
    """A file of examples labelled in one round (``tuneflow label``'s picks, labels filled in)."""

    round: str | None = Field(
        None, description="The round's name in MLflow's lineage (default: the file name without extension)."
    )

    @field_validator("round")
    @classmethod
    def _safe_round(cls, v: str | None) -> str | None:
        return check_name(v)

    @property
    def round_name(self) -> str:
        """``round``, or the file's name made safe (``labels/round 1.csv`` -> ``round-1``)."""
        return self.round or re.sub(r"[^A-Za-z0-9._-]+", "-", Path(self.path).stem).strip("-.") or "round"


class DataConfig(_Section):
    """Where the examples come from and how they are split."""

    train: FileSpec | None = Field(None, description="Training file (required unless hub_dataset is set).")
    validation: FileSpec | None = Field(
        None, description="Validation file; when missing, a stratified split of train is carved out."
    )
    test: FileSpec | None = Field(
        None, description="Test file; when missing, a stratified split of train is carved out."
    )
    hub_dataset: str | None = Field(
        None, description="Hugging Face dataset id loaded with datasets.load_dataset (needs network)."
    )
    hub_config: str | None = Field(None, description="Dataset configuration name for hub_dataset.")
    text_column: str = Field("text", description="Column holding the input text.")
    label_column: str = Field("label", description="Column holding the class label.")
    label_names: str | None = Field(
        None,
        description=(
            "A file naming the labels, one per line, when the label column holds their 0-based indices "
            "(GoEmotions' labels.txt); relative paths are resolved against the config file's folder."
        ),
    )
    tokens_column: str = Field(
        "tokens", description="token_classification JSONL: column holding the list of words."
    )
    tags_column: str = Field("tags", description="token_classification JSONL: column holding the BIO tags.")
    source_column: str = Field(
        "source", description="seq2seq: input text column (a list of sentences is joined with spaces)."
    )
    target_column: str = Field(
        "target",
        description="seq2seq: output text column; a list holds several references (the first is trained on).",
    )
    messages_column: str = Field(
        "messages", description="causal_lm: column holding the chat as [{role, content}, ...]."
    )
    system_prompt: str | None = Field(
        None,
        description=(
            "causal_lm: a system message put before every conversation that has none, in training, "
            "evaluation (the base model's too) and serving: the assistant's role and tone."
        ),
    )
    prompt_template: str | None = Field(
        None,
        description=(
            "causal_lm: read source/target rows (source_column, target_column) as a user/assistant exchange "
            "instead of chats: the user message is this template with {source} filled in, the reply the "
            "first target; every target is a reference for evaluation (instruction tuning, summarization)."
        ),
    )
    max_source_words: int | None = Field(
        None,
        gt=0,
        description=(
            "causal_lm with prompt_template: keep the first N words of each source, so the prompt and its "
            "reply fit in model.max_length (the reply is never truncated away)."
        ),
    )
    validation_size: float = Field(
        0.1, gt=0, lt=0.5, description="Share of train split off as validation when no validation file."
    )
    test_size: float = Field(
        0.1, gt=0, lt=0.5, description="Share of train split off as test when no test file."
    )
    max_train_examples: int | None = Field(
        None, gt=0, description="Stratified subsample of train to this many examples (quick experiments)."
    )
    labelled: list[LabelledSpec] = Field(
        default_factory=list,
        description=(
            "Labelling rounds: files of examples labelled later (tuneflow label writes them), in the train "
            "file's columns. They are added to train after validation and test are split off, so every "
            "round is evaluated on the same held-out data; each run logs which examples came from which "
            "round (MLflow inputs and data/rounds.csv)."
        ),
    )
    extra_eval: list[EvalSetSpec] = Field(
        default_factory=list, description="Extra labelled sets evaluated separately (out-of-domain checks)."
    )
    oos_validation: FileSpec | None = Field(
        None,
        description=(
            "sequence_classification: out-of-scope queries (text column only; labels ignored) used to choose "
            "the fallback threshold; never trained on. Without it the threshold keeps "
            "oos.target_in_scope_recall of the in-scope validation examples."
        ),
    )
    oos_test: FileSpec | None = Field(
        None,
        description="sequence_classification: out-of-scope test queries (out-of-scope recall, AUROC, FPR@95)",
    )

    @field_validator("prompt_template")
    @classmethod
    def _has_source(cls, value: str | None) -> str | None:
        if value is not None and "{source}" not in value:
            raise ValueError("must contain {source}, where each example's source text goes")
        return value

    @model_validator(mode="after")
    def _source_given(self) -> DataConfig:
        if self.train is None and self.hub_dataset is None:
            raise ValueError("either data.train or data.hub_dataset must be set")
        rounds = [spec.round_name for spec in self.labelled]
        twice = sorted({r for r in rounds if rounds.count(r) > 1})
        if twice:
            raise ValueError(
                f"data.labelled: round name(s) {', '.join(twice)} given twice; set round: to tell them apart"
            )
        return self


ScopeMethod = Literal["msp", "energy", "mahalanobis", "knn"]
FEATURE_SCOPE_METHODS = ("mahalanobis", "knn")  # methods scoring the encoder's features, not only the logits


class OOSConfig(_Section):
    """Out-of-scope detection (sequence_classification): answer a fallback label instead of a wrong intent."""

    enabled: bool = Field(
        True, description="Fit a threshold after training; the served model answers fallback_label below it."
    )
    method: ScopeMethod | list[ScopeMethod] = Field(
        "knn",
        description=(
            "In-scope score, or a list of them to combine (each standardized on in-scope validation, then "
            "summed): msp = max calibrated probability; energy = T*logsumexp(logits/T); mahalanobis = "
            "distance of the encoder's features (oos.features) to the nearest class mean (shared covariance "
            "fitted on train); knn = distance of the normalized features to the k-th nearest training "
            "example (up to 20,000 training vectors ship with the model). knn on layer_mean features is the "
            "default: it ranked questions about untaught intents best on BANKING77 and CLINC150 (AUROC "
            "0.91-0.96 vs 0.73-0.91 for energy and msp, bench open_intents) and caught the most off-topic "
            "queries on CLINC150 (bench clinc150); energy needs nothing but the logits."
        ),
    )
    features: Literal["head", "mean_pooled", "layer_mean"] | None = Field(
        None,
        description=(
            "mahalanobis and knn: the features they score (unset: layer_mean). head = the classification "
            "head's input (BERT's pooled [CLS]); mean_pooled = the mean of the encoder's last hidden states "
            "over the real tokens (how sentence-transformers models such as all-MiniLM-L6-v2 were "
            "pre-trained to embed a sentence); layer_mean = that mean taken at every transformer layer, then "
            "averaged over layers (Chen et al. 2022): earlier layers keep what fine-tuning on the known "
            "intents discards (bench/RESULTS.md)."
        ),
    )
    knn_k: int = Field(
        1, ge=1, description="knn only: the neighbour whose distance is the score (1 = the nearest)."
    )
    fallback_label: str = Field("unknown", description="The label answered for out-of-scope queries.")
    target_in_scope_recall: float = Field(
        0.9,
        gt=0,
        lt=1,
        description=(
            "threshold_rule in_scope_recall (and always without data.oos_validation): the threshold keeps "
            "this share of in-scope validation queries. 0.9: on questions about intents the model was "
            "never taught (BANKING77 / CLINC150 with 25-75% of the intents known) it scored 0.4-9 points "
            "more accuracy than 0.95 in every cell (bench open_intents); raise it when the fallback "
            "answers too often, lower it when unknown questions get a wrong intent."
        ),
    )
    threshold_rule: Literal["youden", "in_scope_recall"] = Field(
        "youden",
        description=(
            "youden = with data.oos_validation, the threshold maximizing in-scope recall + out-of-scope "
            "recall on validation (without it, as in_scope_recall); in_scope_recall = keep "
            "target_in_scope_recall of in-scope validation queries even when out-of-scope ones are given "
            "(an operating point fixed by how many real users may be turned away)."
        ),
    )

    @model_validator(mode="after")
    def _features_need_a_feature_method(self) -> OOSConfig:
        methods = self.methods
        if isinstance(self.method, list) and (len(methods) < 2 or len(set(methods)) < len(methods)):
            raise ValueError(f"oos.method: a list combines two or more different methods, not {self.method}")
        if self.features not in (None, "head") and not set(FEATURE_SCOPE_METHODS) & set(methods):
            raise ValueError(
                f"oos.features: {self.features} only applies to method: {' or '.join(FEATURE_SCOPE_METHODS)} "
                f"(method is {self.method})"
            )
        if self.knn_k != 1 and "knn" not in methods:
            raise ValueError(f"oos.knn_k only applies to method: knn (method is {self.method})")
        return self

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods whose scores are combined (one for a single method)."""
        return tuple(self.method) if isinstance(self.method, list) else (self.method,)

    @property
    def feature_kind(self) -> str:
        """The features the feature methods score (``features``, layer_mean when unset)."""
        return self.features or "layer_mean"


class ValidationConfig(_Section):
    """Data-quality checks run before any training."""

    min_examples_per_class: int = Field(5, ge=1, description="A train class with fewer examples is an error.")
    max_imbalance_ratio: float = Field(
        10.0, gt=1, description="Warn when the largest/smallest train class ratio exceeds this."
    )
    max_truncated_share: float = Field(
        0.05, ge=0, le=1, description="Warn when more than this share of texts is cut at data.max_length."
    )
    fail_on_leakage: bool = Field(
        False, description="Treat train/test or train/validation text overlap as an error, not a warning."
    )
    max_label_issue_share: float = Field(
        0.05,
        ge=0,
        le=1,
        description=(
            "sequence_classification with train.cv_folds: warn when more than this share of train+validation "
            "examples look mislabeled (confident learning on the folds' out-of-fold probabilities)."
        ),
    )
