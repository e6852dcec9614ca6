"""Few-shot mode (``fewshot``): SetFit's pairs, the logistic-regression head, when it turns on, and a run
through the real flow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import ROOT, make_config
from tuneflow.config import ConfigError
from tuneflow.fitting.fewshot import (
    anchor_cap,
    anchors,
    class_batches,
    label_sets,
    median_per_class,
    pair_iterations,
    sample_pairs,
    supcon_loss,
)
from tuneflow.tasktypes.resolve import load_config


def test_pairs_join_same_label_texts_as_similar_and_others_as_dissimilar() -> None:
    labels = [0, 0, 0, 1, 1, 2]  # class 2 has a single example: it can have no same-label partner
    sets = label_sets(labels)
    pairs = sample_pairs(sets, iterations=4, seed=1)
    a, b, target = pairs[:, 0].astype(int), pairs[:, 1].astype(int), pairs[:, 2]
    same = np.array([labels[i] == labels[j] for i, j in zip(a, b, strict=True)])
    assert (same == (target == 1)).all() and (a != b).all()
    # Per iteration: one positive for each of the 5 examples with a classmate, one negative for all 6.
    assert (target == 1).sum() == 4 * 5 and (target == 0).sum() == 4 * 6
    assert not ((a == 5) & (target == 1)).any()
    np.testing.assert_array_equal(pairs, sample_pairs(sets, iterations=4, seed=1))
    # fewshot.max_pairs bounds the phase: BANKING77 at 10 per intent (654 after validation) keeps 20
    # iterations, CLINC150's 1,275 get 11.
    assert pair_iterations(654, 20, 30000) == 20 and pair_iterations(1275, 20, 30000) == 11
    assert not np.array_equal(pairs, sample_pairs(sets, iterations=4, seed=2))


def test_one_large_class_does_not_take_the_pair_budget() -> None:
    """Skewed data: the large class anchors twice the median class's count per iteration, the small classes
    all their examples; balanced data gets exactly the pairs it got without a cap."""
    labels = [0] * 200 + [1] * 10 + [2] * 12 + [3] * 11
    sets = label_sets(labels)
    cap = anchor_cap(sets)
    assert cap == 23 and anchors(sets, cap) == 23 + 10 + 12 + 11
    pairs = sample_pairs(sets, iterations=5, seed=0, cap=cap)
    anchored = pairs[:, 0].astype(int)
    assert (np.asarray(labels)[anchored] == 0).sum() == 5 * 23 * 2  # a positive and a negative per anchor
    assert len(set(anchored[anchored < 200].tolist())) > 23  # drawn anew each iteration
    for small in (1, 2, 3):
        members = [i for i, y in enumerate(labels) if y == small]
        assert set(anchored.tolist()) >= set(members)  # every small-class example anchors
    balanced = label_sets([c for c in range(6) for _ in range(9)])
    cap = anchor_cap(balanced)
    np.testing.assert_array_equal(sample_pairs(balanced, 4, 3, cap), sample_pairs(balanced, 4, 3))
    assert anchor_cap(label_sets([[1.0, 1.0], [0.0, 1.0]])) is None  # multi-label: every example anchors


def test_multi_label_pairs_share_the_anchor_label_or_lack_it() -> None:
    rows = [[1, 1, 0], [1, 0, 0], [0, 1, 1], [0, 0, 1], [0, 0, 0]]
    sets = label_sets([[float(v) for v in r] for r in rows])
    assert sets == [(0, 1), (0,), (1, 2), (2,), ()]
    pairs = sample_pairs(sets, iterations=10, seed=0)
    for a, b, target in pairs:
        shared = set(sets[int(a)]) & set(sets[int(b)])
        if target == 1:
            assert shared  # a positive partner shares the drawn label
    assert 4 not in pairs[:, 0]  # a text without labels anchors nothing
    assert median_per_class([0, 0, 0, 1, 2, 2]) == 2.0


def test_contrastive_batches_hold_every_example_once_per_iteration_with_a_positive() -> None:
    from collections import Counter

    labels = [c for c in range(77) for _ in range(8)] + [0]  # BANKING77-like: 77 classes of ~8
    sets = label_sets(labels)
    batches = class_batches(sets, iterations=3, texts=32, seed=0)
    members = np.concatenate(batches)
    assert sorted(Counter(members.tolist()).values()) == [3] * len(labels)  # each example, each iteration
    for batch in batches:
        per_class = Counter(labels[i] for i in batch)
        assert min(per_class.values()) >= 2 and len(batch) <= 34  # 16 classes x 2, a third where one is left
    assert all(np.array_equal(a, b) for a, b in zip(batches, class_batches(sets, 3, 32, 0), strict=True))
    two = label_sets([0] * 7 + [1] * 7)  # two classes: few classes per batch, many examples of each
    assert [len(b) for b in class_batches(two, 2, 32, 0)] == [14, 14]
    skewed = label_sets([0] * 100 + [1] * 5 + [2] * 6 + [3] * 4)
    cap = anchor_cap(skewed)
    assert all(
        sum(labels == 0 for labels in (skewed[i][0] for i in b)) <= cap
        for b in class_batches(skewed, 5, 32, 0, cap)
    )
    assert pair_iterations(654, 20, 30000, texts_per_example=1) == 20
    assert pair_iterations(4000, 20, 30000, texts_per_example=1) == 15  # 60,000 texts at most


def test_supervised_contrastive_loss_is_low_when_classes_cluster() -> None:
    import torch

    torch.manual_seed(0)
    classes = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    positive = classes[:, None] == classes[None, :]
    clustered = torch.randn(4, 16).repeat_interleave(2, 0) + 0.01 * torch.randn(8, 16)
    assert supcon_loss(clustered, positive) < 0.01 < 1.0 < supcon_loss(torch.randn(8, 16), positive)
    alone = torch.eye(8, dtype=torch.bool)  # no example has a positive in the batch: nothing to learn
    assert supcon_loss(clustered, alone) == 0


def test_auto_turns_few_shot_on_for_small_classes_on_a_mean_pooled_classifier(tiny_model: str) -> None:
    from types import SimpleNamespace

    from tuneflow.fitting.fewshot import fewshot_active

    demo = ROOT / "configs" / "demo.yaml"
    mean = load_config(demo, ["model.pooling=mean", f"model.name={tiny_model}"])
    cls = load_config(demo, [f"model.name={tiny_model}"])

    def data(per_class: int) -> SimpleNamespace:
        return SimpleNamespace(train=SimpleNamespace(labels=[c for c in range(5) for _ in range(per_class)]))

    assert mean.fewshot.enabled == "auto" and mean.fewshot.max_per_class == 16
    assert fewshot_active(mean, data(10)) and not fewshot_active(mean, data(40))
    assert not fewshot_active(cls, data(10))  # the [CLS] head: auto leaves it alone
    multi = SimpleNamespace(train=SimpleNamespace(labels=[[1.0, 0.0], [0.0, 1.0]] * 5))
    assert not fewshot_active(mean, multi)  # multi-label: only on request until measured
    off = load_config(demo, ["model.pooling=mean", "fewshot.enabled=false"])
    assert not fewshot_active(off, data(10))
    on = load_config(demo, ["model.pooling=mean", "fewshot.enabled=true"])
    assert fewshot_active(on, data(40))


def test_init_drafts_few_shot_mode_for_a_handful_of_examples_per_intent(tmp_path: Path) -> None:
    """The bundled model always gets the mean-pooled head it was trained for; with a handful of examples per
    class (any number of classes) the drafted config says that auto turns few-shot mode on."""
    import random

    from tests.conftest import write_csv
    from tuneflow.tasktypes.draft import draft_config

    rng = random.Random(0)
    words = [f"w{i}" for i in range(40)]
    for classes, per_class, few in ((12, 8, True), (2, 8, True), (12, 60, False)):
        folder = tmp_path / f"{classes}x{per_class}"
        folder.mkdir()
        rows = [
            (" ".join(rng.choices(words, k=5)), f"intent_{c}")
            for c in range(classes)
            for _ in range(per_class)
        ]
        write_csv(folder / "train.csv", rows, header=("text", "label"))
        cfg, draft = draft_config(folder)
        # The bundled sentence encoder always gets its own pooling; few-shot mode only with few examples.
        assert draft.raw["model"]["pooling"] == "mean", (classes, per_class)
        assert ("few-shot mode" in draft.comments["model.pooling"]) is few, (classes, per_class)
        assert cfg.fewshot.enabled == "auto"


def test_few_shot_settings_that_cannot_work_are_errors_naming_the_key() -> None:
    demo = ROOT / "configs" / "demo.yaml"
    with pytest.raises(ConfigError, match=r"fewshot.enabled: few-shot mode tunes the mean .* model.pooling"):
        load_config(demo, ["fewshot.enabled=true"])
    with pytest.raises(ConfigError, match=r"fewshot.enabled: few-shot mode is not supported for token_"):
        load_config(ROOT / "configs" / "wnut17.yaml", ["fewshot.enabled=true"])
    with pytest.raises(ConfigError, match=r"fewshot.iterations"):
        load_config(demo, ["fewshot.iterations=0"])


def test_the_head_is_the_logistic_regression_on_the_encoder_embeddings(tiny_model: str) -> None:
    """fit_head loads SetFit's head into the model: the model's own predictions are the regression's."""
    import torch
    from transformers import AutoTokenizer

    from tuneflow.backbone.pooling import MeanPooledClassifier
    from tuneflow.data.encoding import Encoded, EncodedData, tokenize
    from tuneflow.fitting.fewshot import embed, fit_head

    tok = AutoTokenizer.from_pretrained(tiny_model)
    texts = ["where is my parcel", "track my order", "cancel it now", "i want to cancel", "hello", "hi there"]
    labels = [0, 0, 1, 1, 2, 2]
    ids = tokenize(tok, texts, 32)
    data = EncodedData(Encoded(ids, labels), Encoded(ids, labels), ["a", "b", "c"], tok, 32, "x")
    model = MeanPooledClassifier.from_pretrained_encoder(tiny_model, 3)
    accuracy = fit_head(model, data, batch_size=4, seed=0)
    model.eval()
    with torch.no_grad():
        logits = model(**tok(texts, padding=True, return_tensors="pt")).logits.numpy()
    x = embed(model, ids, tok, 4)
    np.testing.assert_allclose(
        logits,
        x @ model.classifier.weight.detach().numpy().T + model.classifier.bias.detach().numpy(),
        rtol=1e-4,
        atol=1e-4,
    )
    assert accuracy == pytest.approx(float((logits.argmax(-1) == np.array(labels)).mean()))


