"""Deployments come from the project's prefect.yaml; a triggered retrain run completes through a runner."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.conftest import ROOT, make_config
from tuneflow.tasktypes.resolve import load_config

pytestmark = pytest.mark.integration


def test_prefect_yaml_cron_matches_the_demo_config() -> None:
    from tuneflow.flows.deployments import definitions

    specs = {d["name"]: d for d in definitions()}
    assert set(specs) == {"finetune", "tune", "retrain"}
    demo = load_config(ROOT / specs["retrain"]["parameters"]["config_path"])
    assert specs["retrain"]["schedules"][0]["cron"] == demo.retrain.schedule


def test_deployments_apply_and_a_triggered_retrain_completes(
    tmp_path: Path, tiny_model: str, prefect_harness: None
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.runner import Runner

    from tuneflow.flows.deployments import build
    from tuneflow.store import registered, tracking

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = make_config(
        tmp_path, tiny_model, name="served", tracking={"tracking_uri": uri}, train={"max_epochs": 1}
    )
    deployments = build(str(cfg))
    ids = {d.name: d.apply() for d in deployments}
    assert set(ids) == {"finetune", "tune", "retrain"}

    async def trigger_and_run() -> str:
        async with get_client() as client:
            retrain = await client.read_deployment_by_name("retrain/retrain")
            assert [s.schedule.cron for s in retrain.schedules] == ["0 3 * * 1"]
            assert retrain.parameters["config_path"] == str(cfg)
        flow_run = await run_deployment("retrain/retrain", timeout=0)
        runner = Runner(name="test-runner", query_seconds=1, limit=1)
        for d in deployments:
            if d.name == "retrain":
                await runner.aadd_deployment(d)
        await runner.start(run_once=True)
        async with get_client() as client:
            return (await client.read_flow_run(flow_run.id)).state.type.value

    assert asyncio.run(trigger_and_run()) == "COMPLETED"
    tracking.configure(uri)
    assert registered.alias_version("served", "champion") == "1"  # no champion before: trained and promoted


def test_a_deployment_run_with_a_forbidden_override_fails(
    tmp_path: Path, tiny_model: str, prefect_harness: None
) -> None:
    """Through the API: a flow run of the finetune deployment asking for data.train is refused by name."""
    from prefect.deployments import run_deployment
    from prefect.runner import Runner

    from tuneflow.flows.deployments import build

    cfg = make_config(tmp_path, tiny_model, name="guarded", train={"max_epochs": 1})
    deployments = [d for d in build(str(cfg)) if d.name == "finetune"]
    deployments[0].apply()

    async def trigger_and_run() -> object:
        flow_run = await run_deployment(
            "finetune/finetune",
            parameters={"overrides": ["data.train.path=/etc/passwd"]},
            timeout=0,
        )
        runner = Runner(name="guard-runner", query_seconds=1, limit=1)
        await runner.aadd_deployment(deployments[0])
        await runner.start(run_once=True)
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            return (await client.read_flow_run(flow_run.id)).state

    state = asyncio.run(trigger_and_run())
    assert state.type.value == "FAILED"
    assert "data.train.path" in state.message and "not overridable" in state.message


def test_pull_step_enters_the_workers_own_checkout(tmp_path, monkeypatch) -> None:
    """The deployment's pull step resolves the checkout on the worker, at pull time (not at deploy time)."""
    import os

    import yaml

    from tuneflow.flows.deployments import ROOT, enter_checkout

    pull = yaml.safe_load((ROOT / "prefect.yaml").read_text())["pull"]
    assert pull == [{"tuneflow.flows.deployments.enter_checkout": {}}]
    other = tmp_path / "checkout"
    (other / "flows").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TUNEFLOW_HOME", str(other))
    assert enter_checkout() == {"directory": str(other)} and Path(os.getcwd()) == other
    monkeypatch.delenv("TUNEFLOW_HOME")
    assert enter_checkout() == {"directory": str(ROOT)}
    monkeypatch.setenv("TUNEFLOW_HOME", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="not a tuneflow checkout"):
        enter_checkout()
