"""NER, seq2seq and causal-LM fine-tuning end to end on tiny random models; BIO / alignment units."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from tests.conftest import ROOT, chat_rows, ner_config, ner_rows, seq2seq_rows, write_conll, write_jsonl
from tuneflow.config import ConfigError, DataConfig, FileSpec
from tuneflow.data.readers import read_conll, read_tagged
from tuneflow.tasktypes.resolve import load_config
from tuneflow.tasktypes.tagging import align_labels, bio_errors, entities, split_words, word_predictions

# ------------------------------------------------------------------------------------------- BIO / alignment


def test_bio_errors_hand_checked():
    assert bio_errors(["B-person", "I-person", "O", "B-location"]) == []
    assert bio_errors(["I-person"]) == [
        "word 1: I-person follows O (an I- tag must continue a B-/I- of its type)"
    ]
    errs = bio_errors(["B-person", "I-location", "X-thing"])
    assert errs[0].startswith("word 2: I-location follows B-person")
    assert "word 3: tag 'X-thing' is not O, B-<type> or I-<type>" in errs[1]


def test_align_labels_first_subtoken_only():
    # [CLS] new york ##er [SEP] -> words: 0=new, 1=yorker (two sub-tokens)
    word_ids = [None, 0, 1, 1, None]
    assert align_labels(word_ids, [3, 4]) == [-100, 3, 4, -100, -100]
    # Back to words: each word takes its first sub-token's value; a truncated word gets the default.
    assert word_predictions(word_ids, ["x", "a", "b", "c", "y"], 3, "O") == ["a", "b", "O"]


def test_entities_and_raw_text_words():
    assert entities(["B-person", "I-person", "O", "B-location"]) == [("person", 0, 1), ("location", 3, 3)]
    assert split_words("Alice's cat, in Paris!") == [
        ("Alice's", 0, 7),
        ("cat", 8, 11),
        (",", 11, 12),
        ("in", 13, 15),
        ("Paris", 16, 21),
        ("!", 21, 22),
    ]


def test_read_conll_tab_separators_and_problems(tmp_path: Path):
    path = tmp_path / "x.conll"
    path.write_text("alice\tB-person\nruns\tO\n\t\nbob\tB-person\nbroken\n\nend\tO\n")
    sentences, problems = read_conll(path)
    assert [(line, words) for line, words, _ in sentences] == [
        (1, ["alice", "runs"]),
        (4, ["bob"]),
        (7, ["end"]),
    ]
    assert len(problems) == 1 and problems[0].line == 5 and "expected 'token<TAB>tag'" in problems[0].message


def test_jsonl_count_mismatch_names_line(tmp_path: Path):
    path = write_jsonl(
        tmp_path / "x.jsonl",
        [{"tokens": ["a", "b"], "tags": ["O", "O"]}, {"tokens": ["a"], "tags": ["O", "O"]}],
    )
    frame, problems = read_tagged(FileSpec(path=str(path)), DataConfig(train=FileSpec(path=str(path))))
    assert len(frame) == 1
    assert [str(p) for p in problems] == [f"{path}:2: 1 tokens but 2 tags"]


# ------------------------------------------------------------------------------------------------ configs


@pytest.mark.parametrize("name", ["wnut17.yaml", "scitldr.yaml"])
def test_task_configs_validate(name: str):
    cfg = load_config(ROOT / "configs" / name)
    assert cfg.task in ("token_classification", "seq2seq")


def test_task_metric_mismatch_is_named():
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "configs" / "wnut17.yaml", ["train.monitor=val_accuracy", "gates.metric=rougeL"])
    keys = [k for k, _ in err.value.problems]
    assert keys == ["train.monitor", "gates.metric"]


def test_hub_model_offline_fails_clearly():
    from tuneflow.fitting.model import ModelLoadError, load_tokenizer

    with pytest.raises(
        ModelLoadError, match="(?s)google-t5/t5-small.*neither a local directory nor reachable"
    ):
        load_tokenizer("google-t5/t5-small")


# -------------------------------------------------------------------------------------------- end to end


def _run(cfg_path: Path) -> dict:
    from tuneflow.flows.finetune import finetune

    return finetune(str(cfg_path))


def _untrained_test_loss(cfg_path: Path) -> float:
    """Mean per-token loss of the *untrained* model on the config's test split (what training must beat)."""
    import transformers

    from tuneflow.fitting.model import load_tokenizer

    cfg = load_config(cfg_path)
    kind = cfg.kind
    test = kind.data.load_splits(cfg.data, cfg.train.seed).test
    model = getattr(transformers, kind.training.auto_class).from_pretrained(cfg.model.name).eval()
    predictor = kind.serving.predictor(
        model, load_tokenizer(cfg.model.name), kind.serving.inference_settings(cfg)
    )
    return predictor.loss(test)


