"""The MLflow UI as a person meets it, in a real browser (Debian's Chromium driven by Selenium).

On a store made by two short real runs: the printed link opens the experiment in the model-training view
with recognizable run names and their source, a run's metrics are grouped into chart sections by prefix,
the compare view shows both runs' confusion matrices side by side, and the registered model page shows the
aliases. Screenshots go to ``test-artifacts/ui/`` (git-ignored).
Skips, saying why, where no Chromium/chromedriver is installed (``.ci/run`` installs them on Debian).
"""

from __future__ import annotations

import json
import re
import shutil
import time

import pytest

from tests.conftest import ROOT, make_config, mlflow_process
from tuneflow import tracking

pytestmark = pytest.mark.integration
SHOTS = ROOT / "test-artifacts" / "ui"


def _browser():  # noqa: ANN202
    chromedriver, chromium = shutil.which("chromedriver"), shutil.which("chromium")
    if not (chromedriver and chromium):
        pytest.skip(
            "no chromium + chromedriver on this machine (Debian: apt-get install chromium chromium-driver)"
        )
    selenium = pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1200"):
        options.add_argument(arg)
    return selenium.webdriver.Chrome(service=Service(chromedriver), options=options)


def _text_when(driver, needles: list[str], timeout: float = 60) -> str:  # noqa: ANN001
    """The page text once every needle is on it (the UI renders asynchronously)."""
    deadline = time.time() + timeout
    text = ""
    while time.time() < deadline:
        text = driver.find_element("tag name", "body").text
        if all(n in text for n in needles):
            return text
        time.sleep(0.5)
    raise AssertionError(f"page never showed {needles}; it shows:\n{text[:3000]}")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tiny_model: str, prefect_harness: None) -> dict:
    from flows.finetune import finetune

    tmp = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{tmp}/mlflow.db"
    cfg = make_config(
        tmp,
        tiny_model,
        name="ui-intents",
        tracking={"tracking_uri": uri},
        gates={"min": None, "promote": True},
    )
    first = finetune(str(cfg), ["train.max_epochs=1"])
    second = finetune(str(cfg), ["train.max_epochs=2", "train.lr=0.001"])
    return {"uri": uri, "runs": [first.run_id, second.run_id], "tmp": tmp}


@pytest.fixture(scope="module")
def server(store: dict):  # noqa: ANN201
    with mlflow_process(["server", "--backend-store-uri", store["uri"]], "/health") as base:
        yield base


def test_the_ui_shows_comparable_fine_tunings(store: dict, server: str) -> None:
    driver = _browser()
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        tracking.configure(store["uri"])
        run_id = store["runs"][0]
        # The link tuneflow prints (Prefect artifact, `tuneflow ui`) opens the model-training view.
        url = tracking.run_url(run_id, store["uri"]).replace("http://127.0.0.1:5000", server)
        assert url.endswith(f"/runs/{run_id}?workflowType=machine_learning")
        experiment_page = url.split("/runs/")[0] + "?workflowType=machine_learning"
        driver.get(experiment_page)
        text = _text_when(driver, ["Model training", "ui-intents 20", "tuneflow finetune ui-intents"])
        assert "Training runs" not in text  # the model-training sidebar, not the GenAI one
        driver.save_screenshot(str(SHOTS / "runs.png"))

        # The run's model metrics come in one chart section per prefix (test, val, fit, ...); the bookkeeping
        # (system/...) sits on the System metrics tab instead.
        run_page = url.split("?")[0]
        driver.get(f"{run_page}/model-metrics?workflowType=machine_learning")
        text = _text_when(driver, ["Model metrics", "serving", "calibration", "train"])
        # A section header is its prefix, then "(number of charts)" on the next line; chart titles drop it.
        lines = [line.strip() for line in text.splitlines()]
        sections = {a for a, b in zip(lines, lines[1:], strict=False) if re.fullmatch(r"\(\d+\)", b)}
        assert {"test", "val", "fit", "serving", "train", "calibration", "oos"} <= sections, sections
        assert "system" not in sections and "time_fit_s" not in text
        driver.save_screenshot(str(SHOTS / "metrics.png"))
        driver.get(f"{run_page}/system-metrics?workflowType=machine_learning")
        _text_when(driver, ["time_fit_s"])

        experiment_id = url.split("/experiments/")[1].split("/")[0]
        runs, experiments = json.dumps(store["runs"]), json.dumps([experiment_id])
        compare = (
            f"{server}/#/compare-runs?runs={runs}&experiments={experiments}&workflowType=machine_learning"
        )
        driver.get(compare)
        text = _text_when(driver, ["Comparing 2 Runs", "Artifacts"])
        # The compare view lists the files both runs have at the top of their artifacts...
        deadline = time.time() + 60
        while "confusion_matrix.png" not in driver.page_source and time.time() < deadline:
            time.sleep(0.5)
        assert "confusion_matrix.png" in driver.page_source and "learning_curves.png" in driver.page_source
        assert "No common artifacts to display" not in driver.page_source
        # ... and picking one previews it for each run, side by side.
        big = "return [...document.images].filter(i => i.complete && i.naturalWidth >= 400).length"
        assert driver.execute_script(big) == 0  # nothing previewed before a file is picked
        item = driver.find_element("xpath", "//*[normalize-space(text())='confusion_matrix.png']")
        driver.execute_script("arguments[0].scrollIntoView(); arguments[0].click();", item)
        deadline = time.time() + 60
        while driver.execute_script(big) < 2 and time.time() < deadline:
            time.sleep(0.5)
        driver.save_screenshot(str(SHOTS / "compare.png"))
        assert driver.execute_script(big) >= 2, "the two runs' confusion matrices are not shown side by side"

        driver.get(f"{server}/#/models/ui-intents?workflowType=machine_learning")
        # The registry's page says what the aliases mean, and each version's row starts with its scores.
        _text_when(
            driver, ["ui-intents", "Version 1", "champion", "tuneflow rollback ui-intents", "test accuracy"]
        )
        driver.save_screenshot(str(SHOTS / "model.png"))
    finally:
        driver.quit()
