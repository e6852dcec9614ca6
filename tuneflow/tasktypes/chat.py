"""Conversational fine-tuning (``task: causal_lm``): chat JSONL, chat templates, assistant-only loss.

Each example is a conversation ``[{role, content}, ...]`` (roles system / user / assistant). It is rendered
with the tokenizer's chat template; a model without one gets :data:`FALLBACK_TEMPLATE`. Only the tokens of
assistant turns (their content and the end-of-turn marker the template puts after it) are trained on; the
system and user tokens are context, labelled -100.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tuneflow import names
from tuneflow.config import DataConfig, FileSpec, PipelineConfig
from tuneflow.encoding import Encoded, EncodedData, PadSequences
from tuneflow.evaluation import Gap
from tuneflow.generation import generated_text_example, loss_gap, mean_token_loss, sequence_collator, subset
from tuneflow.metrics import time_single
from tuneflow.readers import LINE, MESSAGES, Problem, read_chats
from tuneflow.splits import Splits
from tuneflow.tasktypes.base import SCOPE_CONFIG, MetricSpec, TaskType
from tuneflow.validation import ValidationReport, empty_inputs, token_lengths

IGNORE = -100

FALLBACK_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
"""Used when the tokenizer has no chat template: ``<|role|>`` line, the content, then the EOS token (so the
model learns to stop). Saved with the exported tokenizer, so serving renders prompts the same way."""


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Give the tokenizer a chat template (fallback) and a pad token (the EOS token) when it lacks them."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = FALLBACK_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def encode_chat(
    tokenizer: Any, messages: list[dict[str, str]], max_length: int
) -> tuple[list[int], list[int]]:
    """Token ids of the rendered chat and labels that keep only assistant-turn tokens (others -100).

    Assistant spans are found on the rendered text (the prompt up to the turn vs. the chat including it) and
    mapped to tokens by character offsets, so no assumption is made about how the template tokenizes.
    """
    full = render(tokenizer, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        upto = render(tokenizer, messages[: i + 1])
        if not full.startswith(upto) or not upto.startswith(before):
            raise ValueError("the chat template does not render conversations prefix by prefix")
        spans.append((len(before), len(upto)))
    enc = tokenizer(
        full, add_special_tokens=False, return_offsets_mapping=True, truncation=True, max_length=max_length
    )
    labels = [
        tok if any(s <= start < e for s, e in spans) else IGNORE
        for tok, (start, _) in zip(enc["input_ids"], enc["offset_mapping"], strict=True)
    ]
    return enc["input_ids"], labels


def to_conversations(model_input: Any) -> list[list[dict[str, str]]]:
    """A str is one user message; a JSON list string or a list of dicts is a whole conversation."""
    if isinstance(model_input, pd.DataFrame):
        col = MESSAGES if MESSAGES in model_input.columns else model_input.columns[0]
        model_input = model_input[col].tolist()
    if isinstance(model_input, str) or (
        isinstance(model_input, list) and model_input and isinstance(model_input[0], dict)
    ):
        model_input = [model_input]
    out = []
    for item in model_input:
        if isinstance(item, str) and item.lstrip().startswith("["):
            item = json.loads(item)
        out.append(item if isinstance(item, list) else [{"role": "user", "content": str(item)}])
    return out


@dataclass
class ChatPredictor:
    """An exported causal LM that answers conversations."""

    model: Any
    tokenizer: Any
    max_length: int = 512
    generate_kwargs: dict[str, Any] | None = None

    def reply(self, conversations: list[list[dict[str, str]]], batch_size: int = 8) -> list[str]:
        """The assistant's next message for each conversation."""
        import torch

        self.tokenizer.padding_side = "left"  # generation continues every row from its last real token
        out = []
        with torch.inference_mode():
            for start in range(0, len(conversations), batch_size):
                prompts = [render(self.tokenizer, c, True) for c in conversations[start : start + batch_size]]
                enc = self.tokenizer(
                    prompts,
                    add_special_tokens=False,
                    truncation=True,
                    max_length=self.max_length,
                    padding=True,
                    return_tensors="pt",
                )
                ids = self.model.generate(
                    **enc, pad_token_id=self.tokenizer.pad_token_id, **(self.generate_kwargs or {})
                )
                decoded = self.tokenizer.batch_decode(
                    ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True
                )
                out += [t.strip() for t in decoded]
        return out

    def predict(self, conversations: list[list[dict[str, str]]]) -> pd.DataFrame:
        return pd.DataFrame({"generated_text": self.reply(conversations)})

    def loss(self, df: pd.DataFrame) -> float:
        """Mean cross-entropy over the assistant tokens of the conversations in ``df``."""
        pairs = [encode_chat(self.tokenizer, m, self.max_length) for m in df[MESSAGES]]
        data = Encoded([p[0] for p in pairs], [p[1] for p in pairs])
        return mean_token_loss(self.model, data, sequence_collator(self.tokenizer), shift=True)

    def perplexity(self, df: pd.DataFrame) -> float:
        return math.exp(min(self.loss(df), 50))


