"""Data: reading files (CSV/TSV/JSONL/Parquet/CoNLL, with exact line numbers), cleaning and splitting,
validation (the report that gates training), label-quality checks, tokenization into tensors, and the
Lightning DataModule. No model, no MLflow.

May import: config, names, faults.
"""
