"""The MLflow pyfunc wrapper: ``predict(list_of_texts)`` -> the task type's output frame (a classifier's
``label`` and ``score``, plus ``in_scope`` / ``oos_score`` / ``threshold`` with an out-of-scope detector).

This is the model itself (a ``PythonModel`` subclass); it never talks to the tracking server.
"""

from __future__ import annotations

import threading
from typing import Any

import mlflow.pyfunc
import pandas as pd

from tuneflow.backbone.lora import AdapterMismatchError, add_adapter
from tuneflow.fitting.export import load_base, load_predictor, read_meta
from tuneflow.registry import requestlog
from tuneflow.store.tracking import ADAPTER_PREFIX
from tuneflow.tasktypes import task_type


class TuneflowModel(mlflow.pyfunc.PythonModel):
    """Loads one exported model (full or adapter) once; predicts with its task's wrapper.

    Output per task: ``label``/``score`` (classification), ``entities`` (NER spans), ``generated_text``
    (seq2seq, causal_lm).
    """

    def load_context(self, context):  # noqa: ANN001, ANN201
        model_dir = context.artifacts["model_dir"]
        self.task = task_type(read_meta(model_dir)["task"])
        self.predictor = load_predictor(model_dir)
        self.request_log = requestlog.log_path()  # opt-in: None unless TUNEFLOW_REQUEST_LOG is set

    # The type hints are the signature: MLflow validates requests against them, so `{"inputs": [42]}` or a
    # wrong column is a 400 naming the problem, not a prediction. (A conversation is one JSON string.)
    def predict(self, context, model_input: list[str], params: dict[str, Any] | None = None) -> pd.DataFrame:  # noqa: ANN001
        answers = self.predictor.predict(self.task.serving.to_inputs(model_input))
        if (
            getattr(self, "request_log", None) is not None
        ):  # (models unpickled from before the option lack it)
            requestlog.append(self.request_log, list(model_input), answers, self.task.name)
        return answers


class GenerativeModel(TuneflowModel):
    """A model with per-request settings (a chat model's generation settings): ``params={"max_new_tokens":
    32, "do_sample": true, "temperature": 0.7}``; absent ones keep the values the model was trained with."""

    # ``pd.DataFrame`` keeps MLflow from deriving the signature from the hints: the logged one declares the
    # params (with the export's values as defaults), which type-hint signatures cannot carry yet.
    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:  # noqa: ANN001
        return self.predictor.predict(self.task.serving.to_inputs(model_input), **(params or {}))


class AdapterSetModel(mlflow.pyfunc.PythonModel):
    """Several LoRA adapters on one base: the base is loaded once, ``params={"adapter": NAME}`` picks one.

    Every adapter must have been trained on the same base (same weights and tokenizer hash) and task; heads
    of different sizes (e.g. intents and sentiment) are fine. Requests are served one adapter at a time.
    """

    def load_context(self, context):  # noqa: ANN001, ANN201
        from peft import PeftModel

        dirs = {
            key.removeprefix(ADAPTER_PREFIX): path
            for key, path in context.artifacts.items()
            if key.startswith(ADAPTER_PREFIX)
        }
        metas = {name: read_meta(path) for name, path in dirs.items()}
        self.default, *others = sorted(dirs)
        first = metas[self.default]
        check_adapter_set(metas)
        base, _, _ = load_base(first)
        self.model = PeftModel.from_pretrained(base, dirs[self.default], adapter_name=self.default).eval()
        for name in others:
            add_adapter(self.model, dirs[name], name)
        self.task = task_type(first["task"])
        self.predictors = {
            name: self.task.serving.predictor(self.model, _tokenizer(dirs[name]), metas[name])
            for name in sorted(dirs)
        }
        self.lock = threading.Lock()

    # ``pd.DataFrame`` tells MLflow not to derive the signature from the hints: the logged one declares the
    # ``adapter`` param, which MLflow's type-hint signatures cannot express yet.
    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:  # noqa: ANN001
        name = (params or {}).get("adapter") or self.default
        if name not in self.predictors:
            raise ValueError(
                f"unknown adapter '{name}'; this model serves: {', '.join(sorted(self.predictors))}"
            )
        with self.lock:  # the active adapter is model-wide state
            self.model.set_adapter(name)
            return self.predictors[name].predict(self.task.serving.to_inputs(model_input))


def _tokenizer(model_dir: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def check_adapter_set(metas: dict[str, dict[str, Any]]) -> None:
    """All adapters of a set share task, base weights and tokenizer, or a clear error names the odd one."""
    if not metas:
        raise ValueError("an adapter set needs at least one adapter")
    for name, meta in metas.items():
        if not meta.get("lora"):
            raise AdapterMismatchError(f"'{name}' is a fully fine-tuned model, not a LoRA adapter")
    reference_name = sorted(metas)[0]
    reference = metas[reference_name]
    for name, meta in metas.items():
        for key in ("task", "base_hash", "tokenizer_hash"):
            if meta.get(key) != reference.get(key):
                raise AdapterMismatchError(
                    f"adapter '{name}' has {key} {meta.get(key)!r} but '{reference_name}' has "
                    f"{reference.get(key)!r}: one set serves adapters of a single base and task"
                )
