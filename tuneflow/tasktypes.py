"""What differs between task types, in one table: encoding, the inference wrapper, evaluation, examples.

Every stage (validation, training, search, evaluation, registration, serving) asks this module instead of
branching on ``cfg.task`` itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from tuneflow.config import PipelineConfig
from tuneflow.data import EncodedData, Splits, encode

HEADLINE = {
    "sequence_classification": (
        "test_accuracy",
        "test_f1_macro",
        "test_f1_weighted",
        "train_val_gap",
        "latency_p95_ms",
    ),
    "token_classification": ("test_f1", "test_precision", "test_recall", "train_val_gap", "latency_p95_ms"),
    "seq2seq": (
        "test_rougeL",
        "test_rouge1",
        "test_bleu",
        "test_chrf",
        "test_loss",
        "train_val_gap",
        "latency_p95_ms",
    ),
    "causal_lm": ("test_perplexity", "test_loss", "train_val_gap", "latency_p95_ms"),
}
HISTORY_KEYS = ("train_loss", "val_loss", "val_accuracy", "val_f1_macro", "val_f1", "train_accuracy")

INPUT_EXAMPLES = {
    "sequence_classification": ["where is my order?"],
    "token_classification": ["Alice moved to Paris to work for Acme Corp ."],
    "seq2seq": ["We propose a method that trains faster and generalizes better than prior work ."],
    "causal_lm": ["How do I reset my password?"],
}


def encode_for(cfg: PipelineConfig, splits: Splits, tokenizer: Any) -> EncodedData:
    """Tokenize the train and validation splits the way ``cfg.task`` trains on them."""
    if cfg.task == "token_classification":
        from tuneflow.ner import encode_tagged

        return encode_tagged(splits, tokenizer, cfg.model.max_length)
    if cfg.task == "seq2seq":
        from tuneflow.seq2seq import encode_pairs

        m = cfg.model
        return encode_pairs(splits, tokenizer, m.max_length, m.max_target_length, m.source_prefix)
    if cfg.task == "causal_lm":
        from tuneflow.chat import encode_chats

        return encode_chats(splits, tokenizer, cfg.model.max_length)
    return encode(splits, tokenizer, cfg.model.max_length)


def inference_settings(cfg: PipelineConfig) -> dict[str, Any]:
    """What serving needs besides the weights (stored in the export's ``tuneflow.json``)."""
    out: dict[str, Any] = {"max_length": cfg.model.max_length}
    if cfg.task in ("seq2seq", "causal_lm"):
        out["generation"] = cfg.generation.kwargs()
    if cfg.task == "seq2seq":
        out.update(source_prefix=cfg.model.source_prefix, max_target_length=cfg.model.max_target_length)
    return out


def predictor_from(model: Any, tokenizer: Any, meta: dict[str, Any]) -> Any:
    """The task's inference wrapper (``predict(inputs) -> DataFrame``) around a loaded model."""
    task, max_length = meta.get("task", "sequence_classification"), meta.get("max_length", 128)
    if task == "token_classification":
        from tuneflow.ner import Tagger

        return Tagger(model, tokenizer, meta["labels"], max_length)
    if task == "seq2seq":
        from tuneflow.seq2seq import TextGenerator

        return TextGenerator(
            model, tokenizer, max_length, meta.get("source_prefix", ""), meta.get("generation")
        )
    if task == "causal_lm":
        from tuneflow.chat import ChatModel, prepare_tokenizer

        return ChatModel(model, prepare_tokenizer(tokenizer), max_length, meta.get("generation"))
    from tuneflow.evaluation import Classifier

    return Classifier(model, tokenizer, meta["labels"], max_length)


def load_predictor(model_dir: str | Path, base: str | None = None) -> Any:
    """Load an export (full model or adapter on its base) and wrap it for inference."""
    import json

    from tuneflow.model import load_exported

    model, tokenizer, meta = load_exported(model_dir, base)
    if (
        "labels" not in meta and (Path(model_dir) / "labels.json").is_file()
    ):  # exports from before tuneflow.json
        meta["labels"] = json.loads((Path(model_dir) / "labels.json").read_text())["labels"]
    if "max_length" not in meta and (Path(model_dir) / "inference.json").is_file():
        meta["max_length"] = json.loads((Path(model_dir) / "inference.json").read_text())["max_length"]
    return predictor_from(model, tokenizer, meta)


def to_inputs(task: str, model_input: Any) -> list[Any]:
    """Normalize pyfunc/CLI input for a task: texts, or conversations for causal_lm."""
    if task == "causal_lm":
        from tuneflow.chat import to_conversations

        return to_conversations(model_input)
    return to_texts(model_input)


def output_example(task: str) -> pd.DataFrame:
    """An output frame of the task's shape (for the logged MLflow signature)."""
    if task == "token_classification":
        return pd.DataFrame(
            {"entities": [[{"type": "person", "text": "Alice", "start": 0, "end": 5, "score": 0.9}]]}
        )
    if task in ("seq2seq", "causal_lm"):
        return pd.DataFrame({"generated_text": ["a generated answer"]})
    return pd.DataFrame({"label": ["x"], "score": [0.5]})


def evaluate_for(
    cfg: PipelineConfig,
    predictor: Any,
    splits: Splits,
    out_dir: str | Path,
    history: dict[str, list[tuple[int, float]]] | None = None,
) -> Any:
    """Run the task's evaluation (metrics, reports, plots) on the test, validation, train and extra sets."""
    e, t = cfg.eval, cfg.train
    common = {"overfit_gap_threshold": t.overfit_gap_threshold, "history": history}
    if cfg.task == "token_classification":
        from tuneflow.ner import evaluate_tagger

        return evaluate_tagger(
            predictor,
            splits,
            out_dir,
            batch_size=t.eval_batch_size,
            worst_examples=e.worst_examples,
            latency_examples=e.latency_examples,
            **common,
        )
    if cfg.task == "seq2seq":
        from tuneflow.seq2seq import evaluate_generator

        return evaluate_generator(
            predictor,
            splits,
            out_dir,
            metrics=e.generation_metrics,
            max_examples=e.max_generation_examples,
            samples=e.sample_generations,
            max_target_length=cfg.model.max_target_length,
            latency_examples=min(e.latency_examples, 10),
            **common,
        )
    if cfg.task == "causal_lm":
        from tuneflow.chat import evaluate_chat

        return evaluate_chat(
            predictor,
            splits,
            out_dir,
            max_examples=e.max_generation_examples,
            samples=e.sample_generations,
            latency_examples=min(e.latency_examples, 10),
            **common,
        )
    from tuneflow.evaluation import evaluate

    return evaluate(
        predictor,
        splits,
        out_dir,
        batch_size=t.eval_batch_size,
        worst_examples=e.worst_examples,
        latency_examples=e.latency_examples,
        **common,
    )


def score_predictor(cfg: PipelineConfig, predictor: Any, test: pd.DataFrame) -> float:
    """``cfg.gates.metric`` of a NER / seq2seq / causal-LM predictor on a test frame (promotion)."""
    metric = cfg.gates.metric
    if cfg.task == "token_classification":
        from tuneflow.data import TAGS
        from tuneflow.ner import TOKENS, entity_metrics

        return entity_metrics(test[TAGS].tolist(), predictor.predict_words(test[TOKENS].tolist())[0])[metric]
    from tuneflow.seq2seq import _subset

    test = _subset(test, cfg.eval.max_generation_examples)
    if cfg.task == "seq2seq":
        from tuneflow.data import TEXT
        from tuneflow.seq2seq import REFERENCES, generation_metrics

        family = "rouge" if metric.startswith("rouge") else metric
        preds = predictor.generate(test[TEXT].tolist())
        return generation_metrics(preds, test[REFERENCES].tolist(), [family])[metric]
    if cfg.task == "causal_lm":
        from tuneflow.chat import perplexity

        return perplexity(predictor, test)
    raise ValueError(f"score_predictor does not handle {cfg.task} (classification uses paired predictions)")


def to_texts(model_input: Any) -> list[str]:
    """Accept a str, a list of str, a Series, an array or a DataFrame (column ``text`` or the first one)."""
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, pd.DataFrame):
        col = "text" if "text" in model_input.columns else model_input.columns[0]
        return model_input[col].astype(str).tolist()
    return [str(t) for t in list(model_input)]
