"""Batching, padding and pair encoding, and the continuity of a resumed training run."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import make_config
from tuneflow.data.encoding import Encoded, EncodedData, LengthGroupedBatches
from tuneflow.tasktypes import task_type
from tuneflow.tasktypes.resolve import load_config


def _epoch(sampler: LengthGroupedBatches) -> list[list[int]]:
    return [list(b) for b in sampler]


def test_length_grouped_batches_cover_every_example_once_with_similar_lengths() -> None:
    rng = random.Random(1)
    lengths = [rng.randint(3, 120) for _ in range(1000)]
    sampler = LengthGroupedBatches(lengths, batch_size=16, seed=7)
    first = _epoch(sampler)
    assert sorted(i for b in first for i in b) == list(range(1000))  # each example exactly once
    assert len(first) == len(sampler) == 63 and all(len(b) <= 16 for b in first)
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in first) / len(first)
    shuffled = list(range(1000))
    rng.shuffle(shuffled)
    random_batches = [shuffled[i : i + 16] for i in range(0, 1000, 16)]
    random_spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in random_batches)
    assert spread < 0.2 * random_spread / len(random_batches)  # far less padding than random batches
    second = _epoch(sampler)
    assert second != first and sorted(i for b in second for i in b) == list(range(1000))
    # Seeded: the same seed gives the same batches; an epoch can be selected (what a resumed run does).
    again = LengthGroupedBatches(lengths, batch_size=16, seed=7)
    assert _epoch(again) == first
    again.set_epoch(1)
    assert _epoch(again) == second


def test_collation_pads_inputs_and_label_sequences(tiny_model: str) -> None:
    from tuneflow.fitting.model import load_tokenizer

    tok = load_tokenizer(tiny_model)
    classes = EncodedData(
        Encoded([[2, 5, 3], [2, 5, 6, 7, 3]], [0, 1]),
        Encoded([], []),
        ["a", "b"],
        tok,
        32,
        "sequence_classification",
    )
    batch = task_type(classes.task).training.collator(tok)(
        list(zip(classes.train.ids, classes.train.labels, strict=True))
    )
    assert batch["input_ids"].tolist() == [[2, 5, 3, tok.pad_token_id, tok.pad_token_id], [2, 5, 6, 7, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["labels"].tolist() == [0, 1]
    tags = EncodedData(
        Encoded([[2, 5, 3], [2, 5, 6, 3]], [[-100, 1, -100], [-100, 0, 2, -100]]),
        Encoded([], []),
        ["O", "B-x", "I-x"],
        tok,
        32,
        "token_classification",
    )
    batch = task_type(tags.task).training.collator(tok)(
        list(zip(tags.train.ids, tags.train.labels, strict=True))
    )
    assert batch["input_ids"].tolist()[0] == [2, 5, 3, tok.pad_token_id]
    assert batch["labels"].tolist() == [[-100, 1, -100, -100], [-100, 0, 2, -100]]  # padded with -100


def test_seq2seq_pairs_are_encoded_with_prefix_and_truncated(tiny_t5: str) -> None:
    from tuneflow.fitting.model import load_tokenizer
    from tuneflow.tasktypes.seq2seq import encode_frame

    tok = load_tokenizer(tiny_t5)
    df = pd.DataFrame(
        {
            "text": ["alice met bob in paris .", "carol met dave in rome . erin met frank in oslo ."],
            "target": ["alice met bob", "carol met dave in rome ."],
        }
    )
    enc = encode_frame(df, tok, max_length=8, max_target_length=4, prefix="summarize : ")
    first = tok.convert_ids_to_tokens(enc.ids[0])
    assert first[:2] == ["summarize", ":"] and first[-1] == "</s>"
    assert all(len(i) <= 8 for i in enc.ids) and len(enc.ids[1]) == 8  # truncated, still ends with </s>
    assert tok.convert_ids_to_tokens(enc.labels[0]) == ["alice", "met", "bob", "</s>"]
    assert len(enc.labels[1]) == 4 and tok.convert_ids_to_tokens(enc.labels[1])[-1] == "</s>"


def test_chat_encoding_truncates_inputs_and_labels_together(tiny_gpt2: str) -> None:
    from tests.conftest import chat_rows
    from tuneflow.fitting.model import load_tokenizer
    from tuneflow.tasktypes.chat import encode_chat, prepare_tokenizer

    tok = prepare_tokenizer(load_tokenizer(tiny_gpt2))
    messages = chat_rows(1, 3)[0]["messages"]
    full_ids, full_labels = encode_chat(tok, messages, 128)
    ids, labels = encode_chat(tok, messages, 10)
    assert len(ids) == len(labels) == 10
    assert ids == full_ids[:10] and labels == full_labels[:10]
    assert set(full_labels) != {-100}  # the assistant answer is trained on when it fits


class _Losses:
    """Collects the training loss of every optimizer step (a Lightning callback)."""

    def __init__(self) -> None:
        import lightning.pytorch as pl

        class Collect(pl.Callback):
            def __init__(self, out: dict[int, float]) -> None:
                self.out = out

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
                self.out[trainer.global_step] = float(outputs["loss"])

        self.steps: dict[int, float] = {}
        self.callback = Collect(self.steps)


class _Interrupted(RuntimeError):
    pass


class _CrashAt:
    """Raises at the start of epoch ``epoch`` (0-based), where the fault-injection kill happens."""

    def __init__(self, epoch: int) -> None:
        import lightning.pytorch as pl

        class Crash(pl.Callback):
            def on_train_epoch_start(self, trainer, module) -> None:  # noqa: ANN001
                if trainer.current_epoch == epoch:
                    raise _Interrupted(f"interrupted at epoch {epoch}")

        self.callback = Crash()


@pytest.mark.integration
def test_resumed_training_continues_the_same_loss_curve(tmp_path: Path, tiny_model: str) -> None:
    """Interrupted after epoch 2 and resumed from last.ckpt: the same per-step losses as an uninterrupted
    run (same batches, optimizer, scheduler and step counter), as torchtune's recipe tests check."""
    from tuneflow.fitting.model import load_tokenizer
    from tuneflow.fitting.training import LAST_CHECKPOINT, fit

    # Dropout off: the only randomness left is the (seeded, per-epoch) batch order.
    path = make_config(
        tmp_path, tiny_model, model={"dropout": 0.0}, train={"max_epochs": 4, "early_stopping_patience": 9}
    )
    cfg = load_config(path)
    kind = cfg.kind
    data = kind.training.encode(
        kind.data.load_splits(cfg.data, cfg.train.seed), load_tokenizer(tiny_model), cfg
    )

    whole = _Losses()
    fit(cfg, data, tmp_path / "whole", callbacks=[whole.callback], progress_bar=False)
    first = _Losses()
    with pytest.raises(_Interrupted):
        fit(
            cfg,
            data,
            tmp_path / "split",
            callbacks=[first.callback, _CrashAt(2).callback],
            progress_bar=False,
        )
    second = _Losses()
    resumed = fit(
        cfg,
        data,
        tmp_path / "split",
        resume_from=str(tmp_path / "split" / LAST_CHECKPOINT),
        callbacks=[second.callback],
        progress_bar=False,
    )
    assert resumed.epochs == 4 or resumed.global_step == max(whole.steps)
    joined = {**first.steps, **second.steps}
    assert sorted(joined) == sorted(whole.steps)  # no step skipped or repeated
    assert min(second.steps) > max(first.steps)
    for step, loss in whole.steps.items():
        assert joined[step] == pytest.approx(loss, rel=1e-4, abs=1e-5), step


