"""Behaviour checks (CheckList-style, Ribeiro et al. 2020): does the prediction survive edits that should not
matter, and move the right way after edits that should?

Invariance tests perturb test texts in ways a user would not call a different request: a typo, casing,
end punctuation, a contraction expanded or contracted, another number, name or place. The prediction
should not change. The directional test (sentiment; ``eval.positive_label``) adds a negation to texts
predicted positive: the positive probability should fall. Each test reports its pass rate over the test
examples it applies to, and the failures as a table.

The perturbations are deterministic (seeded) and written here: CheckList itself is unmaintained and pins
an old spaCy, and nlpaug's offline augmenters are random character noise rather than these named edits.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tuneflow import names

CONTRACTIONS = {
    "can't": "cannot",
    "won't": "will not",
    "don't": "do not",
    "doesn't": "does not",
    "didn't": "did not",
    "isn't": "is not",
    "aren't": "are not",
    "wasn't": "was not",
    "haven't": "have not",
    "hasn't": "has not",
    "i'm": "i am",
    "it's": "it is",
    "that's": "that is",
    "what's": "what is",
    "where's": "where is",
    "you're": "you are",
    "i've": "i have",
    "i'd": "i would",
    "i'll": "i will",
    "let's": "let us",
}
NAMES = [
    "John",
    "Mary",
    "Ahmed",
    "Wei",
    "Sofia",
    "Carlos",
    "Priya",
    "Olga",
    "Kenji",
    "Fatima",
    "Liam",
    "Emma",
]
PLACES = ["London", "Paris", "Berlin", "Madrid", "Tokyo", "Toronto", "Sydney", "Chicago", "Mumbai", "Lagos"]
_WORD = re.compile(r"[A-Za-z]{4,}")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_END = re.compile(r"[.!?]+$")


def typo(text: str, rng: random.Random) -> str | None:
    """Swap two adjacent inner letters of one word of 4+ letters."""
    words = list(_WORD.finditer(text))
    if not words:
        return None
    w = rng.choice(words)
    i = rng.randrange(w.start() + 1, w.end() - 2)
    return text[:i] + text[i + 1] + text[i] + text[i + 2 :]


def casing(text: str, rng: random.Random) -> str | None:
    """All lower case; a text that already is gets its first letter capitalized."""
    lowered = text.lower()
    return lowered if lowered != text else (text[:1].upper() + text[1:] if text[:1].isalpha() else None)


def punctuation(text: str, rng: random.Random) -> str | None:
    """Drop the end punctuation, or add a full stop where there is none."""
    stripped = text.rstrip()
    return _END.sub("", stripped) if _END.search(stripped) else stripped + "."


def contraction(text: str, rng: random.Random) -> str | None:
    """Expand a contraction ("can't" -> "cannot"), or contract an expanded form."""
    lowered = text.lower()
    for short, long in CONTRACTIONS.items():
        for a, b in ((short, long), (long, short)):
            m = re.search(rf"\b{re.escape(a)}\b", lowered)
            if m:
                if text[m.start()].isupper():  # keep the casing: "Can't" -> "Cannot", "I'm" -> "I am"
                    b = b[0].upper() + b[1:]
                return text[: m.start()] + b + text[m.end() :]
    return None


def number(text: str, rng: random.Random) -> str | None:
    """Replace one number with another of the same shape."""
    found = list(_NUMBER.finditer(text))
    if not found:
        return None
    m = rng.choice(found)
    new = "".join(str(rng.randint(1, 9)) if c.isdigit() else c for c in m.group())
    return None if new == m.group() else text[: m.start()] + new + text[m.end() :]


def _swap_from(pool: Sequence[str]) -> Callable[[str, random.Random], str | None]:
    def swap(text: str, rng: random.Random) -> str | None:
        found = [m for p in pool for m in re.finditer(rf"\b{p}\b", text)]
        if not found:
            return None
        m = rng.choice(found)
        return text[: m.start()] + rng.choice([p for p in pool if p != m.group()]) + text[m.end() :]

    return swap


def negation(text: str, rng: random.Random) -> str | None:
    """Negate the whole statement."""
    body = text.strip()
    return f"It is not true that {body[:1].lower()}{body[1:]}" if body else None


@dataclass(frozen=True)
class Check:
    name: str
    kind: str  # "invariance" | "directional"
    perturb: Callable[[str, random.Random], str | None]


INVARIANCE = (
    Check("typo", "invariance", typo),
    Check("casing", "invariance", casing),
    Check("punctuation", "invariance", punctuation),
    Check("contraction", "invariance", contraction),
    Check("number", "invariance", number),
    Check("name", "invariance", _swap_from(NAMES)),
    Check("place", "invariance", _swap_from(PLACES)),
)
NEGATION = Check("negation", "directional", negation)
MIN_CASES = 5  # a test with fewer applicable examples is reported but not gated


@dataclass(frozen=True)
class BehaviorReport:
    """Pass rate and cases per test, and every failure (test, text, perturbed, before, after)."""

    rates: dict[str, float]
    cases: dict[str, int]
    failures: pd.DataFrame

    def metrics(self) -> dict[str, float]:
        out = {f"{names.BEHAVIOR}{k}": v for k, v in self.rates.items()}
        gated = [v for k, v in self.rates.items() if self.cases[k] >= MIN_CASES]
        if gated:
            out[f"{names.BEHAVIOR}min_pass_rate"] = min(gated)
        return out

    def worst(self) -> str:
        gated = {k: v for k, v in self.rates.items() if self.cases[k] >= MIN_CASES}
        return min(gated, key=gated.__getitem__) if gated else ""


def _labels_reusing(labels_of: Callable[[list[str]], list[str]], known: dict[str, str], batch: list[str]):
    """``labels_of(batch)``, predicting only the texts whose label is not ``known`` already."""
    missing = [t for t in dict.fromkeys(batch) if t not in known]
    predicted = dict(zip(missing, labels_of(missing), strict=True)) if missing else {}
    return [known[t] if t in known else predicted[t] for t in batch]


def check_behavior(
    texts: Sequence[str],
    labels_of: Callable[[list[str]], list[str]],
    proba_of: Callable[[list[str]], np.ndarray] | None = None,
    labels: Sequence[str] = (),
    positive_label: str | None = None,
    max_examples: int = 200,
    seed: int = 0,
    known: dict[str, str] | None = None,
) -> BehaviorReport:
    """Run every invariance test (and the negation test when ``positive_label`` is set) on a sample.

    Args:
        texts: test texts to perturb.
        labels_of: the model's predicted label per text.
        proba_of: class probabilities per text (the directional test reads the positive class's).
        labels: the label order of ``proba_of``'s columns.
        positive_label: the sentiment class a negation should move away from; None = no directional test.
        max_examples: texts sampled per test (fixed seed).
        seed: the sample and the perturbations' seed.
        known: labels the model already gave some of ``texts`` (the test-set pass): not predicted again.
    """
    rng = random.Random(seed)
    labels_before = functools.partial(_labels_reusing, labels_of, known or {})

    sample = list(texts) if len(texts) <= max_examples else rng.sample(list(texts), max_examples)
    rates, cases, failures = {}, {}, []
    for check in INVARIANCE:
        pairs = [(t, p) for t in sample if (p := check.perturb(t, rng)) is not None and p != t]
        if not pairs:
            continue
        before = labels_before([t for t, _ in pairs])
        after = labels_of([p for _, p in pairs])
        ok = [a == b for a, b in zip(before, after, strict=True)]
        rates[check.name], cases[check.name] = float(np.mean(ok)), len(ok)
        failures += [
            {"test": check.name, "text": t, "perturbed": p, "before": b, "after": a}
            for (t, p), b, a, good in zip(pairs, before, after, ok, strict=True)
            if not good
        ]
    if positive_label is not None and proba_of is not None and positive_label in labels:
        col = list(labels).index(positive_label)
        positive = [
            t for t, label in zip(sample, labels_before(sample), strict=True) if label == positive_label
        ]
        pairs = [(t, p) for t in positive if (p := NEGATION.perturb(t, rng)) is not None]
        if pairs:
            before = proba_of([t for t, _ in pairs])[:, col]
            after = proba_of([p for _, p in pairs])[:, col]
            ok = after < before
            rates[NEGATION.name], cases[NEGATION.name] = float(ok.mean()), len(pairs)
            failures += [
                {"test": NEGATION.name, "text": t, "perturbed": p, "before": f"{b:.3f}", "after": f"{a:.3f}"}
                for (t, p), b, a, good in zip(pairs, before, after, ok, strict=True)
                if not good
            ]
    columns = ["test", "text", "perturbed", "before", "after"]
    return BehaviorReport(rates, cases, pd.DataFrame(failures, columns=columns))
