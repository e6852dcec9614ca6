"""Logged with every tuneflow model that takes per-request params (chat): run on load, nothing unpickled."""

from mlflow.models import set_model

from tuneflow.registry.serving import GenerativeModel

set_model(GenerativeModel())
