"""Fitting: the LightningModule built from a task type (:mod:`.model`), training with early stopping
(:mod:`.training`, the one Trainer), distributed launches, the Optuna search, cross-validation, and exporting
the best checkpoint.

May import: config, names, faults, data, judging, backbone, tasktypes, store (never registry).
"""
