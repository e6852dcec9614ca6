"""Named-entity recognition (``task: token_classification``): BIO-tagged sentences, entity-level metrics.

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

from tuneflow.config import DEFAULT_MODEL, DataConfig, FileSpec, PipelineConfig
from tuneflow.data.encoding import Encoded, EncodedData, PadSequences
from tuneflow.data.readers import LINE, TAGS, TEXT, TOKENS, Problem, RawData, is_round, read_tagged
from tuneflow.data.splits import Splits
from tuneflow.data.validation import MAX_LINES_LISTED, ValidationReport, empty_inputs, warn_truncation
from tuneflow.judging.evaluation import Gap, plot_confusion, save_table
from tuneflow.judging.metrics import time_single
from tuneflow.tasktypes.base import (
    DataPart,
    JudgingPart,
    MetricSpec,
    ServingPart,
    TaskType,
    TrainingPart,
    label_head,
)

IGNORE = -100
TAG_PATTERN = re.compile(r"^(O|[BI]-.+)$")
WORD_PATTERN = re.compile(r"\w+(?:['’-]\w+)*|[^\w\s]")
TRAIN_SAMPLE_FOR_GAP = 2000


# ------------------------------------------------------------------------------------------- BIO checks


def bio_errors(tags: list[str]) -> list[str]:
    """What is wrong with one sentence's BIO tags: malformed tags, ``I-X`` not continuing ``B-X``/``I-X``."""
    out = []
    previous = "O"
    for i, tag in enumerate(tags):
        if not TAG_PATTERN.match(tag):
            out.append(f"word {i + 1}: tag {tag!r} is not O, B-<type> or I-<type>")
        elif tag.startswith("I-") and previous[2:] != tag[2:]:
            out.append(
                f"word {i + 1}: {tag} follows {previous} (an I- tag must continue a B-/I- of its type)"
            )
        previous = tag
    return out


def check_tags(name: str, source: str, df: pd.DataFrame, known: set[str] | None) -> list[Problem]:
    """BIO problems per sentence, and (for evaluation splits) tags never seen in train."""
    problems = []
    for line, tags in zip(df[LINE], df[TAGS], strict=True):
        problems += [Problem(f"invalid BIO in {name}: {e}", source, line) for e in bio_errors(tags)]
        if known is not None:
            unknown = sorted(set(tags) - known)
            if unknown:
                problems.append(Problem(f"tag(s) never seen in train: {', '.join(unknown)}", source, line))
    return problems


def entities(tags: list[str]) -> list[tuple[str, int, int]]:
    """``(type, first word, last word)`` of each entity in a BIO sequence (seqeval's reading of it)."""
    from seqeval.metrics.sequence_labeling import get_entities

    return [(t, s, e) for t, s, e in get_entities(tags)]


def truncated_share(tokenizer: Any, sentences: list[list[str]], max_length: int) -> float:
    """Share of sentences whose sub-tokens (with special tokens) exceed ``max_length``: their tail is lost."""
    if not sentences:
        return 0.0
    ids = tokenizer(sentences, is_split_into_words=True, truncation=False)["input_ids"]
    return sum(len(x) > max_length for x in ids) / len(ids)


# ---------------------------------------------------------------------------------------------- alignment


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


def split_words(text: str) -> list[tuple[str, int, int]]:
    """Raw text -> ``(word, start, end)``: runs of word characters (with inner ' or -) and single symbols."""
    return [(m.group(), m.start(), m.end()) for m in WORD_PATTERN.finditer(text)]


# ---------------------------------------------------------------------------------------------- inference


@dataclass
class TaggingPredictor:
    """An exported token classifier ready for inference on word lists or raw text."""

    model: Any
    tokenizer: Any
    labels: list[str]
    max_length: int = 128

    def predict_words(
        self, sentences: list[list[str]], batch_size: int = 64
    ) -> tuple[list[list[str]], list[list[float]]]:
        """BIO tag and its probability per word."""
        import torch

        tags: list[list[str]] = [[] for _ in sentences]
        probs: list[list[float]] = [[] for _ in sentences]
        order = np.argsort([len(s) for s in sentences])
        with torch.inference_mode():
            for start in range(0, len(sentences), batch_size):
                idx = order[start : start + batch_size]
                enc = self.tokenizer(
                    [sentences[i] for i in idx],
                    is_split_into_words=True,
                    truncation=True,
                    max_length=self.max_length,
                    padding=True,
                    return_tensors="pt",
                )
                conf, best = torch.softmax(self.model(**enc).logits.float(), -1).max(-1)
                for row, i in enumerate(idx):
                    word_ids = enc.word_ids(row)
                    ids = word_predictions(word_ids, best[row].tolist(), len(sentences[i]), 0)
                    probs[i] = word_predictions(word_ids, conf[row].tolist(), len(sentences[i]), 1.0)
                    tags[i] = [self.labels[j] for j in ids]
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


# ----------------------------------------------------------------------------------------------- metrics


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


