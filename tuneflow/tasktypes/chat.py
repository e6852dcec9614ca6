"""Conversational fine-tuning (``task: causal_lm``): chat JSONL, chat templates, assistant-only loss.

Each example is a conversation ``[{role, content}, ...]`` (roles system / user / assistant). It is rendered
with the tokenizer's chat template; a model without one gets :data:`FALLBACK_TEMPLATE`. Only the tokens of
assistant turns (their content and the end-of-turn marker the template puts after it) are trained on; the
system and user tokens are context, labelled -100.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tuneflow import names
from tuneflow.backbone.lean import position_losses
from tuneflow.backbone.pretrained import load_model, load_tokenizer
from tuneflow.config import SMOLLM2_MODEL, DataConfig, FileSpec, GenerationConfig, PipelineConfig
from tuneflow.data.encoding import Encoded, EncodedData, PadSequences
from tuneflow.data.readers import LINE, MESSAGES, REFERENCES, Problem, read_chats, read_instructions
from tuneflow.data.splits import Splits
from tuneflow.data.validation import ValidationReport, empty_inputs, token_lengths
from tuneflow.judging.evaluation import Gap, save_table
from tuneflow.judging.generation import (
    generated_text_example,
    generation_metrics,
    loss_gap,
    metric_family,
    per_example_scores,
    sequence_collator,
    subset,
    token_losses,
)
from tuneflow.judging.metrics import time_single
from tuneflow.judging.promotion import decide_on_examples
from tuneflow.tasktypes.base import (
    GENERATION_CONFIG,
    DataPart,
    JudgingPart,
    MetricSpec,
    ServingPart,
    TaskType,
    TrainingPart,
    generative_draft,
)

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


def with_system(messages: list[dict[str, str]], system_prompt: str | None) -> list[dict[str, str]]:
    """The conversation with ``system_prompt`` first, unless it has a system message of its own."""
    if system_prompt and (not messages or messages[0]["role"] != "system"):
        return [{"role": "system", "content": system_prompt}, *messages]
    return messages


@dataclass(frozen=True)
class Turn:
    """One assistant turn to generate: the conversation before it, and what the reply is scored against."""

    line: int
    context: list[dict[str, str]]
    references: list[str]


def assistant_turns(df: pd.DataFrame) -> list[Turn]:
    """Every assistant turn of every conversation, with the conversation so far as its context.

    The reference is the turn itself; rows read with ``data.prompt_template`` carry every target as a
    reference for their (single) assistant turn.
    """
    refs = df[REFERENCES] if REFERENCES in df.columns else [None] * len(df)
    out = []
    for line, messages, given in zip(df[LINE], df[MESSAGES], refs, strict=True):
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        for i, m in enumerate(messages):
            if m["role"] == "assistant":
                several = isinstance(given, list) and given and i == last
                out.append(Turn(int(line), messages[:i], list(given) if several else [m["content"]]))
    return out


def sample_turns(turns: list[Turn], n: int | None) -> list[Turn]:
    """At most ``n`` turns drawn with a fixed seed, in file order: the same frozen turns for every model."""
    if n is None or len(turns) <= n:
        return turns
    keep = sorted(np.random.default_rng(0).choice(len(turns), size=n, replace=False))
    return [turns[i] for i in keep]


def stored_generation(stored: dict[str, Any] | None) -> dict[str, Any]:
    """The generation settings an export stores (``tuneflow.json``), as ``GenerationConfig`` fields."""
    return {k: v for k, v in (stored or {}).items() if k in GenerationConfig.model_fields}


def generation_settings(stored: dict[str, Any] | None, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """``model.generate`` arguments: the export's settings with per-request ``overrides`` applied on top.

    Raises:
        ValueError: an unknown setting or an invalid value, named.
    """
    from pydantic import ValidationError

    try:
        return GenerationConfig.model_validate({**stored_generation(stored), **(overrides or {})}).kwargs()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"invalid generation params ({problems})") from None


def generated_length(new: Any, tokenizer: Any) -> int:
    """Tokens generated in a batch: each row up to and including its first end-of-sequence token (the rest
    is padding, which may be the same token)."""
    end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
    is_end = (new == end).int()
    return int(((is_end.cumsum(dim=1) - is_end) == 0).sum())


@dataclass
class ChatPredictor:
    """An exported causal LM that answers conversations (with its system prompt, as it was trained)."""

    model: Any
    tokenizer: Any
    max_length: int = 512
    generate_kwargs: dict[str, Any] | None = None
    system_prompt: str | None = None
    generated_tokens: int = 0  # counters for generation throughput
    generation_seconds: float = 0.0

    def reply(
        self, conversations: list[list[dict[str, str]]], batch_size: int = 8, **overrides: Any
    ) -> list[str]:
        """The assistant's next message for each conversation.

        Prompts are batched by length (less left padding) and decoded with the KV cache (``generate``'s
        default); ``overrides`` are generation settings for this call (``max_new_tokens``, ``do_sample``...).
        """
        import torch

        settings = generation_settings(self.generate_kwargs, overrides)
        self.tokenizer.padding_side = "left"  # generation continues every row from its last real token
        prompts = [render(self.tokenizer, with_system(c, self.system_prompt), True) for c in conversations]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: dict[int, str] = {}
        start_time = time.perf_counter()
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                enc = self.tokenizer(
                    [prompts[i] for i in rows],
                    add_special_tokens=False,
                    truncation=True,
                    max_length=self.max_length,
                    padding=True,
                    return_tensors="pt",
                )
                ids = self.model.generate(**enc, pad_token_id=self.tokenizer.pad_token_id, **settings)
                new = ids[:, enc["input_ids"].shape[1] :]
                self.generated_tokens += generated_length(new, self.tokenizer)
                texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
                out.update({i: text.strip() for i, text in zip(rows, texts, strict=True)})
        self.generation_seconds += time.perf_counter() - start_time
        return [out[i] for i in range(len(prompts))]

    def predict(self, conversations: list[list[dict[str, str]]], **params: Any) -> pd.DataFrame:
        return pd.DataFrame({"generated_text": self.reply(conversations, **params)})

    def token_losses(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Summed cross-entropy and token count over the assistant tokens of each conversation in ``df``."""
        pairs = [
            encode_chat(self.tokenizer, with_system(m, self.system_prompt), self.max_length)
            for m in df[MESSAGES]
        ]
        data = Encoded([p[0] for p in pairs], [p[1] for p in pairs])
        # Only the labeled positions go through the output layer (its logits are 49k wide for SmolLM2).
        collate = sequence_collator(self.tokenizer)
        return token_losses(self.model, data, collate, shift=True, batch_size=4, positions=position_losses)

    def loss(self, df: pd.DataFrame) -> float:
        """Mean cross-entropy per assistant token of the conversations in ``df``."""
        sums, counts = self.token_losses(df)
        return float(sums.sum() / max(int(counts.sum()), 1))

    def perplexity(self, df: pd.DataFrame) -> float:
        return math.exp(min(self.loss(df), 50))

    @contextmanager
    def base(self, base_name: str) -> Iterator[ChatPredictor]:
        """The pre-trained base with the same prompt and settings: the adapter switched off (LoRA), or the
        base model loaded beside the fine-tuned one (full fine-tuning)."""
        if hasattr(self.model, "disable_adapter"):
            with self.model.disable_adapter():
                yield self
            return
        from transformers import AutoModelForCausalLM

        model = load_model("base model", AutoModelForCausalLM, base_name).eval()
        tokenizer = prepare_tokenizer(load_tokenizer(base_name))
        yield ChatPredictor(model, tokenizer, self.max_length, self.generate_kwargs, self.system_prompt)


