"""Sequence classification (``task: sequence_classification``): sentiment, topics, chatbot intents.

Examples are a text and one label; the model is a pre-trained encoder with a fresh classification head.
Headline metrics are accuracy and macro F1; promotion compares champion and challenger per example
(paired bootstrap or McNemar on the same frozen test set).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tuneflow import names
from tuneflow.behavior import check_behavior
from tuneflow.calibration import (
    expected_calibration_error,
    fit_temperature,
    load_temperature,
    plot_reliability,
    save_temperature,
    softmax,
)
from tuneflow.config import DataConfig, FileSpec, PipelineConfig
from tuneflow.encoding import Encoded, EncodedData, PadInputs, tokenize
from tuneflow.evaluation import Gap, plot_confusion, save_table
from tuneflow.metrics import classification_metrics, confusion, per_class_table, throughput, time_single
from tuneflow.outofscope import (
    Gaussian,
    Neighbors,
    ScopeDetector,
    in_scope_scores,
    scope_metrics,
    standardization,
    threshold_for_recall,
    threshold_on_oos,
)
from tuneflow.promotion import decide
from tuneflow.readers import LABEL, LINE, TEXT, Problem, RawData, read_columns, read_table
from tuneflow.splits import Splits
from tuneflow.tasktypes.base import CHAT_CONFIG, MetricSpec, TaskType
from tuneflow.validation import MAX_LINES_LISTED, ValidationReport, lines_of, token_lengths

TRAIN_SAMPLE_FOR_GAP = 2000
# Train examples the Mahalanobis means and covariance are fitted on, and the most a knn bank holds (20,000
# x 384 float32 = 31 MB in the exported model).
MAX_TRAIN_FOR_SCOPE = 20_000
FEATURE_KINDS = ("head", "mean_pooled", "layer_mean")  # ClassificationPredictor.forward(features=...)


@dataclass
class ClassificationPredictor:
    """An exported classifier ready for inference on raw text.

    ``predict`` answers ``label`` and ``score`` (its calibrated probability) per text; a model with an
    out-of-scope detector also answers ``in_scope``, ``oos_score`` and ``threshold``, and the fallback label
    for queries below the threshold. ``labels_of`` is the classifier's own top label (no fallback): what the
    test metrics and the champion/challenger comparison score.
    """

    model: Any
    tokenizer: Any
    labels: list[str]
    max_length: int = 128
    temperature: float = 1.0
    scope: ScopeDetector | None = None

    def forward(
        self, texts: list[str], batch_size: int = 128, features: bool | str | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw logits (n, labels) and, with ``features``, a feature vector per text (n, hidden).

        ``features="head"`` (or True) is what the head's last linear layer sees (BERT's pooled [CLS],
        DistilBERT's pre-classifier output, RoBERTa's dense layer), captured with a forward hook, so any
        sequence-classification architecture works; ``"mean_pooled"`` is the mean of the encoder's last hidden
        states over the real (unpadded) tokens; ``"layer_mean"`` averages that token mean over every
        transformer layer's output (Chen et al., 2022, "Holistic sentence embeddings for better
        out-of-distribution detection": Avg-Avg).
        """
        kind = "head" if features is True else (features or None)
        logits, feats = self.forward_kinds(texts, batch_size, (kind,) if kind else ())
        return logits, feats.get(kind) if kind else None  # None too for no texts

    def forward_kinds(
        self, texts: list[str], batch_size: int = 128, kinds: tuple[str, ...] = ()
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Raw logits and the features of each of ``kinds`` (see :meth:`forward`), in one forward pass
        (no entry for a kind when ``texts`` is empty).

        Sorting by length keeps padding small.
        """
        import torch

        from tuneflow.pooling import mean_pool

        for kind in kinds:
            if kind not in FEATURE_KINDS:
                raise ValueError(f"unknown feature kind {kind!r}: one of {', '.join(FEATURE_KINDS)}")
        order = np.argsort([len(t) for t in texts])
        logits = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        feats: dict[str, np.ndarray] = {}
        seen: list[Any] = []
        hook = (
            head_layer(self.model, len(self.labels)).register_forward_hook(lambda m, i, o: seen.append(i[0]))
            if "head" in kinds
            else None
        )
        hidden = bool({"mean_pooled", "layer_mean"} & set(kinds))
        try:
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
                    out = self.model(**enc, output_hidden_states=hidden)
                    logits[idx] = out.logits.float().numpy()
                    batch: dict[str, Any] = {}
                    if "head" in kinds:
                        batch["head"] = seen.pop()
                    if "mean_pooled" in kinds:
                        batch["mean_pooled"] = mean_pool(out.hidden_states[-1], enc["attention_mask"])
                    if "layer_mean" in kinds:
                        # hidden_states[0] is the embedding output, not a transformer layer
                        layers = [mean_pool(h, enc["attention_mask"]) for h in out.hidden_states[1:]]
                        batch["layer_mean"] = torch.stack(layers).mean(0)
                    for kind, values in batch.items():
                        values = values.float().numpy()
                        if kind not in feats:
                            feats[kind] = np.zeros((len(texts), values.shape[-1]), dtype=np.float32)
                        feats[kind][idx] = values
        finally:
            if hook is not None:
                hook.remove()
        return logits, feats

    def predict_proba(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        """Calibrated class probabilities, shape (len(texts), n_labels)."""
        return softmax(self.forward(texts, batch_size)[0], self.temperature).astype(np.float32)

    def predict(self, texts: list[str], batch_size: int = 128) -> pd.DataFrame:
        """``label`` and ``score`` per text (+ ``in_scope``, ``oos_score``, ``threshold`` with a detector)."""
        if not texts:
            columns = ["label", "score"] + (["in_scope", "oos_score", "threshold"] if self.scope else [])
            return pd.DataFrame({c: [] for c in columns})
        scope = self.scope
        logits, feats = self.forward(texts, batch_size, features=scope.feature_kind if scope else None)
        proba = softmax(logits, self.temperature)
        best = proba.argmax(-1)
        out = pd.DataFrame(
            {
                "label": [self.labels[i] for i in best],
                "score": proba[np.arange(len(best)), best].astype(float),
            }
        )
        if scope is not None:
            scores = scope.scores(logits, feats)
            out["in_scope"] = scores >= scope.threshold
            out.loc[~out["in_scope"], "label"] = scope.fallback_label
            out["oos_score"] = scores.astype(float)
            out["threshold"] = float(scope.threshold)
        return out

    def labels_of(self, texts: list[str], batch_size: int = 128) -> list[str]:
        """The classifier's top label per text (no out-of-scope fallback)."""
        if not texts:
            return []
        return [self.labels[i] for i in self.forward(texts, batch_size)[0].argmax(-1)]


def scope_problems(cfg: PipelineConfig, labels: set[str]) -> list[Problem]:
    """What is wrong with the out-of-scope files and settings: unreadable files, empty texts, a fallback
    label that is also a trained label."""
    problems = []
    if cfg.oos.enabled and cfg.oos.fallback_label in labels:
        problems.append(
            Problem(
                f"oos.fallback_label '{cfg.oos.fallback_label}' is also a label in train: pick a label the "
                "model does not predict (or train 'oos' as a class and set oos.enabled: false)"
            )
        )
    for key in ("oos_validation", "oos_test"):
        spec = getattr(cfg.data, key)
        if spec is None:
            continue
        df, lines, found = read_columns(spec, [cfg.data.text_column])
        problems += found
        if df is None:
            continue
        texts = df[cfg.data.text_column]
        empty = texts.map(lambda t: not isinstance(t, str) or not t.strip())
        if empty.any():
            where = ", ".join(str(lines[i]) for i in np.flatnonzero(empty.to_numpy())[:MAX_LINES_LISTED])
            problems.append(
                Problem(
                    f"data.{key}: {int(empty.sum())} empty or non-text value(s) at line(s) {where}",
                    file=spec.path,
                    column=cfg.data.text_column,
                )
            )
        if df.empty:
            problems.append(Problem(f"data.{key} has no rows", file=spec.path))
    return problems


def read_texts(spec: FileSpec | None, cfg: DataConfig) -> list[str]:
    """The texts of an out-of-scope file (validated before training: problems here are errors)."""
    if spec is None:
        return []
    df, _, problems = read_columns(spec, [cfg.text_column])
    if df is None:
        raise ValueError("; ".join(str(p) for p in problems))
    return df[cfg.text_column].astype(str).tolist()


def head_layer(model: Any, n_labels: int) -> Any:
    """The last linear layer producing the ``n_labels`` logits; under LoRA the wrapper around the head's
    copies (its input is the active adapter's, whichever adapter of a set is serving)."""
    import torch

    def outputs(m: Any) -> int | None:
        return m.out_features if isinstance(m, torch.nn.Linear) else None

    wrapped = [
        m
        for m in model.modules()
        if type(m).__name__ == "ModulesToSaveWrapper"
        and outputs(getattr(m, "original_module", None)) == n_labels
    ]
    layers = wrapped or [m for m in model.modules() if outputs(m) == n_labels]
    if not layers:
        raise ValueError(f"no linear layer with {n_labels} outputs: cannot find the classification head")
    return layers[-1]


class SequenceClassification(TaskType):
    name = "sequence_classification"
    summary = "one label per text: sentiment, topics, chatbot intents"
    metrics = MetricSpec(
        monitors=("val/f1_macro", "val/accuracy", "val/loss"),
        gate_metrics=("f1_macro", "accuracy", "f1_weighted"),
        headline=(
            "test/accuracy",
            "test/f1_macro",
            "test/f1_weighted",
            "fit/train_val_gap",
            "serving/latency_p95_ms",
        ),
        history=("train/loss", "val/loss", "train/accuracy", "val/accuracy", "val/f1_macro"),
    )
    auto_class = "AutoModelForSequenceClassification"
    mean_pooled_head = True
    peft_task_type = "SEQ_CLS"
    label_head = True
    reads_hub = True
    supports_cv = True
    supports_latency_objective = True
    detects_scope = True
    input_example = ["where is my order?"]
    unused_config = (
        *("data.tokens_column", "data.tags_column", "data.source_column", "data.target_column"),
        *CHAT_CONFIG,
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
        problems += scope_problems(cfg, {str(x) for x in known})
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
        # The labels are encoded by tuneflow (always in range): torchmetrics' argument checks would read
        # the batch back to the host, a GPU sync per step.
        module.train_accuracy = MulticlassAccuracy(num_classes=n, average="micro", validate_args=False)
        module.val_accuracy = MulticlassAccuracy(num_classes=n, average="micro", validate_args=False)
        module.val_f1_macro = MulticlassF1Score(num_classes=n, average="macro", validate_args=False)

    def on_train_batch(self, module: Any, batch: dict[str, Any], out: Any) -> None:
        # update, not forward: the epoch value is all that is logged, a per-batch value would be computed
        # and thrown away every step.
        module.train_accuracy.update(out.logits.detach().argmax(-1), batch["labels"])
        module.log("train/accuracy", module.train_accuracy, on_step=False, on_epoch=True)

    def on_validation_batch(self, module: Any, batch: dict[str, Any], out: Any) -> None:
        preds = out.logits.argmax(-1)
        module.val_accuracy(preds, batch["labels"])
        module.val_f1_macro(preds, batch["labels"])
        module.log("val/accuracy", module.val_accuracy, on_epoch=True, prog_bar=True)
        module.log("val/f1_macro", module.val_f1_macro, on_epoch=True, prog_bar=True)

    # -------------------------------------------------------------------------------------- inference

    def predictor(self, model: Any, tokenizer: Any, meta: dict[str, Any]) -> ClassificationPredictor:
        temperature = load_temperature(meta.get("model_dir"))
        scope = ScopeDetector.load(meta["model_dir"], temperature) if meta.get("model_dir") else None
        return ClassificationPredictor(
            model, tokenizer, meta["labels"], meta.get("max_length", 128), temperature, scope
        )

    def after_export(
        self, predictor: ClassificationPredictor, export_dir: Path, splits: Splits, cfg: PipelineConfig
    ) -> dict[str, float]:
        """Temperature scaling on validation, then the out-of-scope detector (:mod:`tuneflow.outofscope`)."""
        batch, oos = cfg.train.eval_batch_size, cfg.oos
        index = {label: i for i, label in enumerate(predictor.labels)}
        # The detector says which features its methods read; what it is fitted on comes after the forward.
        unfitted = ScopeDetector(oos.methods, 0.0, oos.fallback_label, features=oos.features)
        features = unfitted.feature_kind if oos.enabled else None
        logits, feats = predictor.forward(splits.validation[TEXT].tolist(), batch, features)
        y = np.array([index[x] for x in splits.validation[LABEL]])
        temperature = fit_temperature(logits, y) if cfg.eval.calibrate else 1.0
        save_temperature(export_dir, temperature)
        out = {f"{names.CALIBRATION}temperature": temperature}
        if not oos.enabled:
            return out
        gaussian = neighbors = None
        if features:
            train = splits.train.sample(n=min(len(splits.train), MAX_TRAIN_FOR_SCOPE), random_state=0)
            _, train_feats = predictor.forward(train[TEXT].tolist(), batch, features)
            assert train_feats is not None
            if "mahalanobis" in oos.methods:
                y_train = np.array([index[x] for x in train[LABEL]])
                gaussian = Gaussian.fit(train_feats, y_train, len(index))
            if "knn" in oos.methods:
                neighbors = Neighbors.fit(train_feats, min(oos.knn_k, len(train_feats)))
        detector = replace(unfitted, temperature=temperature, gaussian=gaussian, neighbors=neighbors)
        parts = detector.part_scores(logits, feats)
        if len(parts) > 1:
            detector = replace(detector, standardize=standardization(parts))
        in_scores = detector.scores(logits, feats)
        oos_texts = read_texts(cfg.data.oos_validation, cfg.data)
        if oos_texts and oos.threshold_rule == "youden":
            o_logits, o_feats = predictor.forward(oos_texts, batch, features)
            threshold = threshold_on_oos(in_scores, detector.scores(o_logits, o_feats))
        else:
            threshold = threshold_for_recall(in_scores, oos.target_in_scope_recall)
        detector = replace(detector, threshold=threshold)
        detector.save(export_dir)
        return {**out, f"{names.OOS}threshold": threshold}

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
        evidence: dict[str, Any] | None = None,
    ) -> list[str]:
        """Accuracy/F1, ``per_class_metrics.csv``, ``confusion_matrix.png``, ``worst_errors.csv``; calibration
        (ECE before/after, ``reliability_diagram.png``) and out-of-scope metrics (``oos_errors.csv``)."""
        labels, scope, batch = predictor.labels, predictor.scope, cfg.train.eval_batch_size
        texts = test[TEXT].tolist()
        logits, feats = predictor.forward(texts, batch, features=scope.feature_kind if scope else None)
        proba = softmax(logits, predictor.temperature)
        pred = [labels[i] for i in proba.argmax(-1)]
        if evidence is not None:  # the same logits labels_of computes (same texts, order and batch size)
            evidence["promotion"] = [str(x) for x in pred]
        truth = test[LABEL].tolist()
        metrics.update(classification_metrics(truth, pred, prefix=names.TEST))
        save_table(per_class_table(truth, pred, labels), out / "per_class_metrics.csv")
        plot_confusion(confusion(truth, pred, labels), labels, out / "confusion_matrix.png")
        index = {label: i for i, label in enumerate(labels)}
        y = np.array([index[t] for t in truth])
        errors = test.assign(
            predicted=pred,
            p_predicted=proba.max(-1),
            p_true=proba[np.arange(len(y)), y],
        )
        errors = errors[errors[LABEL] != errors["predicted"]].sort_values("p_predicted", ascending=False)
        columns = ["line", TEXT, LABEL, "predicted", "p_predicted", "p_true"]
        worst = errors.rename(columns={LINE: "line"})[columns].head(cfg.eval.worst_examples)
        save_table(worst, out / "worst_errors.csv")
        artifacts = ["per_class_metrics.csv", "confusion_matrix.png", "worst_errors.csv"]

        uncalibrated = softmax(logits)
        metrics[f"{names.CALIBRATION}ece_before"] = expected_calibration_error(uncalibrated, y)
        metrics[f"{names.CALIBRATION}ece"] = expected_calibration_error(proba, y)
        metrics[f"{names.CALIBRATION}temperature"] = predictor.temperature
        plot_reliability(uncalibrated, proba, y, predictor.temperature, out / "reliability_diagram.png")
        artifacts.append("reliability_diagram.png")
        if scope is not None:
            artifacts += self._evaluate_scope(predictor, logits, feats, test, pred, out, cfg, metrics)
        if cfg.eval.behavior_checks:
            report = check_behavior(
                texts,
                lambda t: predictor.labels_of(t, batch),
                lambda t: predictor.predict_proba(t, batch),
                labels,
                cfg.eval.positive_label,
                cfg.eval.behavior_examples,
                cfg.train.seed,
            )
            metrics.update(report.metrics())
            save_table(report.failures, out / "behavior_failures.csv")
            artifacts.append("behavior_failures.csv")
        return artifacts

    def _evaluate_scope(
        self,
        predictor: ClassificationPredictor,
        logits: np.ndarray,
        feats: np.ndarray | None,
        test: pd.DataFrame,
        pred: list[str],
        out: Path,
        cfg: PipelineConfig,
        metrics: dict[str, float],
    ) -> list[str]:
        """Out-of-scope metrics with the fallback applied; every method's AUROC when test queries exist."""
        scope = predictor.scope
        assert scope is not None
        in_scores = scope.scores(logits, feats)
        correct = np.array(pred) == test[LABEL].to_numpy()
        oos_texts = read_texts(cfg.data.oos_test, cfg.data)
        oos_scores, o_logits = None, None
        if oos_texts:
            o_logits, o_feats = predictor.forward(oos_texts, cfg.train.eval_batch_size, scope.feature_kind)
            oos_scores = scope.scores(o_logits, o_feats)
        metrics.update(scope_metrics(in_scores, correct, oos_scores, scope.threshold))
        if o_logits is not None:
            # The logit-only methods cost nothing more to compare (the chosen one is logged above).
            for method in ("msp", "energy"):
                a, b = (
                    in_scope_scores(method, x, None, predictor.temperature, None) for x in (logits, o_logits)
                )
                metrics[f"{names.OOS}auroc_{method}"] = scope_metrics(a, correct, b, 0.0)[f"{names.OOS}auroc"]
        rows = [
            {"text": t, "kind": "in-scope rejected", "label": label, "oos_score": s}
            for t, label, s in zip(test[TEXT], test[LABEL], in_scores, strict=True)
            if s < scope.threshold
        ]
        if oos_scores is not None:
            rows += [
                {
                    "text": t,
                    "kind": "out-of-scope answered",
                    "label": predictor.labels[int(i)],
                    "oos_score": s,
                }
                for t, i, s in zip(oos_texts, o_logits.argmax(-1), oos_scores, strict=True)
                if s >= scope.threshold
            ]
        table = pd.DataFrame(rows, columns=["text", "kind", "label", "oos_score"]).assign(
            threshold=scope.threshold
        )
        save_table(table.sort_values("oos_score"), out / "oos_errors.csv")
        return ["oos_errors.csv"]

    def measure_gap(self, predictor: ClassificationPredictor, splits: Splits, cfg: PipelineConfig) -> Gap:
        sample = splits.train.sample(n=min(len(splits.train), TRAIN_SAMPLE_FOR_GAP), random_state=0)
        batch = cfg.train.eval_batch_size
        train_acc = classification_metrics(
            sample[LABEL].tolist(), predictor.labels_of(sample[TEXT].tolist(), batch)
        )
        val = classification_metrics(
            splits.validation[LABEL].tolist(),
            predictor.labels_of(splits.validation[TEXT].tolist(), batch),
        )
        return Gap("accuracy", "accuracy", train_acc["accuracy"], val["accuracy"])

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
