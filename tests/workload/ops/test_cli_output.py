"""``mledge``'s answers: JSON for machines (pipes, ``--json``), tables for people (a terminal, ``--table``), and
``--help`` pages with defaults, choices and examples.

The real program runs on a temporary MLEDGE_HOME with site stores from ``mledge data init`` and a SQLite MLflow
registry holding a model version written by MLflow's own client; "a terminal" is a real pseudo-terminal.
"""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

import pytest

MLEDGE = str(Path(sys.executable).parent / "mledge")


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([MLEDGE, *args], env=env, capture_output=True, text=True, timeout=600)


def run_in_terminal(*args: str, env: dict[str, str]) -> str:
    """What ``mledge`` prints when its stdout is a terminal (stderr, its log, goes elsewhere)."""
    leader, follower = pty.openpty()
    process = subprocess.Popen([MLEDGE, *args], env={**env, "COLUMNS": "200"}, stdout=follower,
                               stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], 600)
        if not ready:
            process.kill()
            raise TimeoutError(f"mledge {' '.join(args)} printed nothing for 600 s")
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the program ended
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=60) == 0
    return b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> dict[str, str]:
    import mlflow

    home = tmp_path_factory.mktemp("mledge-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLEDGE_", "MLFLOW_", "FLWR_"))}
    env.update(MLEDGE_HOME=str(home), MLFLOW_TRACKING_URI=f"sqlite:///{home / 'mlflow.db'}",
               MLEDGE_PLATFORM_DB_URL=f"sqlite:///{home / 'platform.db'}",
               MLEDGE_TLS="off",  # no CA in this home: the status probes speak plain HTTP on loopback
               MLEDGE_AIRFLOW_PORT="1")  # no Airflow here: its absence is reported, not waited for
    assert run("data", "init", "--batches", "2", env=env).returncode == 0
    assert run("db", "migrate", env=env).returncode == 0
    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    run_id = client.create_run(client.create_experiment("axis_failures-federated")).info.run_id
    client.create_registered_model("global-axis_failures-federated")
    version = client.create_model_version(
        "global-axis_failures-federated", f"runs:/{run_id}/model", run_id=run_id,
        tags={"mledge.flower_run_id": "77", "mledge.dag_run_id": "manual__x", "mledge.promotion_reason": "first one"})
    client.set_registered_model_alias("global-axis_failures-federated", "champion", version.version)
    return env


def table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("│")]


def test_status_prints_json_when_piped_and_the_same_facts_as_tables(home):
    from mledge.cli import build_parser, output

    done = run("status", env=home)
    assert done.returncode == 0, done.stderr[-2000:]
    status = json.loads(done.stdout)  # piped: JSON, as before

    screen = io.StringIO()
    output.emit(status, build_parser().parse_args(["--table", "status"]), screen)
    text = screen.getvalue()
    assert not text.lstrip().startswith("{")
    rows = table_lines(text)
    for site in status["sites"]:
        (row,) = [r for r in rows if f"│ {site['site']} " in r]
        cells = [c.strip() for c in row.strip("│").split("│")]
        assert cells[:3] == [site["site"], str(site["batches"]), "not connected"]
        assert cells[6] == site["edge_worker"]["state"] == "never registered"
    (model,) = status["registered_models"]
    (version,) = model["versions"]
    (row,) = [r for r in rows if model["name"] in r]
    assert [c.strip() for c in row.strip("│").split("│")] == [
        model["name"], str(version["version"]), "champion", "77", "manual__x", "first one"]
    for name, component in status["components"].items():
        assert any(f"│ {name} " in r and f"│ {component['side']} " in r for r in rows), name
    assert f"SuperLink {status['superlink']['address']}: 0 node(s) online" in text
    assert status["superlink"]["error"].split("\n")[0][:40] in " ".join(text.split())
    assert status["edge_workers_error"][:40] in text
    for url in status["urls"].values():
        assert url in text


def test_a_terminal_gets_a_table_unless_json_is_asked_for(home):
    shown = run_in_terminal("drift", "alerts", env=home)
    assert "\x1b[" in shown  # styled: rich saw a terminal
    plain = re.sub(r"\x1b\[[0-9;]*m", "", shown)
    assert "Drift alerts (0)" in plain and "┃ Id " in plain
    assert run_in_terminal("--json", "drift", "alerts", env=home).strip() == "[]"
    assert run_in_terminal("drift", "alerts", "--json", env=home).strip() == "[]"
    assert run("drift", "alerts", env=home).stdout.strip() == "[]"  # piped
    assert "Drift alerts (0)" in run("--table", "drift", "alerts", env=home).stdout
    # A command without a table prints its JSON in a terminal too.
    sites = re.sub(r"\x1b\[[0-9;]*m", "", run_in_terminal("drift", "sites", env=home))
    assert json.loads(sites) == ["plant_a", "plant_b", "plant_c"]


def test_console_federation_json_and_table(home):
    from mledge.cli import build_parser, output

    done = run("console", "federation", "--runs", "3", env=home)
    assert done.returncode == 0, done.stderr[-2000:]
    document = json.loads(done.stdout)
    assert [s["site"] for s in document["sites"]] == ["plant_a", "plant_b", "plant_c"]
    assert [s["last_batch"] for s in document["sites"]] == ["batch-000002"] * 3
    assert document["min_clients"] == 3 and document["summary"]["can_train"] is False
    assert {k: str(v) for k, v in document["models"]["global"]["aliases"].items()} == {"champion": "1"}
    assert document["runs"][0]["rounds"] == {"global": [], "sites": {}}  # a run that logged no round yet
    screen = io.StringIO()
    output.emit(document, build_parser().parse_args(["--table", "console", "federation"]), screen)
    text = screen.getvalue()
    assert "0 of 3 SuperNodes connected, at least 3 needed to train: cannot train now" in text
    for site in document["sites"]:
        (row,) = [r for r in table_lines(text) if f"│ {site['site']} " in r]
        assert "batch-000002" in row and "no champion model" in row


def test_help_lists_choices_defaults_and_examples(home):
    fl_start = run("fl", "start", "--help", env=home).stdout
    assert "--strategy {mledge-robust,fedavg,krum," in fl_start and "(default: fedavg)" in fl_start
    assert "--rounds ROUNDS       default: 30" in fl_start
    assert "--model-family {mlp,xgboost}" in fl_start and "(default: xgboost)" in fl_start
    status = run("status", "--help", env=home).stdout
    assert "examples:" in status and "mledge status --json" in status
    federation = run("console", "federation", "--help", env=home).stdout
    assert "(default: 5)" in federation and "mledge console federation --json" in federation
    top = run("--help", env=home).stdout
    assert "--json" in top and "--table" in top and "a table when stdout is a terminal, else JSON" in top