def _two_intents(tiny_model: str) -> tuple[Any, list[int], list[list[int]], Any]:
    """Six texts of each of two intents, tokenized: (tokenizer, labels, ids, EncodedData with them as both
    train and validation)."""
    from transformers import AutoTokenizer

    from tuneflow.data.encoding import Encoded, EncodedData, tokenize

    tok = AutoTokenizer.from_pretrained(tiny_model)
    texts = [f"where is my parcel {i}" for i in range(6)] + [f"cancel the order now {i}" for i in range(6)]
    labels = [0] * 6 + [1] * 6
    ids = tokenize(tok, texts, 32)
    return tok, labels, ids, EncodedData(Encoded(ids, labels), Encoded(ids, labels), ["a", "b"], tok, 32, "x")


def test_the_pair_phase_pulls_classes_apart_once_per_process(tiny_model: str) -> None:
    """After the pair phase same-label texts are closer than different-label ones, by more than before;
    a second call with the same inputs (a search's next trial) loads the result instead of training."""
    import torch

    from tuneflow.backbone.pooling import MeanPooledClassifier
    from tuneflow.fitting import fewshot

    tok, labels, ids, data = _two_intents(tiny_model)
    cfg = load_config(
        ROOT / "configs" / "demo.yaml",
        [f"model.name={tiny_model}", "model.pooling=mean", "fewshot.lr=0.001", "fewshot.iterations=8"],
    )
    same = np.equal.outer(labels, labels) & ~np.eye(12, dtype=bool)
    differ = ~np.equal.outer(labels, labels)

    def margin(model: MeanPooledClassifier) -> float:
        x = fewshot.embed(model, ids, tok, 8)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        cos = x @ x.T
        return float(cos[same].mean() - cos[differ].mean())

    torch.manual_seed(0)
    model = MeanPooledClassifier.from_pretrained_encoder(tiny_model, 2)
    before = margin(model)
    fewshot._TUNED.clear()
    facts = fewshot.tune_on_pairs(model, data, cfg, "32-true")
    # supcon (the default): both classes in every batch of 32 texts, so one step per pass over the 12 texts
    assert facts.texts == 8 * 12 and facts.steps == 8 and margin(model) > before + 0.05
    assert facts.head_train_accuracy == 1.0  # the regression head separates the two tuned classes
    again = MeanPooledClassifier.from_pretrained_encoder(tiny_model, 2)
    assert fewshot.tune_on_pairs(again, data, cfg, "32-true") == facts  # loaded, not trained again
    for (name, p), q in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, msg=name)
    pairs_cfg = load_config(
        ROOT / "configs" / "demo.yaml",
        [f"model.name={tiny_model}", "model.pooling=mean", "fewshot.lr=0.001", "fewshot.iterations=8"]
        + ["fewshot.loss=pairs"],
    )
    torch.manual_seed(0)
    setfit = MeanPooledClassifier.from_pretrained_encoder(tiny_model, 2)
    facts = fewshot.tune_on_pairs(setfit, data, pairs_cfg, "32-true")  # other settings: trained, not loaded
    assert facts.texts == 2 * (8 * 12 * 2) and facts.steps == 12 and margin(setfit) > before + 0.05