@dataclass
class Scored:
    """One model's scores on the frozen test examples."""

    metrics: dict[str, float]
    replies: list[str]
    chrf: list[float]


def score_chat(
    predictor: ChatPredictor, conversations: pd.DataFrame, turns: list[Turn], which: list[str], prefix: str
) -> Scored:
    """Assistant-token loss/perplexity on ``conversations`` and reply metrics on ``turns``."""
    loss = predictor.loss(conversations)
    replies = predictor.reply([t.context for t in turns])
    references = [t.references for t in turns]
    metrics = {f"{prefix}loss": loss, f"{prefix}perplexity": math.exp(min(loss, 50))}
    metrics.update(generation_metrics(replies, references, which, prefix))
    return Scored(metrics, replies, per_example_scores(replies, references, "chrf"))


def reply_metrics(cfg: PipelineConfig) -> list[str]:
    """The reply metrics a run computes: ``eval.generation_metrics`` (default chrF and BLEU) and always the
    family of the gate metric, so ``test/<gate metric>`` exists."""
    which = list(cfg.eval.generation_metrics or ["chrf", "bleu"])
    family = metric_family(cfg.gates.metric or "")
    return [*which, family] if family in ("rouge", "bleu", "chrf") and family not in which else which


def show_context(messages: list[dict[str, str]], last: int = 3) -> str:
    """The end of a conversation as ``role: content`` lines (for the samples table)."""
    head = ["..."] if len(messages) > last else []
    return "\n".join(head + [f"{m['role']}: {m['content']}" for m in messages[-last:]])