def _artifacts(run_id: str, path: str) -> set[str]:
    return {Path(a.path).name for a in mlflow.MlflowClient().list_artifacts(run_id, path)}


@pytest.mark.integration
def test_ner_end_to_end(tmp_path, tiny_ner_model, tracking_uri, prefect_harness):
    import yaml

    cfg_path = ner_config(tmp_path, tiny_ner_model)
    raw = yaml.safe_load(cfg_path.read_text())
    raw["data"].pop("text_column"), raw["data"].pop("label_column")
    cfg_path.write_text(yaml.safe_dump(raw))
    out = _run(cfg_path)
    m = out.metrics
    assert {"test/f1", "test/precision", "test/recall", "fit/gap_val_f1", "fit/train_val_gap"} <= set(m)
    assert m["test/f1"] > 0.5  # synthetic entities are learnable even by a 2-layer random BERT
    assert {
        "per_type_metrics.csv",
        "type_confusion.csv",
        "type_confusion.png",
        "worst_sentences.csv",
    } <= _artifacts(out.run_id, "")
    per_type = pd.read_csv(
        mlflow.artifacts.download_artifacts(run_id=out.run_id, artifact_path="per_type_metrics.csv")
    )
    assert set(per_type["type"]) == {"person", "location", "org"}
    assert out.model.version == "1" and out.promotion.promote
    model = mlflow.pyfunc.load_model(f"models:/tiny-ner/{out.model.version}")
    spans = model.predict(["alice smith moved to paris last year"])["entities"][0]
    assert all({"type", "text", "start", "end", "score"} <= set(s) for s in spans)
    assert any(s["type"] == "location" and s["text"] == "paris" for s in spans)


@pytest.mark.integration
def test_seq2seq_end_to_end(tmp_path, tiny_t5, tracking_uri, prefect_harness):
    from tests.conftest import make_config

    train = write_jsonl(tmp_path / "train.jsonl", seq2seq_rows(120, 1))
    test = write_jsonl(tmp_path / "test.jsonl", seq2seq_rows(20, 2))
    cfg_path = make_config(
        tmp_path,
        tiny_t5,
        name="tiny-summaries",
        task="seq2seq",
        data={"train": str(train), "test": str(test), "text_column": "text", "label_column": "label"},
        model={"name": tiny_t5, "max_length": 48, "max_target_length": 16, "source_prefix": "summarize : "},
        generation={"max_new_tokens": 12},
        train={"lr": 5e-3, "max_epochs": 2, "monitor": "val/loss"},
        eval={
            "generation_metrics": ["rouge", "bleu", "chrf"],
            "sample_generations": 5,
            "latency_examples": 2,
        },
        gates={"metric": "rougeL"},
    )
    out = _run(cfg_path)
    m = out.metrics
    assert {"test/rouge1", "test/rouge2", "test/rougeL", "test/bleu", "test/chrf", "test/loss"} <= set(m)
    assert 0 <= m["test/rougeL"] <= 1 and m["test/loss"] > 0
    # Something was learned: the fine-tuned loss on the test summaries is well below the untrained one.
    assert m["test/loss"] < 0.8 * _untrained_test_loss(cfg_path)
    samples = pd.read_csv(
        mlflow.artifacts.download_artifacts(run_id=out.run_id, artifact_path="sample_generations.csv")
    )
    assert list(samples.columns) == ["line", "text", "reference", "generated"] and len(samples) == 5
    assert out.promotion.metric == "rougeL"
    generated = mlflow.pyfunc.load_model(f"models:/tiny-summaries/{out.model.version}").predict(
        ["alice met bob in paris . carol met dave in rome ."]
    )
    assert list(generated.columns) == ["generated_text"] and isinstance(generated["generated_text"][0], str)


