"""Helpers shared by the generative task types (seq2seq, causal LM): token loss, text metrics, subsets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from tuneflow.data.encoding import Encoded, PadSequences
from tuneflow.data.splits import Splits
from tuneflow.judging.evaluation import Gap


def sequence_collator(tokenizer: Any) -> PadSequences:
    """The collator of both generative types: inputs padded with the pad token, labels with -100.

    Causal-LM labels have the inputs' length; transformers' seq2seq collator pads them just the same.
    """
    from transformers import DataCollatorForSeq2Seq

    return PadSequences(DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, return_tensors="pt"))


def token_losses(
    model: Any,
    data: Encoded,
    collate: Callable[[list], dict],
    shift: bool,
    batch_size: int = 16,
    positions: Callable[[Any, dict], Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Summed cross-entropy and the number of scored label tokens of each example (teacher forcing).

    Args:
        model: a Hugging Face model returning ``logits``.
        data: input ids and label sequences (-100 = not scored).
        collate: the task's collator (pads labels with -100).
        shift: causal LMs predict token t+1 at position t (labels are the inputs); seq2seq labels are not.
        batch_size: examples per forward pass.
        positions: ``(model, batch) -> (loss per labeled position, its row) | None``, computed without the
            batch's vocabulary-wide logits (:func:`tuneflow.backbone.lean.position_losses`); None (or its
            None) takes the loss from the model's logits.
    """
    import torch

    sums, counts = np.zeros(len(data)), np.zeros(len(data), dtype=np.int64)
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            end = start + batch_size
            rows = list(zip(data.ids[start:end], data.labels[start:end], strict=True))
            batch = collate(rows)
            lean = positions(model, batch) if positions is not None else None
            if lean is not None:  # a causal LM's labeled positions alone through its output layer
                losses, at = lean[0].double().numpy(), lean[1].numpy()
                sums[start : start + len(rows)] = np.bincount(at, losses, minlength=len(rows))
                counts[start : start + len(rows)] = np.bincount(at, minlength=len(rows))
                continue
            logits = model(**batch).logits.float()
            labels = batch["labels"]
            if shift:
                logits, labels = logits[:, :-1], labels[:, 1:]
            mask = labels != -100
            loss = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), labels.clamp(min=0), reduction="none"
            )
            sums[start : start + len(rows)] = (loss * mask).sum(dim=1).numpy()
            counts[start : start + len(rows)] = mask.sum(dim=1).numpy()
    return sums, counts


def mean_token_loss(
    model: Any, data: Encoded, collate: Callable[[list], dict], shift: bool, batch_size: int = 16
) -> float:
    """Cross-entropy per label token over ``data`` (see :func:`token_losses`); its exp is the perplexity."""
    sums, counts = token_losses(model, data, collate, shift, batch_size)
    return float(sums.sum() / max(int(counts.sum()), 1))


def generation_metrics(
    predictions: list[str], references: list[list[str]], which: list[str], prefix: str = ""
) -> dict[str, float]:
    """ROUGE-1/2/L F-measure (best reference per example, averaged), corpus BLEU and chrF (0-1 scale)."""
    out: dict[str, float] = {}
    if "rouge" in which:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
        best: dict[str, list[float]] = {"rouge1": [], "rouge2": [], "rougeL": []}
        for pred, refs in zip(predictions, references, strict=True):
            scores = [scorer.score(ref, pred) for ref in refs]
            for key in best:
                best[key].append(max(s[key].fmeasure for s in scores))
        out.update({f"{prefix}{k}": float(np.mean(v)) if v else 0.0 for k, v in best.items()})
    if "bleu" in which or "chrf" in which:
        import sacrebleu

        n = max((len(r) for r in references), default=1)
        # sacreBLEU wants one stream per reference position; shorter reference lists repeat their first.
        streams = [[refs[k] if k < len(refs) else refs[0] for refs in references] for k in range(n)]
        if "bleu" in which:
            out[f"{prefix}bleu"] = sacrebleu.corpus_bleu(predictions, streams).score / 100
        if "chrf" in which:
            out[f"{prefix}chrf"] = sacrebleu.corpus_chrf(predictions, streams).score / 100
    return out


PER_EXAMPLE = ("chrf", "bleu", "rouge1", "rouge2", "rougeL")


def metric_family(metric: str) -> str:
    """The :func:`generation_metrics` family that computes ``metric`` (``rougeL`` -> ``rouge``)."""
    return "rouge" if metric.startswith("rouge") else metric


def per_example_scores(predictions: list[str], references: list[list[str]], metric: str) -> list[float]:
    """One score per example (0-1): sentence chrF / BLEU (sacreBLEU) or ROUGE F-measure (best reference).

    These are what a paired bootstrap resamples when two models are compared on the same examples.
    """
    if metric.startswith("rouge"):
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer([metric], use_stemmer=True)
        return [
            max(scorer.score(ref, pred)[metric].fmeasure for ref in refs)
            for pred, refs in zip(predictions, references, strict=True)
        ]
    import sacrebleu

    if metric not in ("chrf", "bleu"):
        raise ValueError(f"no per-example score for '{metric}'; one of {', '.join(PER_EXAMPLE)}")
    sentence = sacrebleu.sentence_chrf if metric == "chrf" else sacrebleu.sentence_bleu
    return [sentence(p, refs).score / 100 for p, refs in zip(predictions, references, strict=True)]


def subset(df: pd.DataFrame, n: int | None) -> pd.DataFrame:
    """At most ``n`` rows, drawn with a fixed seed and kept in file order (generation is slow on CPU)."""
    return df if n is None or len(df) <= n else df.sample(n=n, random_state=0).sort_index()


def loss_gap(predictor: Any, splits: Splits, max_examples: int | None) -> Gap:
    """The overfitting check of generative tasks: validation minus train loss (nats per token).

    ``predictor.loss(frame)`` is the task's teacher-forced loss; both sides use at most ``max_examples``.
    """
    train, val = (
        predictor.loss(subset(splits.train, max_examples)),
        predictor.loss(subset(splits.validation, max_examples)),
    )
    return Gap("loss", "loss", train, val, lower_is_better=True)


def generated_text_example() -> pd.DataFrame:
    """The output frame of a generative model (for the logged signature)."""
    return pd.DataFrame({"generated_text": ["a generated answer"]})