class ChatData(DataPart):
    column_roles = {"messages_column": ("messages", "conversation", "conversations", "dialogue", "chat")}

    def draft(self, train: pd.DataFrame, cfg: PipelineConfig) -> dict[str, tuple[Any, str]]:
        return generative_draft("conversations")

    def read(self, spec: FileSpec, cfg: DataConfig) -> tuple[pd.DataFrame | None, list[Problem]]:
        return read_instructions(spec, cfg) if cfg.prompt_template else read_chats(spec, cfg)

    def check_frame(self, name: str, source: str, df: pd.DataFrame, cfg: PipelineConfig) -> list[Problem]:
        return empty_inputs(name, source, df)

    def describe(
        self, report: ValidationReport, splits: Splits, cfg: PipelineConfig, tokenizer: Any | None
    ) -> None:
        if tokenizer is not None:
            token_lengths(report, splits, cfg, tokenizer, "inputs")


class ChatTraining(TrainingPart):
    auto_class = "AutoModelForCausalLM"
    peft_task_type = "CAUSAL_LM"
    labeled_positions_loss = True

    def encode(self, splits: Splits, tokenizer: Any, cfg: PipelineConfig) -> EncodedData:
        prepare_tokenizer(tokenizer)
        max_length, system = cfg.model.max_length, cfg.data.system_prompt

        def one(df: pd.DataFrame) -> Encoded:
            pairs = [encode_chat(tokenizer, with_system(m, system), max_length) for m in df[MESSAGES]]
            return Encoded([p[0] for p in pairs], [p[1] for p in pairs])

        return EncodedData(one(splits.train), one(splits.validation), [], tokenizer, max_length, cfg.task)

    def collator(self, tokenizer: Any) -> PadSequences:
        return sequence_collator(tokenizer)


class ChatServing(ServingPart):
    input_example = ["How do I reset my password?"]

    def inference_settings(self, cfg: PipelineConfig) -> dict[str, Any]:
        return {
            "max_length": cfg.model.max_length,
            "generation": cfg.generation.kwargs(),
            "system_prompt": cfg.data.system_prompt,
        }

    def predictor(self, model: Any, tokenizer: Any, meta: dict[str, Any]) -> ChatPredictor:
        return ChatPredictor(
            model,
            prepare_tokenizer(tokenizer),
            meta.get("max_length", 512),
            meta.get("generation"),
            meta.get("system_prompt"),
        )

    def serving_params(self, meta: dict[str, Any]) -> dict[str, Any]:
        """Generation settings a request may override (``params``), defaulting to the export's."""
        return GenerationConfig.model_validate(stored_generation(meta.get("generation"))).model_dump()

    def to_inputs(self, model_input: Any) -> list[Any]:
        return to_conversations(model_input)

    def output_example(self) -> pd.DataFrame:
        return generated_text_example()