def test_chat_labels_cover_assistant_tokens_only(tiny_gpt2):
    from tuneflow.fitting.model import load_tokenizer
    from tuneflow.tasktypes.chat import encode_chat, prepare_tokenizer

    tok = prepare_tokenizer(load_tokenizer(tiny_gpt2))
    messages = chat_rows(1, 0)[0]["messages"] + [
        {"role": "user", "content": "and oslo ?"},
        {"role": "assistant", "content": "oslo is in europe ."},
    ]
    ids, labels = encode_chat(tok, messages, 128)
    trained = [i for i, lab in zip(ids, labels, strict=True) if lab != -100]
    # Exactly the two assistant contents, each followed by the end-of-turn EOS and newline of the template.
    assert tok.decode(trained) == f"{messages[2]['content']} <eos> oslo is in europe . <eos>"
    assert all(lab in (-100, i) for i, lab in zip(ids, labels, strict=True))


@pytest.mark.integration
def test_causal_lm_with_lora_end_to_end(tmp_path, tiny_gpt2, tracking_uri, prefect_harness):
    from tests.conftest import invoke, make_config, mlflow_process

    train = write_jsonl(tmp_path / "train.jsonl", chat_rows(80, 1))
    test = write_jsonl(tmp_path / "test.jsonl", chat_rows(10, 2))
    cfg_path = make_config(
        tmp_path,
        tiny_gpt2,
        name="tiny-chat",
        task="causal_lm",
        data={"train": str(train), "test": str(test), "text_column": "text", "label_column": "label"},
        model={
            "name": tiny_gpt2,
            "max_length": 64,
            "lora": {"r": 4, "alpha": 8, "target_modules": ["c_attn"]},
        },
        generation={"max_new_tokens": 8},
        train={"lr": 3e-2, "max_epochs": 6, "batch_size": 8, "monitor": "val/loss"},
        eval={"sample_generations": 3, "latency_examples": 2},
        gates={"max_train_val_gap": None},
    )
    out = _run(cfg_path)
    m = out.metrics
    assert m["test/perplexity"] > 1 and out.promotion.metric == "chrf"
    # Before vs after, logged with the run: the base model (the adapter switched off) on the same test chats.
    # Something was learned: the assistant-token loss is below the untrained one (a rank-4 adapter on the
    # attention of a random 2-layer model, frozen random embeddings: it moves, but slowly).
    assert m["base/loss"] == pytest.approx(_untrained_test_loss(cfg_path), rel=1e-4)
    assert m["test/loss"] < 0.95 * m["base/loss"]
    assert {"test/chrf", "test/bleu", "base/chrf", "base/bleu"} <= set(m)
    assert m["serving/generation_tokens_per_s"] > 0
    samples = pd.read_csv(
        mlflow.artifacts.download_artifacts(run_id=out.run_id, artifact_path="sample_generations.csv")
    )
    columns = ["line", "context", "reference", "base_generated", "generated", "chrf", "base_chrf"]
    assert list(samples.columns) == columns
    assert samples["reference"].str.endswith("is in europe .").all()
    # Promotion judged per-turn chrF with a paired bootstrap (no champion yet: the absolute gates only).
    assert out.promotion.gates[0].detail == "10 examples"
    run = mlflow.MlflowClient().get_run(out.run_id)
    # Only the adapter is trained, checkpointed and logged: a small share of the parameters.
    assert 0 < run.data.metrics["model/params_trainable_share"] < 0.2
    files = _artifacts(out.run_id, "model/artifacts/export")
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    # Adapter-only checkpoints are checked in test_lora.py; here: deleted once the model is registered.
    assert not Path(out.fit.best_checkpoint).exists()
    mv = mlflow.MlflowClient().get_model_version("tiny-chat", out.model.version)
    assert mv.tags["tuneflow.adapter"] == "true" and len(mv.tags["tuneflow.base_hash"]) == 16
    pyfunc = mlflow.pyfunc.load_model(f"models:/tiny-chat/{out.model.version}")
    reply = pyfunc.predict(["where is rome ?"])
    assert isinstance(reply["generated_text"][0], str)
    # Generation settings per request: the signature declares them, with the trained-with values as defaults.
    params = {p.name: p.default for p in pyfunc.metadata.get_params_schema().params}
    assert params["max_new_tokens"] == 8 and params["do_sample"] is False
    short = pyfunc.predict(["where is rome ?", "where is oslo ?"], params={"max_new_tokens": 1})
    assert all(len(t.split()) <= 1 for t in short["generated_text"])
    with pytest.raises(Exception, match="max_new_tokens"):
        pyfunc.predict(["where is rome ?"], params={"max_new_tokens": 0})
    from typer.testing import CliRunner

    from tuneflow.cli import app

    predict = ["predict", "--model", f"models:/tiny-chat/{out.model.version}", "--tracking-uri", tracking_uri]
    said = CliRunner().invoke(app, [*predict, "--param", "max_new_tokens=1", "hi ?"])
    assert said.exit_code == 0 and said.output.startswith("hi ?\t"), said.output
    said = CliRunner().invoke(app, [*predict, "--param", "max_tokens=1", "hi ?"])
    assert said.exit_code == 2 and "--param max_tokens: not a setting of this model" in said.output
    # The same over REST (`mlflow models serve`, outside the checkout): params in the request body.
    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/tiny-chat/{out.model.version}", dst_path=str(tmp_path / "m")
        )
    )
    assert "peft==" in (local / "requirements.txt").read_text()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    serve = ["models", "serve", "-m", str(local), "--env-manager", "local"]
    with mlflow_process(serve, "/ping", cwd=tmp_path, env=env) as base:
        body = {"inputs": ["where is rome ?"], "params": {"max_new_tokens": 1}}
        status, answer = invoke(base, body)
        assert status == 200, answer
        assert len(json.loads(answer)["predictions"][0]["generated_text"].split()) <= 1
        status, answer = invoke(base, {**body, "params": {"max_new_tokens": 0}})
        assert status != 200 and "max_new_tokens" in answer