def _spans(words: list[str], tags: list[str]) -> str:
    return "; ".join(f"{t}: {' '.join(words[s : e + 1])}" for t, s, e in entities(tags))


# --------------------------------------------------------------------------------------------- task type


class TaggingData(DataPart):
    column_roles = {
        "tokens_column": ("tokens", "words"),
        "tags_column": ("tags", "ner_tags", "labels", "bio"),
    }

    def recognise(
        self, sample: pd.DataFrame, conll: bool, given: dict[str, str]
    ) -> tuple[dict[str, str], int] | None:
        return ({}, 0) if conll else super().recognise(sample, conll, given)

    def draft(self, train: pd.DataFrame, cfg: PipelineConfig) -> dict[str, tuple[Any, str]]:
        return {
            "train.monitor": ("val/f1", "entity-level F1 (seqeval) on validation"),
            "gates.metric": ("f1", "what promotion compares; no floor: set gates.min once you know your bar"),
        }

    def read(self, spec: FileSpec, cfg: DataConfig) -> tuple[pd.DataFrame | None, list[Problem]]:
        return read_tagged(spec, cfg)

    def label_set(self, train: pd.DataFrame) -> list[str]:
        """The BIO tags, "O" first."""
        tags = {t for seq in train[TAGS] for t in seq}
        return ["O", *sorted(tags - {"O"})]

    def check_frame(self, name: str, source: str, df: pd.DataFrame, cfg: PipelineConfig) -> list[Problem]:
        return empty_inputs(name, source, df)

    def check_against_train(self, raw: RawData, cfg: PipelineConfig) -> list[Problem]:
        known = {t for tags in raw.trained()[TAGS] for t in tags}
        out: list[Problem] = []
        for name, df in raw.frames.items():
            trained = name == "train" or is_round(name)
            problems = check_tags(name, raw.sources[name], df, None if trained else known)
            out += problems[:MAX_LINES_LISTED]
            if len(problems) > MAX_LINES_LISTED:
                out.append(
                    Problem(
                        f"... and {len(problems) - MAX_LINES_LISTED} more tag problem(s)", raw.sources[name]
                    )
                )
        return out

    def describe(
        self, report: ValidationReport, splits: Splits, cfg: PipelineConfig, tokenizer: Any | None
    ) -> None:
        frames = splits.frames()
        for name in ("train", "validation", "test"):
            counts = pd.Series(
                [t for tags in frames[name][TAGS] for t, _, _ in entities(tags)]
            ).value_counts()
            report.stats[f"entities_{name}"] = int(counts.sum())
            if name == "train":
                report.stats.update({f"train_entities_{k}": int(v) for k, v in counts.items()})
        report.stats["num_tags"] = len(splits.labels)
        if tokenizer is not None:
            for name in ("train", "validation", "test"):
                share = truncated_share(tokenizer, frames[name][TOKENS].tolist(), cfg.model.max_length)
                warn_truncation(report, cfg, name, share, "sentences")


class TaggingTraining(TrainingPart):
    auto_class = "AutoModelForTokenClassification"
    peft_task_type = "TOKEN_CLS"

    def head_config(self, labels: list[str]) -> dict[str, Any]:
        return label_head(labels)

    def encode(self, splits: Splits, tokenizer: Any, cfg: PipelineConfig) -> EncodedData:
        """Tokenize words (``is_split_into_words``) and align the tags to the first sub-token of each word."""
        tag2id = {tag: i for i, tag in enumerate(splits.labels)}
        max_length = cfg.model.max_length

        def one(df: pd.DataFrame) -> Encoded:
            enc = tokenizer(
                df[TOKENS].tolist(), is_split_into_words=True, truncation=True, max_length=max_length
            )
            labels = [
                align_labels(enc.word_ids(i), [tag2id[t] for t in tags]) for i, tags in enumerate(df[TAGS])
            ]
            return Encoded(enc["input_ids"], labels)

        return EncodedData(
            one(splits.train), one(splits.validation), splits.labels, tokenizer, max_length, cfg.task
        )

    def collator(self, tokenizer: Any) -> PadSequences:
        from transformers import DataCollatorForTokenClassification

        return PadSequences(DataCollatorForTokenClassification(tokenizer, return_tensors="pt"))

    def on_validation_epoch_start(self, module: Any) -> None:
        module._gold, module._pred = [], []

    def on_validation_batch(self, module: Any, batch: dict[str, Any], out: Any) -> None:
        labels = module.hparams.labels
        preds = out.logits.argmax(-1).cpu()
        # Only first sub-tokens carry a label (others are -100): they are the words, in order.
        for gold_row, pred_row in zip(batch["labels"].cpu(), preds, strict=True):
            keep = gold_row != IGNORE
            module._gold.append([labels[i] for i in gold_row[keep].tolist()])
            module._pred.append([labels[i] for i in pred_row[keep].tolist()])

    def on_validation_epoch_end(self, module: Any) -> None:
        from seqeval.metrics import f1_score

        gold, pred = module._gold, module._pred
        if gold:
            # Under DDP each rank scores its shard; the logged value is their mean (close, not exact).
            module.log("val/f1", float(f1_score(gold, pred, zero_division=0)), prog_bar=True, sync_dist=True)


