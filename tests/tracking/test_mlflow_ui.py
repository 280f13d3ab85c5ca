"""The MLflow UI, checked in a real browser: a run's name, metrics and QA picture are shown; the
experiment's training runs are listed by name, and the registered model shows its version and alias.

Starts ``mlflow server`` on 127.0.0.1 against a temporary SQLite store and drives Debian's
headless Chromium through Selenium. Skipped (with the reason) only where Chromium or ChromeDriver
is not installed; ``scripts/test.sh`` installs them when it can.
"""

from __future__ import annotations

import contextlib

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

logger = logging.getLogger(__name__)

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
EXPERIMENT = "radmtl-ui-test"
SERVER_START_S = 60.0
PAGE_WAIT_S = 30.0

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    # Checked before any fixture runs, so a machine without a browser does not start a server first.
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason=f"browser test needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)",
    ),
]


ROOT = Path(__file__).resolve().parents[2]
OUT_NAME = "ui-smoke"
MODEL_NAME = "radmtl-ui-model"


@pytest.fixture
def make_run(tmp_path: Path) -> dict:
    """A real ``radmtl train`` smoke run (2 epochs of a tiny model on data_samples/) in a fresh store."""
    from radmtl.config import load_config
    from radmtl.training.train import train

    store = tmp_path / "store"
    store.mkdir()
    db_uri = f"sqlite:///{store / 'mlflow.db'}"
    cfg = load_config(ROOT / "configs" / "smoke.yaml", [
        "data.spacing=[12.0, 12.0, 12.0]", "data.patch_size=[16, 16, 16]", "model.channels=[4, 8]",
        "model.strides=[2]", "train.epochs=2", "train.steps_per_epoch=2", "train.val_every=1",
    ])  # fmt: skip
    state = train(cfg, ROOT / "data_samples", tmp_path / OUT_NAME, tracking_uri=db_uri,
                  experiment=EXPERIMENT, progress=False, register=MODEL_NAME)
    last = [json.loads(line) for line in (tmp_path / OUT_NAME / "metrics.jsonl").read_text().splitlines()
            if '"val_mae_hu"' in line][-1]
    import mlflow

    run_name = mlflow.MlflowClient(db_uri).get_run(state.run_id).info.run_name
    assert run_name.startswith(f"{OUT_NAME}-hetero_homo-data_samples-")  # out folder, weighting, data, date
    return {"db_uri": db_uri, "experiment": EXPERIMENT, "run_id": state.run_id, "run_name": run_name,
            "val_mae_hu": last["val_mae_hu"], "qa_png": "epoch_0002_axial.png",
            "model_version": state.registered.version}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(make_run, tmp_path):
    """``mlflow server`` on a free local port against the run's store; yields (base_url, run info)."""
    db_uri, experiment = make_run["db_uri"], make_run["experiment"]
    port = _free_port()
    log_path = tmp_path / "mlflow_server.log"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", db_uri,
        # Runs carry absolute file:// artifact locations; this only matters for new experiments.
        "--artifacts-destination", (tmp_path / "server_artifacts").as_uri(),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        # Own process group: the server forks workers, and teardown must stop all of them.
        server = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                with urllib.request.urlopen(f"{base_url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start on port {port}:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)  # polling a port: there is no event to wait on
        yield base_url, make_run
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=10)


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium driven through ChromeDriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-dev-shm-usage", "--disable-component-update", "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1600,1200",
    ):  # fmt: skip
        options.add_argument(argument)
    # An explicit driver path means Selenium Manager never tries to download one.
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(PAGE_WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def _xpath_text(text: str, exact: bool = False) -> str:
    """The innermost elements whose text contains (or, with ``exact``, is) ``text``."""
    match = f"normalize-space(.)='{text}'" if exact else f"contains(normalize-space(.), '{text}')"
    return f"//*[not(self::script) and {match} and not(*[{match}])]"


@contextlib.contextmanager
def _page_kept_on_failure(browser, tmp_path: Path):
    """On failure keep the page as the browser saw it: the quickest way to see what changed in the UI."""
    try:
        yield
    except Exception:
        browser.save_screenshot(str(tmp_path / "failure.png"))
        (tmp_path / "failure.html").write_text(browser.page_source, encoding="utf-8")
        raise


def test_run_metrics_and_qa_image_shown(mlflow_server, browser, tmp_path):
    import mlflow

    base_url, run = mlflow_server
    experiment_id = mlflow.MlflowClient(base_url).get_experiment_by_name(run["experiment"]).experiment_id
    with _page_kept_on_failure(browser, tmp_path):
        _check_run_pages(browser, base_url, experiment_id, run, tmp_path)


def _check_run_pages(browser, base_url: str, experiment_id: str, run: dict, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, PAGE_WAIT_S)
    run_id = run["run_id"]
    # The UI may round; the integer part and the point identify the last epoch's value.
    mae_text = f"{int(run['val_mae_hu'])}."

    # Run overview: name, id, and the metrics table with the last value of each metric.
    browser.get(f"{base_url}/#/experiments/{experiment_id}/runs/{run_id}")
    wait.until(ec.visibility_of_element_located((By.XPATH, _xpath_text(run["run_name"], exact=True))))
    wait.until(ec.presence_of_element_located((By.XPATH, _xpath_text(run_id))))
    metric = wait.until(ec.visibility_of_element_located((By.XPATH, _xpath_text("val_mae_hu"))))
    browser.save_screenshot(str(tmp_path / "overview.png"))
    row = metric.find_element(By.XPATH, f"./ancestor::*[contains(normalize-space(.), '{mae_text}')][1]")
    assert mae_text in row.text  # val_mae_hu of the last epoch, as the run logged it

    # Artifacts tab: the QA PNG is listed, and selecting it renders a loaded <img> preview.
    browser.get(f"{base_url}/#/experiments/{experiment_id}/runs/{run_id}/artifacts")
    folder = wait.until(ec.element_to_be_clickable((By.XPATH, _xpath_text("qa", exact=True))))
    folder.click()
    name = run["qa_png"]
    wait.until(ec.element_to_be_clickable((By.XPATH, _xpath_text(name, exact=True)))).click()
    image = wait.until(ec.presence_of_element_located((By.XPATH, f"//img[contains(@src, '{name}') or contains(@src, 'blob:')]")))
    wait.until(lambda driver: driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image))
    browser.save_screenshot(str(tmp_path / "artifact.png"))
    logger.info("QA preview <img src=%s>", image.get_attribute("src"))
    assert browser.execute_script("return arguments[0].naturalWidth", image) > 100


