"""Logged with every tuneflow model: MLflow runs this file on load instead of unpickling an object."""

from mlflow.models import set_model

from tuneflow.registry.serving import TuneflowModel

set_model(TuneflowModel())
