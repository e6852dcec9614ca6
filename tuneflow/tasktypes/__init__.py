"""The registry of task types: the only list of them. Stages look a task type up here by its config name.

Adding a task type: write ``tuneflow/tasktypes/<name>.py`` with a :class:`~tuneflow.tasktypes.base.TaskType`
subclass, and add one line below. :mod:`tuneflow.tasktypes.resolve` loads a config resolved for its task
type (the defaults and checks that depend on it).

May import: config, names, data, judging, backbone (never store, fitting, registry: those use task types).
"""

from __future__ import annotations

from tuneflow.tasktypes.base import MetricSpec, TaskType
from tuneflow.tasktypes.chat import CausalLM
from tuneflow.tasktypes.classification import SequenceClassification
from tuneflow.tasktypes.multilabel import MultiLabelClassification
from tuneflow.tasktypes.seq2seq import Seq2Seq
from tuneflow.tasktypes.tagging import TokenClassification

TASK_TYPES: dict[str, TaskType] = {
    t.name: t
    for t in (
        SequenceClassification(),
        MultiLabelClassification(),
        TokenClassification(),
        Seq2Seq(),
        CausalLM(),
    )
}

__all__ = ["TASK_TYPES", "MetricSpec", "TaskType", "task_type", "unused_config"]


def task_type(name: str) -> TaskType:
    """The task type registered under ``name`` (the config's ``task``)."""
    try:
        return TASK_TYPES[name]
    except KeyError:
        raise ValueError(f"unknown task type '{name}'; known: {', '.join(TASK_TYPES)}") from None


def unused_config(kind: TaskType) -> tuple[str, ...]:
    """Config keys (dotted prefixes) other task types read and ``kind`` does not: set or not, they do nothing
    for it (each task type declares its own in ``own_config``; no task type lists the others')."""
    others = {key for t in TASK_TYPES.values() for key in t.own_config}
    return tuple(sorted(others - set(kind.own_config)))
