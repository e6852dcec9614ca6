"""Sequence classification (``task: sequence_classification``): sentiment, topics, chatbot intents.

Examples are a text and one label; the model is a pre-trained encoder with a fresh classification head.
Headline metrics are accuracy and macro F1; promotion compares champion and challenger per example
(paired bootstrap or McNemar on the same frozen test set).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tuneflow.config import DataConfig, FileSpec, PipelineConfig
from tuneflow.encoding import Encoded, EncodedData, PadInputs, tokenize
from tuneflow.evaluation import Gap, plot_confusion
from tuneflow.metrics import classification_metrics, confusion, per_class_table, throughput, time_single
from tuneflow.promotion import decide
from tuneflow.readers import LABEL, LINE, TEXT, Problem, RawData, read_table
from tuneflow.splits import Splits
from tuneflow.tasktypes.base import MetricSpec, TaskType
from tuneflow.validation import MAX_LINES_LISTED, ValidationReport, lines_of, token_lengths

TRAIN_SAMPLE_FOR_GAP = 2000


@dataclass
class ClassificationPredictor:
    """An exported classifier ready for inference on raw text: ``label`` and ``score`` per text."""

    model: Any
    tokenizer: Any
    labels: list[str]
    max_length: int = 128

    def predict_proba(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        """Class probabilities, shape (len(texts), n_labels). Sorting by length keeps padding small."""
        import torch

        order = np.argsort([len(t) for t in texts])
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                idx = order[start : start + batch_size]
                enc = self.tokenizer(
                    [texts[i] for i in idx],
                    truncation=True,
                    max_length=self.max_length,
                    padding=True,
                    return_tensors="pt",
                )
                out[idx] = torch.softmax(self.model(**enc).logits.float(), -1).numpy()
        return out

    def predict(self, texts: list[str], batch_size: int = 128) -> pd.DataFrame:
        """``label`` and ``score`` (its probability) per text."""
        proba = self.predict_proba(texts, batch_size) if texts else np.zeros((0, len(self.labels)))
        best = proba.argmax(-1) if len(proba) else np.zeros(0, dtype=int)
        return pd.DataFrame(
            {
                "label": [self.labels[i] for i in best],
                "score": proba[np.arange(len(best)), best].astype(float),
            }
        )

    def labels_of(self, texts: list[str], batch_size: int = 128) -> list[str]:
        return self.predict(texts, batch_size)["label"].tolist()


class SequenceClassification(TaskType):
    name = "sequence_classification"
    summary = "one label per text: sentiment, topics, chatbot intents"
    metrics = MetricSpec(
        monitors=("val_f1_macro", "val_accuracy", "val_loss"),
        gate_metrics=("f1_macro", "accuracy", "f1_weighted"),
        headline=("test_accuracy", "test_f1_macro", "test_f1_weighted", "train_val_gap", "latency_p95_ms"),
        history=("train_loss", "val_loss", "train_accuracy", "val_accuracy", "val_f1_macro"),
    )
    auto_class = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    label_head = True
    reads_hub = True
    supports_cv = True
    supports_latency_objective = True
    input_example = ["where is my order?"]
    unused_config = (
        *("data.tokens_column", "data.tags_column", "data.source_column", "data.target_column"),
        *("data.messages_column", "generation.", "model.max_target_length", "model.source_prefix"),
        *("eval.generation_metrics", "eval.max_generation_examples", "eval.sample_generations"),
    )

    # --------------------------------------------------------------------------------------------- data

    def read(self, spec: FileSpec, cfg: DataConfig) -> tuple[pd.DataFrame | None, list[Problem]]:
        return read_table(spec, cfg.text_column, cfg.label_column)

    def check_frame(self, name: str, source: str, df: pd.DataFrame, cfg: PipelineConfig) -> list[Problem]:
        not_text = df[TEXT].map(lambda t: t is not None and not isinstance(t, str) and t == t)
        empty = df[TEXT].map(lambda t: t is None or (isinstance(t, str) and not t.strip()) or t != t)
        checks = (
            (
                not_text,
                "non-text value(s) (numbers, lists or objects where text is expected)",
                cfg.data.text_column,
            ),
            (empty, "empty or whitespace-only text(s)", cfg.data.text_column),
            (df[LABEL].isna(), "missing (NaN/empty) label(s)", cfg.data.label_column),
        )
        problems = [
            Problem(f"{int(mask.sum())} {what} in {name} at {lines_of(df, mask)}", file=source, column=column)
            for mask, what, column in checks
            if mask.any()
        ]
        if df.empty:
            problems.append(Problem(f"{name} has no rows", file=source))
        return problems

    def check_against_train(self, raw: RawData, cfg: PipelineConfig) -> list[Problem]:
        counts = raw.frames["train"][LABEL].value_counts()
        source, column = raw.sources["train"], cfg.data.label_column
        problems = []
        if len(counts) < 2:
            problems.append(
                Problem(
                    f"train has {len(counts)} class(es); at least 2 are needed", file=source, column=column
                )
            )
        minimum = cfg.validation.min_examples_per_class
        small = counts[counts < minimum]
        if len(small):
            listed = ", ".join(f"'{k}' ({v})" for k, v in small.items())
            problems.append(
                Problem(
                    f"class(es) with fewer than validation.min_examples_per_class={minimum} train examples: "
                    f"{listed}",
                    file=source,
                    column=column,
                )
            )
        known = set(counts.index)
        for name, df in raw.frames.items():
            unseen = df[LABEL].notna() & ~df[LABEL].isin(known)
            if name != "train" and unseen.any():
                labels = ", ".join(repr(x) for x in sorted(df.loc[unseen, LABEL].unique())[:MAX_LINES_LISTED])
                problems.append(
                    Problem(
                        f"label(s) never seen in train: {labels} at {lines_of(df, unseen)}",
                        file=raw.sources[name],
                        column=column,
                    )
                )
        return problems

    def describe(
        self, report: ValidationReport, splits: Splits, cfg: PipelineConfig, tokenizer: Any | None
    ) -> None:
        counts = splits.train[LABEL].value_counts()
        ratio = float(counts.max() / counts.min())
        limit = cfg.validation.max_imbalance_ratio
        if ratio > limit:
            report.warnings.append(
                f"class imbalance: largest/smallest train class = {ratio:.1f} "
                f"('{counts.idxmax()}' {counts.max()} vs '{counts.idxmin()}' {counts.min()}), "
                f"above validation.max_imbalance_ratio={limit}"
            )
        report.stats.update(
            num_classes=len(splits.labels),
            imbalance_ratio=round(ratio, 2),
            min_class_count=int(counts.min()),
            max_class_count=int(counts.max()),
        )
        if tokenizer is not None:
            token_lengths(report, splits, cfg, tokenizer, "texts")

    # --------------------------------------------------------------------------------------- training

    def encode(self, splits: Splits, tokenizer: Any, cfg: PipelineConfig) -> EncodedData:
        label2id, max_length = splits.label2id, cfg.model.max_length

        def one(df: pd.DataFrame) -> Encoded:
            return Encoded(
                tokenize(tokenizer, df[TEXT].tolist(), max_length), [label2id[x] for x in df[LABEL]]
            )

        return EncodedData(
            one(splits.train), one(splits.validation), splits.labels, tokenizer, max_length, self.name
        )

    def collator(self, tokenizer: Any) -> PadInputs:
        return PadInputs(tokenizer)

    def build_metrics(self, module: Any) -> None:
        from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

        n = len(module.hparams.labels)
        module.train_accuracy = MulticlassAccuracy(num_classes=n, average="micro")
        module.val_accuracy = MulticlassAccuracy(num_classes=n, average="micro")
        module.val_f1_macro = MulticlassF1Score(num_classes=n, average="macro")

    def on_train_batch(self, module: Any, batch: dict[str, Any], out: Any) -> None:
        module.train_accuracy(out.logits.detach().argmax(-1), batch["labels"])
        module.log("train_accuracy", module.train_accuracy, on_step=False, on_epoch=True)

    def on_validation_batch(self, module: Any, batch: dict[str, Any], out: Any) -> None:
        preds = out.logits.argmax(-1)
        module.val_accuracy(preds, batch["labels"])
        module.val_f1_macro(preds, batch["labels"])
        module.log("val_accuracy", module.val_accuracy, on_epoch=True, prog_bar=True)
        module.log("val_f1_macro", module.val_f1_macro, on_epoch=True, prog_bar=True)

    # -------------------------------------------------------------------------------------- inference

    def predictor(self, model: Any, tokenizer: Any, meta: dict[str, Any]) -> ClassificationPredictor:
        return ClassificationPredictor(model, tokenizer, meta["labels"], meta.get("max_length", 128))

    def output_example(self) -> pd.DataFrame:
        return pd.DataFrame({"label": ["x"], "score": [0.5]})

    # ------------------------------------------------------------------------------------- evaluation

    def evaluate_test(
        self,
        predictor: ClassificationPredictor,
        test: pd.DataFrame,
        out: Path,
        cfg: PipelineConfig,
        metrics: dict[str, float],
    ) -> list[str]:
        """Accuracy/F1, ``per_class_metrics.csv``, ``confusion_matrix.png``, ``worst_errors.csv``."""
        labels = predictor.labels
        proba = predictor.predict_proba(test[TEXT].tolist(), cfg.train.eval_batch_size)
        pred = [labels[i] for i in proba.argmax(-1)]
        truth = test[LABEL].tolist()
        metrics.update(classification_metrics(truth, pred, prefix="test_"))
        per_class_table(truth, pred, labels).to_csv(out / "per_class_metrics.csv", index=False)
        plot_confusion(confusion(truth, pred, labels), labels, out / "confusion_matrix.png")
        index = {label: i for i, label in enumerate(labels)}
        errors = test.assign(
            predicted=pred,
            p_predicted=proba.max(-1),
            p_true=[proba[i, index[t]] for i, t in enumerate(truth)],
        )
        errors = errors[errors[LABEL] != errors["predicted"]].sort_values("p_predicted", ascending=False)
        errors.rename(columns={LINE: "line"})[
            ["line", TEXT, LABEL, "predicted", "p_predicted", "p_true"]
        ].head(cfg.eval.worst_examples).to_csv(out / "worst_errors.csv", index=False)
        return ["per_class_metrics.csv", "confusion_matrix.png", "worst_errors.csv"]

    def measure_gap(self, predictor: ClassificationPredictor, splits: Splits, cfg: PipelineConfig) -> Gap:
        sample = splits.train.sample(n=min(len(splits.train), TRAIN_SAMPLE_FOR_GAP), random_state=0)
        batch = cfg.train.eval_batch_size
        train_acc = classification_metrics(
            sample[LABEL].tolist(), predictor.labels_of(sample[TEXT].tolist(), batch)
        )
        val = classification_metrics(
            splits.validation[LABEL].tolist(),
            predictor.labels_of(splits.validation[TEXT].tolist(), batch),
            prefix="validation_",
        )
        return Gap(
            "accuracy",
            train_acc["accuracy"],
            val["validation_accuracy"],
            {**val, "train_accuracy": train_acc["accuracy"]},
        )

    def score_set(
        self, predictor: ClassificationPredictor, df: pd.DataFrame, cfg: PipelineConfig, prefix: str
    ) -> dict[str, float]:
        pred = predictor.labels_of(df[TEXT].tolist(), cfg.train.eval_batch_size)
        return classification_metrics(df[LABEL].tolist(), pred, prefix=prefix)

    def measure_latency(
        self, predictor: ClassificationPredictor, test: pd.DataFrame, cfg: PipelineConfig
    ) -> dict[str, float]:
        texts = test[TEXT].tolist()
        out = time_single(lambda t: predictor.predict_proba(t, 1), texts, cfg.eval.latency_examples)
        out.update(throughput(lambda t: predictor.predict_proba(t, cfg.train.eval_batch_size), texts))
        return out

    # ------------------------------------------------------------------------------------------ drift

    def drift_labels(self, df: pd.DataFrame) -> list[str]:
        return df[LABEL].astype(str).tolist()

    def drift_confidences(
        self, load: Callable[[], Any], ref: pd.DataFrame, new: pd.DataFrame
    ) -> tuple[list[float], list[float]]:
        """The champion's top-class probability: a drop on new data is drift the labels may not show."""
        predictor = load()
        return (
            predictor.predict(ref[TEXT].astype(str).tolist())["score"].tolist(),
            predictor.predict(new[TEXT].astype(str).tolist())["score"].tolist(),
        )

    # -------------------------------------------------------------------------------------- promotion

    def promotion_evidence(
        self, predictor: ClassificationPredictor, test: pd.DataFrame, cfg: PipelineConfig
    ) -> list[str]:
        """The predicted label of every frozen test example (paired with the other model's)."""
        return [str(x) for x in predictor.labels_of(test[TEXT].tolist(), cfg.train.eval_batch_size)]

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
        return decide(
            cfg.gates,
            model,
            version,
            [str(x) for x in test[LABEL]],
            evidence,
            run_metrics,
            champion,
            champion_evidence,
            seed=cfg.train.seed,
        )
