"""Every out-of-scope method x threshold rule on one open-intent cell's model (``bench.open_intents
--variants``), from the logits and features cached by the cell: what the default was chosen by.

Every rule decides from known intents only: a share of in-scope validation questions kept, or one of two
held-out-intent rules that were tried — each validation question scored a second time as if its own intent
had never been taught (its logit masked, its class mean or its class's training examples left out), and
the threshold maximizing Youden's J between the two sets; in the fine-tuned model's space, or, for the
share of questions kept, in the pre-trained encoder's (which never saw which intents are known).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bench.open_intents import OPEN, open_metrics

KINDS = ("head", "mean_pooled", "layer_mean")
RECALLS = (0.8, 0.85, 0.9, 0.95, 0.98)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _index(labels: np.ndarray, names: np.ndarray) -> np.ndarray:
    where = {n: i for i, n in enumerate(labels)}
    return np.array([where.get(n, -1) for n in names])


def score_sets(z: Any) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """Scores per method for validation / test / oos_test, and each feature method's held-out-intent
    validation scores (its own intent removed from what it is compared with)."""
    from tuneflow.judging.outofscope import Gaussian, in_scope_scores

    labels = z["labels"]
    y_train, y_val = _index(labels, z["train/y"]), _index(labels, z["validation/y"])
    sets = ("validation", "test", "oos_test")
    scores: dict[str, dict[str, np.ndarray]] = {}
    loco: dict[str, np.ndarray] = {}
    for m in ("msp", "energy"):
        scores[m] = {s: in_scope_scores(m, z[f"{s}/logits"], None, 1.0, None) for s in sets}
        # held out: the logits without the question's own intent
        masked = z["validation/logits"].copy()
        masked[np.arange(len(y_val)), y_val] = -np.inf
        loco[m] = in_scope_scores(m, masked, None, 1.0, None)
    for kind in KINDS:
        train = _unit(z[f"train/{kind}"])
        sims = {s: _unit(z[f"{s}/{kind}"]) @ train.T for s in sets}
        name = f"knn {kind}"
        scores[name] = {s: -np.sqrt(np.maximum(2 - 2 * v.max(1), 0)) for s, v in sims.items()}
        own = sims["validation"].copy()
        own[y_val[:, None] == y_train[None, :]] = -np.inf
        loco[name] = -np.sqrt(np.maximum(2 - 2 * own.max(1), 0))
        gaussian = Gaussian.fit(z[f"train/{kind}"], y_train, len(labels))
        name = f"mahalanobis {kind}"
        scores[name] = {s: -gaussian.min_distance(z[f"{s}/{kind}"]) for s in sets}
        loco[name] = -_distance_without_own(gaussian, z[f"validation/{kind}"], y_val)
        # centroid cosine: nearest normalized class mean (ADB's spherical boundaries' centres)
        centres = _unit(np.stack([train[y_train == c].mean(0) for c in range(len(labels))]))
        name = f"centroid {kind}"
        cs = {s: _unit(z[f"{s}/{kind}"]) @ centres.T for s in sets}
        scores[name] = {s: v.max(1) for s, v in cs.items()}
        own = cs["validation"].copy()
        own[np.arange(len(y_val)), y_val] = -np.inf
        loco[name] = own.max(1)
    for kind in KINDS:
        parts = (f"knn {kind}", f"mahalanobis {kind}")
        mu = {p: (scores[p]["validation"].mean(), scores[p]["validation"].std() or 1.0) for p in parts}
        name = f"knn+mahalanobis {kind}"
        scores[name] = {s: sum((scores[p][s] - mu[p][0]) / mu[p][1] for p in parts) for s in sets}
        loco[name] = sum((loco[p] - mu[p][0]) / mu[p][1] for p in parts)
    return scores, loco


def _distance_without_own(gaussian: Any, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    xp = x @ gaussian.precision
    d = (
        np.einsum("ij,ij->i", xp, x)[:, None]
        - 2 * xp @ gaussian.means.T
        + ((gaussian.means @ gaussian.precision) * gaussian.means).sum(1)[None, :]
    )
    d[np.arange(len(y)), y] = np.inf
    return d.min(1)


def _held_out_recall(z: dict[str, np.ndarray]) -> float:
    """The share of in-scope validation questions the pre-trained encoder's held-out simulation keeps: knn
    (k=1) among all training questions vs among the other intents' only, Youden's J between the two."""
    labels = z["labels"]
    y_train, y_val = _index(labels, z["train/y"]), _index(labels, z["validation/y"])
    sims = _unit(z["validation/base"]) @ _unit(z["train/base"]).T
    inside = sims.max(1)
    sims[y_val[:, None] == y_train[None, :]] = -np.inf
    return float((inside >= youden(inside, sims.max(1))).mean())


def youden(in_scope: np.ndarray, held_out: np.ndarray) -> float:
    from tuneflow.judging.outofscope import threshold_on_oos

    return threshold_on_oos(in_scope, held_out)


def score_variants(cell: Path, result: dict[str, Any]) -> dict[str, Any]:
    """Open-intent metrics of every method x rule on this cell's model (``rules``), and each method's test
    AUROC, known-intent questions vs the others (``auroc``: how well it ranks, whatever the threshold)."""
    from sklearn.metrics import roc_auc_score

    from tuneflow.judging.outofscope import threshold_for_recall

    z = dict(np.load(cell / "features.npz", allow_pickle=True))  # the cell's own cache
    labels = z["labels"]
    scores, loco = score_sets(z)
    recall = _held_out_recall(z)
    truth = [*z["test/y"].tolist(), *[OPEN] * len(z["oos_test/y"])]
    closed = labels[np.r_[z["test/logits"].argmax(1), z["oos_test/logits"].argmax(1)]]
    out: dict[str, dict[str, dict[str, float]]] = {}
    auroc: dict[str, float] = {}
    for method, sc in scores.items():
        val = sc["validation"]
        rules = {f"keep {round(100 * r)}%": threshold_for_recall(val, r) for r in RECALLS}
        rules["held-out intents, fine-tuned space"] = youden(val, loco[method])
        rules["held-out intents, pre-trained space"] = threshold_for_recall(val, recall)
        test = np.r_[sc["test"], sc["oos_test"]]
        auroc[method] = float(
            roc_auc_score(np.r_[np.ones(len(sc["test"])), np.zeros(len(sc["oos_test"]))], test)
        )
        out[method] = {}
        for rule, t in rules.items():
            answer = np.where(test >= t, closed, OPEN).tolist()
            m = open_metrics(truth, answer, result["known"])
            m["val_kept"] = 100 * float((val >= t).mean())
            out[method][rule] = m
    return {"rules": out, "auroc": auroc, "held_out_recall_pretrained": recall}


# The rows RESULTS.md shows (every method x rule is in the JSON): the default's rules, the previous default.
SHOWN = (
    ("knn layer_mean", ("keep 85%", "keep 90%", "keep 95%")),
    ("knn layer_mean", ("held-out intents, fine-tuned space", "held-out intents, pre-trained space")),
    ("energy", ("keep 95%",)),
)


def variant_rows(results: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Median over seeds of the shown variants, per (dataset, ratio), and each method's median AUROC."""
    import statistics

    cells: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in results:
        if "variants" in r:
            cells.setdefault((r["dataset"], r["ratio"]), []).append(r["variants"])
    rows = []
    for (dataset, ratio), vs in sorted(cells.items()):
        where = f"{dataset} {round(100 * ratio)}% known"
        for method, rules in SHOWN:
            parts = []
            for rule in rules:
                acc = statistics.median(v["rules"][method][rule]["accuracy"] for v in vs)
                f1 = statistics.median(v["rules"][method][rule]["macro_f1"] for v in vs)
                kept = statistics.median(v["rules"][method][rule]["val_kept"] for v in vs)
                parts.append(f"{rule}: acc {acc:.1f} / macro F1 {f1:.1f} (val kept {kept:.0f}%)")
            rows.append(
                {
                    "what": f"open intents, {where}: {method}, threshold rules (median of {len(vs)} seeds)",
                    "result": "; ".join(parts),
                    "target": "report: what the default rule was chosen by",
                    "data": "the same models as the served rows; every method x rule in the JSON",
                }
            )
        auroc = {m: statistics.median(v["auroc"][m] for v in vs) for m in vs[0]["auroc"]}
        ranked = sorted(auroc.items(), key=lambda kv: -kv[1])
        rows.append(
            {
                "what": f"open intents, {where}: test AUROC per method (median of {len(vs)} seeds)",
                "result": "; ".join(f"{m} {a:.3f}" for m, a in ranked),
                "target": "report: which score ranks unknown-intent questions lowest",
                "data": "the same models as the served rows",
            }
        )
    return rows
