"""Named-entity recognition (``task: token_classification``): reading, BIO checks, alignment, metrics.

Sentences are word lists with one BIO tag per word. Sub-word tokenization splits words further: only the
first sub-token of a word carries its tag in training (the rest get -100, ignored by the loss), and a
word's prediction is the one at its first sub-token. Metrics are entity-level (seqeval): an entity counts
as found only with exact boundaries and type.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tuneflow.data import Encoded, EncodedData, Splits
from tuneflow.readers import LINE, TAGS, TEXT, TOKENS, Problem, read_conll, read_tagged  # noqa: F401
from tuneflow.validation import TAG_PATTERN, bio_errors, check_tags, entities, truncated_share  # noqa: F401

IGNORE = -100
WORD_PATTERN = re.compile(r"\w+(?:['’-]\w+)*|[^\w\s]")


# ------------------------------------------------------------------------------------------------ checks


def align_labels(word_ids: list[int | None], word_labels: list[int]) -> list[int]:
    """Label the first sub-token of each word with the word's label; other sub-tokens and specials: -100."""
    out, previous = [], None
    for w in word_ids:
        out.append(word_labels[w] if w is not None and w != previous else IGNORE)
        previous = w
    return out


def word_predictions(word_ids: list[int | None], token_values: list[Any], n_words: int, default: Any) -> list:
    """Map per-sub-token values back to words (each word takes its first sub-token's value).

    Words without any sub-token (cut by truncation, or dropped by the tokenizer) get ``default``.
    """
    out = [default] * n_words
    previous = None
    for w, value in zip(word_ids, token_values, strict=False):
        if w is not None and w != previous:
            out[w] = value
        previous = w
    return out


def encode_tagged(splits: Splits, tokenizer: Any, max_length: int) -> EncodedData:
    """Tokenize words (``is_split_into_words``) and align the tags to the first sub-token of each word."""
    tag2id = {tag: i for i, tag in enumerate(splits.labels)}

    def one(df: pd.DataFrame) -> Encoded:
        enc = tokenizer(df[TOKENS].tolist(), is_split_into_words=True, truncation=True, max_length=max_length)
        labels = [align_labels(enc.word_ids(i), [tag2id[t] for t in tags]) for i, tags in enumerate(df[TAGS])]
        return Encoded(enc["input_ids"], labels)

    return EncodedData(
        one(splits.train),
        one(splits.validation),
        splits.labels,
        tokenizer,
        max_length,
        "token_classification",
    )


# ------------------------------------------------------------------------------------------------ inference


def split_words(text: str) -> list[tuple[str, int, int]]:
    """Raw text -> ``(word, start, end)``: runs of word characters (with inner ' or -) and single symbols."""
    return [(m.group(), m.start(), m.end()) for m in WORD_PATTERN.finditer(text)]


@dataclass
class Tagger:
    """An exported token classifier ready for inference on word lists or raw text."""

    model: Any
    tokenizer: Any
    labels: list[str]
    max_length: int = 128

    @torch.inference_mode()
    def predict_words(
        self, sentences: list[list[str]], batch_size: int = 64
    ) -> tuple[list[list[str]], list[list[float]]]:
        """BIO tag and its probability per word."""
        tags: list[list[str]] = [[] for _ in sentences]
        probs: list[list[float]] = [[] for _ in sentences]
        order = np.argsort([len(s) for s in sentences])
        for start in range(0, len(sentences), batch_size):
            idx = order[start : start + batch_size]
            batch = [sentences[i] for i in idx]
            enc = self.tokenizer(
                batch,
                is_split_into_words=True,
                truncation=True,
                max_length=self.max_length,
                padding=True,
                return_tensors="pt",
            )
            p = torch.softmax(self.model(**enc).logits.float(), -1)
            conf, best = p.max(-1)
            for row, i in enumerate(idx):
                word_ids = enc.word_ids(row)
                ids = word_predictions(word_ids, best[row].tolist(), len(sentences[i]), 0)
                scores = word_predictions(word_ids, conf[row].tolist(), len(sentences[i]), 1.0)
                tags[i] = [self.labels[j] for j in ids]
                probs[i] = scores
        return tags, probs

    def extract(self, texts: list[str]) -> list[list[dict[str, Any]]]:
        """Entity spans per raw text: type, text, character start/end, mean word probability."""
        words = [split_words(t) for t in texts]
        tags, probs = self.predict_words([[w for w, _, _ in ws] for ws in words])
        out = []
        for text, ws, ts, ps in zip(texts, words, tags, probs, strict=True):
            spans = []
            for etype, first, last in entities(ts):
                start, end = ws[first][1], ws[last][2]
                score = float(np.mean(ps[first : last + 1]))
                spans.append(
                    {"type": etype, "text": text[start:end], "start": start, "end": end, "score": score}
                )
            out.append(spans)
        return out

    def predict(self, texts: list[str]) -> pd.DataFrame:
        """One row per text; ``entities`` holds its spans (a list of dicts)."""
        return pd.DataFrame({"entities": self.extract(texts)})


# ----------------------------------------------------------------------------------------------- evaluation