def test_training_runs_and_registered_model_shown(mlflow_server, browser, tmp_path):
    import mlflow

    base_url, run = mlflow_server
    experiment_id = mlflow.MlflowClient(base_url).get_experiment_by_name(run["experiment"]).experiment_id
    with _page_kept_on_failure(browser, tmp_path):
        _check_training_views(browser, base_url, experiment_id, run, tmp_path)


def _check_training_views(browser, base_url: str, experiment_id: str, run: dict, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, PAGE_WAIT_S)
    # A fresh browser opens MLflow 3.17 in its GenAI view; the experiment's side bar lists "Training runs"
    # because radmtl's run has a logged model as its output, and that view lists the run by its name.
    browser.get(f"{base_url}/#/experiments/{experiment_id}")
    link = wait.until(ec.element_to_be_clickable((By.XPATH, _xpath_text("Training runs", exact=True))))
    # A click through the script: the GenAI overview may open a "Detect Issues" popover over the page.
    browser.execute_script("arguments[0].click()", link)
    wait.until(ec.visibility_of_element_located((By.XPATH, _xpath_text(run["run_name"], exact=True))))
    browser.save_screenshot(str(tmp_path / "training_runs.png"))

    # The "Model training" view of the same experiment: the run by name, with its training dataset.
    browser.get(f"{base_url}/#/experiments/{experiment_id}/runs?workflowType=machine_learning")
    name = wait.until(ec.visibility_of_element_located((By.XPATH, _xpath_text(run["run_name"], exact=True))))
    row = name.find_element(By.XPATH, "./ancestor::*[contains(normalize-space(.), 'data_samples-training')][1]")
    assert "data_samples-training" in row.text
    browser.save_screenshot(str(tmp_path / "model_training_runs.png"))

    # The registered model: its version, with the alias radmtl set and the best epoch's metrics as tags.
    browser.get(f"{base_url}/#/models/{MODEL_NAME}")
    version = wait.until(ec.visibility_of_element_located(
        (By.XPATH, _xpath_text(f"Version {run['model_version']}", exact=True))))
    row = version.find_element(By.XPATH, "./ancestor::*[contains(normalize-space(.), 'radmtl.data_digest')][1]")
    assert "best" in row.text and "val_mae_hu" in row.text
    browser.save_screenshot(str(tmp_path / "registered_model.png"))
