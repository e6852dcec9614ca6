"""The configuration and command-line references of the docs site, generated from the pydantic schema and the
Typer app so that no field or option is ever described twice by hand (``mkdocs build`` calls
:func:`config_reference` and :func:`cli_reference` through ``docs/hooks.py``).

May import: everything in tuneflow (it reads the CLI).
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined


def _type_name(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "").replace("tuneflow.config.", "")
    for module in ("data.", "fitting.", "search.", "registry.", "pipeline.", "base."):
        text = text.replace(module, "")
    text = text.replace("<class '", "").replace("'>", "")
    # A pipe inside a code span is no column separator for Python-Markdown's tables: no escape there (an
    # escape would print its backslash).
    return text.replace("NoneType", "None")


def _default(field: Any) -> str:
    if field.default is PydanticUndefined:
        return "required" if field.default_factory is None else f"`{field.default_factory()!r}`"
    return f"`{field.default!r}`"


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models inside an annotation (``FileSpec | None``, ``list[EvalSetSpec]``, ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def _rows(model: type[BaseModel], prefix: str, seen: set[type]) -> list[str]:
    rows, nested = [], []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        description = (field.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{key}` | `{_type_name(field.annotation)}` | {_default(field)} | {description} |")
        for sub in _models(field.annotation):
            if sub not in seen:
                nested.append((f"{key}.", sub))
    for sub_prefix, sub in nested:
        seen.add(sub)
        rows += _rows(sub, sub_prefix, seen)
    return rows


def config_reference() -> str:
    """Every config key: its dotted name, type, default and description, section by section."""
    from tuneflow.config import PipelineConfig

    out = [
        "# Configuration reference",
        "",
        "Generated from the schema (`tuneflow/config/`) when the site is built. Every key can be set in the",
        "YAML or on the command line (`--set train.lr=3e-5`); unknown keys are refused, each named.",
        "",
    ]
    top = [(n, f) for n, f in PipelineConfig.model_fields.items() if not _models(f.annotation)]
    out += ["## Top level", "", "| key | type | default | description |", "| --- | --- | --- | --- |"]
    out += [
        f"| `{n}` | `{_type_name(f.annotation)}` | {_default(f)} | {f.description or ''} |" for n, f in top
    ]
    for name, field in PipelineConfig.model_fields.items():
        models = _models(field.annotation)
        if not models:
            continue
        doc = (models[0].__doc__ or "").strip().splitlines()[0]
        out += [
            "",
            f"## `{name}`",
            "",
            doc,
            "",
            "| key | type | default | description |",
            "| --- | --- | --- | --- |",
        ]
        out += _rows(models[0], f"{name}.", {models[0]})
    return "\n".join(out) + "\n"


def cli_reference() -> str:
    """Every command of the ``tuneflow`` CLI: what it does, its arguments and options with their defaults."""
    from typer.main import get_command

    from tuneflow.cli import app

    group = get_command(app)
    ctx = group.make_context("tuneflow", [], resilient_parsing=True)
    out = [
        "# Command-line reference",
        "",
        "Generated from the CLI (`tuneflow/cli.py`) when the site is built; `tuneflow COMMAND --help` says",
        "the same. Exit codes: 0 success, 1 unexpected failure, 2 invalid config or arguments, 3 data",
        "validation failed, 4 the model could not load, 5 the search could not run, 6 `promote` decided not",
        "to promote, 7 a store or server the command needs cannot be reached or written.",
        "",
    ]
    out += ["## Global options", "", "Before the command: `tuneflow --verbose run ...`.", ""]
    out += ["| option | default | help |", "| --- | --- | --- |"]
    for p in group.params:
        if p.name != "help":
            flags = " / ".join(f"`{o}`" for o in [*p.opts, *getattr(p, "secondary_opts", [])])
            out.append(f"| {flags} | `{p.default}` | {(getattr(p, 'help', '') or '').replace('|', '/')} |")
    out.append("")
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        out += [f"## `tuneflow {name}`", "", (command.help or "").strip(), ""]
        params = [p for p in command.params if p.name != "help"]
        if params:
            out += ["| argument / option | default | help |", "| --- | --- | --- |"]
        for p in params:
            names = [*p.opts, *getattr(p, "secondary_opts", [])]
            flags = (
                " / ".join(f"`{o}`" for o in names)
                if p.param_type_name == "option"
                else f"`{p.name.upper()}`"
            )
            default = "" if p.default is None or p.required else f"`{p.default}`"
            help_text = (getattr(p, "help", "") or "").replace("|", "\\|")
            out.append(f"| {flags} | {default if not p.required else 'required'} | {help_text} |")
        out.append("")
    return "\n".join(out)
