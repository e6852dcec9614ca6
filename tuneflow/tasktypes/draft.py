"""A config drafted from a data set (``tuneflow init DATA``, ``tuneflow run DATA``): the task type and the
columns recognised from the files, the settings derived from the data, written as commented YAML.

Each task type contributes its part through the registry: the column names it recognises
(``column_roles``), whether it reads CoNLL files, its default model, and the settings it derives from the
training split (``draft``). What cannot be decided is a :class:`DraftError` naming the flag to pass.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tuneflow.config import DEFAULT_MODEL, ConfigError, PipelineConfig, resolve_tracking_uri, sqlite_path
from tuneflow.config.search import rung_plan
from tuneflow.data.readers import LABEL, TEXT, looks_like_data
from tuneflow.tasktypes import TASK_TYPES, TaskType, task_type
from tuneflow.tasktypes.resolve import config_from_dict

SPLIT_NAMES = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing", "eval"),
}
DATA_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet", ".conll", ".bio", ".iob")
CONLL_SUFFIXES = (".conll", ".bio", ".iob")


class DraftError(ValueError):
    """The data cannot be drafted into a config without help; the message names the flag to pass."""


@dataclass
class Draft:
    """A drafted config: the raw mapping (validated), a comment per dotted key, and what was inferred."""

    raw: dict[str, Any]
    comments: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_yaml(self, header: str) -> str:
        """The config as YAML with a comment beside every key (the comments say where values came from)."""
        lines = [f"# {line}".rstrip() for line in header.splitlines()]
        _write(self.raw, "", 0, self.comments, lines)
        return "\n".join(lines) + "\n"


def _write(node: dict[str, Any], prefix: str, depth: int, comments: dict[str, str], out: list[str]) -> None:
    import yaml

    pad = "  " * depth
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        note = f"  # {comments[dotted]}" if dotted in comments else ""
        if isinstance(value, dict) and value:
            out.append(f"{pad}{key}:{note}")
            _write(value, dotted + ".", depth + 1, comments, out)
        else:
            text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("\n...")
            out.append(f"{pad}{key}: {text}{note}")


def find_splits(data: Path) -> dict[str, Path]:
    """The train (and validation/test) files of ``data``: one file, or a folder holding files named by split
    (``train.csv``, ``dev.jsonl``, ``valid.conll``, ...)."""
    if data.is_file():
        return {"train": data}
    if not data.is_dir():
        raise DraftError(f"{data}: no such file or folder")
    files = [p for p in sorted(data.iterdir()) if p.is_file() and p.suffix.lower() in DATA_SUFFIXES]
    files = [p for p in files if "oos" not in p.stem.lower()]  # off-topic examples (_oos_files), not a split
    found: dict[str, Path] = {}
    for split, stems in SPLIT_NAMES.items():
        match = [p for p in files if _names_split(p.stem.lower(), stems) and p not in found.values()]
        if match:
            found[split] = match[0]
    if "train" not in found:
        if len(files) == 1:
            return {"train": files[0]}
        listed = ", ".join(p.name for p in files) or "no data files"
        raise DraftError(
            f"{data}: no training file (name it train.csv / train.jsonl / train.conll ...; it holds "
            f"{listed}); or give the file itself"
        )
    return found


def _names_split(stem: str, names: tuple[str, ...]) -> bool:
    """Whether a file stem names a split: ``train``, ``dev``, ``emerging.dev``, ``wnut17train``."""
    words = re.split(r"[^a-z0-9]+", stem)
    return any(n in words or stem.startswith(n) or stem.endswith(n) for n in names)


# Intent-like data (the fallback drafted on): this many classes or more, of texts this short (median words).
# Sentiment (2-5 classes) and long documents are not asked "about something else" as a bot is.
INTENT_CLASSES, INTENT_WORDS = 10, 30
# Padded tokens in the longest batch a drafted config trains on: activations grow with them. 8 x 512 peaked at
# 2.43 GB under bf16 and 3.44 GB in fp32 (a CPU without bf16) with MiniLM, over the 3 GB a classification
# run is held to (bench field, long_2000); 4 x 512 peaked at 2.24 GB there. Short texts keep their batch
# sizes (32 x 64 = 2,048).
TOKENS_PER_BATCH = 2048
SAMPLE_ROWS = 200  # the rows a task type's recognise() sees (list-valued labels are told by their values)


def headerless_names(n: int) -> list[str]:
    """The names the columns of a file without a header line get: text, label, then column_3, ... (UCI's
    sentences are text<TAB>label; GoEmotions adds a comment id)."""
    return ["text", "label", *(f"column_{i}" for i in range(3, n + 1))][:n]


def _header_columns(path: Path) -> list[str] | None:
    """The columns of a CSV/TSV/TXT file's first line when that line is a record, not column names (2-4
    columns; a line with more is more likely a header than a record); None otherwise."""
    if path.suffix.lower() not in (".csv", ".tsv", ".txt"):
        return None
    sep = "," if path.suffix.lower() == ".csv" else "\t"
    try:
        first = pd.read_csv(path, sep=sep, nrows=0, dtype=str, quoting=3 if sep == "\t" else 0).columns
    except Exception:  # unreadable: _sample says why
        return None
    return list(first) if 2 <= len(first) <= 4 and looks_like_data(first) else None


def headerless(path: Path) -> list[str] | None:
    """The column names given to a file whose first line is a record (text<TAB>label), or None when the
    file has a header line (or is not a CSV/TSV/TXT file)."""
    first = _header_columns(path)
    return headerless_names(len(first)) if first is not None else None


def _sample(path: Path) -> pd.DataFrame:
    """The first :data:`SAMPLE_ROWS` rows of a data file (no columns for CoNLL; :func:`headerless_names`
    for a file without a header line); an unreadable file is a :class:`DraftError`."""
    suffix = path.suffix.lower()
    if suffix in CONLL_SUFFIXES:
        return pd.DataFrame()
    names = headerless(path)
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path).head(SAMPLE_ROWS)
        if suffix in (".jsonl", ".json"):
            return pd.read_json(path, lines=True, nrows=SAMPLE_ROWS)
        tsv = suffix in (".tsv", ".txt")
        return pd.read_csv(
            path,
            sep="\t" if tsv else ",",
            nrows=SAMPLE_ROWS,
            dtype=str,
            quoting=3 if tsv else 0,
            header=None if names else 0,
            names=names,
        )
    except Exception as exc:  # pandas raises many kinds; all mean "cannot read it"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DraftError(f"{path}: cannot read it as a {suffix.lstrip('.') or 'CSV'} file: {first}") from None


def _oos_files(folder: Path) -> dict[str, Path]:
    """Off-topic example files beside the splits: ``oos_validation.csv`` (or ``oos_dev``, ``oos_val``) and
    ``oos_test.csv``."""
    names = {"oos_validation": ("oos_validation", "oos_dev", "oos_val"), "oos_test": ("oos_test",)}
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in DATA_SUFFIXES]
    return {key: p for key, stems in names.items() for p in files if p.stem.lower() in stems}


def recognise(path: Path, task: str, columns: dict[str, str]) -> tuple[TaskType, dict[str, str]]:
    """The task type and the data section's column keys for the training file ``path``.

    ``task`` (``auto`` or a task type) and ``columns`` (data key -> column, from flags) take precedence.

    Raises:
        DraftError: no task type or several fit, or a column cannot be told; the message names the flag.
    """
    sample = _sample(path)
    found = [str(c) for c in sample.columns]
    conll = path.suffix.lower() in CONLL_SUFFIXES
    kinds = list(TASK_TYPES.values()) if task == "auto" else [task_type(task)]
    matches = [(k, m) for k in kinds if (m := k.data.recognise(sample, conll, columns)) is not None]
    # The most specific matches only: a type that checked the values beats one that matched names alone.
    top = max((specific for _, (_, specific) in matches), default=0)
    fits = [(k, mapping) for k, (mapping, specific) in matches if specific == top]
    if len(fits) == 1:
        return fits[0]
    shown = ", ".join(found) if found else "a CoNLL file"
    if not fits:
        if task != "auto":
            roles = ", ".join(f"--column {key}=NAME" for key in task_type(task).data.column_roles)
            raise DraftError(f"{path}: cannot tell the {task} columns among {shown}; pass {roles}")
        if found and looks_like_data(found):
            raise DraftError(
                f"{path}: its first line reads like a record, not column names ({_clip(shown)}): add a "
                "header line naming the columns (e.g. text<TAB>label), then pass --task if they do not say it"
            )
        raise DraftError(
            f"{path}: columns {shown} match no task type; pass --task (one of {', '.join(TASK_TYPES)}) and "
            "the columns (--text-column, --label-column, or --column KEY=NAME)"
        )
    names = ", ".join(k.name for k, _ in fits)
    raise DraftError(f"{path}: columns {shown} fit several task types ({names}); pass --task")


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def store_folder() -> Path:
    """The folder of the MLflow store (its SQLite file's), where drafted configs and the study go."""
    db = sqlite_path(resolve_tracking_uri())
    return db.parent if db is not None else Path("mlruns")


def safe_name(text: str) -> str:
    """An experiment / registered-model name from a file or folder name."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "tuneflow"
    return name[:60]


def draft_config(
    data: Path,
    task: str = "auto",
    columns: dict[str, str] | None = None,
    model: str | None = None,
    name: str | None = None,
    oos: Path | None = None,
) -> tuple[PipelineConfig, Draft]:
    """Draft (and validate) a config for ``data``: the task type and columns recognised, the settings
    derived from the training split.

    Raises:
        DraftError: what cannot be decided without a flag.
        tuneflow.config.ConfigError: the drafted config does not validate (a bug, or an odd data set).
    """
    splits = find_splits(data.resolve())
    kind, mapping = recognise(splits["train"], task, columns or {})
    folder = data if data.is_dir() else data.parent
    name = name or safe_name(data.stem if data.is_file() else data.name)
    base_model = model or kind.default_model
    if base_model is None:
        raise DraftError(f"{kind.name} has no bundled model: pass --model (a hub id or a local model folder)")
    raw: dict[str, Any] = {"name": name, "task": kind.name, "data": {}, "model": {"name": base_model}}
    draft = Draft(raw)
    c = draft.comments
    c["model.name"] = (
        "given with --model" if model else f"the {kind.name} default: a pre-trained model, offline"
    )
    c["name"] = f"MLflow experiment and registered-model name (from {data.name})"
    c["task"] = f"recognised from the columns of {splits['train'].name}"
    _draft_data(draft, splits, mapping, set(columns or {}))
    cfg = _validated(raw, folder)
    try:
        train = kind.data.load_splits(cfg.data, cfg.train.seed).train
    except ValueError as exc:  # unreadable rows, or too few to carve out validation and test splits
        first = str(exc).splitlines()[0]
        hint = "too few examples to hold out validation and test splits: " if "n_samples" in first else ""
        raise DraftError(f"{splits['train']}: {hint}{first}") from None
    _draft_scope(draft, kind, _oos_files(data) if data.is_dir() else {}, oos, train)
    _derive(draft, cfg, kind, train)
    _draft_search(draft, len(train), raw["train"]["batch_size"], raw["train"]["max_epochs"])
    raw["tracking"] = {"registered_model": name}
    c["tracking.registered_model"] = "registry name; versions accumulate here"
    return _validated(raw, folder), draft


def _draft_data(draft: Draft, splits: dict[str, Path], mapping: dict[str, str], given: set[str]) -> None:
    """The data section: the split files (or held-out shares) and the columns."""
    raw, c = draft.raw, draft.comments
    for split, path in splits.items():
        raw["data"][split] = {"path": str(path)}
        c[f"data.{split}"] = f"the {split} split"
        names = headerless(path)
        if names:
            raw["data"][split].update(header=False, column_names=names)
            c[f"data.{split}.header"] = "its first line is a record, not column names"
    if "validation" not in splits:
        raw["data"]["validation_size"] = 0.15
        c["data.validation_size"] = (
            "no validation file: 15% of train is held out (stratified where it can be)"
        )
    if "test" not in splits:
        raw["data"]["test_size"] = 0.15
        c["data.test_size"] = "no test file: 15% of train is the frozen test set the gates score"
    for key, column in mapping.items():
        raw["data"][key] = column
        c[f"data.{key}"] = "recognised column" if key not in given else "given on the command line"
    names = _label_names_file(splits["train"], mapping.get("label_column"))
    if names is not None:
        raw["data"]["label_names"] = str(names)
        c["data.label_names"] = f"the label column holds indices; {names.name} names them"


LABEL_NAME_FILES = ("labels.txt", "label_names.txt", "classes.txt")


def _label_names_file(train: Path, column: str | None) -> Path | None:
    """A label-names file beside ``train`` (``labels.txt``, ...) when its label ``column`` holds indices
    (``3``, or lists of them: ``4,27``), not names."""
    found = [train.parent / n for n in LABEL_NAME_FILES if (train.parent / n).is_file()]
    if column is None or not found:
        return None
    values = _sample(train)[column].dropna().astype(str)
    indices = values.str.fullmatch(r"\s*\d+(\s*[,;]\s*\d+)*\s*")
    return found[0] if len(values) and indices.all() else None


def _draft_scope(
    draft: Draft, kind: TaskType, oos_files: dict[str, Path], oos: Path | None, train: pd.DataFrame
) -> None:
    """The out-of-scope fallback: on with off-topic examples (``--oos`` or files beside the splits) and for
    intent-like data (many classes of short texts: a bot meets questions about intents it was not taught),
    else off with a comment on how to turn it on; nothing for task types without one."""
    raw, c = draft.raw, draft.comments
    if "oos." not in kind.own_config:
        return
    if oos is None and "oos_validation" in oos_files:
        oos = oos_files["oos_validation"]
    if "oos_test" in oos_files:
        raw["data"]["oos_test"] = {"path": str(oos_files["oos_test"].resolve())}
        c["data.oos_test"] = "other off-topic examples: how often the fallback catches them (oos/recall)"
    classes = train[LABEL].nunique() if LABEL in train else 0
    words = train[TEXT].astype(str).str.split().str.len().median() if classes else 0
    # Without off-topic validation examples the threshold comes from the known intents alone.
    held_out = (
        "without off-topic validation examples the threshold keeps oos.target_in_scope_recall (90%) of "
        "in-scope validation queries; --oos FILE sets it from real off-topic ones"
    )
    if oos is not None:
        raw["data"]["oos_validation"] = {"path": str(oos.resolve())}
        raw["oos"] = {"enabled": True}
        c["data.oos_validation"] = "off-topic examples: they set the out-of-scope threshold"
        c["oos.enabled"] = "answer the fallback label instead of a wrong one on off-topic queries"
    elif "oos_test" in oos_files:
        raw["oos"] = {"enabled": True}
        c["oos.enabled"] = (
            f"the data has off-topic test examples: answer the fallback label on such queries; {held_out}"
        )
    elif classes >= INTENT_CLASSES and words <= INTENT_WORDS:
        raw["oos"] = {"enabled": True}
        c["oos.enabled"] = (
            f"{classes} classes of short texts (median {words:.0f} words) look like intents: answer the "
            f"fallback label for queries about none of them; {held_out}"
        )
    else:
        raw["oos"] = {"enabled": False}
        c["oos.enabled"] = (
            "on: answer a fallback label instead of a wrong one on off-topic queries; give off-topic "
            "examples with `tuneflow init --oos FILE` (or data.oos_validation) to set its threshold"
        )


def _validated(raw: dict[str, Any], folder: Path) -> PipelineConfig:
    try:
        return config_from_dict(raw, source=f"the config drafted for {folder}")
    except ConfigError as exc:
        raise DraftError(str(exc)) from None


def _draft_search(draft: Draft, n_train: int, batch: int, epochs: int) -> None:
    """An Optuna study sized to the data, multi-fidelity: every trial is allowed the final budget, successive
    halving keeps the best third at each rung (the first after a third of the budget), so the surviving trial
    *is* the final model (``search.final: reuse_best``: no training after the search)."""
    raw, c = draft.raw, draft.comments
    storage = f"sqlite:///{(store_folder() / 'optuna.db').resolve()}"
    rungs = rung_plan(epochs)
    raw["search"] = {
        "enabled": False,
        "n_trials": _trials(n_train),
        "pruner": "successive_halving",
        "reduction_factor": 3,
        **rungs,
        "storage": storage,
        "space": {
            "train.lr": {"type": "float", "low": 2.0e-5, "high": 3.0e-4, "log": True},
            "train.batch_size": {"type": "categorical", "choices": sorted({max(1, batch // 2), batch})},
            "model.dropout": {"type": "float", "low": 0.0, "high": 0.3},
        },
    }
    c["search"] = "Optuna before the final training; turn on with --set search.enabled=true"
    c["search.n_trials"] = f"sized to {n_train} training examples"
    c["search.pruner"] = (
        f"trials may train the final {epochs} epoch(s); weak ones stop at the rungs, and the best trial's "
        "checkpoint is the final model"
    )
    c["search.reduction_factor"] = "each rung keeps the best third of the trials that reached it"
    c["search.evals_per_epoch"] = "validations per trial epoch (each one a report to the pruner)"
    first = rungs["warmup_epochs"]
    c["search.warmup_epochs"] = f"the first rung after {first} of {epochs} epoch(s): earlier ranks mislead"
    c["search.storage"] = "beside the MLflow store, not in the checkout: the study resumes from it"
    c["search.space.train.lr"] = "peak learning rate, log scale"
    c["search.space.train.batch_size"] = "around the drafted batch size"
    c["search.space.model.dropout"] = "regularization strength"


def _trials(n_train: int) -> int:
    """More trials where a trial is cheap: 12 under 2,000 examples, 8 under 20,000, else 6."""
    return 12 if n_train < 2000 else 8 if n_train < 20000 else 6


def _derive(draft: Draft, cfg: PipelineConfig, kind: TaskType, train: pd.DataFrame) -> None:
    """Length, batch and epoch budget from the training split; the task type's own settings."""
    from tuneflow.backbone.pretrained import load_tokenizer, model_positions

    raw, c = draft.raw, draft.comments
    tokenizer = load_tokenizer(cfg.model.name)
    sample = train[TEXT].astype(str).sample(n=min(len(train), 2000), random_state=0).tolist()
    lengths = pd.Series([len(ids) for ids in tokenizer(sample, truncation=False)["input_ids"]])
    p99 = int(lengths.quantile(0.99))
    limit = model_positions(cfg.model.name) or 4096
    max_length = min(limit, max(16, 8 * math.ceil(p99 / 8)))
    raw["model"]["max_length"] = max_length
    c["model.max_length"] = f"p99 of the training inputs is {p99} tokens (rounded up to a multiple of 8)"
    n = len(train)
    batch = min(8 if n < 200 else 16 if n < 2000 else 32, max(1, TOKENS_PER_BATCH // max_length))
    epochs = 10 if n < 1000 else 6 if n < 10000 else 3
    raw["train"] = {
        "batch_size": batch,
        "max_epochs": epochs,
        "early_stopping_patience": 2 if n >= 1000 else 3,
    }
    if cfg.model.name == DEFAULT_MODEL:
        raw["train"]["lr"] = 1.0e-4
        c["train.lr"] = "a small model with a fresh head learns faster than BERT-base's 2e-5 allows"
    c["train.batch_size"] = f"{n} training examples" + (
        f", at most {TOKENS_PER_BATCH} tokens a batch" if batch * max_length >= TOKENS_PER_BATCH else ""
    )
    c["train.max_epochs"] = "an upper bound sized to the data; early stopping ends sooner"
    c["train.early_stopping_patience"] = "validations without improvement before stopping"
    for key, (value, comment) in kind.data.draft(train, cfg).items():
        section, _, leaf = key.partition(".")
        raw.setdefault(section, {})[leaf] = value
        c[key] = comment
