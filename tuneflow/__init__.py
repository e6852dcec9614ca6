"""tuneflow: fine-tune pre-trained language models with Prefect, Lightning, Optuna and MLflow."""

__version__ = "0.1.0"
