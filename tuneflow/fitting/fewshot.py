"""Few-shot mode (``fewshot``): a contrastive phase and SetFit's head before the usual fine-tune.

With ten examples per class a fresh linear head trained by cross-entropy has little to go on, and its
gradients reshape the encoder from a random start. SetFit (Tunstall et al., 2022, "Efficient Few-Shot
Learning Without Prompts") first tunes the sentence encoder on pairs of the train texts (same label: cosine
similarity 1, different labels: 0; :func:`sample_pairs`), then fits a logistic regression on the tuned
embeddings. The default contrastive phase here is the supervised contrastive loss (Khosla et al., 2020;
:func:`class_batches`, :func:`supcon_loss`) instead: each text against a batch of 30 others at once, its
own class's pulled closer and the rest pushed away, rather than one partner at a time. On BANKING77 at 10
per intent it made a better encoder for a logistic-regression head than SetFit's pairs (86.2 against 81.4;
the pre-trained encoder alone gives 84.9) in a quarter of the time. The regression becomes the model's own
linear head (:func:`fit_head`), so the model is the usual mean-pooled classifier
(:mod:`tuneflow.backbone.pooling`): export, calibration, out-of-scope detection, serving and promotion are
unchanged, and ``train`` fine-tunes from that start as it would from any other.
"""

from __future__ import annotations

import gc
import hashlib
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from tuneflow.backbone.pooling import mean_pool
from tuneflow.config import PipelineConfig
from tuneflow.data.encoding import EncodedData, LengthGroupedBatches


def is_multi_label(labels: Sequence[Any]) -> bool:
    """Whether encoded labels are 0/1 rows (multi-label) rather than class ids."""
    return bool(len(labels)) and isinstance(labels[0], list | tuple | np.ndarray)


def label_sets(labels: Sequence[Any]) -> list[tuple[int, ...]]:
    """Each example's labels as class indices: a class id (single-label) or a 0/1 row (multi-label)."""
    if is_multi_label(labels):
        return [tuple(int(j) for j in np.flatnonzero(np.asarray(y) > 0.5)) for y in labels]
    return [(int(y),) for y in labels]


def class_counts(sets: list[tuple[int, ...]]) -> dict[int, int]:
    """Examples per class (a multi-label example counts for each of its labels)."""
    counts: dict[int, int] = {}
    for labels_of_one in sets:
        for label in labels_of_one:
            counts[label] = counts.get(label, 0) + 1
    return counts


def median_per_class(labels: Sequence[Any]) -> float:
    """Train examples in the median class (a multi-label example counts for each of its labels)."""
    counts = class_counts(label_sets(labels))
    return float(statistics.median(counts.values())) if counts else 0.0


def fewshot_active(cfg: PipelineConfig, data: EncodedData) -> bool:
    """Whether this fit starts with the few-shot phases: ``fewshot.enabled``, or for ``auto`` single-label
    data whose median class has at most ``fewshot.max_per_class`` train examples, on a mean-pooled
    classifier without LoRA, on one device."""
    enabled, tcfg = cfg.fewshot.enabled, cfg.train
    if enabled != "auto":
        return bool(enabled)
    pooled = cfg.model.pooling == "mean" and cfg.model.lora is None and cfg.kind.training.mean_pooled_head
    if is_multi_label(data.train.labels):
        return False  # multi-label: not measured yet, so only on request (fewshot.enabled: true)
    one_device = tcfg.num_nodes == 1 and str(tcfg.devices) == "1"  # the pair phase runs on one device
    return pooled and one_device and median_per_class(data.train.labels) <= cfg.fewshot.max_per_class


def anchor_cap(sets: list[tuple[int, ...]]) -> int | None:
    """How many examples of one class anchor pairs per iteration: twice the median class's count, for
    single-label data (None: multi-label, every example anchors).

    SetFit draws pairs per example, so on skewed data (one class 95 % of the rows) nearly every pair is spent
    on the large class and the pair budget (``fewshot.max_pairs``) on what the model already separates; a
    class-balanced budget spends it on the small classes few-shot mode is for. Balanced data, where no class
    has twice the median, is unaffected.
    """
    if not sets or any(len(labels) != 1 for labels in sets):
        return None
    return max(1, int(2 * statistics.median(class_counts(sets).values())))


