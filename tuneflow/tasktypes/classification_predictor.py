"""The sequence-classification predictor: batched logits, calibrated probabilities, out-of-scope fallback."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tuneflow.judging.calibration import (
    softmax,
)
from tuneflow.judging.outofscope import (
    ScopeDetector,
)

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

        for kind in kinds:
            if kind not in FEATURE_KINDS:
                raise ValueError(f"unknown feature kind {kind!r}: one of {', '.join(FEATURE_KINDS)}")
        order = np.argsort([len(t) for t in texts])
        logits = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        feats: dict[str, np.ndarray] = {}
        seen: list[Any] = []
        # An int8 ONNX Runtime model answers every feature kind from its graph; a torch model is hooked.
        hooked = "head" in kinds and isinstance(self.model, torch.nn.Module)
        hook = (
            head_layer(self.model, len(self.labels)).register_forward_hook(lambda m, i, o: seen.append(i[0]))
            if hooked
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
                    served = getattr(out, "features", None)
                    batch = (
                        {kind: served[kind] for kind in kinds}
                        if served is not None
                        else _torch_features(out, enc["attention_mask"], kinds, seen)
                    )
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
        # Columns as arrays, one DataFrame at the end: per-query serving pays for every pandas operation
        # (an in-place .loc assignment alone costs about a millisecond).
        labels = np.asarray(self.labels, dtype=object)[best]
        columns: dict[str, Any] = {"label": labels, "score": proba[np.arange(len(best)), best].astype(float)}
        if scope is not None:
            scores = scope.scores(logits, feats)
            in_scope = scores >= scope.threshold
            columns["label"] = np.where(in_scope, labels, scope.fallback_label)
            columns["in_scope"] = in_scope
            columns["oos_score"] = scores.astype(float)
            columns["threshold"] = np.full(len(best), float(scope.threshold))
        return pd.DataFrame(columns)

    def labels_of(self, texts: list[str], batch_size: int = 128) -> list[str]:
        """The classifier's top label per text (no out-of-scope fallback)."""
        if not texts:
            return []
        return [self.labels[i] for i in self.forward(texts, batch_size)[0].argmax(-1)]


def _torch_features(out: Any, mask: Any, kinds: tuple[str, ...], seen: list[Any]) -> dict[str, Any]:
    """The feature kinds of one batch from a torch model's output (``seen``: the head hook's input)."""
    import torch

    from tuneflow.backbone.pooling import mean_pool

    batch: dict[str, Any] = {}
    if "head" in kinds:
        batch["head"] = seen.pop()
    if "mean_pooled" in kinds:
        batch["mean_pooled"] = mean_pool(out.hidden_states[-1], mask)
    if "layer_mean" in kinds:
        # hidden_states[0] is the embedding output, not a transformer layer
        layers = [mean_pool(h, mask) for h in out.hidden_states[1:]]
        batch["layer_mean"] = torch.stack(layers).mean(0)
    return batch


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
