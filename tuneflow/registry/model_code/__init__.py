"""MLflow "models from code" entry points: each file is logged with a model and run when it is loaded.

They are never imported by tuneflow itself (each calls ``mlflow.models.set_model`` at import).
"""
