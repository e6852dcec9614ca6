"""LoRA adapters (peft): wrapping, adapter-only exports, base compatibility and several adapters on one base.

An adapter is only meaningful on the exact weights and tokenizer it was trained on, so every export records
the base model id plus a hash of the base weights (the pre-trained ones, not a freshly initialized task head)
and of the tokenizer; loading recomputes both and refuses a mismatch.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from tuneflow.config import LoraConfig


class AdapterMismatchError(ValueError):
    """An adapter was asked to run on a base model (or tokenizer) other than the one it was trained on."""


def weights_hash(model: torch.nn.Module, skip: set[str] | frozenset[str] = frozenset()) -> str:
    """SHA-256 (16 hex digits) of a model's tensors by name, leaving out ``skip`` (fresh, random weights)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name in skip:
            continue
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def tokenizer_hash(tokenizer: Any) -> str:
    """SHA-256 (16 hex digits) of a fast tokenizer's full definition (vocabulary, merges, normalizers)."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


def apply_lora(model: torch.nn.Module, peft_task_type: str, lcfg: LoraConfig) -> torch.nn.Module:
    """Freeze ``model`` and add trainable low-rank adapters (and a trainable task head, for classifiers).

    Args:
        model: the pre-trained model.
        peft_task_type: peft's task type name (the task type's ``peft_task_type``).
        lcfg: rank, alpha, dropout and target modules.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    config = PeftLoraConfig(
        task_type=peft_task_type,
        r=lcfg.r,
        lora_alpha=lcfg.alpha,
        lora_dropout=lcfg.dropout,
        target_modules=lcfg.target_modules,
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:  # e.g. target_modules naming modules the architecture does not have
        raise ValueError(f"model.lora: {exc}") from exc


def check_compatible(meta: dict[str, Any], base_name: str, base_weights: str, base_tokenizer: str) -> None:
    """Raise :class:`AdapterMismatchError` unless the loaded base is the one the adapter was trained on."""
    problems = []
    if meta.get("base_hash") and meta["base_hash"] != base_weights:
        problems.append(f"base weights hash {base_weights} != {meta['base_hash']} recorded at training")
    if meta.get("tokenizer_hash") and meta["tokenizer_hash"] != base_tokenizer:
        problems.append(f"tokenizer hash {base_tokenizer} != {meta['tokenizer_hash']} recorded at training")
    if problems:
        raise AdapterMismatchError(
            f"adapter trained on base '{meta.get('base_model')}' cannot run on base '{base_name}': "
            + "; ".join(problems)
            + ". Load it on the base it was trained on (see `tuneflow adapters`)."
        )


def add_adapter(peft_model: Any, model_dir: str | Path, name: str) -> None:
    """Load another adapter into a ``PeftModel`` sharing its base, even when its head has another size.

    peft copies the base's task head for each adapter; a classifier for a different label count needs a head
    of its own shape before the adapter's weights can be loaded into it.
    """
    from peft import PeftConfig
    from peft.utils import set_peft_model_state_dict
    from peft.utils.other import ModulesToSaveWrapper
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    state = load_file(model_dir / "adapter_model.safetensors")
    peft_model.add_adapter(name, PeftConfig.from_pretrained(str(model_dir)))
    for module_name, module in peft_model.named_modules():
        if not isinstance(module, ModulesToSaveWrapper) or name not in module.modules_to_save:
            continue
        head = module.modules_to_save[name]
        weight = state.get(f"{module_name}.weight")
        if isinstance(head, torch.nn.Linear) and weight is not None and weight.shape != head.weight.shape:
            module.modules_to_save[name] = torch.nn.Linear(
                weight.shape[1], weight.shape[0], bias=head.bias is not None
            )
    set_peft_model_state_dict(peft_model, state, adapter_name=name)
    peft_model.eval()
