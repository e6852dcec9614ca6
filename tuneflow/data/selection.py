"""Choosing which unlabelled texts a person should label next (``tuneflow label``): pure arrays in, row
indices out; the model's probabilities and sentence features are computed by the caller.

The default picks the texts the model is least sure of, spread over the feature space, as Zhdanov (2019,
"Diverse mini-batch Active Learning") does: the ``prefilter`` x N texts with the smallest margin between the
two most probable labels, clustered into N groups by k-means weighted by that uncertainty; from each
group, the text nearest its centre. Uncertainty alone picks many near-copies of one confusing question;
clustering alone labels what the model already knows.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Strategy = Literal["uncertain-diverse", "uncertain", "random"]
STRATEGIES: tuple[str, ...] = ("uncertain-diverse", "uncertain", "random")
PREFILTER = 10  # Zhdanov's beta: candidates per pick kept for the clustering


def margins(proba: np.ndarray) -> np.ndarray:
    """The probability of the most likely label minus the second's, per row (0 = a tie, 1 = certain)."""
    if proba.shape[1] < 2:
        return np.ones(len(proba))
    top = np.partition(proba, -2, axis=1)[:, -2:]
    return top[:, 1] - top[:, 0]


def pick(
    proba: np.ndarray,
    features: np.ndarray | None,
    n: int,
    seed: int = 0,
    strategy: Strategy = "uncertain-diverse",
    prefilter: int = PREFILTER,
) -> np.ndarray:
    """The rows to label, most informative first.

    Args:
        proba: calibrated class probabilities, (rows, labels).
        features: a sentence vector per row, (rows, dims); only ``uncertain-diverse`` uses it.
        n: how many rows to pick (all of them when there are fewer).
        seed: k-means' and ``random``'s seed.
        strategy: ``uncertain-diverse`` (the default, above), ``uncertain`` (smallest margins only) or
            ``random`` (the baseline the default is measured against).
        prefilter: candidates per pick for ``uncertain-diverse``.

    Returns:
        Distinct row indices, at most ``n``.
    """
    rows = len(proba)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: one of {', '.join(STRATEGIES)}")
    if n <= 0 or rows == 0:
        return np.zeros(0, dtype=int)
    if strategy == "random":
        return np.random.default_rng(seed).permutation(rows)[:n]
    uncertainty = 1.0 - margins(proba)
    ranked = np.argsort(-uncertainty, kind="stable")
    if strategy == "uncertain" or n >= rows:
        return ranked[:n]
    if features is None:
        raise ValueError("strategy uncertain-diverse needs a feature vector per row")
    candidates = ranked[: min(rows, prefilter * n)]
    if len(candidates) <= n:
        return candidates
    return candidates[_centres(features[candidates], uncertainty[candidates], n, seed)]


def _centres(features: np.ndarray, weights: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices (into ``features``) of the row nearest each of ``n`` weighted k-means centres, most
    uncertain first; an empty cluster's place goes to the most uncertain row not yet taken."""
    from sklearn.cluster import KMeans

    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    # Weights strictly positive: a certain row (margin 1) still counts as a member of its cluster.
    km = KMeans(n_clusters=n, n_init=1, random_state=seed).fit(unit, sample_weight=weights + 1e-6)
    distance = np.linalg.norm(unit - km.cluster_centers_[km.labels_], axis=1)
    chosen = []
    for cluster in range(n):
        members = np.flatnonzero(km.labels_ == cluster)
        if len(members):
            chosen.append(members[np.argmin(distance[members])])
    taken = set(chosen)
    chosen += [i for i in np.argsort(-weights, kind="stable") if i not in taken][: n - len(chosen)]
    chosen = np.asarray(chosen, dtype=int)
    return chosen[np.argsort(-weights[chosen], kind="stable")]