class ChatJudging(JudgingPart):
    def evaluate_test(
        self,
        predictor: ChatPredictor,
        test: pd.DataFrame,
        out: Path,
        cfg: PipelineConfig,
        metrics: dict[str, float],
        evidence: dict[str, Any] | None = None,
    ) -> list[str]:
        """Perplexity on assistant tokens, reply metrics on a frozen sample of assistant turns, and the same
        for the base model zero-shot (``base/``); ``generations.csv`` holds every scored turn."""
        n, which = cfg.eval.max_generation_examples, reply_metrics(cfg)
        conversations, turns = subset(test, n), sample_turns(assistant_turns(test), n)
        predictor.generated_tokens, predictor.generation_seconds = 0, 0.0
        tuned = score_chat(predictor, conversations, turns, which, names.TEST)
        metrics.update(tuned.metrics)
        if evidence is not None and cfg.gates.metric != "perplexity":
            # The replies promotion would generate for the same sampled turns: scored once, here.
            evidence["promotion"] = per_example_scores(
                tuned.replies, [t.references for t in turns], cfg.gates.metric
            )
        metrics[f"{names.SERVING}generation_tokens_per_s"] = predictor.generated_tokens / max(
            predictor.generation_seconds, 1e-9
        )
        table = pd.DataFrame(
            {
                "line": [t.line for t in turns],
                "context": [show_context(t.context) for t in turns],
                "reference": [t.references[0] for t in turns],
                "generated": tuned.replies,
                "chrf": tuned.chrf,
            }
        )
        if cfg.eval.compare_base:
            with predictor.base(cfg.model.name) as base:
                before = score_chat(base, conversations, turns, which, names.BASE)
            metrics.update(before.metrics)
            table.insert(3, "base_generated", before.replies)
            table["base_chrf"] = before.chrf
        save_table(table, out / "generations.csv")
        save_table(table.head(cfg.eval.sample_generations), out / "sample_generations.csv")
        return ["sample_generations.csv", "generations.csv"]

    def measure_gap(self, predictor: Any, splits: Splits, cfg: PipelineConfig) -> Gap:
        return loss_gap(predictor, splits, cfg.eval.max_generation_examples)

    def score_set(
        self, predictor: ChatPredictor, df: pd.DataFrame, cfg: PipelineConfig, prefix: str
    ) -> dict[str, float]:
        """The test metrics on another set of conversations (an out-of-domain set): perplexity and replies."""
        n = cfg.eval.max_generation_examples
        turns = sample_turns(assistant_turns(df), n)
        return score_chat(predictor, subset(df, n), turns, reply_metrics(cfg), prefix).metrics

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

    def promotion_evidence(
        self, predictor: ChatPredictor, test: pd.DataFrame, cfg: PipelineConfig
    ) -> list[float]:
        """Per-example scores on the frozen test examples: each sampled turn's sentence score of the gate
        metric, or for perplexity each conversation's mean assistant-token loss."""
        n, metric = cfg.eval.max_generation_examples, cfg.gates.metric
        if metric == "perplexity":
            sums, counts = predictor.token_losses(subset(test, n))
            return (sums / np.maximum(counts, 1)).tolist()
        turns = sample_turns(assistant_turns(test), n)
        replies = predictor.reply([t.context for t in turns])
        return per_example_scores(replies, [t.references for t in turns], metric)

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
        perplexity = cfg.gates.metric == "perplexity"
        return decide_on_examples(
            cfg.gates,
            model,
            version,
            evidence,
            run_metrics,
            champion,
            champion_evidence,
            aggregate=(lambda losses: math.exp(min(float(np.mean(losses)), 50))) if perplexity else np.mean,
            lower_is_better=perplexity,
            seed=cfg.train.seed,
        )


class CausalLM(TaskType):
    name = "causal_lm"
    summary = "conversations: chat fine-tuning with an assistant-only loss"
    metrics = MetricSpec(
        monitors=("val/loss",),
        gate_metrics=("chrf", "perplexity", "bleu", "rouge1", "rouge2", "rougeL"),
        headline=("test/chrf", "base/chrf", "test/perplexity", "base/perplexity", "fit/train_val_gap"),
        lower_is_better=frozenset({"loss", "perplexity"}),
    )
    default_model = SMOLLM2_MODEL
    own_config = (
        *("data.messages_column", "data.source_column", "data.target_column", "data.max_source_words"),
        *("data.system_prompt", "data.prompt_template", "eval.compare_base"),
        *GENERATION_CONFIG,
    )
    data = ChatData()
    training = ChatTraining()
    serving = ChatServing()
    judging = ChatJudging()

    def config_problems(self, cfg: PipelineConfig) -> list[tuple[str, str]]:
        problems = super().config_problems(cfg)
        if cfg.gates.significance == "mcnemar":
            problems.append(
                ("gates.significance", "mcnemar needs right/wrong predictions; use bootstrap for generation")
            )
        if cfg.data.max_source_words and not cfg.data.prompt_template:
            problems.append(("data.max_source_words", "only applies with data.prompt_template"))
        return problems