class CausalLM(TaskType):
    name = "causal_lm"
    summary = "conversations: chat fine-tuning with an assistant-only loss"
    metrics = MetricSpec(
        monitors=("val/loss",),
        gate_metrics=("perplexity",),
        headline=("test/perplexity", "test/loss", "fit/train_val_gap", "serving/latency_p95_ms"),
        lower_is_better=frozenset({"loss", "perplexity"}),
    )
    auto_class = "AutoModelForCausalLM"
    peft_task_type = "CAUSAL_LM"
    input_example = ["How do I reset my password?"]
    unused_config = (
        *SCOPE_CONFIG,
        *("data.text_column", "data.label_column", "data.tokens_column", "data.tags_column"),
        *("data.source_column", "data.target_column", "model.max_target_length", "model.source_prefix"),
        *("eval.generation_metrics", "eval.worst_examples"),
        *("validation.min_examples_per_class", "validation.max_imbalance_ratio"),
    )

    def read(self, spec: FileSpec, cfg: DataConfig) -> tuple[pd.DataFrame | None, list[Problem]]:
        return read_chats(spec, cfg)

    def check_frame(self, name: str, source: str, df: pd.DataFrame, cfg: PipelineConfig) -> list[Problem]:
        return empty_inputs(name, source, df)

    def describe(
        self, report: ValidationReport, splits: Splits, cfg: PipelineConfig, tokenizer: Any | None
    ) -> None:
        if tokenizer is not None:
            token_lengths(report, splits, cfg, tokenizer, "inputs")

    def encode(self, splits: Splits, tokenizer: Any, cfg: PipelineConfig) -> EncodedData:
        prepare_tokenizer(tokenizer)
        max_length = cfg.model.max_length

        def one(df: pd.DataFrame) -> Encoded:
            pairs = [encode_chat(tokenizer, m, max_length) for m in df[MESSAGES]]
            return Encoded([p[0] for p in pairs], [p[1] for p in pairs])

        return EncodedData(one(splits.train), one(splits.validation), [], tokenizer, max_length, self.name)

    def collator(self, tokenizer: Any) -> PadSequences:
        return sequence_collator(tokenizer)

    def inference_settings(self, cfg: PipelineConfig) -> dict[str, Any]:
        return {"max_length": cfg.model.max_length, "generation": cfg.generation.kwargs()}

    def predictor(self, model: Any, tokenizer: Any, meta: dict[str, Any]) -> ChatPredictor:
        return ChatPredictor(
            model, prepare_tokenizer(tokenizer), meta.get("max_length", 512), meta.get("generation")
        )

    def to_inputs(self, model_input: Any) -> list[Any]:
        return to_conversations(model_input)

    def output_example(self) -> pd.DataFrame:
        return generated_text_example()

    def evaluate_test(
        self,
        predictor: ChatPredictor,
        test: pd.DataFrame,
        out: Path,
        cfg: PipelineConfig,
        metrics: dict[str, float],
    ) -> list[str]:
        """Perplexity on assistant tokens and ``sample_generations.csv`` (the last assistant turn)."""
        test = subset(test, cfg.eval.max_generation_examples)
        loss = predictor.loss(test)
        metrics.update({f"{names.TEST}perplexity": math.exp(min(loss, 50)), f"{names.TEST}loss": loss})
        # Sample replies: everything before the last assistant turn is the prompt, that turn the reference.
        rows = []
        for line, messages in zip(test[LINE], test[MESSAGES].head(cfg.eval.sample_generations), strict=False):
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            rows.append(
                {
                    "line": line,
                    "prompt": messages[last - 1]["content"] if last else "",
                    "reference": messages[last]["content"],
                    "context": messages[:last],
                }
            )
        replies = predictor.reply([r.pop("context") for r in rows]) if rows else []
        pd.DataFrame([{**r, "generated": g} for r, g in zip(rows, replies, strict=True)]).to_csv(
            out / "sample_generations.csv", index=False
        )
        return ["sample_generations.csv"]

    def measure_gap(self, predictor: Any, splits: Splits, cfg: PipelineConfig) -> Gap:
        return loss_gap(predictor, splits, cfg.eval.max_generation_examples)

    def score_set(
        self, predictor: ChatPredictor, df: pd.DataFrame, cfg: PipelineConfig, prefix: str
    ) -> dict[str, float]:
        return {f"{prefix}perplexity": predictor.perplexity(subset(df, cfg.eval.max_generation_examples))}

    def measure_latency(
        self, predictor: ChatPredictor, test: pd.DataFrame, cfg: PipelineConfig
    ) -> dict[str, float]:
        # One user turn per prompt: the message before each conversation's last assistant turn.
        prompts = []
        for messages in test[MESSAGES]:
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            if last:
                prompts.append([{"role": "user", "content": messages[last - 1]["content"]}])
        return time_single(predictor.reply, prompts, min(cfg.eval.latency_examples, 10))

    def promotion_evidence(self, predictor: ChatPredictor, test: pd.DataFrame, cfg: PipelineConfig) -> float:
        return predictor.perplexity(subset(test, cfg.eval.max_generation_examples))
