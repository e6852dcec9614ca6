"""Reading a config: YAML, ``--set`` overrides, ``${ENV}`` references, paths, every problem at once."""

from __future__ import annotations

import contextlib
import json
import re
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tuneflow.config.base import ConfigError, _expand_env
from tuneflow.config.pipeline import PipelineConfig
from tuneflow.config.search import SEARCHABLE_SECTIONS, UNSEARCHABLE_KEYS


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError("--set", [(item, "expected KEY=VALUE, e.g. train.lr=3e-5")])
    key, raw = item.split("=", 1)
    # YAML parsing gives numbers, booleans, null and lists their natural types ("3e-5" needs help below).
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as exc:
        problem = str(exc).splitlines()[0]
        raise ConfigError(
            "--set", [(key.strip(), f"cannot parse value {raw!r} as YAML: {problem}")]
        ) from None
    if isinstance(value, str) and any(c in value for c in ".eE"):
        with contextlib.suppress(ValueError):
            value = float(value)
    return key.strip(), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return ``raw`` with ``a.b.c=value`` overrides applied (intermediate dicts created as needed)."""
    problems = []
    for item in overrides:
        key, value = _parse_override(item)
        node = raw
        parts = _key_parts(key, raw)
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                problems.append((key, f"'{part}' is not a section"))
                break
            node = child
        else:
            node[parts[-1]] = value
    if problems:
        raise ConfigError("--set", problems)
    return raw


_BRACKETED = re.compile(r"""\[\s*(?:"([^"]*)"|'([^']*)'|([^\]]*))\s*\]""")


def _key_parts(key: str, raw: dict[str, Any]) -> list[str]:
    """A ``--set`` key's path. Keys that contain dots (the search space's ``train.lr``) are written in
    brackets, ``search.space["train.lr"].low`` (quotes optional), or plainly when the space already has
    that key: ``search.space.train.lr.low`` finds ``train.lr`` in the config's space."""
    parts: list[str] = []
    pos = 0
    for m in _BRACKETED.finditer(key):
        parts += [p for p in key[pos : m.start()].split(".") if p]
        parts.append(next(g for g in m.groups() if g is not None))
        pos = m.end()
    parts += [p for p in key[pos:].split(".") if p]
    space = (raw.get("search") or {}).get("space") if isinstance(raw.get("search"), dict) else None
    if parts[:2] == ["search", "space"] and len(parts) > 3 and isinstance(space, dict):
        for n in range(len(parts) - 2, 1, -1):  # the longest dotted name the space has
            name = ".".join(parts[2 : 2 + n])
            if name in space:
                return ["search", "space", name, *parts[2 + n :]]
    return parts


def _problems(err: ValidationError) -> list[tuple[str, str]]:
    out = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        out.append((key, msg))
    return out


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    data = raw.get("data")
    if not isinstance(data, dict):
        return
    for split in ("train", "validation", "test"):
        if isinstance(data.get(split), str):  # shorthand: `train: path.csv`
            data[split] = {"path": data[split]}
    for split in ("oos_validation", "oos_test"):
        if isinstance(data.get(split), str):
            data[split] = {"path": data[split]}
    if isinstance(data.get("label_names"), str):
        names = Path(data["label_names"]).expanduser()
        data["label_names"] = str(names if names.is_absolute() else (base / names).resolve())
    specs = [data.get(s) for s in ("train", "validation", "test", "oos_validation", "oos_test")]
    if isinstance(data.get("labelled"), list):  # shorthand: `labelled: [labels/round1.csv, ...]`
        data["labelled"] = [{"path": s} if isinstance(s, str) else s for s in data["labelled"]]
    specs += list(data.get("extra_eval") or []) + list(data.get("labelled") or [])
    for spec in specs:
        if isinstance(spec, dict) and isinstance(spec.get("path"), str):
            p = Path(spec["path"]).expanduser()
            spec["path"] = str(p if p.is_absolute() else (base / p).resolve())


class TaskRules(typing.Protocol):
    """What the task-type registry checks in a config (:mod:`tuneflow.tasktypes.resolve` passes it)."""

    def unknown_task(self, task: Any) -> str | None:
        """Why ``task`` names no registered task type, or None."""

    def resolve(self, cfg: PipelineConfig) -> tuple[PipelineConfig, list[tuple[str, str]]]:
        """The config with the task type's defaults filled in, and its task-specific problems by key."""


