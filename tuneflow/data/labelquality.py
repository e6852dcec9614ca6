"""Label quality: likely mislabeled training examples, found from out-of-fold probabilities.

Confident learning (Northcutt et al., 2021) compares each example's given label with what a model that never
saw it predicts, per class thresholds included; ``cleanlab`` is its maintained implementation. The
out-of-fold probabilities come from the cross-validation folds the pipeline trains anyway
(``train.cv_folds``). Nothing is relabeled: the ranked table is for a person to read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tuneflow import names


@dataclass(frozen=True)
class LabelIssues:
    """The examples confident learning flags, most suspicious first, out of ``examples`` checked."""

    examples: int
    table: pd.DataFrame  # text, given_label, suggested_label, p_suggested, p_given

    @property
    def share(self) -> float:
        return len(self.table) / self.examples if self.examples else 0.0

    def metrics(self) -> dict[str, float]:
        return {
            f"{names.LABEL_QUALITY}issues": float(len(self.table)),
            f"{names.LABEL_QUALITY}issue_share": self.share,
        }

    def warning(self, limit: float) -> str | None:
        if self.share <= limit:
            return None
        return (
            f"{len(self.table)} of {self.examples} train+validation examples ({self.share:.1%}) look "
            f"mislabeled (above validation.max_label_issue_share={limit}): see validation/label_issues.csv "
            "in the run; nothing was relabeled"
        )


def find_label_issues(
    texts: Sequence[str], given: Sequence[int], oof_proba: np.ndarray, labels: Sequence[str]
) -> LabelIssues:
    """Rank the likely label errors among ``texts``.

    Args:
        texts: the examples, in the order of ``given`` and ``oof_proba``.
        given: their label ids as annotated.
        oof_proba: class probabilities of each example from a model trained without it (shape n x classes).
        labels: class names, by id.
    """
    from cleanlab.filter import find_label_issues as cleanlab_find

    given = np.asarray(given)
    # n_jobs=1: cleanlab otherwise forks worker processes, which can deadlock a process holding torch and
    # Prefect threads (seen: a hung CI run).
    ranked = cleanlab_find(
        labels=given, pred_probs=oof_proba, return_indices_ranked_by="self_confidence", n_jobs=1
    )
    suggested = oof_proba.argmax(axis=1)
    table = pd.DataFrame(
        {
            "text": [texts[i] for i in ranked],
            "given_label": [labels[given[i]] for i in ranked],
            "suggested_label": [labels[suggested[i]] for i in ranked],
            "p_suggested": oof_proba[ranked, suggested[ranked]].astype(float),
            "p_given": oof_proba[ranked, given[ranked]].astype(float),
        }
    )
    return LabelIssues(len(given), table)