def anchors(sets: list[tuple[int, ...]], cap: int | None) -> int:
    """Examples that anchor pairs in one iteration of :func:`sample_pairs` (what ``max_pairs`` divides)."""
    if cap is None:
        return sum(1 for labels in sets if labels)
    return sum(min(c, cap) for c in class_counts(sets).values())  # single-label: one class per example


def sample_pairs(
    sets: list[tuple[int, ...]], iterations: int, seed: int, cap: int | None = None
) -> np.ndarray:
    """SetFit's pairs: for every example, ``iterations`` times, one partner with the same label (target 1)
    and one without it (target 0).

    A multi-label example draws one of its labels as the anchor each time. Examples alone in their class get
    no positive partner; examples without labels get none at all. ``cap`` (:func:`anchor_cap`, single-label):
    a class with more examples anchors ``cap`` of them per iteration, drawn anew each time from a stream of
    its own, so that without such a class the pairs are exactly those of no cap. Returns rows ``(a, b,
    target)``.
    """
    rng, thin = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    by_label: dict[int, np.ndarray] = {}
    for i, labels in enumerate(sets):
        for label in labels:
            by_label.setdefault(label, []).append(i)  # type: ignore[attr-defined]
    by_label = {k: np.asarray(v) for k, v in by_label.items()}
    large = {k: v for k, v in by_label.items() if cap is not None and len(v) > cap}
    n, rows = len(sets), []
    for _ in range(iterations):
        skip = {int(i) for v in large.values() for i in np.setdiff1d(v, thin.choice(v, cap, replace=False))}
        for i, labels in enumerate(sets):
            if not labels or i in skip:
                continue
            anchor = labels[rng.integers(len(labels))]
            same = by_label[anchor]
            if len(same) > 1:
                j = i
                while j == i:
                    j = int(same[rng.integers(len(same))])
                rows.append((i, j, 1.0))
            if len(same) < n:
                k = int(rng.integers(n))
                while anchor in sets[k]:  # terminates: some example lacks the anchor label
                    k = int(rng.integers(n))
                rows.append((i, k, 0.0))
    return np.asarray(rows, dtype=np.float64).reshape(-1, 3)