def entity_metrics(gold: list[list[str]], pred: list[list[str]], prefix: str = "") -> dict[str, float]:
    """Entity-level micro precision, recall and F1 (exact span and type), seqeval's conlleval reading."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    return {
        f"{prefix}precision": float(precision_score(gold, pred, zero_division=0)),
        f"{prefix}recall": float(recall_score(gold, pred, zero_division=0)),
        f"{prefix}f1": float(f1_score(gold, pred, zero_division=0)),
    }


def per_type_table(gold: list[list[str]], pred: list[list[str]]) -> pd.DataFrame:
    """Precision, recall, F1 and support per entity type (worst F1 first)."""
    from seqeval.metrics import classification_report

    report = classification_report(gold, pred, output_dict=True, zero_division=0)
    rows = [
        {
            "type": t,
            "precision": v["precision"],
            "recall": v["recall"],
            "f1": v["f1-score"],
            "support": v["support"],
        }
        for t, v in report.items()
        if not t.endswith(" avg")
    ]
    df = pd.DataFrame(rows, columns=["type", "precision", "recall", "f1", "support"])
    df["support"] = df["support"].astype(int)
    return df.sort_values(["f1", "type"]).reset_index(drop=True)


def type_confusion(gold: list[list[str]], pred: list[list[str]]) -> tuple[np.ndarray, list[str]]:
    """Confusion of entity types over exact spans; "O" row = spurious predictions, "O" column = missed."""
    types = sorted({t for seq in gold + pred for t, _, _ in entities(seq)})
    names = [*types, "O"]
    index = {n: i for i, n in enumerate(names)}
    cm = np.zeros((len(names), len(names)), dtype=int)
    for g_seq, p_seq in zip(gold, pred, strict=True):
        g = {(s, e): t for t, s, e in entities(g_seq)}
        p = {(s, e): t for t, s, e in entities(p_seq)}
        for span, t in g.items():
            cm[index[t], index[p.get(span, "O")]] += 1
        for span, t in p.items():
            if span not in g:
                cm[index["O"], index[t]] += 1
    return cm, names


def _spans(words: list[str], tags: list[str]) -> str:
    return "; ".join(f"{t}: {' '.join(words[s : e + 1])}" for t, s, e in entities(tags))


def evaluate_tagger(
    tagger: Tagger,
    splits: Splits,
    out_dir: str | Path,
    *,
    batch_size: int = 64,
    worst_examples: int = 50,
    latency_examples: int = 50,
    overfit_gap_threshold: float = 0.1,
    history: dict[str, list[tuple[int, float]]] | None = None,
) -> Any:
    """Entity P/R/F1 on test (headline), per type, type confusion, worst sentences, train/val gap, OOD sets.

    Writes ``per_type_metrics.csv``, ``type_confusion.csv``/``.png``, ``worst_sentences.csv``,
    ``learning_curves.png`` (with a history) and ``metrics.json`` into ``out_dir``.
    """
    from tuneflow.evaluation import EvaluationResult, finish, plot_confusion
    from tuneflow.metrics import time_single

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = EvaluationResult(metrics={})
    test = splits.test
    gold = test[TAGS].tolist()
    pred, _ = tagger.predict_words(test[TOKENS].tolist(), batch_size)
    res.metrics.update(entity_metrics(gold, pred, "test_"))
    per_type_table(gold, pred).to_csv(out / "per_type_metrics.csv", index=False)
    cm, names = type_confusion(gold, pred)
    pd.DataFrame(cm, index=names, columns=names).to_csv(out / "type_confusion.csv")
    plot_confusion(cm, names, out / "type_confusion.png")
    errors = [sum(g != p for g, p in zip(gs, ps, strict=True)) for gs, ps in zip(gold, pred, strict=True)]
    worst = test.assign(
        word_errors=errors, predicted=[_spans(w, p) for w, p in zip(test[TOKENS], pred, strict=True)]
    )
    worst["gold"] = [_spans(w, g) for w, g in zip(test[TOKENS], gold, strict=True)]
    worst = worst[worst["word_errors"] > 0].sort_values("word_errors", ascending=False, kind="stable")
    worst.rename(columns={LINE: "line"})[["line", TEXT, "gold", "predicted", "word_errors"]].head(
        worst_examples
    ).to_csv(out / "worst_sentences.csv", index=False)
    res.artifacts += [
        "per_type_metrics.csv",
        "type_confusion.csv",
        "type_confusion.png",
        "worst_sentences.csv",
    ]

    sample = splits.train.sample(n=min(len(splits.train), 2000), random_state=0)
    train_f1 = entity_metrics(
        sample[TAGS].tolist(), tagger.predict_words(sample[TOKENS].tolist(), batch_size)[0]
    )
    val_pred, _ = tagger.predict_words(splits.validation[TOKENS].tolist(), batch_size)
    val = entity_metrics(splits.validation[TAGS].tolist(), val_pred, "validation_")
    gap = train_f1["f1"] - val["validation_f1"]
    res.metrics.update(
        val, train_f1=train_f1["f1"], train_val_gap=gap, overfit_warning=float(gap > overfit_gap_threshold)
    )
    if gap > overfit_gap_threshold:
        res.warnings.append(
            f"possible overfitting: train entity F1 {train_f1['f1']:.3f} exceeds validation F1 "
            f"{val['validation_f1']:.3f} by {gap:.3f} (> train.overfit_gap_threshold={overfit_gap_threshold})"
        )
    for name, df in splits.extra.items():
        extra_pred, _ = tagger.predict_words(df[TOKENS].tolist(), batch_size)
        res.metrics.update(entity_metrics(df[TAGS].tolist(), extra_pred, f"ood_{name}_"))

    res.metrics.update(
        time_single(lambda s: tagger.predict_words(s, 1), test[TOKENS].tolist(), latency_examples)
    )
    return finish(res, out, history)
