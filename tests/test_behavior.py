"""Behaviour checks flag a model that depends on what should not matter (CheckList-style)."""

from __future__ import annotations

import numpy as np

from tuneflow.judging.behavior import INVARIANCE, check_behavior, contraction, number, punctuation, typo

TEXTS = [
    "Where is my parcel from London?",
    "I can't log in to my account",
    "Cancel the order I placed 3 days ago",
    "Mary wants a refund of 20 dollars",
    "What's the delivery status",
    "My payment was declined twice",
] * 5


def test_a_model_that_depends_on_casing_is_flagged() -> None:
    def shouty(texts: list[str]) -> list[str]:  # a "model" that reads capital letters, nothing else
        return ["formal" if any(c.isupper() for c in t) else "casual" for t in texts]

    report = check_behavior(TEXTS, shouty, max_examples=30)
    assert report.rates["casing"] == 0.0 and report.worst() == "casing"
    assert report.rates["punctuation"] == 1.0 and report.rates["contraction"] == 1.0
    assert report.metrics()["behavior/min_pass_rate"] == 0.0
    failures = report.failures[report.failures["test"] == "casing"]
    assert len(failures) == report.cases["casing"] and (failures["before"] == "formal").all()
    # A model that ignores casing passes the same test.
    steady = check_behavior(TEXTS, lambda ts: [t.lower()[:5] for t in ts], max_examples=30)
    assert steady.rates["casing"] == 1.0


def test_negation_must_lower_the_positive_probability() -> None:
    labels = ["negative", "positive"]

    def proba(texts: list[str]) -> np.ndarray:  # ignores negation: the test must catch it
        return np.array([[0.2, 0.8] for _ in texts])

    report = check_behavior(
        TEXTS, lambda ts: ["positive"] * len(ts), proba, labels, positive_label="positive", max_examples=10
    )
    assert report.rates["negation"] == 0.0

    def aware(texts: list[str]) -> np.ndarray:
        return np.array([[0.9, 0.1] if "not true" in t else [0.2, 0.8] for t in texts])

    report = check_behavior(
        TEXTS, lambda ts: ["positive"] * len(ts), aware, labels, positive_label="positive", max_examples=10
    )
    assert report.rates["negation"] == 1.0


def test_perturbations_are_the_named_edits() -> None:
    import random

    rng = random.Random(0)
    assert contraction("I can't log in", rng) == "I cannot log in"
    assert contraction("I do not know", rng) == "I don't know"
    assert (
        punctuation("where is it?", rng) == "where is it"
        and punctuation("where is it", rng) == "where is it."
    )
    assert number("no numbers here", rng) is None and number("order 123", rng) != "order 123"
    changed = typo("parcel", rng)
    assert changed != "parcel" and sorted(changed) == sorted("parcel")
    assert {c.name for c in INVARIANCE} == {
        "typo",
        "casing",
        "punctuation",
        "contraction",
        "number",
        "name",
        "place",
    }


def test_label_noise_detection_finds_flipped_labels() -> None:
    from tuneflow.data.labelquality import find_label_issues

    rng = np.random.default_rng(0)
    n, k = 600, 4
    truth = rng.integers(0, k, n)
    # Out-of-fold probabilities of a decent model: ~0.8 on the true class.
    proba = rng.dirichlet(np.ones(k), n) * 0.2
    proba[np.arange(n), truth] += 0.8
    given = truth.copy()
    flipped = rng.choice(n, 30, replace=False)
    given[flipped] = (truth[flipped] + 1 + rng.integers(0, k - 1, 30)) % k
    texts = [f"example {i}" for i in range(n)]
    issues = find_label_issues(texts, given, proba, ["a", "b", "c", "d"])
    found = {int(t.split()[1]) for t in issues.table["text"]}
    assert len(found & set(flipped.tolist())) >= 27 and len(found - set(flipped.tolist())) <= 5
    top = issues.table.iloc[0]
    assert top["suggested_label"] != top["given_label"] and top["p_suggested"] > top["p_given"]
    assert issues.metrics()["label_quality/issues"] == len(issues.table)
    assert issues.warning(0.01) is not None and issues.warning(0.5) is None


def test_labels_already_known_are_not_predicted_again() -> None:
    """The evaluation passes the test-set pass's labels: only the perturbed texts are predicted."""
    seen: list[str] = []

    def shouty(texts: list[str]) -> list[str]:
        seen.extend(texts)
        return ["formal" if any(c.isupper() for c in t) else "casual" for t in texts]

    known = {t: shouty([t])[0] for t in TEXTS}
    seen.clear()
    report = check_behavior(TEXTS, shouty, max_examples=30, known=known)
    assert seen and not set(seen) & set(TEXTS)  # only perturbed texts went through the model
    assert report.rates == check_behavior(TEXTS, shouty, max_examples=30).rates