def pair_iterations(examples: int, iterations: int, max_pairs: int, texts_per_example: int = 4) -> int:
    """``fewshot.iterations``, fewer where the texts encoded would pass those of ``fewshot.max_pairs`` pairs
    (two each): an iteration encodes ``texts_per_example`` texts per example, 4 for pairs (two pairs of two),
    1 for the supervised contrastive loss's batches (each example once)."""
    return max(1, min(iterations, 2 * max_pairs // (texts_per_example * max(examples, 1))))


def class_batches(
    sets: list[tuple[int, ...]], iterations: int, texts: int, seed: int, cap: int | None = None
) -> list[np.ndarray]:
    """Batches for the supervised contrastive loss: every example (at most ``cap`` per class, as for pairs)
    once per iteration, in batches of about ``texts`` examples drawn from few enough classes that each
    class in a batch brings at least two (BANKING77: 16 intents x 2; two-class data: 2 x 16), so that every
    example meets a positive and the batch's other classes as negatives.

    A multi-label example joins the pool of one of its labels, drawn anew each iteration; examples without
    labels join none. Returns the batches' example indices.
    """
    rng, thin = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    batches: list[np.ndarray] = []
    for _ in range(iterations):
        pools: dict[int, list[int]] = {}
        for i, labels in enumerate(sets):
            if labels:
                pools.setdefault(labels[rng.integers(len(labels))], []).append(i)
        for label, members in pools.items():
            keep = members if cap is None or len(members) <= cap else thin.choice(members, cap, replace=False)
            pools[label] = [int(i) for i in rng.permutation(keep)]
        per_batch = max(2, min(len(pools), texts // 2))  # classes per batch
        take = max(2, texts // per_batch)  # examples per class
        while True:
            live = [label for label, members in pools.items() if len(members) >= 2]
            if len(live) < 2:
                if live and batches:  # the last class's remainder joins the last batch rather than drop out
                    batches[-1] = np.concatenate([batches[-1], pools[live[0]]])
                break
            batch: list[int] = []
            for label in rng.choice(live, min(per_batch, len(live)), replace=False):
                members = pools[int(label)]
                n = len(members) if len(members) - take < 2 else take  # no lone example left behind
                batch += members[-n:]
                del members[-n:]
            batches.append(np.asarray(batch))
    return batches


class _Batches(torch.utils.data.Dataset):
    """Each item is one whole batch of :func:`class_batches`: padded ids and which pairs share a label."""

    def __init__(
        self, ids: list[list[int]], sets: list[tuple[int, ...]], batches: list[np.ndarray], tok: Any
    ):
        self.ids, self.sets, self.batches, self.tokenizer = ids, sets, batches, tok

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        members = [int(i) for i in self.batches[k]]
        # Widths in steps of 8: these batches mix lengths (their classes decide them, not their lengths), and
        # every distinct batch shape is a oneDNN kernel kept in its cache (+450 MB at BANKING77 10-shot).
        batch = dict(
            self.tokenizer.pad(
                {"input_ids": [self.ids[i] for i in members]}, pad_to_multiple_of=8, return_tensors="pt"
            )
        )
        labels = [set(self.sets[i]) for i in members]
        batch["positive"] = torch.tensor([[bool(a & b) for b in labels] for a in labels])
        return batch


def supcon_loss(z: torch.Tensor, positive: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al., 2020) on cosine similarities x ``scale``: each example's
    mean log-likelihood of its positives against every other example of the batch."""
    z = torch.nn.functional.normalize(z, dim=-1)
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    sim = (scale * z @ z.T).masked_fill(eye, float("-inf"))
    log_p = (sim - torch.logsumexp(sim, dim=1, keepdim=True)).masked_fill(eye, 0.0)
    positive = positive & ~eye
    has = positive.any(1)  # an example whose positives all stayed out of the batch teaches nothing here
    if not has.any():
        return (z * 0.0).sum()  # a zero loss with a graph, not the NaN of an empty mean
    per_example = (log_p * positive).sum(1) / positive.sum(1).clamp(min=1)
    return -per_example[has].mean()


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, ids: list[list[int]], pairs: np.ndarray):
        self.ids, self.pairs = ids, pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, k: int) -> tuple[list[int], list[int], float]:
        a, b, target = self.pairs[k]
        return self.ids[int(a)], self.ids[int(b)], float(target)


@dataclass
class _PadPairs:
    """A batch of pairs as one encoder batch: the first halves, then the second halves, padded together."""

    tokenizer: Any

    def __call__(self, items: list[tuple[list[int], list[int], float]]) -> dict[str, torch.Tensor]:
        texts = [a for a, _, _ in items] + [b for _, b, _ in items]
        batch = dict(self.tokenizer.pad({"input_ids": texts}, return_tensors="pt"))
        batch["target"] = torch.tensor([t for _, _, t in items], dtype=torch.float32)
        return batch


class PairTuner(pl.LightningModule):
    """The encoder on mean-pooled embeddings: batches of :func:`class_batches` with :func:`supcon_loss`, or
    pairs with the squared error between their cosine similarity and the target (sentence-transformers'
    CosineSimilarityLoss, SetFit's default)."""

    def __init__(self, encoder: Any, lr: float, warmup_ratio: float):
        super().__init__()
        self.encoder, self.lr, self.warmup_ratio = encoder.train(), lr, warmup_ratio

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        z = mean_pool(out.last_hidden_state, batch["attention_mask"]).float()
        if "positive" in batch:
            loss = supcon_loss(z, batch["positive"])
        else:
            first, second = z.chunk(2)
            cosine = torch.nn.functional.cosine_similarity(first, second)
            loss = torch.nn.functional.mse_loss(cosine, batch["target"])
        self.log("fewshot/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def configure_optimizers(self) -> Any:
        from transformers import get_scheduler

        params = [p for p in self.encoder.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=0.0)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        scheduler = get_scheduler(
            "linear", optimizer, num_warmup_steps=int(self.warmup_ratio * total), num_training_steps=total
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


# The last pair-tuned model's weights and facts, by what determines them: a search's trials share their
# data, seed and fewshot settings (the space rarely searches these), so the pair phase runs once per process.
_TUNED: dict[str, tuple[dict[str, torch.Tensor], FewShotFacts]] = {}


def _tuned_key(cfg: PipelineConfig, data: EncodedData, precision: str) -> str:
    """What the pair phase's result depends on: the model, its dropout, the fewshot settings, seed, warmup,
    clipping, precision, and the train split's tokens and labels."""
    t = cfg.train
    h = hashlib.sha256(
        json.dumps(
            [
                cfg.model.name,
                cfg.model.dropout,
                cfg.fewshot.model_dump(),
                t.seed,
                t.warmup_ratio,
                t.grad_clip,
            ],
            default=str,
        ).encode()
    )
    h.update(precision.encode())
    for ids in data.train.ids:
        h.update(np.asarray(ids, dtype=np.int64).tobytes())
    h.update(json.dumps(data.train.labels, default=float).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class FewShotFacts:
    """What the few-shot phases did (logged on the run as ``fewshot/*``)."""

    texts: int
    steps: int
    final_loss: float
    head_train_accuracy: float
    seconds: float

    def metrics(self) -> dict[str, float]:
        return {f"fewshot/{k}": float(v) for k, v in self.__dict__.items()}


def tune_on_pairs(
    model: Any, data: EncodedData, cfg: PipelineConfig, precision: str, logger: Any = None
) -> FewShotFacts:
    """Both few-shot phases on ``model`` (a :class:`~tuneflow.backbone.pooling.MeanPooledClassifier`), in
    place: the encoder on :func:`sample_pairs` of the train split, then :func:`fit_head`.

    A second call with the same inputs in this process (the next trial of a search) loads the first one's
    weights instead of training again. Either way the global seed is set again afterwards, so what follows
    (dropout, shuffling) does not depend on which of the two happened.
    """
    key = _tuned_key(cfg, data, precision)
    if key in _TUNED:
        state, facts = _TUNED[key]
        model.load_state_dict(state)
        pl.seed_everything(cfg.train.seed, workers=True, verbose=False)
        return facts
    facts = _tune(model, data, cfg, precision, logger)
    _TUNED.clear()  # one entry: a model's weights are large
    _TUNED[key] = ({k: v.detach().clone() for k, v in model.state_dict().items()}, facts)
    pl.seed_everything(cfg.train.seed, workers=True, verbose=False)
    return facts


def _tune(model: Any, data: EncodedData, cfg: PipelineConfig, precision: str, logger: Any) -> FewShotFacts:
    began, fcfg, tcfg = time.perf_counter(), cfg.fewshot, cfg.train
    sets = label_sets(data.train.labels)
    cap = anchor_cap(sets)
    ids, supcon = data.train.ids, fcfg.loss == "supcon"
    iterations = pair_iterations(anchors(sets, cap), fcfg.iterations, fcfg.max_pairs, 1 if supcon else 4)
    if supcon:
        # A batch encodes 2 x batch_size texts, as batch_size pairs do: the same time per step.
        batches = class_batches(sets, iterations, 2 * fcfg.batch_size, tcfg.seed, cap)
        texts = sum(len(b) for b in batches)
        loader = torch.utils.data.DataLoader(_Batches(ids, sets, batches, data.tokenizer), batch_size=None)
    else:
        pairs = sample_pairs(sets, iterations, tcfg.seed, cap)
        texts = 2 * len(pairs)
        # Both halves share the batch's width: pairs of similar longer halves batched together (shuffled in
        # mega-batches, as the fine-tune's group_by_length) pad far less than random pairs.
        longer = [max(len(ids[int(a)]), len(ids[int(b)])) for a, b, _ in pairs]
        loader = torch.utils.data.DataLoader(
            _Pairs(ids, pairs),
            batch_sampler=LengthGroupedBatches(longer, fcfg.batch_size, tcfg.seed),
            collate_fn=_PadPairs(data.tokenizer),
        )
    tuner = PairTuner(model.encoder, fcfg.lr, tcfg.warmup_ratio)
    trainer = pl.Trainer(
        accelerator=tcfg.accelerator,
        devices=1,
        precision=precision,
        max_epochs=fcfg.epochs,
        gradient_clip_val=tcfg.grad_clip,
        logger=logger if logger is not None else False,
        log_every_n_steps=tcfg.log_every_n_steps,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(tuner, train_dataloaders=loader)
    loss = trainer.callback_metrics.get("fewshot/loss")
    steps = trainer.global_step
    del trainer, tuner
    gc.collect()  # trainer and tuner reference each other: the optimizer moments go now
    accuracy = fit_head(model, data, cfg.train.eval_batch_size, tcfg.seed)
    return FewShotFacts(
        texts=texts,
        steps=steps,
        final_loss=float(loss) if loss is not None else float("nan"),
        head_train_accuracy=accuracy,
        seconds=time.perf_counter() - began,
    )


def embed(model: Any, ids: list[list[int]], tokenizer: Any, batch_size: int) -> np.ndarray:
    """Mean-pooled embeddings (eval mode, no dropout) of token-id lists, in their order."""
    was_training = model.training
    model.eval()
    order = np.argsort([len(x) for x in ids])
    out = np.zeros((len(ids), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(ids), batch_size):
            idx = order[start : start + batch_size]
            batch = tokenizer.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
            hidden = model.encoder(**batch)
            out[idx] = mean_pool(hidden.last_hidden_state, batch["attention_mask"]).float().numpy()
    model.train(was_training)
    return out


def fit_head(model: Any, data: EncodedData, batch_size: int, seed: int) -> float:
    """SetFit's head: a logistic regression on the tuned encoder's train embeddings (one per label for
    multi-label data), loaded into the model's linear head. Returns its train accuracy (exact-set accuracy
    for multi-label)."""
    from sklearn.linear_model import LogisticRegression

    x = embed(model, data.train.ids, data.tokenizer, batch_size)
    head = model.classifier
    weight = np.zeros((head.out_features, x.shape[1]), dtype=np.float32)
    bias = head.bias.detach().float().numpy().copy()
    if is_multi_label(data.train.labels):
        y = np.asarray(data.train.labels, dtype=float) > 0.5
        for j in range(y.shape[1]):
            if 0 < y[:, j].sum() < len(y):  # a label always or never present keeps its base-rate bias
                lr = LogisticRegression(max_iter=1000, random_state=seed).fit(x, y[:, j])
                weight[j], bias[j] = lr.coef_[0], lr.intercept_[0]
        predicted = (x @ weight.T + bias) > 0
        accuracy = float((predicted == y).all(axis=1).mean())
    else:
        y = np.asarray(data.train.labels)
        lr = LogisticRegression(max_iter=1000, random_state=seed).fit(x, y)
        if len(lr.classes_) == 2 and lr.coef_.shape[0] == 1:  # sklearn's binary form: one logit difference
            weight[lr.classes_[1]], bias[lr.classes_[1]] = lr.coef_[0] / 2, lr.intercept_[0] / 2
            weight[lr.classes_[0]], bias[lr.classes_[0]] = -lr.coef_[0] / 2, -lr.intercept_[0] / 2
        else:
            bias[:] = -1e4 if len(lr.classes_) < head.out_features else 0.0  # labels absent from train
            weight[lr.classes_], bias[lr.classes_] = lr.coef_, lr.intercept_
        accuracy = float((lr.predict(x) == y).mean())
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight))
        head.bias.copy_(torch.from_numpy(bias))
    return accuracy
