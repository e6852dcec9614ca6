"""Time-to-quality curves of ``python -m bench e2e`` results, for docs/results.md.

``python -m bench.e2e_plot [RESULT ...]`` reads ``bench/results/<RESULT>.json`` (default: the e2e results
with per-round curves) and writes ``docs/assets/e2e-<RESULT>.png``: per arm and seed, the best validation
macro F1 reached so far against minutes since the arm's process started (the search), and a marker at the
arm's end (final model scored on the test split, right axis of the legend). Scoring the test split during
the search would slow the timed runs, so the curves are validation scores and only the end is a test score.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS, ASSETS = ROOT / "bench" / "results", ROOT / "docs" / "assets"
COLOURS = {"tuneflow": "tab:blue", "trainer": "tab:orange"}
LABELS = {"tuneflow": "tuneflow run", "trainer": "Trainer.hyperparameter_search + train"}


def plot(name: str) -> Path:
    """Draws one result's curves; returns the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = json.loads((RESULTS / f"{name}.json").read_text())["runs"]
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    seen = set()
    for r in runs:
        arm, curve = r["arm"], r.get("curve") or []
        if not curve:
            continue
        xs = [t / 60 for t, _ in curve] + [r["seconds"] / 60]
        ys = [100 * v for _, v in curve]
        ys.append(ys[-1])
        label = None if arm in seen else f"{LABELS[arm]}: best validation macro F1 so far"
        ax.step(xs, ys, where="post", color=COLOURS[arm], alpha=0.8, label=label)
        ax.plot(
            r["seconds"] / 60,
            100 * r["test_accuracy"],
            marker="*",
            markersize=11,
            color=COLOURS[arm],
            linestyle="none",
            label=None if arm in seen else f"{LABELS[arm]}: end, test accuracy",
        )
        seen.add(arm)
    ax.set_xlabel("minutes since the arm's process started")
    ax.set_ylabel("%")
    ax.set_title(f"{name}: one line per seed", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    ASSETS.mkdir(parents=True, exist_ok=True)
    out = ASSETS / f"{name}.png"
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    names = argv if argv is not None else sys.argv[1:]
    if not names:
        names = sorted(
            p.stem
            for p in RESULTS.glob("e2e-*.json")
            if any(r.get("curve") for r in json.loads(p.read_text())["runs"])
        )
    for name in names:
        print(f"wrote {plot(name)}")


if __name__ == "__main__":
    main()
