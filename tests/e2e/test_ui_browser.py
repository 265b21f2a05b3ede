"""The Federation, Drift review and Costs pages in a real browser: headless Debian Chromium driven by Selenium 4.

A real stack (`mledge stack up` on free ports with its own MLEDGE_HOME, stopped by PID at the end) runs the
Airflow api-server with the MLEDGE plugin. Drift alerts come from the drift evaluation itself, run through the
`mledge drift` commands at plant_b after its scheduled onset; costs come from the shipped FOCUS sample exports; a
training run with its per-round metrics is written to the stack's MLflow as the platform identity, as the
ServerApp writes it. Then, as a person would: log in as admin, open the drift review from the nav, approve an
alert and see its status change (on the page, in `mledge drift alerts --json`, and as an Airflow Asset event); the
Costs page shows its chart and a recommendation; the viewer sees the alerts but is refused when approving; and the
three pages, in Airflow's light and dark mode, show their content in Airflow's own colours, with a screenshot of
each saved under ``MLEDGE_SCREENSHOTS`` (else the test's tmp folder; the path is printed).

Needs /usr/bin/chromium and /usr/bin/chromedriver (`.ci/install-browser`) and `selenium` in the workload env.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import stack_env, stack_ports

from mledge.ops.airflow_api import AirflowClient, password_for
from mledge.ops.processes import group_alive

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DRIFT_SITE = "plant_b"  # the default drift schedule shifts plant_b's process temperature from batch 5
COST_SOURCES = ("aws-focus-sample", "azure-focus-sample", "gcp-focus-sample")
COST_DAYS = ("2026-11-14", "2026-11-20")  # inside the shipped sample exports (2026-10-22 .. 2026-11-20)
WAIT_S = 240  # a page waits on `mledge` (Federation: status with two `flwr` calls); two shared cores are slow


class Stack:
    def __init__(self, home: Path, env: dict[str, str], airflow_port: int) -> None:
        self.home, self.env = home, env
        self.url = f"http://127.0.0.1:{airflow_port}"

    def mledge(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "mledge"), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def json(self, *args: str) -> dict | list:
        done = self.mledge(*args)
        assert done.returncode == 0, f"mledge {' '.join(args)} failed:\n{done.stderr[-3000:]}"
        return json.loads(done.stdout)

    def password(self, user: str) -> str:
        return password_for(self.home / "platform" / "secrets" / "airflow_passwords.json", user)

    def airflow(self, user: str = "admin") -> AirflowClient:
        return AirflowClient(self.url, user, self.password(user))

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-30:])
            for p in sorted((self.home / "logs").glob("*.log"))
        )


@pytest.fixture(scope="module")
def stack(deployment_home, free_ports) -> Iterator[Stack]:
    home = deployment_home
    ports = stack_ports(free_ports, start=23000)
    # A drift the data tests see without a champion (this stack trains none): plant_b's temperature sensors read
    # 4 K high from batch 5 (the default 1.5 K is left to the concept test, which needs a production model).
    schedule = home / "drift-schedule.json"
    schedule.write_text(json.dumps({"drifts": [
        {"site": DRIFT_SITE, "onset_batch": 5, "kind": "sensor_offset", "offset_k": 4.0}]}))
    schedule.chmod(0o644)  # read by the site's own user
    env = stack_env(
        home, ports, MLEDGE_DRIFT_SCHEDULE=str(schedule),
        # Only the test's own commands run: the scheduled collection and evaluation wait for New Year.
        MLEDGE_COLLECTION_SCHEDULE="0 0 1 1 *", MLEDGE_DRIFT_SCHEDULE_CRON="0 0 1 1 *",
        MLEDGE_TLS="off",  # loopback only: the browser reaches Airflow over plain HTTP, trusting no local CA
    )
    platform = Stack(home, env, ports["airflow"])
    pids: dict[str, int] = {}
    try:
        up = platform.mledge("stack", "up", "--batches", "4", timeout=600)
        assert up.returncode == 0, f"stack up failed:\n{up.stderr[-3000:]}\n{platform.logs()}"
        pids = json.loads(up.stdout)
        yield platform
    finally:
        down = platform.mledge("stack", "down")
        assert down.returncode == 0, down.stderr
    for name, pid in pids.items():  # every process group the stack started is gone
        assert not group_alive(pid), name


@pytest.fixture(scope="module")
def drift_evaluated(stack) -> list[dict]:
    """The drift evaluation at plant_b over two batches after its onset, step by step as the DAG runs it: every
    evaluation it recorded."""
    for _ in range(2):
        stack.json("drift", "collect", "--site", DRIFT_SITE)
    stack.json("db", "migrate")
    # As the DAG runs it: the platform's state to the site, the site's statistics to the platform, and back.
    site = ["--site", DRIFT_SITE]
    state = json.dumps(stack.json("drift", "state", *site))
    for step in (["check-unprocessed", "--state", state], ["simulate", "--simulations", "200", "--state", state],
                 ["p-value"]):
        stack.json("drift", *step, *site)
    measured = json.dumps(stack.json("drift", "measurements", *site, "--state", state))
    decided = json.dumps(stack.json("drift", "decide", *site, "--measurements", measured))
    stack.json("drift", "publish", *site, "--decision", decided)
    evaluations = stack.json("drift", "alerts", "--json")
    assert [a for a in evaluations if a["site"] == DRIFT_SITE], evaluations
    return evaluations


@pytest.fixture(scope="module")
def drift_alerts(stack, drift_evaluated) -> list[dict]:
    """The confirmed drift of that evaluation (new alerts to review)."""
    alerts = [a for a in drift_evaluated if a["decision"] == "drift"]
    assert len([a for a in alerts if a["site"] == DRIFT_SITE and a["status"] == "new"]) >= 2, alerts
    # The Asset an approval emits exists once the dag-processor has parsed federated_training.
    stack.airflow().wait_for_dag("federated_training", timeout=180)
    return alerts


@pytest.fixture(scope="module")
def costs(stack) -> dict:
    stack.json("costs", "catalog", "seed")
    end = (date.fromisoformat(COST_DAYS[1]) + timedelta(days=1)).isoformat()  # the CLI's --to is exclusive
    for source in COST_SOURCES:
        stack.json("costs", "ingest", "--source", source, "--from", COST_DAYS[0], "--to", end)
    return stack.json("costs", "report", "--project", "axis_failures", "--from", COST_DAYS[0], "--to", end)


@pytest.fixture(scope="module")
def driver():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("Chromium and chromedriver are missing: run .ci/install-browser")
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not try to download a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,1000"):
        options.add_argument(argument)
    browser = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield browser
    finally:
        browser.quit()


def wait(driver, timeout: float = WAIT_S):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout)


def login(driver, stack: Stack, user: str, next_path: str = "/") -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    driver.delete_all_cookies()
    driver.get(f"{stack.url}/auth/login?next={quote(next_path)}")
    wait(driver).until(ec.presence_of_element_located((By.NAME, "username"))).send_keys(user)
    driver.find_element(By.NAME, "password").send_keys(stack.password(user))
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(driver).until(lambda d: "/auth/login" not in d.current_url)


def open_from_nav(driver, url_route: str) -> None:
    """Click the plugin's entry in Airflow's nav and switch into the frame that shows the page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    driver.switch_to.default_content()
    wait(driver).until(ec.element_to_be_clickable((By.CSS_SELECTOR, f"a[href$='/plugin/{url_route}']"))).click()
    wait(driver).until(ec.frame_to_be_available_and_switch_to_it((By.CSS_SELECTOR, "iframe")))