@pytest.mark.integration
def test_a_few_shot_run_tunes_on_pairs_then_fine_tunes_registers_and_serves(
    tmp_path: Path, tiny_model: str, prefect_harness: None
) -> None:
    """Through the real flow: the pair phase runs before the fine-tune, its facts and loss curve are on the
    run, and the registered model is the usual mean-pooled classifier."""
    import mlflow

    from tuneflow.flows.finetune import finetune

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = make_config(
        tmp_path,
        tiny_model,
        name="fewshot-intents",
        tracking={"tracking_uri": uri},
        model={"pooling": "mean"},
        fewshot={"enabled": True, "iterations": 2},
        oos={"enabled": False},
        gates={"max_val_degradation": None},
    )
    result = finetune(str(cfg), ["train.max_epochs=1"])
    m = result.metrics
    assert "test/accuracy" in m
    client = mlflow.MlflowClient(uri)
    run_id = client.get_model_version("fewshot-intents", result.model.version).run_id
    run = client.get_run(run_id)
    assert run.data.tags["tuneflow.fewshot"] == "True"
    facts = run.data.metrics
    assert (
        facts["fewshot/texts"] > 0
        and facts["fewshot/steps"] > 0
        and 0 <= facts["fewshot/head_train_accuracy"] <= 1
    )
    assert len(client.get_metric_history(run_id, "fewshot/loss")) >= 1
    # The fine-tune after the phases peaks at train.lr x fewshot.finetune_lr_scale, not at train.lr.
    tuned = load_config(cfg)
    peak = tuned.train.lr * tuned.fewshot.finetune_lr_scale
    assert facts["fewshot/finetune_lr"] == pytest.approx(peak)
    rates = [p.value for p in client.get_metric_history(run_id, "train/lr")]
    assert rates and max(rates) == pytest.approx(peak, rel=1e-3)
    served = mlflow.pyfunc.load_model(f"models:/fewshot-intents/{result.model.version}")
    assert len(served.predict(["where is my parcel"])) == 1


