"""After a search: does the final training need to run, or did the best trial already train it?

``search.final`` (see the config reference) asks for one of three starts, and :func:`plan_final` says which
one applies and why:

- ``reuse``: the best trial trained exactly the final config (same parameters, epoch budget and data; the
  search may validate more often, which only makes its checkpoint choice finer). Its kept checkpoint is the
  model; the run gets its curves and facts. Nothing is trained twice.
- ``continue``: the final budget is larger than the trials' and the config asks to continue: the final
  training starts from the best trial's best weights and trains the epochs the budget adds, with a fresh
  warmup and decay (not the same as one uninterrupted run of the larger budget; said in the docs).
- ``retrain``: from the pre-trained weights, with the best parameters (always with ``search.final:
  retrain``, with cross-validated trials, and whenever the checkpoint is missing or the configs differ).
"""

from __future__ import annotations

from pathlib import Path

from tuneflow.config import PipelineConfig
from tuneflow.fitting.search import StudySummary, kept_checkpoint, trial_config
from tuneflow.fitting.training import FinalStart

# A trial may validate (and so prune) more often than the final training: same weights, finer checkpoints.
_NOT_TRAINING = ("evals_per_epoch",)


def _differences(trial: PipelineConfig, final: PipelineConfig) -> list[str]:
    """Dotted keys whose values differ between what the trial trained and the final config."""
    a, b = trial.model_dump(mode="json"), final.model_dump(mode="json")
    keys = []
    for section in ("data", "model", "train"):
        for key in sorted(set(a[section]) | set(b[section])):
            if section == "train" and key in _NOT_TRAINING:
                continue
            if a[section].get(key) != b[section].get(key):
                keys.append(f"{section}.{key}")
    return keys


def plan_final(cfg: PipelineConfig, final: PipelineConfig, summary: StudySummary) -> FinalStart:
    """How the final training starts, given the searched config, the final (best) config and the study.

    Args:
        cfg: the config as searched.
        final: ``cfg`` with the best trial's parameters (:func:`tuneflow.fitting.search.best_config`).
        summary: the study (its best trial and the folder its checkpoints were kept in).
    """
    assert cfg.search is not None
    asked = cfg.search.final
    if asked == "retrain":
        return FinalStart("retrain", "search.final: retrain")
    if cfg.train.cv_folds:
        return FinalStart("retrain", "cross-validated trials have no single checkpoint to reuse")
    number = summary.best_trial
    ckpt = kept_checkpoint(Path(summary.summary_dir).parent, number) if number is not None else None
    if ckpt is None or not ckpt.is_file() or not ckpt.with_suffix(".json").is_file():
        return FinalStart(
            "retrain", f"the checkpoint of trial {number} was not kept (trained by an earlier run or machine)"
        )
    found = dict(trial=number, trial_run_id=summary.best_run_id, checkpoint=str(ckpt))
    differ = _differences(trial_config(cfg, summary.best_params), final)
    if not differ:
        return FinalStart("reuse", f"trial {number} trained this exact config", **found)
    trial_epochs = cfg.search.max_epochs or cfg.train.max_epochs
    if differ == ["train.max_epochs"] or set(differ) == {"train.max_epochs", "train.min_epochs"}:
        added = final.train.max_epochs - trial_epochs
        if asked == "continue" and added > 0 and final.train.strategy != "ddp":
            return FinalStart(
                "continue",
                f"trial {number}'s weights + {added} epoch(s) (final budget > trial budget)",
                added_epochs=added,
                **found,
            )
        return FinalStart(
            "retrain",
            f"the trials trained {trial_epochs} epoch(s), the final config {final.train.max_epochs}"
            + (
                " (search.final: continue would start from the best trial's weights)"
                if asked != "continue"
                else " (continue is single-process only)"
                if added > 0
                else ""
            ),
        )
    return FinalStart("retrain", f"the final config differs from trial {number}'s in {', '.join(differ)}")
