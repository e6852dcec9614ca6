"""Retries: only transient IO faults are retried, within a fixed budget, and the console says what was
retried; faults that cannot heal (permissions, missing files, bad requests) fail at once."""

from __future__ import annotations

import contextlib

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos import databricks_pb2 as codes
from sqlalchemy.exc import OperationalError

from tuneflow.tasks.common import RETRY_DELAYS_S, TRANSIENT_RETRIES, is_transient


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionError("connection reset by peer"),
        TimeoutError("read timed out"),
        MlflowException("try later", error_code=codes.TEMPORARILY_UNAVAILABLE),
        MlflowException("API request to http://127.0.0.1:5000/api/2.0 failed: Max retries exceeded"),
        OperationalError("INSERT INTO runs", {}, Exception("database is locked")),
    ],
)
def test_transient_faults_are_retried(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        PermissionError(13, "Permission denied", "/srv/mlruns/mlflow.db"),
        FileNotFoundError(2, "No such file", "data/train.csv"),
        MlflowException("Registered Model with name=x not found", error_code=codes.RESOURCE_DOES_NOT_EXIST),
        MlflowException("Unauthorized", error_code=codes.UNAUTHENTICATED),
        OperationalError("INSERT INTO runs", {}, Exception("attempt to write a readonly database")),
        RuntimeError("CUDA error: device-side assert triggered"),
    ],
)
def test_faults_that_cannot_heal_fail_at_once(exc: BaseException) -> None:
    assert not is_transient(exc)


def test_the_budget_is_bounded_and_the_console_says_what_was_retried(
    prefect_harness: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE

    assert sum(RETRY_DELAYS_S) <= 30 and TRANSIENT_RETRIES["retries"] == len(RETRY_DELAYS_S)
    calls = {"flaky": 0, "denied": 0}
    policy = {**TRANSIENT_RETRIES, "retry_delay_seconds": 0}  # the same rule, without the waits

    @task(cache_policy=NO_CACHE, **policy)
    def flaky() -> str:
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise ConnectionError("connection refused by 127.0.0.1:5000")
        return "ok"

    @task(cache_policy=NO_CACHE, **policy)
    def denied() -> None:
        calls["denied"] += 1
        raise PermissionError(13, "Permission denied", "/srv/mlruns")

    @flow
    def both() -> str:
        out = flaky()
        with contextlib.suppress(PermissionError):
            denied()
        return out

    assert both() == "ok"
    assert calls == {"flaky": 3, "denied": 1}
    out = capsys.readouterr().out
    assert (
        "↻ flaky: ConnectionError: connection refused by 127.0.0.1:5000 -- looks transient, retry 1 of 2"
        in out
    )
    assert "retry 2 of 2" in out
    assert "denied" not in out.split("↻")[-1]
