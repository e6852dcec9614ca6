"""Out-of-scope detection: a classifier that answers "I don't know" instead of forcing a known intent.

Every method turns a query into an *in-scope score* (higher = more like the training intents); queries
scoring under a threshold get the fallback label. Methods:

* ``msp`` — maximum calibrated softmax probability (Hendrycks & Gimpel, 2017).
* ``energy`` — ``T * logsumexp(logits / T)``, the negative free energy (Liu et al., 2020): uses the logits'
  magnitude, which softmax throws away.
* ``mahalanobis`` — minus the smallest Mahalanobis distance of the classifier head's input features (or,
  with ``oos.features: mean_pooled``, the mean of the encoder's last hidden states over real tokens) to the
  class means, with one covariance shared by all classes, fitted on the training split (Lee et al., 2018;
  Podolskiy et al., 2021 for fine-tuned transformers on CLINC150).
* ``knn`` — minus the distance of the L2-normalized features to the k-th nearest training example (Sun et
  al., 2022, "Out-of-distribution detection with deep nearest neighbors"): no Gaussian assumption; the
  normalized training features ship with the model.

Features (``oos.features``, for ``mahalanobis`` and ``knn``): ``head`` = the classifier head's input,
``mean_pooled`` = the last layer's token states averaged over real tokens, ``layer_mean`` = that average
taken at every transformer layer, then averaged over layers (Chen et al., 2022, "Holistic sentence
embeddings for better out-of-distribution detection": earlier layers keep what fine-tuning discards).

Several methods can be combined (``oos.method: [knn, mahalanobis]``): each method's scores are standardized
by their mean and spread on in-scope validation queries, then summed, so no method dominates by its units.

The threshold comes from in-scope validation examples only (keep ``target_in_scope_recall`` of them: 90% by
default), or, when out-of-scope validation examples exist, maximizes in-scope recall + out-of-scope recall
on them (Youden's J). No out-of-scope example is ever used for training. Rules that simulate unknown
intents from the known ones (each validation question scored as if its intent were untaught, in the
fine-tuned or the pre-trained encoder's space) were measured and lost to the fixed share: one keeps far
too many questions when few intents are known, the other far too few when many are
(``python -m bench open_intents --variants``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from tuneflow import names
from tuneflow.judging.calibration import softmax
from tuneflow.onnxrt import Sessions, quantize_int8

SCOPE_FILE = "scope.json"
GAUSSIAN_FILE = "scope_gaussian.npz"
NEIGHBORS_FILE = "scope_neighbors.npz"


@dataclass(frozen=True)
class Gaussian:
    """Class means and the shared precision matrix of the head's input features (Mahalanobis)."""

    means: np.ndarray  # (classes, features)
    precision: np.ndarray  # (features, features)

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, n_classes: int) -> Gaussian:
        """Means per class and the pooled within-class covariance with Ledoit-Wolf shrinkage.

        Shrinkage keeps the covariance well-conditioned when there are few examples per feature (a demo's
        400 sentences in 384 dimensions): a plain inverse there turns tiny directions into huge distances.
        """
        from sklearn.covariance import ledoit_wolf

        x = np.asarray(features, dtype=np.float64)
        means = np.stack(
            [x[labels == c].mean(axis=0) if (labels == c).any() else x.mean(axis=0) for c in range(n_classes)]
        )
        cov, _ = ledoit_wolf(x - means[labels], assume_centered=True)
        return cls(means, np.linalg.pinv(cov, hermitian=True))

    def min_distance(self, features: np.ndarray) -> np.ndarray:
        """The squared Mahalanobis distance to the nearest class mean, per row."""
        x = np.asarray(features, dtype=np.float64)
        # (x - m)^T P (x - m) = x^T P x - 2 x^T P m + m^T P m, for all classes at once.
        xp = x @ self.precision
        quad_x = np.einsum("ij,ij->i", xp, x)
        return (quad_x[:, None] - 2 * xp @ self.means.T + self._quad_means[None, :]).min(axis=1)

    @cached_property
    def _quad_means(self) -> np.ndarray:
        """m^T P m per class: fixed once fitted, and the largest product of a served query's score (a
        three-operand einsum took ~30 ms per call for 150 classes in 384 dimensions)."""
        return ((self.means @ self.precision) * self.means).sum(axis=1)


