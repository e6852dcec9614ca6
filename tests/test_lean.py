"""Lean generative fine-tuning: the labeled-positions loss equals transformers' loss (values and gradients),
gradient checkpointing changes nothing but memory, and training commands restart under jemalloc."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

IGNORE = -100


def _batch(vocab: int) -> dict[str, torch.Tensor]:
    """3 rows, two padded; a prompt without labels (-100) before each reply, as the chat encoding gives."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, vocab, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 5:] = 0
    labels = ids.masked_fill(mask == 0, IGNORE)
    labels[:, :4] = IGNORE
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("lora", [False, True])
def test_labeled_positions_loss_equals_the_full_forward(
    tiny_gpt2: str, lora: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuneflow.backbone import lean
    from tuneflow.backbone.lora import apply_lora
    from tuneflow.config import LoraConfig
    from tuneflow.fitting.model import load_pretrained

    monkeypatch.setattr(lean, "CHUNK", 5)  # several chunks, the last one short
    model, _ = load_pretrained("causal_lm", tiny_gpt2, [], None)
    if lora:
        model = apply_lora(model, "CAUSAL_LM", LoraConfig(r=4, dropout=0.0))
    model.train()
    batch = _batch(model.config.vocab_size)
    torch.manual_seed(1)
    full = model(**batch).loss
    full.backward()
    expected = _grads(model)
    model.zero_grad()
    torch.manual_seed(1)
    mine = lean.causal_lm_loss(model, batch)
    assert mine is not None
    mine.backward()
    assert torch.allclose(mine, full, atol=1e-6)
    got = _grads(model)
    assert got.keys() == expected.keys() and expected
    for name, grad in expected.items():
        assert torch.allclose(got[name], grad, atol=1e-6), name


def test_evaluation_losses_from_labeled_positions_equal_the_logits_path(
    tiny_gpt2: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Perplexity's per-conversation sums and token counts, without the batch's vocabulary-wide logits."""
    from tuneflow.backbone import lean
    from tuneflow.data.encoding import Encoded
    from tuneflow.fitting.model import load_pretrained
    from tuneflow.judging.generation import sequence_collator, token_losses

    monkeypatch.setattr(lean, "CHUNK", 5)
    model, _ = load_pretrained("causal_lm", tiny_gpt2, [], None)
    model.eval()
    batch = _batch(model.config.vocab_size)
    rows = [r[m.bool()].tolist() for r, m in zip(batch["input_ids"], batch["attention_mask"], strict=True)]
    labels = [lab[m.bool()].tolist() for lab, m in zip(batch["labels"], batch["attention_mask"], strict=True)]
    labels[2] = [IGNORE] * len(labels[2])  # a conversation with nothing to score
    data = Encoded(rows, labels)
    from tuneflow.fitting.model import load_tokenizer
    from tuneflow.tasktypes.chat import prepare_tokenizer

    collate = sequence_collator(prepare_tokenizer(load_tokenizer(tiny_gpt2)))
    expected = token_losses(model, data, collate, shift=True, batch_size=2)
    lean_path = lean.position_losses
    sums, counts = token_losses(model, data, collate, shift=True, batch_size=2, positions=lean_path)
    assert counts.tolist() == expected[1].tolist() and counts[2] == 0 and counts[:2].min() > 0
    assert sums == pytest.approx(expected[0], rel=1e-5)


def test_no_labeled_position_gives_a_zero_loss_and_unknown_models_fall_back(tiny_gpt2: str) -> None:
    from tuneflow.backbone.lean import causal_lm_loss
    from tuneflow.fitting.model import load_pretrained

    model, _ = load_pretrained("causal_lm", tiny_gpt2, [], None)
    batch = _batch(model.config.vocab_size)
    batch["labels"][:] = IGNORE
    assert causal_lm_loss(model, batch).item() == 0.0
    model.config.final_logit_softcapping = 30.0  # logits are not just the output layer: full forward
    assert causal_lm_loss(model, batch) is None


def test_gradient_checkpointing_gives_the_same_gradients(tiny_gpt2: str) -> None:
    from tuneflow.backbone.lean import causal_lm_loss, enable_checkpointing
    from tuneflow.fitting.model import load_pretrained

    results = []
    for checkpointing in (False, True):
        model, _ = load_pretrained("causal_lm", tiny_gpt2, [], None)
        if checkpointing:
            enable_checkpointing(model)
        model.train()
        model.config.resid_pdrop = model.config.attn_pdrop = model.config.embd_pdrop = 0.0
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        causal_lm_loss(model, _batch(model.config.vocab_size)).backward()
        results.append(_grads(model))
    for name, grad in results[0].items():
        assert torch.allclose(results[1][name], grad, atol=1e-6), name


def test_the_setting_is_checked_and_reaches_the_model(tmp_path, tiny_model: str) -> None:  # noqa: ANN001
    from tests.conftest import make_config
    from tuneflow.fitting.model import load_tokenizer
    from tuneflow.fitting.training import build_module
    from tuneflow.tasktypes.resolve import load_config

    cfg = load_config(make_config(tmp_path, tiny_model), ["train.gradient_checkpointing=true"])
    kind = cfg.kind
    splits = kind.data.load_splits(cfg.data, cfg.train.seed)
    module, _ = build_module(cfg, kind.training.encode(splits, load_tokenizer(tiny_model), cfg), kind)
    assert module.model.is_gradient_checkpointing


def test_training_commands_restart_under_jemalloc() -> None:
    """The re-executed process has jemalloc mapped; ``TUNEFLOW_ALLOCATOR=system`` keeps glibc's malloc."""
    from tuneflow.allocator import SWITCH, jemalloc, preload_env

    assert preload_env({SWITCH: "system"}) is None
    if jemalloc() is None:
        pytest.skip("no libjemalloc on this system (apt install libjemalloc2): nothing to restart under")
    code = (
        "import sys; from tuneflow.allocator import use_jemalloc; use_jemalloc(['tuneflow', 'run']); "
        "print('jemalloc' in open('/proc/self/maps').read())"
    )
    env = {k: v for k, v in os.environ.items() if k not in (SWITCH, "LD_PRELOAD")}
    for switch, mapped in ((None, "True"), ("system", "False")):
        run_env = {**env, **({SWITCH: switch} if switch else {})}
        out = subprocess.run([sys.executable, "-c", code], env=run_env, capture_output=True, text=True)
        assert out.stdout.strip() == mapped, out.stderr


def test_stage_end_hands_kept_pages_back() -> None:
    """jemalloc keeps the pages a fit freed, up to its bound (``BoundedReuse``), and the next
    stage runs in another thread whose arena would not reuse them: a full fine-tune's 4.5 GB stayed resident
    through export and evaluation. ``release_free_memory`` (every stage's end) hands them back."""
    from tuneflow.allocator import MALLOC_CONF, jemalloc

    if jemalloc() is None:
        pytest.skip("no libjemalloc on this system (apt install libjemalloc2)")
    code = (
        "import threading, torch\n"
        "from tuneflow.allocator import release_free_memory, set_decay_ms\n"
        "set_decay_ms(-1)  # what a fit sets\n"
        "rss = lambda: next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS'))\n"
        "def stage():\n"
        "    kept = [torch.ones(4 * 2**20) for _ in range(40)]  # 40 x 16 MB, freed when the stage ends\n"
        "t = threading.Thread(target=stage); t.start(); t.join()\n"
        "held = rss(); what = release_free_memory(); print(what, held // 1024, rss() // 1024)\n"
    )
    env = {**os.environ, "LD_PRELOAD": jemalloc(), "MALLOC_CONF": MALLOC_CONF}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    what, held, after = out.stdout.split()
    assert what == "jemalloc", out.stderr
    assert int(held) - int(after) > 500, f"{held} MB resident before the release, {after} MB after"


def test_models_load_without_hub_kernels(tiny_gpt2: str, tiny_model: str, tmp_path) -> None:
    """transformers 5 turns Hugging Face Hub kernels on by default (fetched at a GPU model's first eval(): a
    GPU run stopped at its first validation, offline): every model tuneflow loads has them off."""
    import transformers

    from tuneflow.fitting.export import load_exported
    from tuneflow.fitting.model import load_pretrained

    if not hasattr(transformers.PreTrainedModel, "use_kernels"):
        pytest.skip(f"transformers {transformers.__version__} has no Hub kernels")
    chat, _ = load_pretrained("causal_lm", tiny_gpt2, [])
    classifier, _ = load_pretrained("sequence_classification", tiny_model, ["neg", "pos"])
    mean_pooled, _ = load_pretrained("sequence_classification", tiny_model, ["neg", "pos"], pooling="mean")
    assert not chat.use_kernels and not classifier.use_kernels and not mean_pooled.encoder.use_kernels
    # The export a registered model serves from loads the same way.
    classifier.save_pretrained(tmp_path)
    transformers.AutoTokenizer.from_pretrained(tiny_model).save_pretrained(tmp_path)
    (tmp_path / "tuneflow.json").write_text('{"task": "sequence_classification", "labels": ["neg", "pos"]}')
    served, _, _ = load_exported(tmp_path)
    assert not served.use_kernels


def test_checkpoints_stream_to_disk(tmp_path) -> None:
    """Lightning's CheckpointIO serializes through a memory buffer (several times a 1.6 GB full-fine-tune
    checkpoint held in RAM): tuneflow's writes the file directly; a failed save leaves the previous one."""
    import tracemalloc

    from lightning.pytorch.plugins.io import TorchCheckpointIO

    from tuneflow.fitting.checkpointio import StreamingCheckpointIO

    state = {"state_dict": {"w": torch.arange(5_000_000, dtype=torch.float32)}, "epoch": 3}  # 20 MB

    def peak_python_bytes(io: TorchCheckpointIO, path) -> int:
        tracemalloc.start()
        try:
            io.save_checkpoint(state, path)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    assert peak_python_bytes(TorchCheckpointIO(), tmp_path / "buffered.ckpt") > 20e6  # the buffer
    target = tmp_path / "ckpts" / "last.ckpt"
    assert peak_python_bytes(StreamingCheckpointIO(), target) < 5e6
    loaded = torch.load(target, weights_only=True)
    assert loaded["epoch"] == 3 and torch.equal(loaded["state_dict"]["w"], state["state_dict"]["w"])

    # A save that dies half-way: the previous checkpoint is still whole, no partial file is left behind.
    broken = {"state_dict": {"w": torch.zeros(3)}, "bad": lambda: None}  # a lambda cannot be pickled
    with pytest.raises(Exception):  # noqa: B017 (pickle's error type varies)
        StreamingCheckpointIO().save_checkpoint(broken, target)
    assert torch.load(target, weights_only=True)["epoch"] == 3
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]
