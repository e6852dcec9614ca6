"""The MLflow pyfunc wrapper: ``predict(list_of_texts)`` -> DataFrame(label, score).

This is the model itself (a ``PythonModel`` subclass); it never talks to the tracking server.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import mlflow.pyfunc
import pandas as pd


def pip_requirements() -> list[str]:
    """Pinned requirements of the serving environment (tuneflow itself must be installed there too)."""
    pkgs = ("torch", "transformers", "tokenizers", "lightning", "scikit-learn", "pandas", "mlflow")
    return [f"{pkg}=={version(pkg)}" for pkg in pkgs]


def to_texts(model_input: Any) -> list[str]:
    """Accept a str, a list of str, a Series, an array or a DataFrame (column ``text`` or the first one)."""
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, pd.DataFrame):
        col = "text" if "text" in model_input.columns else model_input.columns[0]
        return model_input[col].astype(str).tolist()
    return [str(t) for t in list(model_input)]


class TextClassifierModel(mlflow.pyfunc.PythonModel):
    """Loads the exported Hugging Face directory once; predicts labels and their probabilities."""

    def load_context(self, context):  # noqa: ANN001, ANN201
        from tuneflow.evaluation import Classifier

        self.classifier = Classifier.load(context.artifacts["model_dir"])

    # No type hints here: MLflow would try to derive a schema from them; the logged signature is explicit.
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        return self.classifier.predict(to_texts(model_input))