def test_deterministic_training_repeats_exactly_without_filling_new_tensors(
    tmp_path: Path, tiny_model: str
) -> None:
    """Deterministic algorithms stay on, torch's NaN-fill of new tensors (a debugging aid, ~8% of a step) is
    off: two seeded fits, dropout included, still take bit-identical steps."""
    import torch

    from tuneflow.fitting.model import load_tokenizer
    from tuneflow.fitting.training import fit

    cfg = load_config(make_config(tmp_path, tiny_model, train={"max_epochs": 2, "deterministic": True}))
    kind = cfg.kind
    data = kind.training.encode(
        kind.data.load_splits(cfg.data, cfg.train.seed), load_tokenizer(tiny_model), cfg
    )
    runs = [_Losses(), _Losses()]
    for i, losses in enumerate(runs):
        fit(cfg, data, tmp_path / f"run{i}", callbacks=[losses.callback], progress_bar=False, resumable=False)
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.utils.deterministic.fill_uninitialized_memory
    assert len(runs[0].steps) > 4 and runs[0].steps == runs[1].steps


def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    from tuneflow.config import TrainConfig
    from tuneflow.fitting import training

    assert training.cpu_has_native_bf16("processor: 0\nflags\t\t: fpu sse avx512f avx512_bf16 avx512_vnni\n")
    assert training.cpu_has_native_bf16("flags : fpu amx_bf16 amx_tile\n")
    assert not training.cpu_has_native_bf16("flags\t: fpu sse avx2 avx512f\nbugs: avx512_bf16\n")
    assert not training.cpu_has_native_bf16("")
    for native, expected in ((True, "bf16-mixed"), (False, "32-true")):
        monkeypatch.setattr(training, "cpu_has_native_bf16", lambda native=native: native)
        assert training.resolve_precision(TrainConfig(accelerator="cpu")) == expected
    assert training.resolve_precision(TrainConfig(accelerator="cpu", precision="32-true")) == "32-true"


def test_training_uses_the_fused_optimizer_and_sorted_validation_batches(
    tmp_path: Path, tiny_model: str
) -> None:
    import lightning.pytorch as pl

    from tuneflow.fitting.model import load_tokenizer
    from tuneflow.fitting.training import fit

    cfg = load_config(make_config(tmp_path, tiny_model, train={"max_epochs": 1, "eval_batch_size": 4}))
    kind = cfg.kind
    data = kind.training.encode(
        kind.data.load_splits(cfg.data, cfg.train.seed), load_tokenizer(tiny_model), cfg
    )
    seen: dict = {"val_lengths": []}

    class Spy(pl.Callback):
        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            seen["fused"] = trainer.optimizers[0].defaults["fused"]

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001
            seen["val_lengths"].append(int(batch["attention_mask"].sum(1).max()))

    fit(cfg, data, tmp_path / "ckpt", callbacks=[Spy()], progress_bar=False, resumable=False)
    assert seen["fused"] is True
    lengths = seen["val_lengths"]
    assert len(lengths) > 2 and lengths == sorted(lengths, reverse=True)  # longest first, little padding
