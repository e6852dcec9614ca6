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
import torch

from tuneflow.data import Encoded, EncodedData, Splits
from tuneflow.readers import LINE, MESSAGES, ROLES, TEXT, Problem, message_problems, read_chats  # noqa: F401

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


def encode_chats(splits: Splits, tokenizer: Any, max_length: int) -> EncodedData:
    prepare_tokenizer(tokenizer)

    def one(df: pd.DataFrame) -> Encoded:
        pairs = [encode_chat(tokenizer, m, max_length) for m in df[MESSAGES]]
        return Encoded([p[0] for p in pairs], [p[1] for p in pairs])

    return EncodedData(one(splits.train), one(splits.validation), [], tokenizer, max_length, "causal_lm")


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
class ChatModel:
    """An exported causal LM that answers conversations."""

    model: Any
    tokenizer: Any
    max_length: int = 512
    generate_kwargs: dict[str, Any] | None = None

    @torch.inference_mode()
    def reply(self, conversations: list[list[dict[str, str]]], batch_size: int = 8) -> list[str]:
        """The assistant's next message for each conversation."""
        self.tokenizer.padding_side = "left"  # generation continues every row from its last real token
        out = []
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
            out += [
                t.strip()
                for t in self.tokenizer.batch_decode(
                    ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True
                )
            ]
        return out

    def predict(self, conversations: list[list[dict[str, str]]]) -> pd.DataFrame:
        return pd.DataFrame({"generated_text": self.reply(conversations)})


def perplexity(chat: ChatModel, df: pd.DataFrame) -> float:
    """exp(mean cross-entropy over assistant tokens) of the conversations in ``df``."""
    from tuneflow.seq2seq import mean_token_loss

    pairs = [encode_chat(chat.tokenizer, m, chat.max_length) for m in df[MESSAGES]]
    loss = mean_token_loss(
        chat.model, chat.tokenizer, Encoded([p[0] for p in pairs], [p[1] for p in pairs]), "causal_lm"
    )
    return math.exp(min(loss, 50))


def evaluate_chat(
    chat: ChatModel,
    splits: Splits,
    out_dir: str | Path,
    *,
    max_examples: int | None = 200,
    samples: int = 20,
    latency_examples: int = 5,
    overfit_gap_threshold: float = 0.1,
    history: dict[str, list[tuple[int, float]]] | None = None,
) -> Any:
    """Test perplexity on assistant tokens (headline), sample replies, train/val loss gap, OOD perplexity."""
    from tuneflow.evaluation import EvaluationResult, finish
    from tuneflow.metrics import time_single
    from tuneflow.seq2seq import _subset, record_loss_gap

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = EvaluationResult(metrics={})
    test = _subset(splits.test, max_examples)
    ppl = perplexity(chat, test)
    train_loss = math.log(perplexity(chat, _subset(splits.train, max_examples)))
    val_loss = math.log(perplexity(chat, _subset(splits.validation, max_examples)))
    res.metrics.update(test_perplexity=ppl, test_loss=math.log(ppl))
    record_loss_gap(res, train_loss, val_loss, overfit_gap_threshold)
    # Sample replies: everything before the last assistant turn is the prompt, that turn the reference.
    rows = []
    for line, messages in zip(test[LINE], test[MESSAGES].head(samples), strict=False):
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        rows.append(
            {
                "line": line,
                "prompt": messages[last - 1]["content"] if last else "",
                "reference": messages[last]["content"],
                "context": messages[:last],
            }
        )
    replies = chat.reply([r.pop("context") for r in rows]) if rows else []
    pd.DataFrame([{**r, "generated": g} for r, g in zip(rows, replies, strict=True)]).to_csv(
        out / "sample_generations.csv", index=False
    )
    res.artifacts.append("sample_generations.csv")
    for name, df in splits.extra.items():
        res.metrics[f"ood_{name}_perplexity"] = perplexity(chat, _subset(df, max_examples))
    prompts = [[{"role": "user", "content": r["prompt"]}] for r in rows]
    res.metrics.update(time_single(chat.reply, prompts, latency_examples))
    return finish(res, out, history)
