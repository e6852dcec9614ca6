"""Less work per training step, the same training: the [CLS]-only last layer and bf16 weights with fp32
masters must give what the full computation gives."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import make_config
from tuneflow.backbone import clsonly
from tuneflow.tasktypes.resolve import load_config


def _batch(vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (4, 11), generator=g)
    ids[:, 0] = 2  # [CLS]
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # padded rows: the [CLS] query must not see them either
    mask[3, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 2, 1])}


def _logits_and_grads(model: torch.nn.Module, batch: dict, cls_only: bool) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    if cls_only:
        with clsonly.cls_only(model):
            out = model(**batch)
    else:
        out = model(**batch)
    out.loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach(), grads


def test_cls_only_last_layer_gives_the_full_logits_and_gradients(tiny_model: str) -> None:
    from tuneflow.fitting.model import load_pretrained

    model = load_pretrained("sequence_classification", tiny_model, ["a", "b", "c"])[0].eval()
    assert clsonly.enable(model)
    batch = _batch(model.config.vocab_size)
    full, full_grads = _logits_and_grads(model, batch, cls_only=False)
    short, short_grads = _logits_and_grads(model, batch, cls_only=True)
    assert torch.allclose(full, short, atol=1e-6, rtol=1e-5), (full - short).abs().max()
    assert full_grads.keys() == short_grads.keys()  # every weight still learns, the last layer's included
    for name, grad in full_grads.items():
        assert torch.allclose(grad, short_grads[name], atol=1e-6, rtol=1e-4), name
    # Off again outside the block: token states of every position, as predictors and exports read them.
    states = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
    )
    assert states.hidden_states[-1].shape[1] == batch["input_ids"].shape[1]


def test_cls_only_is_left_off_where_the_head_reads_other_positions(
    tiny_model: str, tiny_ner_model: str
) -> None:
    from tuneflow.fitting.model import load_pretrained

    mean = load_pretrained("sequence_classification", tiny_model, ["a", "b"], pooling="mean")[0]
    tagger = load_pretrained("token_classification", tiny_ner_model, ["O", "B-PER", "I-PER"])[0]
    assert not clsonly.enable(mean) and not clsonly.enable(tagger)


class _Recorder:
    """Per-step losses and the dtype of a Linear weight while training."""

    def __init__(self) -> None:
        import lightning.pytorch as pl

        self.losses: list[float] = []
        self.linear_dtype: torch.dtype | None = None
        self.kernels: dict[str, set[str]] = {"train": set(), "validation": set()}
        rec = self

        class Callback(pl.Callback):
            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
                rec.losses.append(float(outputs["loss"]))
                layer = next(m for m in module.model.modules() if isinstance(m, torch.nn.Linear))
                rec.linear_dtype = layer.weight.dtype
                rec.kernels["train"].add(module.model.config._attn_implementation)

            def on_validation_batch_end(self, trainer, module, *args) -> None:  # noqa: ANN001, ANN002
                rec.kernels["validation"].add(module.model.config._attn_implementation)

        self.callback = Callback()


def _fit(
    tmp_path: Path, tiny_model: str, name: str, dropout: float = 0.0, **train: object
) -> tuple[_Recorder, dict, object]:
    from tuneflow.fitting.model import load_tokenizer
    from tuneflow.fitting.training import fit

    settings = {"max_epochs": 2, "precision": "bf16-mixed", "grad_clip": 1.0, **train}
    cfg = load_config(make_config(tmp_path, tiny_model, model={"dropout": dropout}, train=settings))
    kind = cfg.kind
    data = kind.training.encode(
        kind.data.load_splits(cfg.data, cfg.train.seed), load_tokenizer(tiny_model), cfg
    )
    rec = _Recorder()
    result = fit(cfg, data, tmp_path / name, callbacks=[rec.callback], progress_bar=False, resumable=False)
    state = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    return rec, state, result


@pytest.mark.integration
def test_bf16_weights_and_cls_only_train_as_plain_bf16_mixed(tmp_path: Path, tiny_model: str) -> None:
    """Two epochs with both savings and two without: the same losses at every step and the same best
    checkpoint, held in fp32 (the masters), although the Linear weights were bf16 while training."""
    plain, plain_state, plain_fit = _fit(
        tmp_path, tiny_model, "plain", bf16_weights=False, cls_only_last_layer=False
    )
    lean, lean_state, lean_fit = _fit(tmp_path, tiny_model, "lean")
    assert plain.linear_dtype == torch.float32 and lean.linear_dtype == torch.bfloat16
    assert len(lean.losses) == len(plain.losses) > 10
    assert lean.losses == pytest.approx(plain.losses, rel=2e-2, abs=2e-3)
    assert lean_fit.best_score == pytest.approx(plain_fit.best_score, abs=0.02)
    assert lean_state.keys() == plain_state.keys()
    for name, value in lean_state.items():
        assert value.dtype == plain_state[name].dtype, name
        assert torch.allclose(value.float(), plain_state[name].float(), atol=5e-3, rtol=5e-2), name


@pytest.mark.integration
def test_bf16_weights_are_exact_against_plain_bf16_mixed(tmp_path: Path, tiny_model: str) -> None:
    """bf16 weights alone change no arithmetic: bit-identical losses to plain bf16-mixed."""
    plain, plain_state, _ = _fit(tmp_path, tiny_model, "plain", bf16_weights=False, max_epochs=1)
    lean, lean_state, _ = _fit(tmp_path, tiny_model, "lean", bf16_weights=True, max_epochs=1)
    assert lean.linear_dtype == torch.bfloat16
    assert lean.losses == plain.losses
    assert all(torch.equal(lean_state[k], plain_state[k]) for k in plain_state)


@pytest.mark.integration
def test_training_on_a_cpu_with_attention_dropout_uses_eager_attention(
    tmp_path: Path, tiny_model: str
) -> None:
    """SDPA has no fused CPU kernel with dropout: the steps train with eager attention, validation and the
    exported model keep the model's own (SDPA); ``train.attention: model`` keeps SDPA throughout."""
    auto, _, result = _fit(tmp_path, tiny_model, "auto", dropout=0.1, max_epochs=1)
    assert auto.kernels == {"train": {"eager"}, "validation": {"sdpa"}}
    from tuneflow.fitting.model import load_module

    assert load_module(result.best_checkpoint).model.config._attn_implementation == "sdpa"
    kept, _, _ = _fit(tmp_path, tiny_model, "model", dropout=0.1, max_epochs=1, attention="model")
    assert kept.kernels == {"train": {"sdpa"}, "validation": {"sdpa"}}
    # Without attention dropout SDPA's fused kernel is the faster one: no switch.
    plain, _, _ = _fit(tmp_path, tiny_model, "plain", dropout=0.0, max_epochs=1)
    assert plain.kernels["train"] == {"sdpa"}
