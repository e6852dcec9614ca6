"""The MLflow UI as a person meets it, in a real browser (Debian's Chromium driven by Selenium).

On a store made by two short real runs (the first with a 2-trial search, through the CLI), served the way
``tuneflow ui`` serves it, every link tuneflow prints is opened in a fresh browser profile: the end of
``tuneflow run``, ``tuneflow ui``, the Prefect artifact and the registry's descriptions. Each opens the
model-training view and stays there when clicked through; the runs table shows the deciding columns and the
trials one click away; the chart view opens on the learning curves; the run page shows the test scores
without scrolling; the compare view shows both runs' confusion matrices side by side. Screenshots go to
``test-artifacts/ui/`` (git-ignored).
Skips, saying why, where no Chromium/chromedriver is installed (``.ci/run`` installs them on Debian).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from typer.testing import CliRunner

from tests.conftest import ROOT, make_config, mlflow_process
from tests.test_search import SPACE
from tuneflow.cli import app
from tuneflow.store import registered, tracking

pytestmark = pytest.mark.integration
SHOTS = ROOT / "test-artifacts" / "ui"
URL = re.compile(r"http://127\.0\.0\.1:\d+/#/\S+")
GENAI_ONLY = "Training runs"  # a heading of the GenAI sidebar, absent from the model-training one


@contextmanager
def _browser(width: int = 1600, offline: bool = False) -> Iterator:
    """A headless Chromium with a new, empty profile: what someone following a link for the first time has
    (``offline``: every host name fails to resolve, as without a network; 127.0.0.1 and files still load)."""
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
    profile = tempfile.mkdtemp(prefix="tuneflow-ui-profile-")
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        f"--window-size={width},1000",
        "--disable-background-networking",
        "--no-first-run",
        f"--user-data-dir={profile}",
        *(["--host-resolver-rules=MAP * ~NOTFOUND"] if offline else []),
    ):
        options.add_argument(arg)
    driver = selenium.webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _text_when(driver, needles: list[str], timeout: float = 60) -> str:  # noqa: ANN001
    """The page text once every needle is on it (the UI renders asynchronously)."""
    deadline = time.time() + timeout
    text = ""
    while time.time() < deadline:
        text = driver.find_element("tag name", "body").text
        if all(n in text for n in needles):
            return text
        time.sleep(0.5)
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / "failed.png"))
    raise AssertionError(f"page never showed {needles}; it shows:\n{text[:3000]}")


def _until(driver, script: str, timeout: float = 60):  # noqa: ANN001, ANN202
    """The value of ``script`` once it is truthy."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"never true in the page: {script}")


def _model_training_view(driver) -> str:  # noqa: ANN001
    text = _text_when(driver, ["Model training", "Runs"])
    assert GENAI_ONLY not in text, "the GenAI sidebar is shown"
    return text


def _click(driver, element) -> None:  # noqa: ANN001
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].click();", element)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tiny_model: str, prefect_harness: None) -> dict:
    from tuneflow.flows.finetune import finetune

    tmp = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{tmp}/mlflow.db"
    cfg = make_config(
        tmp,
        tiny_model,
        name="ui-intents",
        tracking={"tracking_uri": uri},
        gates={"min": None, "promote": True},
        search={
            "n_trials": 2,
            "max_epochs": 1,
            "storage": f"sqlite:///{tmp}/optuna.db",
            "sampler": "random",
            "startup_trials": 1,
            "warmup_epochs": 0,
            "space": SPACE,
        },
    )
    # The first fine-tuning as a person starts it: the link it prints is the one to follow.
    out = CliRunner().invoke(app, ["run", str(cfg), "--set", "train.max_epochs=1"])
    assert out.exit_code == 0, out.output
    printed = " ".join(out.output.split())
    browse = URL.findall(printed[printed.index("browse runs") :])[0]
    finetune(str(cfg), ["search.enabled=false", "train.max_epochs=2", "train.lr=0.001"])
    tracking.configure(uri)
    runs = tracking.client().search_runs(
        [tracking.experiment_id("ui-intents")], "tags.`tuneflow.stage` = 'finetune'", order_by=["start_time"]
    )
    return {"uri": uri, "runs": [r.info.run_id for r in runs], "browse": browse}


