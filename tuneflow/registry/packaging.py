"""Packaging a fine-tuned model for MLflow: the pyfunc (with tuneflow's own code and portable pinned
requirements, so `mlflow models serve` works outside the checkout) and adapter sets."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow

from tuneflow.config import SMOLLM2_MODEL
from tuneflow.store.tracking import ADAPTER_PREFIX, client
from tuneflow.tasktypes import task_type


def log_model(run_id: str, model_dir: str | Path, task: str = "sequence_classification") -> str:
    """Log an export as an MLflow pyfunc model on ``run_id``; returns the model URI.

    The model predicts on a list of raw texts (or a one-column DataFrame; conversations for causal_lm) and
    returns the task's frame (see :class:`tuneflow.registry.serving.TuneflowModel`). An adapter export is
    logged without its base.
    """
    from tuneflow.fitting.export import read_meta

    adapter = (Path(model_dir) / "adapter_config.json").is_file()
    meta = read_meta(model_dir)
    params = task_type(task).serving.serving_params(meta)
    code = "generative_model.py" if params else "single_model.py"
    return _log_pyfunc(
        run_id,
        MODEL_CODE / code,
        {"model_dir": str(model_dir)},
        task,
        params or None,
        adapter=adapter,
        gguf=adapter and _gguf_base(model_dir),
        onnx=bool(meta.get("quantize")),
    )


def _gguf_base(model_dir: str | Path) -> bool:
    """An adapter on a GGUF base (SmolLM2): serving it needs the ``gguf`` reader too."""
    from tuneflow.fitting.export import read_meta

    base = str(read_meta(model_dir).get("base_model") or "")
    return base.endswith(".gguf") or base == SMOLLM2_MODEL


SERVING_PACKAGES = (
    *("torch", "lightning", "transformers", "tokenizers", "safetensors", "numpy", "pandas"),
    *("pydantic", "pyyaml", "mlflow", "seqeval"),
)
MODULE_OF = {"pyyaml": "yaml"}  # distributions whose top-level module has another name
MODEL_CODE = Path(__file__).parent / "model_code"


def pip_requirements(adapter: bool = False, gguf: bool = False, onnx: bool = False) -> list[str]:
    """Portable requirements of the serving environment: what ``tuneflow.registry.serving`` imports,
    pinned to the versions trained with, without local build tags (``torch==2.13.0``, not ``2.13.0+cpu``:
    no public index serves those). tuneflow itself ships with the model (``code_paths``). ``onnx``: the
    export serves an int8 ONNX Runtime graph."""
    from importlib.metadata import version

    pkgs = (*SERVING_PACKAGES, *(("peft",) if adapter else ()), *(("gguf",) if gguf else ()))
    pkgs += ("onnxruntime",) if onnx else ()
    return [f"{pkg}=={version(pkg).split('+')[0]}" for pkg in pkgs]


@contextlib.contextmanager
def _requirement_modules(requirements: list[str]) -> Iterator[None]:
    """While logging, MLflow loads the model back and checks its requirements against this environment,
    first mapping *every* installed distribution to its modules (``packages_distributions()``: ~0.5 s over
    200+ distributions, the largest share of a demo run's model logging). Our requirements are pinned from
    this very environment, so the check needs the modules of those packages only: MLflow's (private, lazily
    built) map is given just them for the duration of the call, then reset so that anything else in the
    process builds the full one. An MLflow without that map is left alone."""
    try:
        from mlflow.utils import requirements_utils as mlflow_requirements
    except ImportError:  # pragma: no cover - MLflow moved it: its own scan runs, nothing breaks
        yield
        return
    if getattr(mlflow_requirements, "_MODULES_TO_PACKAGES", False) is not None:
        yield  # already built in this process (nothing to save) or not there
        return
    names = [req.split("==")[0] for req in requirements]
    mlflow_requirements._MODULES_TO_PACKAGES = {MODULE_OF.get(n, n): [n] for n in names}
    try:
        yield
    finally:
        mlflow_requirements._MODULES_TO_PACKAGES = None
        mlflow_requirements._PACKAGES_TO_MODULES = None


def _log_pyfunc(
    run_id: str,
    code: Path,
    artifacts: dict[str, str],
    task: str,
    params: dict[str, Any] | None = None,
    adapter: bool = False,
    gguf: bool = False,
    onnx: bool = False,
) -> str:
    """Log a pyfunc as MLflow "models from code": the file ``code`` is run on load, nothing is unpickled
    (an overwritten pickle in the artifact store would run arbitrary code in whoever loads the model).

    The ``tuneflow`` package travels with the model (``code_paths``): it loads where tuneflow is not
    installed, given the requirements.
    """
    from mlflow.models import infer_signature

    kind = task_type(task)
    example = list(kind.serving.input_example)
    # A single model's signature is its predict type hints (requests are validated against them); the adapter
    # set declares its ``adapter`` param, which type-hint signatures cannot carry.
    signature = infer_signature(example, kind.serving.output_example(), params=params) if params else None
    requirements = pip_requirements(adapter, gguf, onnx)
    # log_model needs a fluent run; resuming ours by id is thread-safe because the run stack is thread-local.
    with mlflow.start_run(run_id=run_id), _requirement_modules(requirements):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(code),
            artifacts=artifacts,
            signature=signature,
            input_example=example,
            code_paths=[str(Path(__file__).parent.parent)],  # the tuneflow package
            # Explicit requirements: inferring them would re-load the model in a subprocess (slow).
            pip_requirements=requirements,
        )
    client().update_run(run_id, status="RUNNING")  # leaving the block marked the run FINISHED too early
    return info.model_uri


def log_adapter_set(run_id: str, adapter_dirs: dict[str, str], task: str) -> str:
    """Log a pyfunc serving several adapters of one base (``params={"adapter": NAME}``); returns its URI."""
    artifacts = {f"{ADAPTER_PREFIX}{name}": str(path) for name, path in adapter_dirs.items()}
    params = {"adapter": sorted(adapter_dirs)[0]}
    return _log_pyfunc(run_id, MODEL_CODE / "adapter_set.py", artifacts, task, params, adapter=True)