def alert_row(driver, alert_id: int):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, f"alert-{alert_id}")


def test_admin_approves_an_alert_from_the_review_page(stack, drift_alerts, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    login(driver, stack, "admin")
    open_from_nav(driver, "mledge-drift")
    wait(driver).until(ec.presence_of_element_located((By.ID, "alerts")))
    shown = {int(r.get_attribute("data-alert-id")) for r in driver.find_elements(By.CSS_SELECTOR, "tr[data-alert-id]")}
    assert {a["id"] for a in drift_alerts} <= shown

    target = min(a["id"] for a in drift_alerts if a["site"] == DRIFT_SITE and a["status"] == "new")
    row = alert_row(driver, target)
    assert row.get_attribute("data-status") == "new"
    assert "Evidently report" in row.text and f"{DRIFT_SITE}-axis_failures-federated" in row.text
    row.find_element(By.CSS_SELECTOR, "button.act-approve").click()

    notice = wait(driver).until(ec.presence_of_element_located((By.ID, "mledge-notice")))
    assert f"Alert {target} approved for retraining." in notice.text
    assert "mledge://axis_failures/drift" in notice.text
    assert "federated_training" in notice.text  # the DAG scheduled on the Asset: queued, or named as paused
    assert alert_row(driver, target).get_attribute("data-status") == "retraining"

    (alert,) = [a for a in stack.json("drift", "alerts", "--json") if a["id"] == target]
    assert (alert["status"], alert["updated_by"]) == ("retraining", "admin")
    events = stack.airflow().session.get(f"{stack.url}/api/v2/assets/events", params={"limit": 100}, timeout=30)
    events.raise_for_status()
    mine = [e for e in events.json()["asset_events"] if (e.get("extra") or {}).get("alert_id") == target]
    assert len(mine) == 1, events.json()
    assert mine[0]["extra"]["requested_by"] == "admin" and mine[0]["extra"]["site"] == DRIFT_SITE


def test_costs_page_renders_the_chart_and_a_recommendation(stack, costs, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    login(driver, stack, "admin")
    open_from_nav(driver, "mledge-costs")
    wait(driver).until(ec.presence_of_element_located((By.ID, "recommend-form")))
    # The sample exports are dated: show their days (the page defaults to the last 30 days up to today).
    driver.execute_script(
        "location.search = arguments[0]", f"?project=axis_failures&from={COST_DAYS[0]}&until={COST_DAYS[1]}"
    )
    chart = wait(driver).until(ec.presence_of_element_located((By.ID, "cost-chart")))
    wait(driver).until(lambda d: d.execute_script("return arguments[0].complete", chart))
    assert driver.execute_script("return arguments[0].naturalWidth", chart) > 0  # the SVG decoded and drew
    providers = driver.find_element(By.ID, "by-provider").text
    assert all(provider in providers for provider in costs["by_provider"]), providers
    assert len(costs["by_provider"]) == 3

    form = driver.find_element(By.ID, "recommend-form")
    for name, value in {"vcpus": "8", "memory_gib": "32", "gpus": "1", "gpu_class": "T4", "hours": "10"}.items():
        field = form.find_element(By.NAME, name)
        field.clear()
        field.send_keys(value)
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(driver).until(ec.presence_of_element_located((By.ID, "offers")))
    offers = driver.find_elements(By.CSS_SELECTOR, "#offers tr.offer")
    expected = stack.json("costs", "recommend", "--vcpus", "8", "--memory-gib", "32", "--gpus", "1",
                          "--gpu-class", "T4", "--hours", "10")
    assert [o.find_elements(By.TAG_NAME, "td")[1].text for o in offers] == [o["provider"] for o in expected["offers"]]
    assert offers


def test_viewer_sees_the_alerts_but_cannot_approve(stack, drift_alerts, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    before = {a["id"]: a for a in stack.json("drift", "alerts", "--json")}
    target = max(a["id"] for a in before.values() if a["site"] == DRIFT_SITE and a["status"] == "new")
    login(driver, stack, "viewer", next_path=f"/mledge/drift?site={DRIFT_SITE}")
    wait(driver).until(ec.presence_of_element_located((By.ID, f"alert-{target}")))
    assert "may not" in driver.find_element(By.ID, "read-only-note").text
    button = alert_row(driver, target).find_element(By.CSS_SELECTOR, "button.act-approve")
    assert not button.is_enabled()

    # Past the disabled button, the server itself refuses: the same form, sent with the viewer's session.
    driver.execute_script("arguments[0].disabled = false", button)
    button.click()
    error = wait(driver).until(ec.presence_of_element_located((By.CSS_SELECTOR, ".notice.error")))
    assert "viewer may not approve retraining" in error.text
    assert alert_row(driver, target).get_attribute("data-status") == "new"
    after = {a["id"]: a for a in stack.json("drift", "alerts", "--json")}
    assert after[target]["status"] == "new" and after[target]["updated_by"] == before[target]["updated_by"]


# --- the three pages in light and dark mode ------------------------------------------------------------------

ROUNDS = {"eval_f1": [0.31, 0.52, 0.64], "plant_a/eval_f1": [0.35, 0.55, 0.70], "plant_b/eval_f1": [0.20, 0.41, 0.58],
          "plant_c/eval_f1": [0.33, 0.57, 0.62]}
TRAINING_RUN = """
import json, os, sys
import mlflow
from mledge.contracts import EXPERIMENT, TAG_DAG_RUN, TAG_FLOWER_RUN, TAG_STRATEGY
from mledge.ops.settings import Settings
from mledge.security import mlflow_auth

settings = Settings()
os.environ.update(mlflow_auth.client_env(settings, "platform"))
client = mlflow.MlflowClient(tracking_uri=settings.mlflow_uri)
found = client.get_experiment_by_name(EXPERIMENT)
experiment = found.experiment_id if found else client.create_experiment(EXPERIMENT)
tags = {TAG_FLOWER_RUN: "777", TAG_DAG_RUN: "manual__2026-11-20T09:00:00+00:00", TAG_STRATEGY: "fedavg"}
run_id = client.create_run(experiment, run_name="flower-run-777", tags=tags).info.run_id
for key, values in json.loads(sys.argv[1]).items():
    for step, value in enumerate(values, start=1):
        client.log_metric(run_id, key, value, step=step)
client.set_terminated(run_id)
print(run_id)
"""
# JS, run inside the page's frame: its theme, its background and Airflow's (as RGB, whatever notation each uses).
THEME = """
function rgb(colour) {
  var pen = document.createElement("canvas").getContext("2d");
  pen.fillStyle = colour; pen.fillRect(0, 0, 1, 1);
  return Array.prototype.slice.call(pen.getImageData(0, 0, 1, 1).data, 0, 3);
}
var airflow = window.parent.getComputedStyle(window.parent.document.documentElement);
return {
  theme: document.documentElement.getAttribute("data-theme"),
  tokens: Number(document.documentElement.getAttribute("data-airflow-tokens")),
  airflowDark: window.parent.document.documentElement.classList.contains("dark"),
  background: rgb(getComputedStyle(document.body).backgroundColor),
  airflowBackground: rgb(airflow.getPropertyValue("--chakra-colors-bg").trim()),
  font: getComputedStyle(document.body).fontFamily,
  airflowFont: airflow.getPropertyValue("--chakra-fonts-body").trim(),
  text: rgb(getComputedStyle(document.body).color),
};
"""


@pytest.fixture(scope="module")
def training_run(stack) -> str:
    done = subprocess.run([str(BIN / "python"), "-c", TRAINING_RUN, json.dumps(ROUNDS)], env=stack.env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("MLEDGE_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"screenshots: {folder}")
    return folder


def luminance(rgb: list[int]) -> float:
    return (0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]) / 255


def set_theme(driver, stack: Stack, mode: str) -> None:
    """Airflow's own switch keeps the choice in localStorage "theme" (next-themes); a reload applies it."""
    driver.switch_to.default_content()
    driver.execute_script("window.localStorage.setItem('theme', arguments[0])", mode)
    driver.get(f"{stack.url}/")
    wait(driver).until(lambda d: d.execute_script(
        "return document.documentElement.classList.contains(arguments[0])", mode))


def snapshot(driver, path: Path) -> None:
    """A screenshot of the whole window (Airflow around the page), taken before the page's content is checked."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    driver.switch_to.default_content()
    driver.save_screenshot(str(path))
    wait(driver).until(ec.frame_to_be_available_and_switch_to_it((By.CSS_SELECTOR, "iframe")))


def check_theme(driver, mode: str) -> dict:
    found = driver.execute_script(THEME)
    assert found["theme"] == mode and found["airflowDark"] == (mode == "dark"), found
    assert found["tokens"] > 5, found  # Airflow's variables were read and copied
    assert found["background"] == found["airflowBackground"], found  # Airflow's own background colour
    assert (luminance(found["background"]) < 0.3) if mode == "dark" else (luminance(found["background"]) > 0.85)
    assert abs(luminance(found["text"]) - luminance(found["background"])) > 0.5, found  # readable
    assert found["airflowFont"] and found["font"].split(",")[0] == found["airflowFont"].split(",")[0], found
    return found


@pytest.mark.parametrize("mode", ["light", "dark"])
def test_pages_in_light_and_dark_mode(stack, drift_evaluated, costs, training_run, driver, screenshots, mode):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    login(driver, stack, "admin")
    set_theme(driver, stack, mode)

    open_from_nav(driver, "mledge-federation")
    wait(driver).until(ec.presence_of_element_located((By.ID, "sites")))
    snapshot(driver, screenshots / f"federation-{mode}.png")
    check_theme(driver, mode)
    status = stack.json("console", "federation", "--json")
    rows = {r.get_attribute("data-site"): r for r in driver.find_elements(By.CSS_SELECTOR, "#sites tbody tr")}
    assert list(rows) == [s["site"] for s in status["sites"]] == ["plant_a", "plant_b", "plant_c"]
    for site in status["sites"]:
        row = rows[site["site"]]
        assert row.get_attribute("data-supernode") == "connected", row.text
        if site["last_evaluated_batch"]:  # the store itself is the site's: the platform knows what it evaluated
            assert site["last_evaluated_batch"] in row.text
        assert ("not registered" in row.text) is not site["registered"]
        assert row.get_attribute("data-requires-training") == ("yes" if site["requires_training"] else "no")
        assert [a.text for a in row.find_elements(By.CSS_SELECTOR, ".open-alerts a")] == [
            f"#{a['id']}" for a in site["open_drift_alerts"]]
    assert "3 / 3" in driver.find_element(By.ID, "card-connected").text
    assert "can train" in driver.find_element(By.ID, "card-connected").text
    run = driver.find_element(By.ID, f"run-{training_run}")
    assert run.find_element(By.CSS_SELECTOR, "a.dag-run-link").get_attribute("target") == "_top"
    assert training_run in run.find_element(By.CSS_SELECTOR, "a.mlflow-run-link").get_attribute("href")
    chart = run.find_element(By.CSS_SELECTOR, "svg.chart-svg")
    assert chart.size["width"] > 200 and chart.size["height"] > 80  # drawn
    series = [g.get_attribute("data-series") for g in run.find_elements(By.CSS_SELECTOR, "g.series")]
    assert series == ["plant_a", "plant_b", "plant_c", "global"]
    line = run.find_element(By.CSS_SELECTOR, "g.series-global polyline")
    stroke = driver.execute_script("return getComputedStyle(arguments[0]).stroke", line)
    text = driver.execute_script("return getComputedStyle(document.body).color")
    assert stroke == text  # the global line is drawn in the theme's text colour

    open_from_nav(driver, "mledge-drift")
    wait(driver).until(ec.presence_of_element_located((By.ID, "timelines")))
    snapshot(driver, screenshots / f"drift-{mode}.png")
    check_theme(driver, mode)
    assert driver.find_element(By.ID, "decision-filter").get_attribute("value") == "drift"
    decisions = {r.find_elements(By.TAG_NAME, "td")[6].text for r in driver.find_elements(By.CSS_SELECTOR,
                                                                                            "tr[data-alert-id]")}
    confirmed = {a["id"] for a in stack.json("drift", "alerts", "--json") if a["decision"] == "drift"}
    assert decisions <= {"drift"}  # it opens on confirmed drift, not every clean evaluation
    assert {int(r.get_attribute("data-alert-id")) for r in driver.find_elements(By.CSS_SELECTOR,
                                                                              "tr[data-alert-id]")} == confirmed
    timeline = driver.find_element(By.CSS_SELECTOR, f"figure.timeline[data-site='{DRIFT_SITE}'] svg")
    assert timeline.size["width"] > 200
    marks = {int(m.get_attribute("data-alert-id")): m.get_attribute("data-decision")
             for m in timeline.find_elements(By.CSS_SELECTOR, ".mark")}
    assert marks == {a["id"]: a["decision"] for a in drift_evaluated
                     if a["site"] == DRIFT_SITE and a["p_value"] is not None}

    open_from_nav(driver, "mledge-costs")
    wait(driver).until(ec.presence_of_element_located((By.ID, "recommend-form")))
    driver.execute_script(
        "location.search = arguments[0]", f"?project=axis_failures&from={COST_DAYS[0]}&until={COST_DAYS[1]}"
    )
    wait(driver).until(ec.presence_of_element_located((By.ID, "by-provider")))
    snapshot(driver, screenshots / f"costs-{mode}.png")
    check_theme(driver, mode)
    providers = driver.find_element(By.ID, "by-provider").text
    assert all(provider in providers for provider in costs["by_provider"]), providers
    for page in ("federation", "drift", "costs"):
        assert (screenshots / f"{page}-{mode}.png").stat().st_size > 10_000