class TaggingServing(ServingPart):
    quantizable = True
    input_example = ["Alice moved to Paris to work for Acme Corp ."]

    def predictor(self, model: Any, tokenizer: Any, meta: dict[str, Any]) -> TaggingPredictor:
        return TaggingPredictor(model, tokenizer, meta["labels"], meta.get("max_length", 128))

    def output_example(self) -> pd.DataFrame:
        return pd.DataFrame(
            {"entities": [[{"type": "person", "text": "Alice", "start": 0, "end": 5, "score": 0.9}]]}
        )


class TaggingJudging(JudgingPart):
    def evaluate_test(
        self,
        predictor: TaggingPredictor,
        test: pd.DataFrame,
        out: Path,
        cfg: PipelineConfig,
        metrics: dict[str, float],
        evidence: dict[str, Any] | None = None,
    ) -> list[str]:
        """Entity P/R/F1, per-type metrics, type confusion (CSV + PNG) and the worst sentences."""
        gold = test[TAGS].tolist()
        pred, _ = predictor.predict_words(test[TOKENS].tolist(), cfg.train.eval_batch_size)
        scores = entity_metrics(gold, pred, "")
        metrics.update({f"test/{k}": v for k, v in scores.items()})
        if evidence is not None and cfg.gates.metric in scores:
            evidence["promotion"] = scores[cfg.gates.metric]
        save_table(per_type_table(gold, pred), out / "per_type_metrics.csv")
        cm, names = type_confusion(gold, pred)
        pd.DataFrame(cm, index=names, columns=names).to_csv(out / "type_confusion.csv")
        plot_confusion(cm, names, out / "type_confusion.png")
        errors = [sum(g != p for g, p in zip(gs, ps, strict=True)) for gs, ps in zip(gold, pred, strict=True)]
        worst = test.assign(
            word_errors=errors, predicted=[_spans(w, p) for w, p in zip(test[TOKENS], pred, strict=True)]
        )
        worst["gold"] = [_spans(w, g) for w, g in zip(test[TOKENS], gold, strict=True)]
        worst = worst[worst["word_errors"] > 0].sort_values("word_errors", ascending=False, kind="stable")
        columns = ["line", TEXT, "gold", "predicted", "word_errors"]
        save_table(
            worst.rename(columns={LINE: "line"})[columns].head(cfg.eval.worst_examples),
            out / "worst_sentences.csv",
        )
        return ["per_type_metrics.csv", "type_confusion.csv", "type_confusion.png", "worst_sentences.csv"]

    def measure_gap(self, predictor: TaggingPredictor, splits: Splits, cfg: PipelineConfig) -> Gap:
        sample = splits.train.sample(n=min(len(splits.train), TRAIN_SAMPLE_FOR_GAP), random_state=0)
        train = self.score_set(predictor, sample, cfg, "")["f1"]
        val = self.score_set(predictor, splits.validation, cfg, "")["f1"]
        return Gap("entity F1", "f1", train, val)

    def score_set(
        self, predictor: TaggingPredictor, df: pd.DataFrame, cfg: PipelineConfig, prefix: str
    ) -> dict[str, float]:
        pred, _ = predictor.predict_words(df[TOKENS].tolist(), cfg.train.eval_batch_size)
        return entity_metrics(df[TAGS].tolist(), pred, prefix)

    def measure_latency(
        self, predictor: TaggingPredictor, test: pd.DataFrame, cfg: PipelineConfig
    ) -> dict[str, float]:
        return time_single(
            lambda s: predictor.predict_words(s, 1), test[TOKENS].tolist(), cfg.eval.latency_examples
        )

    def drift_labels(self, df: pd.DataFrame) -> list[str]:
        return [t for tags in df[TAGS] for t in tags]

    def promotion_evidence(
        self, predictor: TaggingPredictor, test: pd.DataFrame, cfg: PipelineConfig
    ) -> float:
        return self.score_set(predictor, test, cfg, "")[cfg.gates.metric]


class TokenClassification(TaskType):
    name = "token_classification"
    summary = "one BIO tag per word: named-entity recognition"
    metrics = MetricSpec(
        monitors=("val/f1", "val/loss"),
        gate_metrics=("f1",),
        headline=("test/f1", "test/precision", "test/recall", "fit/train_val_gap", "serving/latency_p95_ms"),
        history=("train/loss", "val/loss", "val/f1"),
    )
    own_config = (
        *("data.tokens_column", "data.tags_column", "eval.worst_examples"),
        *("export.quantize", "gates.max_quantization_loss"),
    )
    default_model = DEFAULT_MODEL
    data = TaggingData()
    training = TaggingTraining()
    serving = TaggingServing()
    judging = TaggingJudging()
