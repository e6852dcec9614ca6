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

from tuneflow import names
from tuneflow.config import DataConfig, FileSpec, PipelineConfig
from tuneflow.data.encoding import Encoded, EncodedData, PadSequences
from tuneflow.data.readers import LINE, REFERENCES, TARGET, TEXT, Problem, read_pairs
from tuneflow.data.splits import Splits
from tuneflow.data.validation import ValidationReport, empty_inputs, lines_of, token_lengths
from tuneflow.judging.evaluation import Gap
from tuneflow.judging.generation import (
    generated_text_example,
    generation_metrics,
    loss_gap,
    mean_token_loss,
    metric_family,
    sequence_collator,
    subset,
)
from tuneflow.judging.metrics import time_single
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


def encode_frame(
    df: pd.DataFrame, tokenizer: Any, max_length: int, max_target_length: int, prefix: str = ""
) -> Encoded:
    """Tokenize ``prefix + source`` as input ids and the first reference as labels (no padding yet)."""
    ids = tokenizer([prefix + s for s in df[TEXT]], truncation=True, max_length=max_length)["input_ids"]
    labels = tokenizer(text_target=df[TARGET].tolist(), truncation=True, max_length=max_target_length)
    return Encoded(ids, labels["input_ids"])


@dataclass
class Seq2SeqPredictor:
    """An exported seq2seq model ready to generate from raw source texts."""

    model: Any
    tokenizer: Any
    max_length: int = 512
    prefix: str = ""
    generate_kwargs: dict[str, Any] | None = None
    max_target_length: int = 64

    def generate(self, texts: list[str], batch_size: int = 16) -> list[str]:
        import torch

        out = [""] * len(texts)
        order = np.argsort([len(t) for t in texts])
        with torch.inference_mode():
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
                for i, text in zip(
                    idx, self.tokenizer.batch_decode(ids, skip_special_tokens=True), strict=True
                ):
                    out[i] = text.strip()
        return out

    def predict(self, texts: list[str]) -> pd.DataFrame:
        return pd.DataFrame({"generated_text": self.generate(texts)})

    def loss(self, df: pd.DataFrame) -> float:
        """Mean cross-entropy per target token of the first reference (teacher forcing)."""
        enc = encode_frame(df, self.tokenizer, self.max_length, self.max_target_length, self.prefix)
        return mean_token_loss(self.model, enc, sequence_collator(self.tokenizer), shift=False)


def which_metrics(cfg: PipelineConfig) -> list[str]:
    return cfg.eval.generation_metrics or ["rouge"]


class Seq2SeqData(DataPart):
    column_roles = {
        "source_column": ("source", "document", "article", "text", "input", "src", "question"),
        "target_column": ("target", "summary", "highlights", "output", "tgt", "translation", "answer"),
    }

    def draft(self, train: pd.DataFrame, cfg: PipelineConfig) -> dict[str, tuple[Any, str]]:
        return generative_draft("documents")

    def read(self, spec: FileSpec, cfg: DataConfig) -> tuple[pd.DataFrame | None, list[Problem]]:
        return read_pairs(spec, cfg)

    def check_frame(self, name: str, source: str, df: pd.DataFrame, cfg: PipelineConfig) -> list[Problem]:
        problems = empty_inputs(name, source, df)
        if not df.empty:
            no_target = df[TARGET].isna()
            if no_target.any():
                problems.append(
                    Problem(
                        f"{int(no_target.sum())} empty target(s) in {name} at {lines_of(df, no_target)}",
                        source,
                        column=cfg.data.target_column,
                    )
                )
        return problems

    def describe(
        self, report: ValidationReport, splits: Splits, cfg: PipelineConfig, tokenizer: Any | None
    ) -> None:
        if tokenizer is None:
            return
        token_lengths(report, splits, cfg, tokenizer, "inputs")
        targets = splits.train[TARGET].tolist()
        n_target = [len(ids) for ids in tokenizer(text_target=targets, truncation=False)["input_ids"]]
        share = sum(n > cfg.model.max_target_length for n in n_target) / max(len(n_target), 1)
        report.stats["truncated_share_train_targets"] = round(share, 4)
        if share > cfg.validation.max_truncated_share:
            report.warnings.append(
                f"{share:.1%} of train targets are longer than model.max_target_length="
                f"{cfg.model.max_target_length} tokens and will be truncated"
            )


