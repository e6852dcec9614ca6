"""Multi-label classification (``task: multi_label_classification``): every label that applies to a text.

Emotions in a comment, the topics of a support ticket: an example carries a set of labels (possibly one).
The model is a pre-trained encoder with a fresh head of one sigmoid per label, trained with binary
cross-entropy; after training, each label gets its own decision threshold, the one that maximizes that
label's F1 on validation (rare labels need lower ones than 0.5). Headline metrics: macro and micro F1;
promotion compares the gate metric on the same frozen test set.

Labels are read from one column: a JSON list (``["joy", "love"]``), names separated by ``,`` ``;`` or ``|``
(``joy, love``), or 0-based indices named by ``data.label_names`` (GoEmotions' ``4,27`` with its
``labels.txt``).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tuneflow import names
from tuneflow.config import DEFAULT_MODEL, DataConfig, FileSpec, PipelineConfig
from tuneflow.data.encoding import Encoded, EncodedData, PadInputs, tokenize
from tuneflow.data.readers import (
    LINE,
    TEXT,
    Problem,
    RawData,
    is_round,
    name_label,
    read_columns,
    read_label_names,
)
from tuneflow.data.splits import Splits
from tuneflow.data.validation import (
    MAX_LINES_LISTED,
    ValidationReport,
    count_problems,
    lines_of,
    text_problems,
    token_lengths,
)
from tuneflow.judging.evaluation import Gap, save_table
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
from tuneflow.tasktypes.classification_predictor import ClassificationPredictor

LABELS = "labels"  # the standard frame's column: the tuple of label names of an example
THRESHOLDS_FILE = "thresholds.json"  # beside the exported weights: one decision threshold per label
THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)
TRAIN_SAMPLE_FOR_GAP = 2000
_SEPARATORS = re.compile(r"\s*[,;|]\s*")


def parse_labels(value: Any, names: list[str] | None = None) -> tuple[str, ...] | None:
    """The label set of one cell: a list, a JSON list, or names (indices with ``names``) separated by ``,``
    ``;`` or ``|``. None when the cell is missing or an index is not one of ``names``."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if isinstance(value, list | tuple | np.ndarray):
        items = [str(v).strip() for v in value]
    else:
        text = str(value).strip()
        items = [s for s in _SEPARATORS.split(text) if s] if text else []
    if names is not None:
        named = [name_label(s, names) for s in items]
        if any(n is None for n in named):
            return None
        items = [str(n) for n in named]
    if not items and not (isinstance(value, list | tuple | np.ndarray) or str(value).strip() == "[]"):
        return None  # a blank cell is a missing label set; an explicit [] is an example with no label
    return tuple(dict.fromkeys(items))


def multi_hot(sets: list[tuple[str, ...]], labels: list[str]) -> np.ndarray:
    """(n, labels) 0/1 matrix of label sets."""
    index = {label: i for i, label in enumerate(labels)}
    out = np.zeros((len(sets), len(labels)), dtype=np.int64)
    for row, labelset in enumerate(sets):
        out[row, [index[x] for x in labelset if x in index]] = 1
    return out


def multilabel_metrics(truth: np.ndarray, pred: np.ndarray, prefix: str = "") -> dict[str, float]:
    """Macro / micro / per-example F1, micro precision and recall, exact-set accuracy (0/1 matrices)."""
    from sklearn.metrics import f1_score, precision_score, recall_score

    kw = {"zero_division": 0}
    return {
        f"{prefix}f1_macro": float(f1_score(truth, pred, average="macro", **kw)),
        f"{prefix}f1_micro": float(f1_score(truth, pred, average="micro", **kw)),
        f"{prefix}f1_samples": float(f1_score(truth, pred, average="samples", **kw)),
        f"{prefix}precision_micro": float(precision_score(truth, pred, average="micro", **kw)),
        f"{prefix}recall_micro": float(recall_score(truth, pred, average="micro", **kw)),
        f"{prefix}exact_match": float((truth == pred).all(axis=1).mean()) if len(truth) else 0.0,
    }