def test_lora_keys_are_searchable():
    from tuneflow.config import apply_params
    from tuneflow.tasktypes.resolve import config_from_dict

    raw = {
        "name": "x",
        "data": {"train": {"path": "/tmp/x.csv"}},
        "search": {
            "space": {
                "model.lora.r": {"type": "categorical", "choices": [4, 8, 16]},
                "model.lora.alpha": {"type": "float", "low": 8, "high": 64, "log": True},
                "model.lora.dropout": {"type": "float", "low": 0.0, "high": 0.2},
            }
        },
    }
    cfg = config_from_dict(raw)
    assert cfg.model.lora is None  # a trial that sets a LoRA key trains an adapter with defaults for the rest
    trial = apply_params(cfg, {"model.lora.r": 16, "model.lora.alpha": 32.0})
    assert (trial.model.lora.r, trial.model.lora.alpha, trial.model.lora.dropout) == (16, 32.0, 0.05)
    raw["search"]["space"]["model.lora.r"] = {"type": "int", "low": 0, "high": 8}
    raw["search"]["space"]["model.lora.rank"] = {"type": "int", "low": 1, "high": 8}
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    keys = sorted(k for k, _ in err.value.problems)
    assert keys == ["search.space.model.lora.r", "search.space.model.lora.rank"]


def test_ner_validation_errors_name_file_and_line(tmp_path, tiny_ner_model):
    from tests.conftest import make_config
    from tuneflow.data.validation import validate_dataset

    train = write_conll(tmp_path / "train.conll", ner_rows(40, 1) + [(["bob", "smith"], ["O", "I-person"])])
    test = write_conll(tmp_path / "test.conll", [(["ann", "x"], ["B-animal", "O"])] + ner_rows(5, 2))
    cfg = load_config(
        make_config(
            tmp_path,
            tiny_ner_model,
            task="token_classification",
            data={"train": str(train), "test": str(test)},
        )
    )
    report, splits = validate_dataset(cfg.kind.data.load_raw(cfg.data), cfg, cfg.kind)
    assert splits is None
    bad_line = 1 + sum(len(w) + 1 for w, _ in ner_rows(40, 1))
    assert any(
        e.startswith(f"{train}:{bad_line}: invalid BIO in train: word 2: I-person follows O")
        for e in report.errors
    )
    assert f"{test}:1: tag(s) never seen in train: B-animal" in report.errors


def test_cli_validate_hub_seq2seq_offline_exits_4():
    from typer.testing import CliRunner

    from tuneflow.cli import app

    result = CliRunner().invoke(app, ["validate", str(ROOT / "configs" / "scitldr.yaml")])
    assert result.exit_code == 4
    assert "google-t5/t5-small" in result.output and "local path" in " ".join(result.output.split())


