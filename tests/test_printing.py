"""What the CLI prints of a run and of predictions comes from the data the library returns: no task type
formats output (issue 48: output formatting lives with the CLI's printing)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from tuneflow.summaries import csv_cells, prediction_line, result_lines
from tuneflow.tasktypes import TaskType


def test_task_types_do_not_format_output() -> None:
    assert not {"result_lines", "show_prediction", "prediction_table"} & set(dir(TaskType))


def test_run_lines_follow_the_logged_metrics() -> None:
    classifier = {
        "calibration/ece": 0.02,
        "calibration/ece_before": 0.08,
        "calibration/temperature": 1.7,
        "oos/in_scope_accuracy": 0.9,
        "oos/recall": 0.8,
        "oos/precision": 0.95,
        "oos/auroc": 0.97,
    }
    assert result_lines(classifier) == [
        ("calibration", "ECE 0.080 -> 0.020 (temperature 1.70)"),
        (
            "out-of-scope",
            "out-of-scope recall 0.800, precision 0.950, AUROC 0.970; in-scope accuracy with fallback 0.900",
        ),
    ]
    chat = {"base/chrf": 0.2, "test/chrf": 0.3, "base/loss": 2.0, "test/loss": 1.0}
    assert result_lines(chat) == [("base -> tuned", "chrf 0.2000 -> 0.3000")]
    assert result_lines({"test/accuracy": 0.9}) == []


def test_prediction_lines_follow_what_the_model_answered() -> None:
    assert prediction_line("hi", {"label": "greet", "score": 0.91234}) == "greet\t0.9123\thi"
    fallback = {"label": "unknown", "score": 0.4, "in_scope": False, "oos_score": -1.5, "threshold": -0.4}
    assert prediction_line("x", fallback) == "unknown\t0.4000\tout of scope (-1.5 vs threshold -0.4)\tx"
    spans = [{"text": "Paris", "type": "loc", "score": np.float32(0.5)}]
    assert prediction_line("to Paris", {"entities": spans}) == f"to Paris\t{json.dumps(spans, default=float)}"
    assert prediction_line("q", {"generated_text": "an answer"}) == "q\tan answer"
    # An answer of another shape (a task type added later) prints its values as cells, lists as JSON.
    sets = {"labels": ["joy", "love"], "scores": np.array([0.9, 0.6])}
    assert prediction_line("yay", sets) == '["joy", "love"]\t[0.9, 0.6]\tyay'


def test_csv_cells_write_spans_as_json_and_leave_other_values() -> None:
    frame = pd.DataFrame(
        {
            "text": ["to Paris", ""],
            "predicted_entities": [[{"text": "Paris", "type": "loc"}], np.nan],
            "predicted_score": [0.5, np.nan],
        }
    )
    out = csv_cells(frame)
    assert json.loads(out.loc[0, "predicted_entities"]) == [{"text": "Paris", "type": "loc"}]
    assert pd.isna(out.loc[1, "predicted_entities"]) and out.loc[0, "predicted_score"] == 0.5
    assert frame.loc[0, "predicted_entities"] == [{"text": "Paris", "type": "loc"}]  # the input is untouched