@pytest.fixture(scope="module")
def server(store: dict, monkeypatch_module: pytest.MonkeyPatch) -> Iterator[dict]:
    """The UI exactly as ``tuneflow ui`` starts it, with the links it prints."""
    calls: list[list[str]] = []
    monkeypatch_module.setattr(os, "execv", lambda exe, argv: calls.append(argv))
    out = CliRunner().invoke(app, ["ui", "--tracking-uri", store["uri"], "--port", "5000"])
    assert out.exit_code == 0, out.output
    argv = calls[0]
    assert argv[1:3] == ["-m", "mlflow"] and argv[argv.index("--app-name") + 1] == "tuneflow"
    args = argv[3 : argv.index("--host")]
    links = URL.findall(" ".join(out.output.split()))
    with mlflow_process(args, "/health") as base:
        yield {"base": base, "links": [link.replace("http://127.0.0.1:5000", base) for link in links]}


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_printed_links_open_the_runs_table_in_the_model_training_view(store: dict, server: dict) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    base = server["base"]
    browse = store["browse"].replace("http://127.0.0.1:5000", base)
    assert server["links"] and server["links"][0] == browse  # `tuneflow ui` and `tuneflow run` agree
    for name, link in (("run", browse), ("ui", server["links"][0])):
        with _browser(width=2400) as driver:  # every column rendered (the grid draws only those in view)
            driver.get(link)
            _model_training_view(driver)
            # The columns that decide between fine-tunings, without picking anything.
            _text_when(
                driver, ["· ui-intents", "val/best_f1_macro", "test/accuracy", "train.lr", "model.dropout"]
            )
            assert GENAI_ONLY not in driver.find_element("tag name", "body").text
            driver.save_screenshot(str(SHOTS / f"runs-from-{name}.png"))

    with _browser() as driver:
        driver.get(browse)
        _model_training_view(driver)
        # The run with a search lists its trials one click away: one level of nesting, short names.
        expander = _until(
            driver,
            "return [...document.querySelectorAll('.ag-row')].filter(r => r.querySelector('button') && "
            "r.textContent.includes('ui-intents')).map(r => r.querySelector('button'))[0]",
        )
        _click(driver, expander)
        text = _text_when(driver, ["t0 ", "t1 "])
        assert re.search(r"\bt0( pruned)? (do|lr)=", text), text[:2000]
        driver.save_screenshot(str(SHOTS / "runs-expanded.png"))

        # The chart view opens on the learning curves, then the test scores.
        _click(driver, driver.find_element("css selector", "input[value=CHART]"))
        text = _text_when(driver, ["learning curves", "train/loss"])
        lines = [line.strip() for line in text.splitlines()]
        sections = [a for a, b in zip(lines, lines[1:], strict=False) if re.fullmatch(r"\(\d+\)", b)]
        assert sections[:2] == ["learning curves", "test"], sections
        driver.save_screenshot(str(SHOTS / "charts.png"))

        # Clicking through to a run keeps the model-training view (the link's choice sticks).
        _click(driver, driver.find_element("css selector", "input[value=TABLE]"))
        run_link = _until(
            driver,
            "return [...document.querySelectorAll('a')]"
            ".filter(a => a.textContent.endsWith('· ui-intents'))[0]",
        )
        _click(driver, run_link)
        _text_when(driver, ["Overview", "Model metrics"])
        assert "workflowType" not in driver.current_url  # an in-app link: the stored choice holds
        _model_training_view(driver)


def test_run_page_shows_the_test_scores_first_and_compare_shows_curves(store: dict, server: dict) -> None:
    base, (first, second) = server["base"], store["runs"]
    with _browser() as driver:
        # The Prefect artifact's link: the run page, its description (headline scores) above the fold.
        url = tracking.run_url(first, store["uri"]).replace(tracking.UI_ADDRESS, base)
        driver.get(url)
        _model_training_view(driver)
        _text_when(driver, ["test/accuracy", "registered as"])
        top = driver.execute_script(
            "const e = [...document.querySelectorAll('strong')].find(s => s.textContent === 'test/accuracy');"
            "return e && e.getBoundingClientRect().bottom"
        )
        assert top and top < driver.execute_script("return window.innerHeight"), "test scores need scrolling"
        driver.save_screenshot(str(SHOTS / "run.png"))
        # Stage timings and sizes are model metrics of their own sections; system/ is MLflow's sampling.
        driver.get(url.replace("?", "/model-metrics?"))
        text = _text_when(driver, ["timing", "model", "train"])
        assert "time_fit_s" not in text

        experiment_id = tracking.get_run(first).info.experiment_id
        runs, experiments = json.dumps([first, second]), json.dumps([experiment_id])
        driver.get(
            f"{base}/#/compare-runs?runs={runs}&experiments={experiments}&workflowType=machine_learning"
        )
        _text_when(driver, ["Comparing 2 Runs", "Artifacts"])
        _until(driver, "return document.documentElement.innerHTML.includes('learning_curves.png')")
        assert "confusion_matrix.png" in driver.page_source
        assert "No common artifacts to display" not in driver.page_source
        big = "return [...document.images].filter(i => i.complete && i.naturalWidth >= 400).length"
        assert driver.execute_script(big) == 0  # nothing previewed before a file is picked
        item = driver.find_element("xpath", "//*[normalize-space(text())='confusion_matrix.png']")
        _click(driver, item)
        _until(driver, big.replace(".length", ".length >= 2"))
        driver.save_screenshot(str(SHOTS / "compare.png"))


