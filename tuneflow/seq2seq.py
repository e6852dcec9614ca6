"""Summarization and translation (``task: seq2seq``): source/target pairs, ROUGE / sacreBLEU / chrF.

Frames hold ``text`` (the source), ``target`` (the reference trained on) and ``references`` (every reference,
used for evaluation: ROUGE takes the best one per example, BLEU/chrF are multi-reference).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tuneflow.data import Encoded, EncodedData, Splits, collator_for
from tuneflow.readers import LINE, REFERENCES, TARGET, TEXT, Problem, read_pairs  # noqa: F401


def encode_frame(
    df: pd.DataFrame, tokenizer: Any, max_length: int, max_target_length: int, prefix: str = ""
) -> Encoded:
    """Tokenize ``prefix + source`` as input ids and the first reference as labels (no padding yet)."""
    ids = tokenizer([prefix + s for s in df[TEXT]], truncation=True, max_length=max_length)["input_ids"]
    labels = tokenizer(text_target=df[TARGET].tolist(), truncation=True, max_length=max_target_length)
    return Encoded(ids, labels["input_ids"])


def encode_pairs(
    splits: Splits, tokenizer: Any, max_length: int, max_target_length: int, prefix: str = ""
) -> EncodedData:
    """The train and validation splits encoded by :func:`encode_frame`."""
    train, val = (
        encode_frame(df, tokenizer, max_length, max_target_length, prefix)
        for df in (splits.train, splits.validation)
    )
    return EncodedData(train, val, [], tokenizer, max_length, "seq2seq")


@torch.inference_mode()
def mean_token_loss(model: Any, tokenizer: Any, data: Encoded, task: str, batch_size: int = 16) -> float:
    """Cross-entropy per label token (teacher forcing) over ``data``; its exp is the perplexity."""
    collate = collator_for(task, tokenizer)
    total, count = 0.0, 0
    for start in range(0, len(data), batch_size):
        items = [
            {"input_ids": i, "labels": lab}
            for i, lab in zip(
                data.ids[start : start + batch_size], data.labels[start : start + batch_size], strict=True
            )
        ]
        batch = collate(items)
        logits = model(**batch).logits.float()
        labels = batch["labels"]
        if task == "causal_lm":  # position t predicts token t+1
            logits, labels = logits[:, :-1], labels[:, 1:]
        mask = labels != -100
        loss = torch.nn.functional.cross_entropy(logits[mask], labels[mask], reduction="sum")
        total += float(loss)
        count += int(mask.sum())
    return total / max(count, 1)


def generation_metrics(
    predictions: list[str], references: list[list[str]], which: list[str], prefix: str = ""
) -> dict[str, float]:
    """ROUGE-1/2/L F-measure (best reference per example, averaged), corpus BLEU and chrF (0-1 scale)."""
    out: dict[str, float] = {}
    if "rouge" in which:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
        best = {"rouge1": [], "rouge2": [], "rougeL": []}
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


@dataclass
class TextGenerator:
    """An exported seq2seq model ready to generate from raw source texts."""

    model: Any
    tokenizer: Any
    max_length: int = 512
    prefix: str = ""
    generate_kwargs: dict[str, Any] | None = None

    @torch.inference_mode()
    def generate(self, texts: list[str], batch_size: int = 16) -> list[str]:
        out = [""] * len(texts)
        order = np.argsort([len(t) for t in texts])
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            enc = self.tokenizer(
                [self.prefix + texts[i] for i in idx],
                truncation=True,
                max_length=self.max_length,
                padding=True,
                return_tensors="pt",
            )
            ids = self.model.generate(**enc, **(self.generate_kwargs or {}))
            for i, text in zip(idx, self.tokenizer.batch_decode(ids, skip_special_tokens=True), strict=True):
                out[i] = text.strip()
        return out

    def predict(self, texts: list[str]) -> pd.DataFrame:
        return pd.DataFrame({"generated_text": self.generate(texts)})


def record_loss_gap(res: Any, train_loss: float, val_loss: float, threshold: float) -> None:
    """The overfitting check of generation tasks: validation minus train loss (nats per token)."""
    gap = val_loss - train_loss
    res.metrics.update(
        train_loss_eval=train_loss,
        validation_loss=val_loss,
        train_val_gap=gap,
        overfit_warning=float(gap > threshold),
    )
    if gap > threshold:
        res.warnings.append(
            f"possible overfitting: validation loss {val_loss:.3f} exceeds train loss {train_loss:.3f} by "
            f"{gap:.3f} nats/token (> train.overfit_gap_threshold={threshold})"
        )


def _subset(df: pd.DataFrame, n: int | None) -> pd.DataFrame:
    return df if n is None or len(df) <= n else df.sample(n=n, random_state=0).sort_index()


def evaluate_generator(
    gen: TextGenerator,
    splits: Splits,
    out_dir: str | Path,
    *,
    metrics: list[str],
    max_examples: int | None = 200,
    samples: int = 20,
    max_target_length: int = 64,
    latency_examples: int = 5,
    overfit_gap_threshold: float = 0.1,
    history: dict[str, list[tuple[int, float]]] | None = None,
) -> Any:
    """ROUGE/BLEU/chrF of generations on test (headline), loss/perplexity, sample table, loss gap, OOD sets.

    The train/validation gap for generation is the validation loss minus the train loss (nats per token).
    """
    from tuneflow.evaluation import EvaluationResult, finish
    from tuneflow.metrics import time_single

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = EvaluationResult(metrics={})
    test = _subset(splits.test, max_examples)
    predictions = gen.generate(test[TEXT].tolist())
    res.metrics.update(generation_metrics(predictions, test[REFERENCES].tolist(), metrics, "test_"))
    table = test.assign(generated=predictions).rename(columns={LINE: "line"})
    table["reference"] = table[REFERENCES].map(lambda r: r[0])
    table[["line", TEXT, "reference", "generated"]].head(samples).to_csv(
        out / "sample_generations.csv", index=False
    )
    res.artifacts.append("sample_generations.csv")

    def loss(df: pd.DataFrame) -> float:
        enc = encode_frame(df, gen.tokenizer, gen.max_length, max_target_length, gen.prefix)
        return mean_token_loss(gen.model, gen.tokenizer, enc, "seq2seq")

    test_loss = loss(test)
    train_loss = loss(_subset(splits.train, max_examples))
    val_loss = loss(_subset(splits.validation, max_examples))
    res.metrics.update(test_loss=test_loss, test_perplexity=math.exp(min(test_loss, 50)))
    record_loss_gap(res, train_loss, val_loss, overfit_gap_threshold)
    for name, df in splits.extra.items():
        df = _subset(df, max_examples)
        res.metrics.update(
            generation_metrics(
                gen.generate(df[TEXT].tolist()), df[REFERENCES].tolist(), metrics, f"ood_{name}_"
            )
        )
    res.metrics.update(time_single(gen.generate, test[TEXT].tolist(), latency_examples))
    return finish(res, out, history)
