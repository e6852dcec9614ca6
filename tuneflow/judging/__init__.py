"""Judging a model: evaluation (the shared skeleton), metrics, calibration, behaviour checks, the
out-of-scope detector, overfitting and drift diagnostics, text generation for generative scoring, and the
promotion gates. Pure: no MLflow, no training.

May import: config, names, data.
"""
