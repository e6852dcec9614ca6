"""Config loading: shipped configs validate, overrides apply, every problem is reported by key."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneflow.cli import app
from tuneflow.config import ConfigError, PipelineConfig
from tuneflow.tasktypes.resolve import load_config

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, PipelineConfig)
    assert Path(cfg.data.train.path).is_absolute()
    # Every key in the YAML is commented (the config is documentation too).
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if (
            stripped
            and not stripped.startswith("#")
            and ":" in stripped
            and not stripped.startswith("- name")
        ):
            assert (
                "#" in line
                or stripped.endswith(":")
                or stripped.startswith(("header", "column_names", "path"))
            ), f"{path.name}:{lineno} has no comment: {line}"


def test_shipped_configs_exist() -> None:
    assert {"demo.yaml", "banking77.yaml", "sst2.yaml"} <= {p.name for p in CONFIGS}


def test_demo_paths_resolve_relative_to_config() -> None:
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    assert Path(cfg.data.train.path) == (ROOT / "data" / "chatbot_intents" / "train.csv").resolve()
    assert Path(cfg.data.train.path).is_file()


def test_overrides_are_typed_and_applied() -> None:
    cfg = load_config(
        ROOT / "configs" / "demo.yaml",
        ["train.lr=3e-5", "model.max_length=64", "train.devices=2", "model.dropout=null"],
    )
    assert cfg.train.lr == pytest.approx(3e-5)
    assert cfg.model.max_length == 64
    assert cfg.train.devices == 2
    assert cfg.model.dropout is None


def test_all_problems_reported_at_once_with_dotted_keys(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\n"
        "data: {train: t.csv, txt_column: a}\n"
        "train: {lr: -1, batch_size: 0, min_epochs: 5, max_epochs: 2, optimizer: lion}\n"
        "model: {max_length: 2}\n"
        "bogus: 1\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    keys = {k for k, _ in err.value.problems}
    assert {
        "data.txt_column",
        "train.lr",
        "train.batch_size",
        "train.optimizer",
        "model.max_length",
        "bogus",
    } <= keys
    assert "unknown key" in str(err.value)


def test_cross_field_check_names_section(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata: {train: t.csv}\ntrain: {min_epochs: 5, max_epochs: 2}\n")
    with pytest.raises(ConfigError, match=r"train: min_epochs \(5\) must be <= max_epochs \(2\)"):
        load_config(bad)


def test_cli_invalid_config_exits_2_listing_every_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata: {train: t.csv}\ntrain: {lr: 0, batch_size: -3}\n")
    result = CliRunner().invoke(app, ["run", str(bad)])
    assert result.exit_code == 2
    out = " ".join(result.output.split())
    assert "train.lr" in out and "train.batch_size" in out and "2 problem(s)" in out


def test_cli_bad_override_exits_2() -> None:
    result = CliRunner().invoke(app, ["run", str(ROOT / "configs" / "demo.yaml"), "--set", "train.nope=1"])
    assert result.exit_code == 2
    assert "train.nope" in result.output


def test_missing_config_file() -> None:
    result = CliRunner().invoke(app, ["run", "does-not-exist.yaml"])
    assert result.exit_code == 2 and "config file not found" in result.output


def test_help_does_not_import_heavy_libraries() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from tuneflow.cli import app; "
        "mods = ('torch', 'transformers', 'prefect', 'mlflow', 'lightning'); "
        "heavy = [m for m in mods if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_ui_binds_localhost_on_project_store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    calls = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(os, "execv", lambda exe, argv: calls.append(argv))
    result = CliRunner().invoke(app, ["ui", "--port", "5055"])
    assert result.exit_code == 0, result.output
    argv = calls[0]
    assert argv[1:4] == ["-m", "mlflow", "ui"]
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--port") + 1] == "5055"
    assert argv[argv.index("--backend-store-uri") + 1] == "sqlite:///mlruns/mlflow.db"
    assert (tmp_path / "mlruns").is_dir()


def test_bare_path_shorthand_resolves_relative_to_config(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    cfg_path = tmp_path / "sub" / "c.yaml"
    cfg_path.write_text("name: x\ndata: {train: ../train.csv, test: /abs/test.csv}\n")
    cfg = load_config(cfg_path)
    assert cfg.data.train.path == str((tmp_path / "train.csv").resolve())
    assert cfg.data.test.path == "/abs/test.csv"


def test_search_budget_and_multi_objective_rules(tmp_path: Path) -> None:
    demo = ROOT / "configs" / "demo.yaml"
    with pytest.raises(ConfigError) as err:
        load_config(demo, ["search.n_trials=null", "search.timeout=null"])
    assert "search: Value error, set n_trials and/or timeout" in str(err.value) or "n_trials" in str(
        err.value
    )
    with pytest.raises(ConfigError) as err:
        load_config(demo, ["search.latency_objective=true"])  # the demo prunes with the median pruner
    assert "pruner: none" in str(err.value)
    cfg = load_config(demo, ["search.latency_objective=true", "search.pruner=none"])
    from tuneflow.fitting.search import directions

    assert directions(cfg) == ["maximize", "minimize"]


def test_trial_overrides_and_best_config() -> None:
    from tuneflow.fitting.search import best_config, direction, shares, trial_overrides

    cfg = load_config(ROOT / "configs" / "demo.yaml", ["search.metric=val_loss", "train.min_epochs=5"])
    assert direction(cfg) == "minimize"
    assert trial_overrides(cfg) == {"train.monitor": "val/loss", "train.max_epochs": 3, "train.min_epochs": 3}
    final = best_config(cfg, {"train.lr": 1e-4, "train.batch_size": 32})
    assert (final.train.lr, final.train.batch_size, final.train.monitor) == (1e-4, 32, "val/loss")
    assert final.train.max_epochs == cfg.train.max_epochs  # the trial budget is not the final one
    assert (
        shares(5, 2) == [3, 2]
        and shares(1, 3) == [1]
        and shares(0, 2) == []
        and shares(None, 2) == [None, None]
    )


def test_metric_names_have_sections_and_old_spellings_still_load() -> None:
    demo = ROOT / "configs" / "demo.yaml"
    assert load_config(demo, ["train.monitor=val_accuracy"]).train.monitor == "val/accuracy"
    assert load_config(demo, ["train.monitor=val/loss"]).train.monitor == "val/loss"
    with pytest.raises(ConfigError) as err:
        load_config(demo, ["train.monitor=val/f1"])
    assert "train.monitor" in str(err.value) and "'val/f1_macro'" in str(err.value)


def test_gguf_models_are_named_by_their_file(tmp_path: Path) -> None:
    from tuneflow.preflight import check_model_dir

    demo = ROOT / "configs" / "demo.yaml"
    cfg = load_config(demo, [f"model.name={tmp_path}", "model.gguf_file=model.Q4.gguf"])
    assert cfg.model.name == str(tmp_path / "model.Q4.gguf") and cfg.model.gguf_file is None
    assert check_model_dir("smollm2-135m-instruct") == []
    assert check_model_dir(str(tmp_path / "missing.gguf")) == [
        f"model.name: GGUF file {tmp_path}/missing.gguf does not exist"
    ]
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    assert "is not a GGUF file" in check_model_dir(str(fake))[0]
    fake.write_bytes(b"GGUF\x03\x00\x00\x00")
    assert check_model_dir(str(fake)) == []


def test_an_unreachable_prefect_server_is_a_clear_error(monkeypatch) -> None:
    """PREFECT_API_URL set but nothing listening: exit 7 naming the URL, before any training starts."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    # The settings context also wins over the session's prefect_test_harness when a flow test ran first
    # (its context, entered for the session, would otherwise hide the environment variable).
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        result = CliRunner().invoke(app, ["run", str(ROOT / "configs" / "demo.yaml")])
    assert result.exit_code == 7, result.output
    out = " ".join(result.output.split())
    assert "PREFECT_API_URL=http://127.0.0.1:9/api is not reachable" in out and "tuneflow server" in out


def test_set_reaches_search_space_keys_that_contain_dots() -> None:
    """`--set` addresses a space entry such as `train.lr` in brackets, or plainly when the space has it."""
    demo = ROOT / "configs" / "demo.yaml"
    cfg = load_config(demo, ['search.space["train.lr"].low=1e-5', "search.space.train.lr.high=1e-3"])
    assert cfg.search.space["train.lr"].low == 1e-5 and cfg.search.space["train.lr"].high == 1e-3
    added = load_config(
        demo,
        [
            "search.space[train.weight_decay].type=float",
            *(f"search.space[train.weight_decay].{k}={v}" for k, v in (("low", 0.0), ("high", 0.1))),
        ],
    )
    assert added.search.space["train.weight_decay"].high == 0.1
