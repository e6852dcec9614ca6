"""The library's layout rules: which package may import which, a docstring on every package, module size."""

from __future__ import annotations

import ast
import re
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


REPO = LIB.parent


def _calls(root: Path, name: str) -> list[tuple[str, str, ast.Call]]:
    """Every call of ``name`` (``name(...)`` or ``x.name(...)``) under ``root``: (module path, enclosing
    function, call)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for fn in [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]:
            for node in ast.walk(fn):
                func = getattr(node, "func", None)
                called = getattr(func, "attr", None) or getattr(func, "id", None)
                if isinstance(node, ast.Call) and called == name:
                    found.append((str(path.relative_to(REPO)), fn.name, node))
    return found


# Where a task type may still be looked up by its name: the name comes from outside a run there (the config
# being loaded, `tuneflow init --task`, a saved model's tuneflow.json, a checkpoint's hyperparameters).
BY_NAME = {
    "tuneflow/tasktypes/resolve.py",
    "tuneflow/tasktypes/draft.py",
    "tuneflow/fitting/model.py",
    "tuneflow/fitting/loading.py",
    "tuneflow/fitting/export.py",
    "tuneflow/registry/serving.py",
    "tuneflow/registry/scoring.py",
    "tuneflow/registry/packaging.py",
}


def test_no_stage_looks_its_task_type_up_by_name() -> None:
    """The config is resolved once, with its task type (``cfg.kind``), and handed down: flows, tasks and the
    stages below never ask the registry for ``cfg.task`` again."""
    calls = [c for root in ("tuneflow", "flows", "tasks") for c in _calls(REPO / root, "task_type")]
    assert calls, "the scan found no call at all: it is broken"
    outside = sorted({path for path, _, _ in calls} - BY_NAME)
    assert not outside, f"task_type(name) below the loader in {outside}: use cfg.kind"
    of_a_config = [
        f"{path}:{call.lineno}"
        for path, _, call in calls
        if path != "tuneflow/tasktypes/resolve.py" and re.search(r"cfg\.task\b", ast.unparse(call))
    ]
    assert not of_a_config, f"a config's task type looked up again at {of_a_config}: use cfg.kind"


# The one place each kind of process points MLflow at its store: the CLI (terminal.use_store), a flow run
# (its flow function), a spawned search worker, a DDP rank.
STORE_ENTRIES = {
    ("tuneflow/terminal.py", "use_store"),
    ("tuneflow/fitting/search.py", "_worker"),
    ("tuneflow/fitting/distributed.py", "main"),
    ("flows/finetune.py", "finetune"),
    ("flows/tune.py", "tune"),
    ("flows/retrain.py", "retrain"),
    ("flows/promote.py", "promote"),
    ("flows/promote.py", "rollback"),
}


def test_the_store_is_configured_only_where_a_process_starts() -> None:
    """``tracking.configure`` sets MLflow's process-wide store: only process entries call it; the library
    below uses the store its process was pointed at."""
    calls = {
        (path, fn)
        for root in ("tuneflow", "flows", "tasks")
        for path, fn, call in _calls(REPO / root, "configure")
        if path != "tuneflow/store/tracking.py"
    }
    assert calls, "the scan found no call at all: it is broken"
    assert calls <= STORE_ENTRIES, sorted(calls - STORE_ENTRIES)
    flows = {path for path, _ in calls if path.startswith("flows/")}
    assert flows == {"flows/finetune.py", "flows/tune.py", "flows/retrain.py", "flows/promote.py"}


def test_load_config_is_parsed_once_and_read_again_when_edited(tmp_path: Path, tiny_model: str) -> None:
    """One parse per process for the same file, overrides and environment: the CLI's check and the flow share
    it. An edited file, other overrides or a changed ``${VAR}`` it names are read again."""
    import os

    from tests.conftest import make_config
    from tuneflow.tasktypes.resolve import load_config

    path = make_config(tmp_path, tiny_model)
    first = load_config(path, ["train.lr=0.01"])
    assert load_config(path, ["train.lr=0.01"]) is first
    assert first.kind.name == first.task == "sequence_classification"
    assert load_config(path, ["train.lr=0.02"]).train.lr == 0.02
    path.write_text(path.read_text() + "# edited\n")
    edited = load_config(path, ["train.lr=0.01"])
    assert edited is not first and load_config(path, ["train.lr=0.01"]) is edited
    named = ["tracking.experiment=${TUNEFLOW_TEST_EXPERIMENT}"]
    os.environ["TUNEFLOW_TEST_EXPERIMENT"] = "one"
    try:
        one = load_config(path, named)
        assert one.experiment_name == "one" and load_config(path, named) is one
        os.environ["TUNEFLOW_TEST_EXPERIMENT"] = "two"
        assert load_config(path, named).experiment_name == "two"
    finally:
        del os.environ["TUNEFLOW_TEST_EXPERIMENT"]