@dataclass(frozen=True)
class Neighbors:
    """L2-normalized training features; a query's score is minus its distance to the k-th nearest one.

    With ``int8`` (the detector of an ``export.quantize: int8`` model) the products with the bank run in ONNX
    Runtime on an int8 copy of it, one scale per bank row: a 15,000 x 384 bank is 5.8 MB to read per query
    instead of 23 MB, which is what a single query's product costs (bench/RESULTS.md, CLINC150).
    """

    bank: np.ndarray  # (examples, features), unit rows, float32
    k: int = 1
    int8: bool = False
    _sessions: Sessions | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Stored feature-major: a query's product then reads the bank row by row (BLAS's fast case), 1.5x
        # faster for one query than the example-major layout; ``bank`` keeps its shape.
        object.__setattr__(self, "bank", np.asfortranarray(self.bank, dtype=np.float32))

    @classmethod
    def fit(cls, features: np.ndarray, k: int = 1, int8: bool = False) -> Neighbors:
        """The bank of normalized training features (``k`` <= their count)."""
        if not 1 <= k <= len(features):
            raise ValueError(f"knn: k={k} needs between 1 and {len(features)} (the training examples)")
        return cls(_unit(features), k, int8)

    def kth_distance(self, features: np.ndarray, chunk: int = 1024) -> np.ndarray:
        """Euclidean distance of each normalized query to its k-th nearest bank row."""
        q = _unit(features)
        out = np.empty(len(q), dtype=np.float64)
        for start in range(0, len(q), chunk):  # chunks bound the (queries x bank) similarity matrix
            kth = self._kth_similarity(q[start : start + chunk])
            out[start : start + chunk] = np.sqrt(np.maximum(2.0 - 2.0 * kth, 0.0))
        return out

    def _kth_similarity(self, q: np.ndarray) -> np.ndarray:
        if self.int8:
            return self._session().run(None, {"query": q})[0][:, -1]
        sims = q @ self.bank.T
        # k = 1 (the configs' choice) is a max: a partition of a 15,000-example bank costs 40x more.
        return sims.max(axis=1) if self.k == 1 else -np.partition(-sims, self.k - 1, axis=1)[:, self.k - 1]

    def _session(self) -> Any:
        """The int8 graph (query -> its k highest similarities), one session per torch thread count as for
        the quantized model itself."""
        if self._sessions is None:
            object.__setattr__(self, "_sessions", Sessions(_int8_topk_graph(self.bank, self.k)))
        return self._sessions.get()


