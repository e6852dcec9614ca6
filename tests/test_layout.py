"""The library's layout rules: which package may import which, a docstring on every package, module size."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parent.parent / "tuneflow"

# What each package may import of tuneflow (the layers, bottom to top; README "Layout").
MAY_IMPORT: dict[str, set[str]] = {
    "names": set(),
    "allocator": set(),  # runs before anything else is imported
    "onnxrt": set(),  # ONNX Runtime sessions and int8 quantization, for judging and fitting
    "faults": set(),
    "config": {"names"},
    "data": {"config", "names", "faults"},
    "judging": {"config", "names", "data", "onnxrt"},
    "backbone": {"config"},
    "tasktypes": {"config", "names", "data", "judging", "backbone"},
    "store": {"config", "names", "tasktypes"},
    "fitting": {
        "config",
        "names",
        "faults",
        "data",
        "judging",
        "backbone",
        "tasktypes",
        "store",
        "allocator",
        "onnxrt",
    },
    "registry": {"config", "names", "faults", "data", "judging", "backbone", "tasktypes", "store", "fitting"},
    "preflight": {"config", "data", "backbone", "tasktypes"},
    "serving": {"registry"},  # the import path of models registered before the packages (a shim)
}
# The CLI, how it talks (terminal), what it prints (summaries) and the docs' references may import everything.
TOP = {"cli", "__main__", "terminal", "summaries", "reference"}
MAX_MODULE_LINES = 600
MAX_CLI_LINES = 400  # commands parse, call the library, print: the work lives elsewhere


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tuneflow":
            mods = [node.module] if node.module != "tuneflow" else [f"tuneflow.{a.name}" for a in node.names]
            found.update(mods)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "tuneflow")
    return found


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(LIB.rglob("*.py")):
        parts = path.relative_to(LIB.parent).with_suffix("").parts
        out.append((".".join(p for p in parts if p != "__init__"), path))
    return out


def test_packages_import_only_the_layers_below_them() -> None:
    problems = []
    for module, path in _modules():
        package = _package(module)
        if package in TOP or module == "tuneflow":
            continue
        assert package in MAY_IMPORT, f"{module}: package '{package}' has no rule in MAY_IMPORT"
        for target in sorted(_imports(path)):
            other = _package(target)
            if other and other != package and other not in MAY_IMPORT[package]:
                allowed = sorted(MAY_IMPORT[package])
                problems.append(f"{module} imports {target} ({package} may import {allowed})")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("package", sorted(p.name for p in LIB.iterdir() if (p / "__init__.py").is_file()))
def test_every_package_says_what_lives_there_and_what_it_may_import(package: str) -> None:
    doc = ast.get_docstring(ast.parse((LIB / package / "__init__.py").read_text()))
    assert doc and "May import" in doc, f"tuneflow/{package}/__init__.py needs a docstring with 'May import:'"


def test_no_module_is_longer_than_the_limit() -> None:
    long = {
        str(path.relative_to(LIB)): n
        for _, path in _modules()
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, long
    assert len((LIB / "cli.py").read_text().splitlines()) <= MAX_CLI_LINES


# ------------------------------------------------------------------ extension points: registered in one place


def test_every_gate_bound_has_its_gate() -> None:
    """A ``gates.min_*`` / ``gates.max_*`` bound without an entry in the gate registry would be ignored."""
    from tuneflow.config import GatesConfig
    from tuneflow.judging.gates import GATES

    # The headline metric's bounds and the champion comparisons are decided in tuneflow.judging.promotion.
    elsewhere = {"min", "min_ood", "min_improvement", "max_class_regression"}
    bounds = {f for f in GatesConfig.model_fields if f.startswith(("min", "max"))} - elsewhere
    assert bounds == {g.setting for g in GATES}


def test_the_config_knows_which_out_of_scope_methods_read_features() -> None:
    """(tests/test_scope.py checks that the config offers exactly the registered methods.)"""
    from tuneflow.config import FEATURE_SCOPE_METHODS
    from tuneflow.judging.outofscope import FEATURE_METHODS

    assert set(FEATURE_SCOPE_METHODS) == set(FEATURE_METHODS)


def test_no_function_is_longer_than_sixty_lines() -> None:
    """Long functions hide their steps: split them into named ones (tests and benchmarks excepted)."""
    root = LIB.parent
    long = []
    for folder in ("tuneflow", "tasks", "flows"):
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                is_function = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                if is_function and (n := node.end_lineno - node.lineno + 1) > 60:
                    long.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, long


def test_models_registered_before_the_packages_find_their_classes() -> None:
    """Their logged model code runs ``from tuneflow.serving import TuneflowModel``."""
    import tuneflow.registry.serving as current
    import tuneflow.serving as legacy

    for name in ("TuneflowModel", "GenerativeModel", "AdapterSetModel"):
        assert getattr(legacy, name) is getattr(current, name)


def test_the_installed_distribution_adds_only_tuneflow_to_site_packages(tmp_path: Path) -> None:
    """flows/ and tasks/ install as tuneflow.flows and tuneflow.tasks: no top-level ``flows`` or ``tasks``
    module to clash with a user's own, and every module of the checkout is in the wheel."""
    import shutil
    import subprocess
    import sys
    import zipfile

    root = LIB.parent
    for name in ("tuneflow", "flows", "tasks"):
        shutil.copytree(root / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, tmp_path / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", "dist", "."],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"tuneflow"}
    checkout = {
        ("tuneflow/" if folder != "tuneflow" else "") + str(p.relative_to(root))
        for folder in ("tuneflow", "flows", "tasks")
        for p in (root / folder).rglob("*.py")
    }
    assert checkout <= set(names), sorted(checkout - set(names))


def _members(cls: type) -> set[str]:
    """The public attributes and methods a class declares or inherits (below ``object``)."""
    return {
        name
        for klass in cls.__mro__
        if klass is not object
        for name in vars(klass)
        if not name.startswith("_")
    } | {name for klass in cls.__mro__ for name in getattr(klass, "__annotations__", {}) if name[0] != "_"}


def test_a_task_type_is_a_small_protocol_of_components() -> None:
    """TaskType has at most 15 members (name, metrics, four parts, ...); so does each part. A task type
    formats no output (its answers are data the CLI prints)."""
    from tuneflow.tasktypes import TASK_TYPES
    from tuneflow.tasktypes.base import PARTS, DataPart, JudgingPart, ServingPart, TaskType, TrainingPart

    assert len(_members(TaskType)) <= 15, sorted(_members(TaskType))
    for part in (DataPart, TrainingPart, ServingPart, JudgingPart):
        assert len(_members(part)) <= 15, (part.__name__, sorted(_members(part)))
    for kind in TASK_TYPES.values():
        assert _members(type(kind)) == _members(TaskType), kind.name  # no member beyond the protocol
        for part in PARTS:
            component = getattr(kind, part)
            assert component.kind is type(kind), (kind.name, part)
            base = getattr(TaskType, part)
            assert _members(type(component)) <= _members(type(base)) | {"kind"}, (kind.name, part)
        assert not any("print" in name or "line" in name for name in _members(type(kind)))