def test_registry_descriptions_link_back_to_the_runs(store: dict, server: dict) -> None:
    base = server["base"]
    with _browser() as driver:
        driver.get(f"{base}/#/models/ui-intents")
        # The registry's page says what the aliases mean; each version starts with its scores.
        _text_when(
            driver, ["ui-intents", "Version 1", "champion", "tuneflow rollback ui-intents", "test accuracy"]
        )
        driver.save_screenshot(str(SHOTS / "model.png"))
        link = driver.find_element("xpath", "//a[starts-with(normalize-space(.), 'runs of experiment')]")
        assert link.get_attribute("href").startswith(f"{base}/#/experiments/")  # relative: this UI's host
        # No promotional dialog over the page on a first visit.
        assert not driver.find_elements("css selector", "[role=dialog]")
        _click(driver, link)
        assert len(driver.window_handles) == 1  # the UI's own pages open in this tab
        _model_training_view(driver)
        _text_when(driver, ["val/best_f1_macro", "train.lr"])
        driver.save_screenshot(str(SHOTS / "runs-from-registry.png"))
        # A version's description links its run by the run's name, not its id, in the same tab.
        driver.get(f"{base}/#/models/ui-intents/versions/1")
        # Found and clicked in one script: the page may re-render between two WebDriver calls.
        _until(
            driver,
            "const a = [...document.querySelectorAll('a')].find(a => a.textContent.endsWith('· ui-intents'));"
            "if (a) { a.click(); } return !!a;",
        )
        _text_when(driver, ["Overview", "test/accuracy"])
        assert len(driver.window_handles) == 1


def test_runs_say_which_version_holds_which_alias(store: dict) -> None:
    """The runs table's aliases column: the run whose version is champion says so, the other no longer."""
    tracking.configure(store["uri"])
    first, second = store["runs"]
    aliases = {r: tracking.get_run(r).data.tags.get(tracking.TAG_ALIASES) for r in (first, second)}
    champion = registered.alias_version("ui-intents", "champion")
    holder = registered.model_version("ui-intents", champion).run_id
    assert "champion" in aliases[holder].split(", ")
    other = second if holder == first else first
    assert "champion" not in (aliases[other] or "").split(", ")


def test_runs_tell_apart_at_a_glance(store: dict, server: dict) -> None:
    """At 1600 px, on a first visit: run names that differ in their first 24 characters, the aliases and
    the registered version on screen without scrolling, floats rounded, no Assistant panel over the table;
    no machine path in any run's params, tags or dataset sources."""
    tracking.configure(store["uri"])
    runs = tracking.client().search_runs([tracking.experiment_id("ui-intents")], max_results=100)
    parents = [r.info.run_name for r in runs if r.info.run_id in store["runs"]]
    assert len({name[:24] for name in parents}) == len(parents), parents
    for run in runs:
        values = {**run.data.params, **run.data.tags}
        values.update({f"dataset {i}": d.dataset.source for i, d in enumerate(run.inputs.dataset_inputs)})
        paths = {k: v for k, v in values.items() if re.search(r"(^|[\s\"'=])/(tmp|home|root|work|usr)/", v)}
        assert not paths, paths
        assert not {"tuneflow.host", "tuneflow.pid", "tuneflow.heartbeat"} & set(run.data.tags)
    with _browser(width=1600) as driver:
        driver.get(store["browse"].replace("http://127.0.0.1:5000", server["base"]))
        _model_training_view(driver)
        _text_when(driver, ["· ui-intents", "tuneflow.aliases", "Models"])
        time.sleep(2)  # the panel would open on first load
        driver.save_screenshot(str(SHOTS / "runs-1600.png"))
        right = driver.execute_script(
            "const w = window.innerWidth; return [...document.querySelectorAll('.ag-header-cell')]"
            ".filter(h => /tuneflow.aliases|^Models$/.test(h.textContent.trim()))"
            ".map(h => [h.textContent.trim(), h.getBoundingClientRect().right <= w])"
        )
        assert len(right) == 2 and all(on_screen for _, on_screen in right), right
        params = driver.execute_script(
            "return [...document.querySelectorAll('.ag-cell[col-id^=\"params\"]')].map(c => c.innerText)"
        )
        assert params and not [p for p in params if re.search(r"\d\.\d{5,}", p)], params
        assert not driver.execute_script(
            "return [...document.querySelectorAll('[role=complementary], aside, [data-testid]')]"
            ".some(e => /assistant/i.test(e.getAttribute('data-testid') || '') && e.offsetWidth > 200)"
        ), "the Assistant panel opened over the runs table"


def test_docs_pipeline_picture_renders_without_a_network() -> None:
    """The docs site as built by ``make docs``: Mermaid comes with the site, fonts from the system."""
    page = ROOT / "site" / "concepts" / "index.html"
    if not page.exists():
        pytest.skip("the docs site is not built (make docs)")
    assert "fonts.googleapis" not in page.read_text()
    with _browser(offline=True) as driver:
        driver.get(page.as_uri())
        # The theme draws the diagram into a closed shadow root of a div.mermaid; unrendered, it stays a
        # <pre class="mermaid"> showing its source.
        _until(
            driver,
            "const m = document.querySelector('div.mermaid');"
            "return m && m.getBoundingClientRect().height > 50",
            timeout=30,
        )
        assert "flowchart LR" not in driver.find_element("tag name", "body").text
        driver.save_screenshot(str(SHOTS / "docs-offline.png"))
