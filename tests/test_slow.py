"""Real pre-trained model on real data (``pytest -m slow``; minutes on 2 CPU cores)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_minilm_on_demo_intents_well_above_chance(tmp_path: Path, prefect_harness: None) -> None:
    from flows.finetune import finetune

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = finetune(
        str(ROOT / "configs" / "demo.yaml"),
        [f"tracking.tracking_uri={uri}", f"output_dir={tmp_path / 'ckpt'}"],
    )
    # 10 intents: chance is 0.10; the fine-tuned MiniLM should be far above it.
    assert result.metrics["test_accuracy"] >= 0.85
    assert result.metrics["test_f1_macro"] >= 0.8
    assert result.model.version == "1"
