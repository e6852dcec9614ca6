"""The docs site's references are generated from the code: every config key and every command is there."""

from __future__ import annotations

from pydantic import BaseModel

from tuneflow.reference import _models, cli_reference, config_reference


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        out.append(f"{prefix}{name}")
        for sub in _models(field.annotation):
            out += _keys(sub, f"{prefix}{name}.")
    return out


def test_the_configuration_reference_covers_every_field() -> None:
    from tuneflow.config import PipelineConfig

    text = config_reference()
    missing = [
        key for key in _keys(PipelineConfig) if f"| `{key}` |" not in text and f"## `{key}`" not in text
    ]
    assert not missing, missing


def test_the_cli_reference_covers_every_command_and_option() -> None:
    from typer.main import get_command

    from tuneflow.cli import app

    text = cli_reference()
    group = get_command(app)
    ctx = group.make_context("tuneflow", [], resilient_parsing=True)
    for name in group.list_commands(ctx):
        assert f"## `tuneflow {name}`" in text
        for param in group.get_command(ctx, name).params:
            if param.param_type_name == "option" and param.name != "help":
                assert f"`{param.opts[0]}`" in text, (name, param.opts)
