"""GGUF loading without the SmolLM2 wheel: a tiny llama GGUF file written here with the ``gguf`` package."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

HIDDEN, LAYERS, FFN, HEADS = 32, 2, 64, 4
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = ["where is my parcel ?", "i want to book a hotel in paris .", "my card was declined today ."] * 20


def write_tiny_gguf(path: Path) -> dict[str, np.ndarray]:
    """A 2-layer llama with a byte-level BPE vocabulary trained on the fly; returns the tensors written."""
    import gguf
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        CORPUS, vocab_size=300, min_frequency=1, special_tokens=["<|im_start|>", "<|im_end|>"]
    )
    vocab = sorted(bpe.get_vocab().items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab]
    merges = [" ".join(pair) for pair in bpe.model.get_merges()] if hasattr(bpe.model, "get_merges") else None
    if merges is None:  # older tokenizers: read them from the serialized model
        import json

        merges = [
            m if isinstance(m, str) else " ".join(m) for m in json.loads(bpe.to_str())["model"]["merges"]
        ]
    rng = np.random.default_rng(0)

    def weight(*shape: int) -> np.ndarray:
        return rng.normal(0, 0.02, shape).astype(np.float32)

    tensors = {
        "token_embd.weight": weight(len(tokens), HIDDEN),
        "output_norm.weight": np.ones(HIDDEN, np.float32),
    }
    tensors["output.weight"] = weight(len(tokens), HIDDEN)
    for i in range(LAYERS):
        tensors.update(
            {
                f"blk.{i}.attn_norm.weight": np.ones(HIDDEN, np.float32),
                f"blk.{i}.attn_q.weight": weight(HIDDEN, HIDDEN),
                f"blk.{i}.attn_k.weight": weight(HIDDEN, HIDDEN),
                f"blk.{i}.attn_v.weight": weight(HIDDEN, HIDDEN),
                f"blk.{i}.attn_output.weight": weight(HIDDEN, HIDDEN),
                f"blk.{i}.ffn_norm.weight": np.ones(HIDDEN, np.float32),
                f"blk.{i}.ffn_gate.weight": weight(FFN, HIDDEN),
                f"blk.{i}.ffn_up.weight": weight(FFN, HIDDEN),
                f"blk.{i}.ffn_down.weight": weight(HIDDEN, FFN),
            }
        )
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t.startswith("<|") else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index("<|im_start|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_chat_template(CHAT_TEMPLATE)
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tensors


def test_a_local_gguf_file_loads_through_the_model_loader(tmp_path: Path) -> None:
    """`model.name: path/to/file.gguf`: weights dequantized where they belong, the vocabulary and chat
    template read from the file, and the chat task's encoding and generation work on it."""
    pytest.importorskip("gguf")
    import torch

    from tuneflow.fitting.model import load_pretrained, load_tokenizer, resolve_model
    from tuneflow.tasktypes.chat import ChatPredictor, encode_chat, prepare_tokenizer

    path = tmp_path / "tiny-llama.gguf"
    tensors = write_tiny_gguf(path)
    assert resolve_model(str(path)) == (str(tmp_path), "tiny-llama.gguf")
    model, fresh = load_pretrained("causal_lm", str(path), [])
    assert not fresh and model.config.hidden_size == HIDDEN and model.config.num_hidden_layers == LAYERS
    embed = model.get_input_embeddings().weight.detach().numpy()
    np.testing.assert_allclose(embed, tensors["token_embd.weight"], rtol=1e-6)
    down = model.model.layers[1].mlp.down_proj.weight.detach().numpy()
    np.testing.assert_allclose(down, tensors["blk.1.ffn_down.weight"], rtol=1e-6)

    tokenizer = prepare_tokenizer(load_tokenizer(str(path)))
    assert tokenizer.vocab_size == len(tensors["token_embd.weight"]) and tokenizer.eos_token == "<|im_end|>"
    text = "where is my parcel ?"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    messages = [{"role": "user", "content": text}, {"role": "assistant", "content": "in paris ."}]
    ids, labels = encode_chat(tokenizer, messages, 64)
    trained = tokenizer.decode([i for i, lab in zip(ids, labels, strict=True) if lab != -100])
    assert trained == "in paris .<|im_end|>\n"
    torch.manual_seed(0)
    reply = ChatPredictor(model.eval(), tokenizer, generate_kwargs={"max_new_tokens": 4}).reply(
        [messages[:1]]
    )
    assert isinstance(reply[0], str)


def test_a_fully_fine_tuned_gguf_model_exports_as_a_plain_model(tmp_path: Path) -> None:
    """Full fine-tuning of a GGUF base: transformers' GGUF marker would refuse save_pretrained; the export
    drops it and reloads as an ordinary model with the same weights."""
    pytest.importorskip("gguf")
    from transformers import AutoModelForCausalLM

    from tuneflow.fitting.export import drop_gguf_marker
    from tuneflow.fitting.model import load_pretrained

    path = tmp_path / "tiny-llama.gguf"
    tensors = write_tiny_gguf(path)
    model, _ = load_pretrained("causal_lm", str(path), [])
    drop_gguf_marker(model)
    model.save_pretrained(tmp_path / "export")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    assert getattr(again, "hf_quantizer", None) is None
    np.testing.assert_allclose(
        again.get_input_embeddings().weight.detach().numpy(), tensors["token_embd.weight"], rtol=1e-6
    )
