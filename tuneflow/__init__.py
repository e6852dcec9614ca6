"""tuneflow: fine-tune pre-trained language models with Prefect, Lightning, Optuna and MLflow.

The library is one package per stage; each package's docstring says what lives there and what it may
import (``python ../shared/tools/import_graph.py`` and ``tests/test_layout.py`` check it):

- ``names``, ``faults``: metric names and the test-only fault hook (the bottom; import nothing);
- ``config``: the schema, one module per group of sections, and loading;
- ``data``: reading, validating, splitting and encoding data;
- ``judging``: evaluation, metrics, calibration, out-of-scope, overfitting, drift, promotion gates;
- ``backbone``: pre-trained models, pooling, LoRA;
- ``tasktypes``: one module per task type, the registry, and configs resolved for their task type;
- ``store``: MLflow runs and registry access, params, the UI view, leases, cleanup;
- ``fitting``: the LightningModule, training, distributed launches, search, cross-validation, export;
- ``registry``: registration, packaging, champion/rollback, retraining, serving;
- ``preflight`` and ``cli`` at the top (only ``cli`` may import Prefect, ``flows`` or ``tasks``).
"""

__version__ = "0.1.0"