def read_config(path: str | Path, overrides: list[str] | None, rules: TaskRules) -> PipelineConfig:
    """Load, override and validate a YAML experiment config.

    Args:
        path: YAML file.
        overrides: ``dotted.key=value`` strings applied before validation.
        rules: the task-type registry's checks and defaults (use
            :func:`tuneflow.tasktypes.resolve.load_config`, which passes them).

    Returns:
        The validated, frozen config with absolute data paths.

    Raises:
        ConfigError: listing every problem (unknown keys, bad values, unreadable YAML), each by dotted key.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), [("<file>", "config file not found")])
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}:{line}", [("<file>", f"not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line})")]
        ) from None
    try:
        nodes = expanded_nodes(yaml.compose(text, Loader=yaml.SafeLoader))
        if nodes > MAX_YAML_NODES:
            problem = f"its aliases expand to over {MAX_YAML_NODES:,} values (an alias bomb?): write it out"
            raise ConfigError(str(path), [("<yaml>", problem)])
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [("<yaml>", str(exc))]) from None
    if not isinstance(raw, dict):
        raise ConfigError(str(path), [("<root>", "the config must be a mapping")])
    raw = apply_overrides(raw, overrides or [])
    env_problems: list[tuple[str, str]] = []
    raw = _expand_env(raw, "", env_problems)
    if env_problems:
        raise ConfigError(str(path), env_problems)
    _resolve_paths(raw, path.resolve().parent)
    return validate_config(raw, str(path), rules)


MAX_YAML_NODES = 100_000  # a config has hundreds; aliases nested 9 deep (billion laughs) reach 10^9


def expanded_nodes(node: yaml.Node | None) -> int:
    """How many values a composed YAML document has once its aliases are expanded, counted without expanding
    them (each node's count is computed once): a few hundred bytes can otherwise expand to billions."""
    memo: dict[int, int] = {}

    def count(n: yaml.Node) -> int:
        if id(n) not in memo:
            memo[id(n)] = 1  # a node met again while counting it (a recursive alias) counts once
            if isinstance(n, yaml.MappingNode):
                memo[id(n)] = 1 + sum(count(k) + count(v) for k, v in n.value)
            elif isinstance(n, yaml.SequenceNode):
                memo[id(n)] = 1 + sum(count(v) for v in n.value)
        return memo[id(n)]

    return 0 if node is None else count(node)


def validate_config(raw: dict[str, Any], source: str, rules: TaskRules) -> PipelineConfig:
    """Validate an already-parsed config mapping (paths must already be absolute).

    A search space is checked too: every key must be a searchable config key and every extreme value
    (low, high, each choice) must pass the schema, so a bad space fails before any trial runs.
    """
    search = raw.get("search") if isinstance(raw.get("search"), dict) else {}
    space = search.get("space") if isinstance(search.get("space"), dict) else {}
    key_problems = _space_key_problems(list(space))
    unknown = rules.unknown_task(raw.get("task", "sequence_classification"))
    if unknown:
        key_problems.append(("task", unknown))
    try:
        cfg = PipelineConfig.model_validate(raw)
    except ValidationError as err:
        problems = _problems(err)
        seen = {key for key, _ in problems}
        raise ConfigError(source, problems + [p for p in key_problems if p[0] not in seen]) from err
    task_problems: list[tuple[str, str]] = []
    if not unknown:
        cfg, task_problems = rules.resolve(cfg)
    problems = key_problems + _space_value_problems(cfg, {k for k, _ in key_problems}) + task_problems
    if problems:
        raise ConfigError(source, problems)
    return cfg


def _has_key(model: type[BaseModel], parts: list[str]) -> bool:
    field = model.model_fields.get(parts[0])
    if field is None:
        return False
    if len(parts) == 1:
        return True
    # An optional section (``lora: LoraConfig | None``) is searched through like a required one.
    candidates = [field.annotation, *typing.get_args(field.annotation)]
    return any(
        isinstance(sub, type) and issubclass(sub, BaseModel) and _has_key(sub, parts[1:])
        for sub in candidates
    )


def _space_key_problems(keys: list[str]) -> list[tuple[str, str]]:
    problems = []
    for key in keys:
        parts = str(key).split(".")
        if parts[0] not in SEARCHABLE_SECTIONS or not _has_key(PipelineConfig, parts):
            msg = f"unknown or unsearchable key (search keys live under {', '.join(SEARCHABLE_SECTIONS)})"
            problems.append((f"search.space.{key}", msg))
        elif key in UNSEARCHABLE_KEYS:
            msg = "sets up the hardware or the evaluation protocol; it cannot be searched"
            problems.append((f"search.space.{key}", msg))
    return problems


def _space_value_problems(cfg: PipelineConfig, skip: set[str]) -> list[tuple[str, str]]:
    if cfg.search is None:
        return []
    base = cfg.model_dump(mode="json", exclude={"search"})
    problems = []
    for key, spec in cfg.search.space.items():
        if f"search.space.{key}" in skip:
            continue
        for value in spec.bounds():
            try:
                apply_params(base, {key: value}, validate=True)
            except ConfigError as err:
                msgs = "; ".join(msg for _, msg in err.problems)
                problems.append((f"search.space.{key}", f"value {value!r} is rejected by the config: {msgs}"))
    return problems


def apply_params(
    base: dict[str, Any] | PipelineConfig, params: dict[str, Any], validate: bool = True
) -> PipelineConfig | dict[str, Any]:
    """Return ``base`` with dotted-key ``params`` set (e.g. the best trial's hyperparameters).

    Args:
        base: a config or its ``model_dump(mode="json")``.
        params: ``{"train.lr": 3e-5, ...}``.
        validate: return a validated :class:`PipelineConfig` (else the raw dict).
    """
    raw = base.model_dump(mode="json") if isinstance(base, PipelineConfig) else base
    raw = json.loads(json.dumps(raw))  # deep copy
    for key, value in params.items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(
                node.get(part), dict
            ):  # e.g. model.lora is null until a trial sets model.lora.r
                node[part] = {}
            node = node[part]
        node[leaf] = value
    if not validate:
        return raw
    try:
        applied = PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError("search parameters", _problems(err)) from err
    # Parameters never change the task: the resolved task type carries over.
    return applied.resolved(base._kind) if isinstance(base, PipelineConfig) else applied
