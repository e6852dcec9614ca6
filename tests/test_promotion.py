"""Champion/challenger promotion: paired tests, gates, aliases, concurrent decisions, rollback."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from tests.conftest import make_config
from tuneflow.cli import app
from tuneflow.config import GatesConfig
from tuneflow.judging.promotion import (
    decide,
    decide_on_examples,
    decide_on_scores,
    mcnemar,
    paired_bootstrap,
    paired_bootstrap_labels,
    score,
)
from tuneflow.registry import packaging
from tuneflow.store import registered, tracking

Y = ["a"] * 50 + ["b"] * 50


def test_generation_promotion_is_a_paired_bootstrap_over_examples() -> None:
    """Per-turn chrF of both models on the same turns: a consistent gain is significant, noise is not; for
    perplexity (per-conversation losses, lower is better) the improvement is a drop."""
    import numpy as np

    rng = np.random.default_rng(0)
    champion = rng.uniform(0.2, 0.6, 200)
    gates = GatesConfig(metric="chrf", min=0.3, max_train_val_gap=None, max_val_degradation=None)
    better = decide_on_examples(gates, "chat", "2", champion + 0.05, {}, "1", champion)
    assert better.promote and better.gates[-1].value == pytest.approx(0.05)
    assert "CI [+0.0500, +0.0500]" in better.gates[-1].detail
    noisy = decide_on_examples(gates, "chat", "3", champion + rng.normal(0, 0.2, 200), {}, "1", champion)
    assert not noisy.promote and noisy.failed[0].name == "improvement in test chrf over champion"
    floor = decide_on_examples(gates, "chat", "4", champion - 0.2, {})
    assert [g.name for g in floor.failed] == ["min test chrf"]
    ppl = GatesConfig(metric="perplexity", min=30.0, max_train_val_gap=None, max_val_degradation=None)
    losses = rng.uniform(2.0, 3.0, 100)
    drop = decide_on_examples(
        ppl,
        "chat",
        "2",
        losses - 0.3,
        {},
        "1",
        losses,
        aggregate=lambda x: float(np.exp(x.mean())),
        lower_is_better=True,
    )
    assert drop.promote and drop.gates[0].value == pytest.approx(np.exp(losses.mean() - 0.3))
    with pytest.raises(ValueError, match="same frozen test examples"):
        decide_on_examples(gates, "chat", "5", champion[:10], {}, "1", champion)


def test_score_gates_for_generation_tasks() -> None:
    """Perplexity: lower is better, so its bound is a maximum and an improvement is a drop."""
    gates = GatesConfig(
        metric="perplexity", min=20.0, min_improvement=0.5, max_train_val_gap=0.3, min_ood={"faq": 30.0}
    )
    run = {"fit/train_val_gap": 0.1, "ood/faq/perplexity": 25.0}
    better = decide_on_scores(gates, "chat", "2", 12.0, run, "1", 14.0, lower_is_better=True)
    assert better.promote, better.to_markdown()
    names = [g.name for g in better.gates]
    assert names == [
        "test perplexity",
        "max test perplexity",
        "max validation degradation after best epoch (overfitting)",
        "max train/val gap",
        "max out-of-domain faq perplexity",
        "improvement in test perplexity over champion",
    ]
    assert better.gates[-1].value == pytest.approx(2.0)
    worse = decide_on_scores(gates, "chat", "3", 14.2, run, "1", 14.0, lower_is_better=True)
    assert not worse.promote and [g.name for g in worse.failed] == [
        "improvement in test perplexity over champion"
    ]
    too_high = decide_on_scores(
        gates, "chat", "4", 21.0, {**run, "ood/faq/perplexity": 31.0}, lower_is_better=True
    )
    assert {g.name for g in too_high.failed} == {"max test perplexity", "max out-of-domain faq perplexity"}
    rouge = decide_on_scores(
        GatesConfig(metric="rougeL", min=0.3, max_train_val_gap=None), "s", "1", 0.25, {}
    )
    assert [g.name for g in rouge.failed] == ["min test rougeL"]


def test_paired_bootstrap_and_mcnemar() -> None:
    same = list(Y)
    diff, lo, hi = paired_bootstrap(Y, same, same, lambda y, p: score("accuracy", y, p), 500)
    assert (diff, lo, hi) == (0.0, 0.0, 0.0)
    worse = ["b"] * 30 + ["a"] * 20 + ["b"] * 50  # 30 of the a's wrong
    diff, lo, hi = paired_bootstrap(Y, same, worse, lambda y, p: score("accuracy", y, p), 500)
    assert diff == pytest.approx(0.3) and 0.15 < lo < diff < hi
    assert mcnemar(Y, same, worse)[:2] == (30, 0) and mcnemar(Y, same, worse)[2] < 1e-6
    assert mcnemar(Y, same, same) == (0, 0, 1.0)


@pytest.mark.parametrize("metric", ["accuracy", "f1_macro", "f1_weighted"])
def test_vectorized_label_bootstrap_equals_scoring_each_resample_with_sklearn(metric: str) -> None:
    # Many labels on few examples: resamples miss labels (in truth, in one model's predictions, in both),
    # which is where macro F1's "labels present" rule matters.
    rng = np.random.default_rng(3)
    y = [f"c{i}" for i in rng.integers(0, 12, 60)]
    a = [t if rng.random() < 0.7 else f"c{rng.integers(0, 14)}" for t in y]
    b = [t if rng.random() < 0.5 else f"c{rng.integers(0, 14)}" for t in y]
    slow = paired_bootstrap(y, a, b, lambda t, p: score(metric, t, p), 300, 0.1, seed=5)
    fast = paired_bootstrap_labels(metric, y, a, b, 300, 0.1, seed=5)
    assert fast == pytest.approx(slow, abs=1e-12)
    with pytest.raises(ValueError, match="unknown label metric 'rougeL'"):
        paired_bootstrap_labels("rougeL", y, a, b)


def test_decision_lists_every_gate() -> None:
    gates = GatesConfig(
        metric="f1_macro",
        min=0.9,
        max_train_val_gap=0.05,
        max_latency_p95_ms=10,
        min_ood={"yelp": 0.8},
        max_class_regression=0.1,
    )
    worse = ["b"] * 30 + ["a"] * 20 + ["b"] * 50
    metrics = {"fit/train_val_gap": 0.2, "serving/latency_p95_ms": 5.0, "ood/yelp/f1_macro": 0.85}
    d = decide(gates, "m", "2", Y, list(Y), metrics, champion_version="1", champion_pred=worse)
    names = [g.name for g in d.gates]
    assert names == [
        "test f1_macro",
        "min test f1_macro",
        "max validation degradation after best epoch (overfitting)",
        "max train/val gap",
        "max latency p95 ms",
        "min out-of-domain yelp f1_macro",
        "improvement in test f1_macro over champion",
        "max per-class F1 regression",
    ]
    assert not d.promote and [g.name for g in d.failed] == ["max train/val gap"]
    assert "gates.max_val_degradation" in d.failed[0].detail  # a failed gate says what to do
    md = d.to_markdown()
    assert all(name in md for name in names) and "NOT promoted" in md and "| a |" in md
    # Equal predictions: no significant improvement, so the champion stays.
    tie = decide(
        GatesConfig(metric="f1_macro", max_train_val_gap=None), "m", "3", Y, list(Y), {}, "2", list(Y)
    )
    assert not tie.promote and tie.failed[0].name.startswith("improvement")
    first = decide(GatesConfig(metric="f1_macro", min=0.99, max_train_val_gap=None), "m", "1", Y, worse, {})
    assert not first.promote and first.champion_version is None
    assert "to fix:" in first.failed[0].detail and "gates.min" in first.failed[0].detail


LENIENT_CURVE = {"max_val_degradation": None}
LENIENT = {
    "max_train_val_gap": None,
    "max_val_degradation": None,  # tiny random models on 30 validation examples: their curves are noise
    "max_class_regression": None,
    "significance": "none",
}


def _finetune(tmp: Path, tiny_model: str, name: str, uri: str, train: dict, gates: dict):
    from tuneflow.flows.finetune import finetune

    cfg = make_config(
        tmp,
        tiny_model,
        name=name,
        tracking={"tracking_uri": uri, "registered_model": "intents"},
        train=train,
        gates=gates,
    )
    return finetune(str(cfg))


def test_aliases_concurrent_decisions_worse_challenger_and_rollback(
    tmp_path: Path, tiny_model: str, prefect_harness: None
) -> None:
    from tuneflow.flows.promote import promote, rollback

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # v1: a model that cannot learn (lr 1e-9), promoted because there is no champion yet.
    bad = _finetune(tmp_path, tiny_model, "bad", uri, {"lr": 1e-9, "max_epochs": 1}, LENIENT)
    assert bad.promotion.promote and bad.promotion.champion_version is None
    client = MlflowClient(tracking_uri=tracking.configure(uri))

    def alias(name: str) -> str:
        return str(client.get_model_version_by_alias("intents", name).version)

    assert alias("champion") == "1"
    # v2: a model that learns, registered but not decided; v3: the same model registered again.
    good = _finetune(tmp_path, tiny_model, "good", uri, {"max_epochs": 4}, {**LENIENT, "promote": False})
    assert good.promotion is None
    v3 = registered.register_model(good.model.model_uri, "intents", good.run_id)
    assert v3 == "3"

    # Two promotions at once: the lock serializes them; the second compares with the first's outcome.
    results: dict[str, dict] = {}
    threads = [
        threading.Thread(target=lambda v=v: results.__setitem__(v, promote("intents", v))) for v in "23"
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    promoted = [v for v, d in results.items() if d.promote]
    assert len(promoted) == 1, results
    winner, loser = promoted[0], ({"2", "3"} - set(promoted)).pop()
    assert results[winner].champion_version == "1"
    assert results[loser].champion_version == winner  # not the stale v1
    assert alias("champion") == winner
    assert alias("previous-champion") == "1"
    assert client.get_model_version(intents := "intents", loser).tags["tuneflow.promotion"] == "rejected"

    # A worse challenger is not promoted; the champion is untouched.
    worse = promote(intents, "1")
    assert not worse.promote and worse.champion_version == winner
    assert alias("champion") == winner
    report = tracking.read_text(bad.run_id, "promotion/v1-report.md")
    assert "NOT promoted" in report and "improvement in test f1_macro" in report

    out = rollback(intents)
    assert (out.model, out.champion, out.demoted) == (intents, "1", winner)
    assert alias("champion") == "1"
    result = CliRunner().invoke(app, ["rollback", intents, "--tracking-uri", uri])
    assert result.exit_code == 2 and "no 'previous-champion' alias" in result.output


def test_overfitting_is_judged_from_the_validation_curve() -> None:
    from tuneflow.judging.overfitting import validation_degradation

    # Validation F1 peaks at epoch 2 and then falls steeply: flagged, with what to change.
    peaked = validation_degradation([(10, 0.70), (20, 0.82), (30, 0.74), (40, 0.66)], False, "val/f1_macro")
    assert peaked["fit/best_epoch"] == 2 and peaked["fit/val_degradation"] == pytest.approx(0.16)
    d = decide(GatesConfig(metric="f1_macro"), "m", "1", Y, list(Y), {"fit/train_val_gap": 0.05, **peaked})
    assert not d.promote
    (failed,) = d.failed
    assert failed.name.startswith("max validation degradation") and "train.max_epochs" in failed.detail
    # A converged run: training accuracy ~1.0 (gap 0.22) but the best validation score holds: promoted.
    stable = validation_degradation([(10, 0.70), (20, 0.76), (30, 0.775), (40, 0.773)], False, "val/f1_macro")
    metrics = {"fit/train_val_gap": 0.221, **stable}
    healthy = decide(GatesConfig(metric="f1_macro"), "m", "1", Y, list(Y), metrics)
    assert healthy.promote
    gap = next(g for g in healthy.gates if g.name.startswith("train/val gap"))
    assert gap.value == pytest.approx(0.221) and gap.threshold == "reported"
    # Losses: relative rise above the best.
    loss = validation_degradation([(1, 2.0), (2, 1.6), (3, 2.0)], lower_better=True, monitor="val/loss")
    assert loss["fit/val_degradation"] == pytest.approx(0.25) and loss["val/best_loss"] == 1.6
    assert validation_degradation([], True, "val/loss") == {}


def test_promotion_runs_as_a_library_call_without_prefect(
    tmp_path: Path, tiny_model: str, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tuneflow.registry.champion needs MLflow only: register two versions by hand and decide on each."""
    from tuneflow.fitting.export import export_model, load_predictor
    from tuneflow.fitting.model import load_tokenizer
    from tuneflow.fitting.training import fit
    from tuneflow.judging.evaluation import evaluate
    from tuneflow.registry.champion import keep_evidence, promote_version, rollback_champion
    from tuneflow.tasktypes.resolve import load_config

    cfg = load_config(
        make_config(tmp_path, tiny_model, name="lib-promo", train={"max_epochs": 2}, gates=LENIENT_CURVE)
    )
    tracking.configure(tracking_uri)
    kind = cfg.kind
    data = kind.training.encode(kind.data.load_splits(cfg.data, 0), load_tokenizer(tiny_model), cfg)
    result = fit(cfg, data, tmp_path / "ckpt", progress_bar=False)
    export = export_model(result.best_checkpoint, tmp_path / "export", data.tokenizer, cfg)
    versions = []
    for _ in range(2):  # the same model twice: the second cannot be significantly better
        run_id = tracking.start_run(cfg.experiment_name)
        versions.append(registered.register_model(packaging.log_model(run_id, export), "lib-promo", run_id))
        tracking.end_run(run_id)
    # The first version went through evaluation, which keeps its test predictions for promotion.
    splits = kind.data.load_splits(cfg.data, cfg.train.seed)
    evaluated = evaluate(kind, load_predictor(export), splits, tmp_path / "eval", cfg)
    assert evaluated.evidence == kind.judging.promotion_evidence(load_predictor(export), splits.test, cfg)
    first_run = registered.model_version("lib-promo", versions[0]).run_id
    keep_evidence(first_run, cfg, splits.test, evaluated.evidence)
    heard: list[str] = []
    loads: list[str] = []
    import tuneflow.registry.champion as champion_module

    real_load = champion_module.load_predictor
    monkeypatch.setattr(champion_module, "load_predictor", lambda d: loads.append(str(d)) or real_load(d))
    first = promote_version(cfg, versions[0], notify=heard.append)
    assert first.promote and first.verdict == "promoted" and first.champion_version is None
    assert not loads  # the evaluated version is never scored again
    second = promote_version(cfg, versions[1], notify=heard.append)
    assert not second.promote and second.champion_version == versions[0]
    # The unevaluated version was scored once; the champion's predictions were read from its run.
    assert len(loads) == 1
    again = promote_version(cfg, versions[1], notify=heard.append)
    assert len(loads) == 1 and again.to_dict()["gates"] == second.to_dict()["gates"]
    run_id = registered.model_version("lib-promo", versions[0]).run_id
    cached = [a.path for a in MlflowClient().list_artifacts(run_id, "promotion/evidence")]
    assert len(cached) == 1 and cached[0].endswith(".json")
    assert [g.name for g in second.failed] == [f"improvement in test {cfg.gates.metric} over champion"]
    assert registered.alias_version("lib-promo", "champion") == versions[0]
    assert registered.model_version("lib-promo", versions[1]).tags["tuneflow.promotion"] == "rejected"
    with pytest.raises(LookupError, match="previous-champion"):
        rollback_champion("lib-promo", tracking_uri)
    assert not heard  # nobody else held the lease


def test_logging_a_model_checks_its_requirements_without_scanning_every_distribution(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MLflow's check of a logged model's requirements maps only tuneflow's pinned packages to modules while
    tuneflow logs (the scan of every installed distribution was the largest share of a demo's logging), and
    leaves its map unbuilt afterwards for anyone else in the process."""
    from mlflow.utils import requirements_utils

    from tuneflow.registry import packaging

    def scan() -> dict:
        raise AssertionError("scanned every installed distribution")

    monkeypatch.setattr(requirements_utils, "_MODULES_TO_PACKAGES", None)
    monkeypatch.setattr(requirements_utils.importlib_metadata, "packages_distributions", scan)
    requirements = packaging.pip_requirements()
    assert "pyyaml" in {r.split("==")[0] for r in requirements}
    with packaging._requirement_modules(requirements):
        for req in requirements:  # what MLflow runs when it loads the logged model back
            assert requirements_utils._check_requirement_satisfied(req) is None, req
        mismatch = requirements_utils._check_requirement_satisfied("torch==0.0.1")
        assert mismatch is not None and mismatch.installed_version  # a real mismatch is still found
    assert requirements_utils._MODULES_TO_PACKAGES is None