def fit_thresholds(proba: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per label, the threshold on :data:`THRESHOLD_GRID` with the best F1 on held-out data (0.5 for a label
    without a positive there: nothing to fit it on)."""
    out = np.full(proba.shape[1], 0.5)
    for j in range(proba.shape[1]):
        positives = truth[:, j] == 1
        if not positives.any():
            continue
        predicted = proba[:, j][:, None] >= THRESHOLD_GRID[None, :]
        tp = (predicted & positives[:, None]).sum(0)
        f1 = 2 * tp / (predicted.sum(0) + positives.sum())
        out[j] = THRESHOLD_GRID[int(np.argmax(f1))]  # the lowest of equal F1s: recall breaks the tie
    return out


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def decide_labels(proba: np.ndarray, thresholds: np.ndarray, at_least_one: bool) -> np.ndarray:
    """0/1 decisions: each label at its threshold; with ``at_least_one``, the most probable label of a row
    where none reaches its threshold."""
    out = (proba >= thresholds).astype(np.int64)
    if at_least_one and len(out):
        none = out.sum(1) == 0
        out[none, proba[none].argmax(1)] = 1
    return out


@dataclass
class MultiLabelPredictor:
    """An exported multi-label classifier: ``predict`` answers ``labels`` (the set, most probable first)
    and ``scores`` (their probabilities) per text.

    ``at_least_one``: when no label reaches its threshold, the most probable one is answered (set when
    every training example had a label).
    """

    base: ClassificationPredictor  # batched logits (length-sorted batches)
    thresholds: np.ndarray  # one per label (0.5 each before after_export fits them)
    at_least_one: bool = True

    @property
    def labels(self) -> list[str]:
        return self.base.labels

    def predict_proba(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        """Per-label probabilities, shape (len(texts), n_labels)."""
        return sigmoid(self.base.forward(texts, batch_size)[0])

    def decide(self, proba: np.ndarray) -> np.ndarray:
        """The 0/1 decisions of probabilities ``proba`` at the per-label thresholds."""
        return decide_labels(proba, self.thresholds, self.at_least_one)

    def predict(self, texts: list[str], batch_size: int = 128) -> pd.DataFrame:
        """``labels`` (most probable first) and ``scores`` per text."""
        if not texts:
            return pd.DataFrame({"labels": [], "scores": []})
        proba = self.predict_proba(texts, batch_size)
        chosen = self.decide(proba)
        sets, scores = [], []
        for p, row in zip(proba, chosen, strict=True):
            order = [int(j) for j in np.argsort(-p) if row[j]]
            sets.append([self.labels[j] for j in order])
            scores.append([round(float(p[j]), 6) for j in order])
        return pd.DataFrame({"labels": sets, "scores": scores})


class MultiLabelData(DataPart):
    column_roles = {
        "text_column": ("text", "comment", "sentence", "content", "message", "ticket", "body"),
        "label_column": ("labels", "label", "emotions", "tags", "topics", "categories", "intents"),
    }

    def recognise(
        self, sample: pd.DataFrame, conll: bool, given: dict[str, str]
    ) -> tuple[dict[str, str], int] | None:
        """Text and label columns whose labels are sets: JSON lists, or at least 5 % of the rows holding
        several names separated by ``,`` ``;`` or ``|`` where the parts recur (label names, not prose)."""
        found = super().recognise(sample, conll, given)
        if found is None:
            return None
        mapping, _ = found
        values = sample[mapping["label_column"]].dropna()
        if values.empty:
            return None
        if values.map(lambda v: isinstance(v, list | np.ndarray) or str(v).strip().startswith("[")).all():
            return mapping, 1
        parts = values.astype(str).map(lambda v: [s for s in _SEPARATORS.split(v.strip()) if s])
        several = parts.map(len) > 1
        vocabulary = pd.Series([p for ps in parts for p in ps]).value_counts()
        recurring = len(vocabulary) <= max(2, 0.5 * len(values))
        return (mapping, 1) if several.mean() >= 0.05 and recurring else None

    def draft(self, train: pd.DataFrame, cfg: PipelineConfig) -> dict[str, tuple[Any, str]]:
        counts = pd.Series([x for s in train[LABELS] for x in s]).value_counts()
        own = {}
        if cfg.model.name == DEFAULT_MODEL:
            own["train.lr"] = (
                2.0e-4,
                "with the head started at the base rates, 2e-4 beat 1e-4 on GoEmotions (bench/HISTORY.md)",
            )
            own["model.pooling"] = (
                "mean",
                "the mean of the token states, how this sentence encoder was pre-trained: rare labels start "
                "from features that already mean something",
            )
        return {
            **own,
            "train.max_epochs": (
                10 if len(train) < 1000 else 6,
                "one sigmoid per label learns slower than one softmax: on GoEmotions validation loss still "
                "fell after 3 epochs (bench/HISTORY.md); early stopping ends sooner",
            ),
            "train.monitor": ("val/f1_macro", "every label counts the same: early stopping follows macro F1"),
            "gates.metric": ("f1_macro", "what promotion compares"),
            "gates.min": (
                0.3,
                f"{len(counts)} labels, the rarest with {int(counts.min())} training examples: raise it once "
                "a first run shows what the data allows",
            ),
        }

    def read(self, spec: FileSpec, cfg: DataConfig) -> tuple[pd.DataFrame | None, list[Problem]]:
        df, lines, problems = read_columns(spec, (cfg.text_column, cfg.label_column))
        if df is None:
            return None, problems
        names = None
        if cfg.label_names is not None:
            names, problems = read_label_names(cfg.label_names)
            if names is None:
                return None, problems
        sets = df[cfg.label_column].map(lambda v: parse_labels(v, names))
        bad = sets.isna() & df[cfg.label_column].map(
            lambda v: v is not None and v == v and str(v).strip() != ""
        )
        if bad.any():
            where = ", ".join([str(line) for line, b in zip(lines, bad, strict=True) if b][:MAX_LINES_LISTED])
            what = f"indices into data.label_names (0-{len(names) - 1})" if names else "label lists"
            return None, [
                Problem(
                    f"{int(bad.sum())} label cell(s) that are not {what} at line(s) {where}",
                    file=spec.path,
                    column=cfg.label_column,
                )
            ]
        return pd.DataFrame({TEXT: df[cfg.text_column], LABELS: sets, LINE: lines}), []

    def label_set(self, train: pd.DataFrame) -> list[str]:
        # Held-out splits carved from train are random: label sets do not stratify.
        return sorted({x for s in train[LABELS] for x in s})

    def check_frame(self, name: str, source: str, df: pd.DataFrame, cfg: PipelineConfig) -> list[Problem]:
        problems = text_problems(name, source, df, cfg.data.text_column)
        missing = df[LABELS].isna()
        if missing.any():
            problems.append(
                Problem(
                    f"{int(missing.sum())} missing label cell(s) in {name} at {lines_of(df, missing)} "
                    "(write [] for an example with no label)",
                    file=source,
                    column=cfg.data.label_column,
                )
            )
        if df.empty:
            problems.append(Problem(f"{name} has no rows", file=source))
        return problems

    def check_against_train(self, raw: RawData, cfg: PipelineConfig) -> list[Problem]:
        train = raw.trained()[LABELS].dropna()
        counts = pd.Series([x for s in train for x in s], dtype=object).value_counts()
        source, column = raw.train_source(), cfg.data.label_column
        minimum = cfg.validation.min_examples_per_class
        problems = count_problems(counts, "label(s)", minimum, source, column)
        known = set(counts.index)
        for name, df in raw.frames.items():
            unseen = df[LABELS].map(lambda s: s is not None and bool(set(s) - known))
            if name != "train" and not is_round(name) and unseen.any():
                new = sorted({x for s in df.loc[unseen, LABELS] for x in s} - known)[:MAX_LINES_LISTED]
                listed = ", ".join(map(repr, new))
                problems.append(
                    Problem(
                        f"label(s) never seen in train: {listed} at {lines_of(df, unseen)}",
                        file=raw.sources[name],
                        column=column,
                    )
                )
        return problems

    def describe(
        self, report: ValidationReport, splits: Splits, cfg: PipelineConfig, tokenizer: Any | None
    ) -> None:
        sets = splits.train[LABELS]
        counts = pd.Series([x for s in sets for x in s]).value_counts()
        ratio = float(counts.max() / counts.min())
        if ratio > cfg.validation.max_imbalance_ratio:
            report.warnings.append(
                f"label imbalance: most/least frequent train label = {ratio:.1f} ('{counts.idxmax()}' "
                f"{counts.max()} vs '{counts.idxmin()}' {counts.min()}), above "
                f"validation.max_imbalance_ratio={cfg.validation.max_imbalance_ratio}: per-label thresholds "
                "are fitted on validation for this"
            )
        sizes = sets.map(len)
        report.stats.update(
            num_labels=len(splits.labels),
            labels_per_example=round(float(sizes.mean()), 3),
            share_with_several_labels=round(float((sizes > 1).mean()), 4),
            share_with_no_label=round(float((sizes == 0).mean()), 4),
            min_label_count=int(counts.min()),
            max_label_count=int(counts.max()),
        )
        if tokenizer is not None:
            token_lengths(report, splits, cfg, tokenizer, "texts")


class MultiLabelTraining(TrainingPart):
    auto_class = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    mean_pooled_head = True

    def head_config(self, labels: list[str]) -> dict[str, Any]:
        # transformers' sequence classifiers then train with BCEWithLogitsLoss on float 0/1 targets.
        return {**label_head(labels), "problem_type": "multi_label_classification"}

    def encode(self, splits: Splits, tokenizer: Any, cfg: PipelineConfig) -> EncodedData:
        labels, max_length = splits.labels, cfg.model.max_length

        def one(df: pd.DataFrame) -> Encoded:
            targets = multi_hot(df[LABELS].tolist(), labels).astype(float).tolist()
            return Encoded(tokenize(tokenizer, df[TEXT].tolist(), max_length), targets)

        return EncodedData(one(splits.train), one(splits.validation), labels, tokenizer, max_length, cfg.task)

    def init_head(self, model: Any, data: EncodedData) -> None:
        # A fresh sigmoid head says 0.5 for every label, where most labels are rare (GoEmotions: 28 labels,
        # 1.2 per comment): its first epoch would go to learning the base rates, with large gradients through
        # the encoder. Biases at each label's log-odds start it there (the prior init of RetinaNet's head).
        import torch

        rate = np.asarray(data.train.labels, dtype=float).mean(axis=0).clip(1e-4, 1 - 1e-4)
        bias = torch.tensor(np.log(rate / (1 - rate)), dtype=torch.float32)
        for name, layer in model.named_modules():  # the head, and its trainable copy under LoRA
            head = "classifier" in name and isinstance(layer, torch.nn.Linear)
            if head and layer.out_features == len(rate):
                with torch.no_grad():
                    layer.bias.copy_(bias)

    def collator(self, tokenizer: Any) -> PadInputs:
        return PadInputs(tokenizer)  # float 0/1 rows: the BCE targets

    def build_metrics(self, module: Any) -> None:
        from torchmetrics.classification import MultilabelF1Score

        n = len(module.hparams.labels)
        module.val_f1_macro = MultilabelF1Score(num_labels=n, average="macro", validate_args=False)
        module.val_f1_micro = MultilabelF1Score(num_labels=n, average="micro", validate_args=False)

    def on_validation_batch(self, module: Any, batch: dict[str, Any], out: Any) -> None:
        # At 0.5: the per-label thresholds are fitted once, after training (after_export).
        proba, target = out.logits.sigmoid(), batch["labels"].long()
        module.val_f1_macro(proba, target)
        module.val_f1_micro(proba, target)
        module.log("val/f1_macro", module.val_f1_macro, on_epoch=True, prog_bar=True)
        module.log("val/f1_micro", module.val_f1_micro, on_epoch=True, prog_bar=True)


class MultiLabelServing(ServingPart):
    input_example = ["I love this, thank you so much!"]

    def predictor(self, model: Any, tokenizer: Any, meta: dict[str, Any]) -> MultiLabelPredictor:
        base = ClassificationPredictor(model, tokenizer, meta["labels"], meta.get("max_length", 128))
        path = Path(meta["model_dir"]) / THRESHOLDS_FILE if meta.get("model_dir") else None
        if path is None or not path.is_file():
            return MultiLabelPredictor(base, np.full(len(base.labels), 0.5))
        fitted = json.loads(path.read_text())
        thresholds = np.array([fitted["thresholds"][label] for label in base.labels])
        return MultiLabelPredictor(base, thresholds, fitted["at_least_one"])

    def after_export(
        self, predictor: MultiLabelPredictor, export_dir: Path, splits: Splits, cfg: PipelineConfig
    ) -> dict[str, float]:
        """Each label's threshold, fitted on validation, stored as ``thresholds.json`` with the weights."""
        proba = predictor.predict_proba(splits.validation[TEXT].tolist(), cfg.train.eval_batch_size)
        truth = multi_hot(splits.validation[LABELS].tolist(), predictor.labels)
        thresholds = fit_thresholds(proba, truth)
        at_least_one = bool((splits.train[LABELS].map(len) > 0).all())
        path = export_dir / THRESHOLDS_FILE
        fitted = dict(zip(predictor.labels, thresholds.tolist(), strict=True))
        path.write_text(json.dumps({"thresholds": fitted, "at_least_one": at_least_one}, indent=2))
        path.chmod(0o644)
        tuned = decide_labels(proba, thresholds, at_least_one)
        at_half = decide_labels(proba, np.full(len(thresholds), 0.5), at_least_one)
        return {
            f"{names.CALIBRATION}threshold_mean": float(thresholds.mean()),
            f"{names.CALIBRATION}val_f1_macro_at_0.5": multilabel_metrics(truth, at_half)["f1_macro"],
            f"{names.CALIBRATION}val_f1_macro_tuned": multilabel_metrics(truth, tuned)["f1_macro"],
        }

    def output_example(self) -> pd.DataFrame:
        return pd.DataFrame({"labels": [["joy", "love"]], "scores": [[0.9, 0.6]]})


class MultiLabelJudging(JudgingPart):
    def evaluate_test(
        self,
        predictor: MultiLabelPredictor,
        test: pd.DataFrame,
        out: Path,
        cfg: PipelineConfig,
        metrics: dict[str, float],
        evidence: dict[str, Any] | None = None,
    ) -> list[str]:
        """Macro/micro F1, ``per_label_metrics.csv`` (with each threshold), ``worst_errors.csv``."""
        from sklearn.metrics import precision_recall_fscore_support

        labels, texts, start = predictor.labels, test[TEXT].tolist(), time.perf_counter()
        proba = predictor.predict_proba(texts, cfg.train.eval_batch_size)
        if texts:
            metrics[f"{names.SERVING}throughput_examples_per_s"] = len(texts) / (time.perf_counter() - start)
        pred, truth = predictor.decide(proba), multi_hot(test[LABELS].tolist(), labels)
        metrics.update(multilabel_metrics(truth, pred, prefix=names.TEST))
        if evidence is not None:
            evidence["promotion"] = metrics[f"{names.TEST}{cfg.gates.metric}"]
        p, r, f, support = precision_recall_fscore_support(truth, pred, average=None, zero_division=0)
        table = pd.DataFrame(
            {
                "label": labels,
                "precision": p,
                "recall": r,
                "f1": f,
                "support": support,
                "threshold": predictor.thresholds,
            }
        )
        save_table(table.sort_values("f1"), out / "per_label_metrics.csv")
        wrong = (pred != truth).any(axis=1)
        named = [[labels[j] for j in np.flatnonzero(row)] for row in pred]
        errors = pd.DataFrame(
            {
                "line": test[LINE],
                TEXT: test[TEXT],
                LABELS: [", ".join(s) for s in test[LABELS]],
                "predicted": [", ".join(s) for s in named],
                "missed_or_extra": (pred != truth).sum(1),
            }
        )[wrong]
        worst = errors.sort_values("missed_or_extra", ascending=False).head(cfg.eval.worst_examples)
        save_table(worst, out / "worst_errors.csv")
        return ["per_label_metrics.csv", "worst_errors.csv"]

    def _f1(self, predictor: MultiLabelPredictor, df: pd.DataFrame, cfg: PipelineConfig) -> dict[str, float]:
        proba = predictor.predict_proba(df[TEXT].tolist(), cfg.train.eval_batch_size)
        return multilabel_metrics(multi_hot(df[LABELS].tolist(), predictor.labels), predictor.decide(proba))

    def measure_gap(self, predictor: MultiLabelPredictor, splits: Splits, cfg: PipelineConfig) -> Gap:
        sample = splits.train.sample(n=min(len(splits.train), TRAIN_SAMPLE_FOR_GAP), random_state=0)
        train, val = self._f1(predictor, sample, cfg), self._f1(predictor, splits.validation, cfg)
        return Gap("micro F1", "f1_micro", train["f1_micro"], val["f1_micro"])

    def score_set(
        self, predictor: MultiLabelPredictor, df: pd.DataFrame, cfg: PipelineConfig, prefix: str
    ) -> dict[str, float]:
        return {f"{prefix}{k}": v for k, v in self._f1(predictor, df, cfg).items()}

    def measure_latency(
        self, predictor: MultiLabelPredictor, test: pd.DataFrame, cfg: PipelineConfig
    ) -> dict[str, float]:
        return time_single(lambda t: predictor.predict(t, 1), test[TEXT].tolist(), cfg.eval.latency_examples)

    def drift_labels(self, df: pd.DataFrame) -> list[str]:
        """Every label occurrence (an example with two labels counts for both)."""
        return [x for s in df[LABELS] for x in s]

    def drift_confidences(
        self, load: Callable[[], Any], ref: pd.DataFrame, new: pd.DataFrame
    ) -> tuple[list[float], list[float]]:
        """The champion's top label probability per text."""
        predictor = load()
        return tuple(  # type: ignore[return-value]
            predictor.predict_proba(df[TEXT].astype(str).tolist()).max(1).tolist() for df in (ref, new)
        )

    def promotion_evidence(
        self, predictor: MultiLabelPredictor, test: pd.DataFrame, cfg: PipelineConfig
    ) -> float:
        """The gate metric on the frozen test set."""
        return self._f1(predictor, test, cfg)[cfg.gates.metric]


class MultiLabelClassification(TaskType):
    name = "multi_label_classification"
    summary = "a set of labels per text: emotions, ticket topics (sigmoid head, per-label thresholds)"
    metrics = MetricSpec(
        monitors=("val/f1_macro", "val/f1_micro", "val/loss"),
        gate_metrics=("f1_macro", "f1_micro", "f1_samples"),
        headline=(
            "test/f1_macro",
            "test/f1_micro",
            "test/exact_match",
            "fit/train_val_gap",
            "serving/latency_p95_ms",
        ),
        history=("train/loss", "val/loss", "val/f1_macro", "val/f1_micro"),
    )
    default_model = DEFAULT_MODEL
    own_config = (
        *("data.text_column", "data.label_column", "data.label_names", "eval.worst_examples"),
        "model.pooling",
        "fewshot.",
        "validation.min_examples_per_class",
        "validation.max_imbalance_ratio",
    )
    data = MultiLabelData()
    training = MultiLabelTraining()
    serving = MultiLabelServing()
    judging = MultiLabelJudging()