@pytest.mark.slow
def test_wnut17_reads_and_validates(tiny_ner_model):
    """The shipped NER config on the real WNUT-17 files: counts as documented, no BIO errors."""
    from tuneflow.data.validation import validate_dataset
    from tuneflow.fitting.model import load_tokenizer

    cfg = load_config(ROOT / "configs" / "wnut17.yaml", [f"model.name={tiny_ner_model}"])
    report, splits = validate_dataset(
        cfg.kind.data.load_raw(cfg.data), cfg, cfg.kind, load_tokenizer(tiny_ner_model)
    )
    assert report.ok, report.errors
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (3394, 1009, 1287)
    assert report.stats["entities_train"] == 1975 and report.stats["num_tags"] == 13


def test_instruction_rows_become_exchanges_with_every_reference(tmp_path, tiny_gpt2):
    """data.prompt_template: source/target rows are user/assistant exchanges; sources are cut to
    max_source_words; empty targets are errors naming file, line and column."""
    from tests.conftest import make_config
    from tuneflow.tasktypes.chat import assistant_turns

    rows = [{"source": ["a b c", "d e f g"], "target": ["short one .", "another ."]} for _ in range(20)]
    rows.append({"source": ["x y"], "target": [""]})
    train = write_jsonl(tmp_path / "pairs.jsonl", rows)
    cfg = load_config(
        make_config(
            tmp_path,
            tiny_gpt2,
            task="causal_lm",
            data={"train": str(train), "prompt_template": "tl;dr: {source}", "max_source_words": 5},
            gates={"max_val_degradation": None},
        )
    )
    kind = cfg.kind
    df, problems = kind.data.read(cfg.data.train, cfg.data)
    assert [str(p) for p in problems] == [f"{train}:21 [column 'target']: empty text: nothing to learn from"]
    assert df["messages"][0] == [
        {"role": "user", "content": "tl;dr: a b c d e"},
        {"role": "assistant", "content": "short one ."},
    ]
    turns = assistant_turns(df.head(2))
    assert [t.references for t in turns] == [["short one .", "another ."]] * 2
    assert turns[0].context == [{"role": "user", "content": "tl;dr: a b c d e"}]
    with pytest.raises(ConfigError) as err:
        load_config(make_config(tmp_path, tiny_gpt2, task="causal_lm", data={"prompt_template": "no slot"}))
    assert [k for k, _ in err.value.problems] == ["data.prompt_template"]


def test_chat_turns_system_prompt_and_generation_params(tiny_gpt2):
    """Every assistant turn is scored with the conversation so far; the sample is frozen; the system prompt
    is context (never a target); request params are checked and named."""
    from tuneflow.fitting.model import load_tokenizer
    from tuneflow.tasktypes.chat import (
        assistant_turns,
        encode_chat,
        generation_settings,
        prepare_tokenizer,
        sample_turns,
        with_system,
    )

    messages = [
        {"role": "user", "content": "where is rome ?"},
        {"role": "assistant", "content": "rome is in europe ."},
        {"role": "user", "content": "where is oslo ?"},
        {"role": "assistant", "content": "oslo is in europe ."},
    ]
    df = pd.DataFrame({"_line": [1, 2], "messages": [messages, messages[:2]]})
    turns = assistant_turns(df)
    assert [(t.line, len(t.context), t.references) for t in turns] == [
        (1, 1, ["rome is in europe ."]),
        (1, 3, ["oslo is in europe ."]),
        (2, 1, ["rome is in europe ."]),
    ]
    assert sample_turns(turns, 2) == sample_turns(turns, 2) and len(sample_turns(turns, 2)) == 2
    system = "you are a travel helper ."
    assert with_system(messages, system)[0] == {"role": "system", "content": system}
    own = [{"role": "system", "content": "be brief ."}, *messages]
    assert with_system(own, system) == own
    tok = prepare_tokenizer(load_tokenizer(tiny_gpt2))
    ids, labels = encode_chat(tok, with_system(messages, system), 128)
    trained = tok.decode([i for i, lab in zip(ids, labels, strict=True) if lab != -100])
    assert "travel" not in trained and trained.startswith("rome is in europe .")
    stored = {"max_new_tokens": 64, "num_beams": 1, "do_sample": False}
    assert generation_settings(stored, {"do_sample": True, "temperature": 0.7})["temperature"] == 0.7
    with pytest.raises(ValueError, match="invalid generation params") as err:
        generation_settings(stored, {"max_tokens": 5, "top_p": 2})
    assert "max_tokens" in str(err.value) and "top_p" in str(err.value)