class Seq2SeqTraining(TrainingPart):
    auto_class = "AutoModelForSeq2SeqLM"
    peft_task_type = "SEQ_2_SEQ_LM"

    def encode(self, splits: Splits, tokenizer: Any, cfg: PipelineConfig) -> EncodedData:
        m = cfg.model
        train, val = (
            encode_frame(df, tokenizer, m.max_length, m.max_target_length, m.source_prefix)
            for df in (splits.train, splits.validation)
        )
        return EncodedData(train, val, [], tokenizer, m.max_length, cfg.task)

    def collator(self, tokenizer: Any) -> PadSequences:
        return sequence_collator(tokenizer)


class Seq2SeqServing(ServingPart):
    input_example = ["We propose a method that trains faster and generalizes better than prior work ."]

    def inference_settings(self, cfg: PipelineConfig) -> dict[str, Any]:
        return {
            "max_length": cfg.model.max_length,
            "generation": cfg.generation.kwargs(),
            "source_prefix": cfg.model.source_prefix,
            "max_target_length": cfg.model.max_target_length,
        }

    def predictor(self, model: Any, tokenizer: Any, meta: dict[str, Any]) -> Seq2SeqPredictor:
        return Seq2SeqPredictor(
            model,
            tokenizer,
            meta.get("max_length", 512),
            meta.get("source_prefix", ""),
            meta.get("generation"),
            meta.get("max_target_length", 64),
        )

    def output_example(self) -> pd.DataFrame:
        return generated_text_example()


class Seq2SeqJudging(JudgingPart):
    def evaluate_test(
        self,
        predictor: Seq2SeqPredictor,
        test: pd.DataFrame,
        out: Path,
        cfg: PipelineConfig,
        metrics: dict[str, float],
        evidence: dict[str, Any] | None = None,
    ) -> list[str]:
        """ROUGE/BLEU/chrF of generations (on at most ``eval.max_generation_examples``), loss, samples."""
        test = subset(test, cfg.eval.max_generation_examples)
        predictions = predictor.generate(test[TEXT].tolist())
        metrics.update(
            generation_metrics(predictions, test[REFERENCES].tolist(), which_metrics(cfg), "test/")
        )
        if evidence is not None and f"test/{cfg.gates.metric}" in metrics:
            evidence["promotion"] = metrics[f"test/{cfg.gates.metric}"]  # the same generations' score
        table = test.assign(generated=predictions).rename(columns={LINE: "line"})
        table["reference"] = table[REFERENCES].map(lambda r: r[0])
        table[["line", TEXT, "reference", "generated"]].head(cfg.eval.sample_generations).to_csv(
            out / "sample_generations.csv", index=False
        )
        loss = predictor.loss(test)
        metrics.update({f"{names.TEST}loss": loss, f"{names.TEST}perplexity": math.exp(min(loss, 50))})
        return ["sample_generations.csv"]

    def measure_gap(self, predictor: Any, splits: Splits, cfg: PipelineConfig) -> Gap:
        return loss_gap(predictor, splits, cfg.eval.max_generation_examples)

    def score_set(
        self, predictor: Seq2SeqPredictor, df: pd.DataFrame, cfg: PipelineConfig, prefix: str
    ) -> dict[str, float]:
        df = subset(df, cfg.eval.max_generation_examples)
        predictions = predictor.generate(df[TEXT].tolist())
        return generation_metrics(predictions, df[REFERENCES].tolist(), which_metrics(cfg), prefix)

    def measure_latency(
        self, predictor: Seq2SeqPredictor, test: pd.DataFrame, cfg: PipelineConfig
    ) -> dict[str, float]:
        return time_single(predictor.generate, test[TEXT].tolist(), min(cfg.eval.latency_examples, 10))

    def promotion_evidence(
        self, predictor: Seq2SeqPredictor, test: pd.DataFrame, cfg: PipelineConfig
    ) -> float:
        metric = cfg.gates.metric
        family = metric_family(metric)
        test = subset(test, cfg.eval.max_generation_examples)
        return generation_metrics(
            predictor.generate(test[TEXT].tolist()), test[REFERENCES].tolist(), [family]
        )[metric]


class Seq2Seq(TaskType):
    name = "seq2seq"
    summary = "text to text: summarization, translation"
    metrics = MetricSpec(
        monitors=("val/loss",),
        gate_metrics=("rougeL", "rouge1", "rouge2", "bleu", "chrf"),
        headline=(
            "test/rougeL",
            "test/rouge1",
            "test/bleu",
            "test/chrf",
            "test/loss",
            "fit/train_val_gap",
            "serving/latency_p95_ms",
        ),
    )
    own_config = (
        *("data.source_column", "data.target_column", "model.max_target_length", "model.source_prefix"),
        *GENERATION_CONFIG,
    )
    data = Seq2SeqData()
    training = Seq2SeqTraining()
    serving = Seq2SeqServing()
    judging = Seq2SeqJudging()
