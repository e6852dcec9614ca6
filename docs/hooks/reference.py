"""MkDocs hook: the configuration and CLI references are generated from the code at every build
(``tuneflow.reference``), never written by hand."""

from __future__ import annotations

from typing import Any

from mkdocs.structure.files import File, Files


def on_files(files: Files, config: Any) -> Files:
    from tuneflow.reference import cli_reference, config_reference

    for path, text in (("reference/config.md", config_reference()), ("reference/cli.md", cli_reference())):
        files.append(File.generated(config, path, content=text))
    return files