def test_continuing_a_few_shot_trial_fine_tunes_at_the_scaled_rate(tmp_path: Path, tiny_model: str) -> None:
    """search.final: continue starts from a few-shot trial's weights: no second contrastive phase, and the
    fine-tune at train.lr x fewshot.finetune_lr_scale as in the trial; without few-shot mode, train.lr."""
    import torch

    from tuneflow.fitting import fewshot, training

    tok, labels, ids, data = _two_intents(tiny_model)
    base = [f"model.name={tiny_model}", "model.pooling=mean", "train.lr=0.0001"]
    cfg = load_config(ROOT / "configs" / "demo.yaml", [*base, "fewshot.enabled=true"])
    module, _ = training.build_module(cfg, data, cfg.kind)
    ckpt = tmp_path / "trial.ckpt"
    torch.save({"state_dict": module.state_dict()}, ckpt)
    fewshot._TUNED.clear()
    again, _ = training.build_module(cfg, data, cfg.kind)
    assert training._starting_weights(again, cfg, data, str(ckpt), None, None) is None
    assert again.hparams.lr == pytest.approx(1e-4 * cfg.fewshot.finetune_lr_scale)
    assert not fewshot._TUNED  # the trial's weights went through the phases: they are not run again
    off = load_config(ROOT / "configs" / "demo.yaml", [*base, "fewshot.enabled=false"])
    plain, _ = training.build_module(off, data, off.kind)
    training._starting_weights(plain, off, data, str(ckpt), None, None)
    assert plain.hparams.lr == pytest.approx(1e-4)
