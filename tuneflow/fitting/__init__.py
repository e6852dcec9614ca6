"""Fitting: the LightningModule built from a task type (:mod:`.model`), training with early stopping
(:mod:`.training`, the one Trainer; bf16 weights with fp32 masters in :mod:`.master`), distributed launches,
the Optuna search and what the final model reuses of it (:mod:`.reuse`), cross-validation, and exporting the
best checkpoint.

May import: config, names, faults, data, judging, backbone, tasktypes, store (never registry).
"""
