"""The drift review and Costs pages in a real browser: headless Debian Chromium driven by Selenium 4.

A real stack (`mledge stack up` on free ports with its own MLEDGE_HOME, stopped by PID at the end) runs the
Airflow api-server with the MLEDGE plugin. Drift alerts come from the drift evaluation itself, run through the
`mledge drift` commands at plant_b after its scheduled onset; costs come from the shipped FOCUS sample exports.
Then, as a person would: log in as admin, open the drift review from the nav, approve an alert and see its
status change (on the page, in `mledge drift alerts --json`, and as an Airflow Asset event); the Costs page
shows its chart and a recommendation; the viewer sees the alerts but is refused when approving.

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

from mledge.ops.airflow_api import AirflowClient, password_for
from mledge.ops.stack import group_alive

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DRIFT_SITE = "plant_b"  # the default drift schedule shifts plant_b's process temperature from batch 5
COST_SOURCES = ("aws-focus-sample", "azure-focus-sample", "gcp-focus-sample")
COST_DAYS = ("2026-11-14", "2026-11-20")  # inside the shipped sample exports (2026-10-22 .. 2026-11-20)
WAIT_S = 90  # a page waits on one `mledge` command; two shared cores can make that slow


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
        return password_for(self.home / "secrets" / "airflow_passwords.json", user)

    def airflow(self, user: str = "admin") -> AirflowClient:
        return AirflowClient(self.url, user, self.password(user))

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-30:])
            for p in sorted((self.home / "logs").glob("*.log"))
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory, free_ports) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("mledge-ui-home")
    airflow_port, mlflow_port, superlink_port, *supernode_ports = free_ports(6, start=23000)
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "FLWR_HOME", "PYTHONPATH", "MLEDGE_AIRFLOW_DB_URL",
                        "MLEDGE_PLATFORM_DB_URL", "MLEDGE_COST_DB_URL", "MLEDGE_DRIFT_SCHEDULE")}
    env.update(
        MLEDGE_HOME=str(home),
        MLEDGE_AIRFLOW_PORT=str(airflow_port),
        MLEDGE_MLFLOW_PORT=str(mlflow_port),
        MLEDGE_SUPERLINK_PORT=str(superlink_port),
        MLEDGE_SUPERNODE_PORT=str(supernode_ports[0]),
    )
    platform = Stack(home, env, airflow_port)
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
def drift_alerts(stack) -> list[dict]:
    """The drift evaluation at plant_b over two batches after its onset, step by step as the DAG runs it."""
    for _ in range(2):
        stack.json("drift", "collect", "--site", DRIFT_SITE)
    stack.json("db", "migrate")
    for step in (["check-unprocessed"], ["simulate", "--simulations", "200"], ["p-value"], ["decide"]):
        stack.json("drift", *step, "--site", DRIFT_SITE)
    alerts = [a for a in stack.json("drift", "alerts", "--json") if a["decision"] == "drift"]
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