def _int8_topk_graph(bank: np.ndarray, k: int) -> bytes:
    """An ONNX graph of the queries' ``k`` highest similarities with ``bank``, its weights quantized per bank
    row by ONNX Runtime's dynamic quantization (the query is quantized per call)."""
    import tempfile

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("MatMul", ["query", "bank"], ["similarity"]),
        helper.make_node("TopK", ["similarity", "k"], ["top", "index"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "knn",
        [helper.make_tensor_value_info("query", TensorProto.FLOAT, ["n", bank.shape[1]])],
        [helper.make_tensor_value_info("top", TensorProto.FLOAT, ["n", k])],
        [
            numpy_helper.from_array(np.ascontiguousarray(bank.T), "bank"),
            numpy_helper.from_array(np.array([k], dtype=np.int64), "k"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "knn.onnx", Path(tmp) / "knn_int8.onnx"
        onnx.save(model, fp32)
        # 7 bits: one bank row's distances must hold on any CPU (see quantize_int8).
        return quantize_int8(fp32, int8, reduce_range=True).read_bytes()


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _msp(logits: np.ndarray, features: Any, temperature: float, gaussian: Any, neighbors: Any) -> np.ndarray:
    return softmax(logits, temperature).max(axis=1)


def _energy(
    logits: np.ndarray, features: Any, temperature: float, gaussian: Any, neighbors: Any
) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    top = z.max(axis=1)
    return temperature * (top + np.log(np.exp(z - top[:, None]).sum(axis=1)))


def _mahalanobis(
    logits: Any, features: np.ndarray | None, temperature: float, gaussian: Any, neighbors: Any
) -> np.ndarray:
    if gaussian is None or features is None:
        raise ValueError("the mahalanobis method needs the encoder's features and a fitted Gaussian")
    return -gaussian.min_distance(features)


def _knn(
    logits: Any, features: np.ndarray | None, temperature: float, gaussian: Any, neighbors: Any
) -> np.ndarray:
    if neighbors is None or features is None:
        raise ValueError("the knn method needs the encoder's features and the training features' bank")
    return -neighbors.kth_distance(features)


@dataclass(frozen=True)
class Method:
    """One out-of-scope method: how it scores (higher = more in scope) and what it fits on the training
    split's features (the :class:`ScopeDetector` fields it fills); logit-only methods fit nothing."""

    name: str
    score: Callable[[np.ndarray, np.ndarray | None, float, Gaussian | None, Neighbors | None], np.ndarray]
    fit: Callable[[np.ndarray, np.ndarray, int, int, bool], dict[str, Any]] | None = (
        None  # (features, labels, classes, k, int8)
    )

    @property
    def reads_features(self) -> bool:
        return self.fit is not None


SCOPE_METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("msp", _msp),
        Method("energy", _energy),
        Method("mahalanobis", _mahalanobis, lambda x, y, n, k, q: {"gaussian": Gaussian.fit(x, y, n)}),
        Method("knn", _knn, lambda x, y, n, k, q: {"neighbors": Neighbors.fit(x, min(k, len(x)), q)}),
    )
}
"""The registry of out-of-scope methods (``oos.method``). Adding one: a :class:`Method` here and its name in
:data:`tuneflow.config.ScopeMethod` (a test checks both lists agree)."""
METHODS = tuple(SCOPE_METHODS)
FEATURE_METHODS = tuple(name for name, m in SCOPE_METHODS.items() if m.reads_features)
LOGIT_METHODS = tuple(name for name, m in SCOPE_METHODS.items() if not m.reads_features)


def in_scope_scores(
    method: str,
    logits: np.ndarray,
    features: np.ndarray | None,
    temperature: float,
    gaussian: Gaussian | None,
    neighbors: Neighbors | None = None,
) -> np.ndarray:
    """The in-scope score of each example (higher = more in scope) under ``method``."""
    if method not in SCOPE_METHODS:
        raise ValueError(f"unknown out-of-scope method {method!r}; one of {METHODS}")
    return SCOPE_METHODS[method].score(logits, features, temperature, gaussian, neighbors)


def fit_methods(
    methods: tuple[str, ...],
    features: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    k: int,
    int8: bool = False,
) -> dict[str, Any]:
    """What ``methods`` fit on the training features: the :class:`ScopeDetector` fields to set (``int8``:
    for a quantized model, whose knn bank is served in int8 too)."""
    fitted: dict[str, Any] = {}
    for name in methods:
        if SCOPE_METHODS[name].fit is not None:
            fitted.update(SCOPE_METHODS[name].fit(features, labels, n_classes, k, int8))
    return fitted


def standardization(parts: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """Each method's (mean, std) over in-scope validation scores: what ``combine`` divides out."""
    return {m: (float(np.mean(v)), float(np.std(v)) or 1.0) for m, v in parts.items()}


def combine(parts: dict[str, np.ndarray], standardize: dict[str, tuple[float, float]]) -> np.ndarray:
    """The sum of each method's standardized scores (higher = more in scope)."""
    return np.sum([(v - standardize[m][0]) / standardize[m][1] for m, v in parts.items()], axis=0)


def threshold_for_recall(in_scope: np.ndarray, recall: float) -> float:
    """The score above which a share ``recall`` of the in-scope examples lies."""
    return float(np.quantile(np.asarray(in_scope, dtype=np.float64), 1 - recall, method="lower"))


def threshold_on_oos(in_scope: np.ndarray, oos: np.ndarray) -> float:
    """The threshold maximizing in-scope recall + out-of-scope recall (Youden's J) on labelled examples."""
    candidates = np.unique(np.concatenate([in_scope, oos]))
    kept_in = 1 - np.searchsorted(np.sort(in_scope), candidates, side="left") / len(in_scope)
    caught_oos = np.searchsorted(np.sort(oos), candidates, side="left") / len(oos)
    return float(candidates[int(np.argmax(kept_in + caught_oos))])


def scope_metrics(
    in_scores: np.ndarray, in_correct: np.ndarray, oos_scores: np.ndarray | None, threshold: float
) -> dict[str, float]:
    """Metrics with the fallback applied (section ``oos/``).

    Args:
        in_scores: in-scope scores of in-scope test examples.
        in_correct: whether the classifier's top label is right for each of them.
        oos_scores: scores of out-of-scope test examples, when the config gives some.
        threshold: scores below it get the fallback label.

    Returns:
        ``in_scope_accuracy`` (right label *and* kept: Larson et al.'s), ``in_scope_recall``;
        with out-of-scope examples also ``recall``, ``precision``, ``auroc`` (out-of-scope = positive) and
        ``fpr_at_95`` (share of out-of-scope queries kept when 95% of in-scope ones are).
    """
    from sklearn.metrics import roc_auc_score

    kept = in_scores >= threshold
    out = {
        f"{names.OOS}in_scope_accuracy": float((kept & in_correct).mean()),
        f"{names.OOS}in_scope_recall": float(kept.mean()),
        f"{names.OOS}threshold": float(threshold),
    }
    if oos_scores is not None and len(oos_scores):
        caught = oos_scores < threshold
        rejected = int(caught.sum() + (~kept).sum())
        y = np.r_[np.zeros(len(in_scores)), np.ones(len(oos_scores))]
        at95 = threshold_for_recall(in_scores, 0.95)
        out.update(
            {
                f"{names.OOS}recall": float(caught.mean()),
                f"{names.OOS}precision": float(caught.sum() / rejected) if rejected else 0.0,
                f"{names.OOS}auroc": float(roc_auc_score(y, -np.r_[in_scores, oos_scores])),
                f"{names.OOS}fpr_at_95": float((oos_scores >= at95).mean()),
            }
        )
    return out


@dataclass(frozen=True)
class ScopeDetector:
    """What serving needs to answer "out of scope": method, threshold, temperature, and the Gaussian
    (mahalanobis) or the training features' bank (knn)."""

    methods: tuple[str, ...]  # combined methods' scores are standardized, then summed
    threshold: float
    fallback_label: str
    temperature: float = 1.0
    gaussian: Gaussian | None = None
    features: str = "head"  # what the Gaussian / bank was fitted on (oos.features)
    neighbors: Neighbors | None = None
    # combined methods ("knn+mahalanobis"): each part's (mean, std) on in-scope validation queries
    standardize: dict[str, tuple[float, float]] | None = None

    @property
    def method(self) -> str:
        """The method's name as ``scope.json`` stores it (``knn+mahalanobis`` when combined)."""
        return "+".join(self.methods)

    @property
    def feature_kind(self) -> str | None:
        """The features scoring needs from the model's forward pass (None: the logits are enough)."""
        return self.features if set(self.methods) & set(FEATURE_METHODS) else None

    def part_scores(self, logits: np.ndarray, features: np.ndarray | None) -> dict[str, np.ndarray]:
        """Each combined method's own in-scope scores (one entry for a single method)."""
        return {
            m: in_scope_scores(m, logits, features, self.temperature, self.gaussian, self.neighbors)
            for m in self.methods
        }

    def scores(self, logits: np.ndarray, features: np.ndarray | None) -> np.ndarray:
        parts = self.part_scores(logits, features)
        if len(parts) == 1:
            return next(iter(parts.values()))
        if self.standardize is None:
            raise ValueError(f"the combined method {self.method} needs each part's validation mean and std")
        return combine(parts, self.standardize)

    def save(self, model_dir: str | Path) -> list[str]:
        """Write ``scope.json`` (and the Gaussian or the knn bank as ``.npz``, no pickle) into an export
        directory."""
        model_dir = Path(model_dir)
        spec: dict[str, Any] = {
            "method": self.method,
            "threshold": self.threshold,
            "fallback_label": self.fallback_label,
            "features": self.features,
        }
        if self.neighbors is not None:
            spec["k"] = self.neighbors.k
            spec["knn_int8"] = self.neighbors.int8
        if self.standardize is not None:
            spec["standardize"] = {m: list(v) for m, v in self.standardize.items()}
        (model_dir / SCOPE_FILE).write_text(json.dumps(spec, indent=2))
        files = [SCOPE_FILE]
        if self.gaussian is not None:
            np.savez(model_dir / GAUSSIAN_FILE, means=self.gaussian.means, precision=self.gaussian.precision)
            files.append(GAUSSIAN_FILE)
        if self.neighbors is not None:
            np.savez(model_dir / NEIGHBORS_FILE, bank=self.neighbors.bank)
            files.append(NEIGHBORS_FILE)
        for f in files:
            (model_dir / f).chmod(0o644)
        return files

    @classmethod
    def load(cls, model_dir: str | Path, temperature: float = 1.0) -> ScopeDetector | None:
        """The detector saved in ``model_dir`` (``temperature``: the model's calibration) or None."""
        model_dir = Path(model_dir)
        if not (model_dir / SCOPE_FILE).is_file():
            return None
        spec = json.loads((model_dir / SCOPE_FILE).read_text())
        gaussian = None
        if (model_dir / GAUSSIAN_FILE).is_file():
            with np.load(model_dir / GAUSSIAN_FILE, allow_pickle=False) as z:
                gaussian = Gaussian(z["means"], z["precision"])
        neighbors = None
        if (model_dir / NEIGHBORS_FILE).is_file():
            with np.load(model_dir / NEIGHBORS_FILE, allow_pickle=False) as z:
                neighbors = Neighbors(z["bank"], int(spec.get("k", 1)), bool(spec.get("knn_int8", False)))
        return cls(
            tuple(spec["method"].split("+")),
            float(spec["threshold"]),
            spec["fallback_label"],
            temperature,
            gaussian,
            spec.get("features", "head"),  # detectors saved before oos.features existed used the head's
            neighbors,
            {m: (float(a), float(b)) for m, (a, b) in spec["standardize"].items()}
            if "standardize" in spec
            else None,
        )
