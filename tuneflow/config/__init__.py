"""Typed, validated pipeline configuration.

A config is YAML on disk, validated by the pydantic models of this package (``extra="forbid"``, a
description per field; one module per group of sections: ``data``, ``fitting``, ``search``, ``registry``;
``pipeline`` puts them together). :func:`read_config` applies ``--set a.b=value`` overrides, resolves
data paths relative to the config file, and reports *every* problem at once, each naming its dotted
key. The schema knows no task type: :func:`tuneflow.tasktypes.resolve.load_config` passes the
registry's defaults and checks in.

May import: :mod:`tuneflow.names` only (the bottom of the library). This module re-exports the schema, so
``from tuneflow.config import PipelineConfig`` is the way in.
"""

from tuneflow.config.base import (  # noqa: F401
    DEFAULT_MODEL,
    DEFAULT_STORE,
    SAFE_NAME,
    SMOLLM2_MODEL,
    ConfigError,
    check_name,
    redact_secrets,
    redact_tree,
    resolve_tracking_uri,
    sqlite_path,
)
from tuneflow.config.data import (  # noqa: F401
    FEATURE_SCOPE_METHODS,
    DataConfig,
    EvalSetSpec,
    FileSpec,
    LabelledSpec,
    OOSConfig,
    ScopeMethod,
    ValidationConfig,
)
from tuneflow.config.fitting import (  # noqa: F401
    FEWSHOT_MAX_PER_CLASS,
    EvalConfig,
    ExportConfig,
    FewShotConfig,
    GenerationConfig,
    LoraConfig,
    ModelConfig,
    TrainConfig,
)
from tuneflow.config.load import (  # noqa: F401
    TaskRules,
    apply_overrides,
    apply_params,
    read_config,
    validate_config,
)
from tuneflow.config.pipeline import (  # noqa: F401
    PipelineConfig,
    flatten,
)
from tuneflow.config.registry import (  # noqa: F401
    GatesConfig,
    RetrainConfig,
    TrackingConfig,
)
from tuneflow.config.search import (  # noqa: F401
    SEARCHABLE_SECTIONS,
    UNSEARCHABLE_KEYS,
    ParamSpec,
    SearchConfig,
)
