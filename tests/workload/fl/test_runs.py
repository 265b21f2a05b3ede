"""Driving the flwr CLI: run-config syntax, and the node/run queries against a real Flower SuperLink."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import tomllib

import pytest
from flwr.common.config import parse_config_args

from fl.runs import FLOWER_APP, FlowerError, online_nodes, run_config_arg, run_info, wait_for_nodes

CONNECTION = "t"


def test_run_config_arg_is_toml_pairs():
    values = {"num-server-rounds": 3, "learning-rate": 0.005, "experiment": "axis_failures-federated", "flag": True}
    arg = run_config_arg(values)
    assert arg.split(" ") == [
        "num-server-rounds=3",
        "learning-rate=0.005",
        'experiment="axis_failures-federated"',
        "flag=true",
    ]
    assert tomllib.loads("\n".join(arg.split(" "))) == values


def test_run_config_arg_round_trips_through_flowers_parser():
    values = {
        "num-server-rounds": 2,
        "reply-timeout-s": 300.0,
        "seed": 0,
        "dag-run-id": "manual__2026-01-01T00:00:00+00:00",
        "experiment": "axis failures (test)",
        "registered-model": "global-axis_failures-federated",
        "note": "",
    }
    parsed = parse_config_args([run_config_arg(values)])
    assert parsed == values
    assert isinstance(parsed["reply-timeout-s"], float) and isinstance(parsed["seed"], int)


def test_run_config_defaults_of_the_flower_app_are_complete():
    project = tomllib.loads((FLOWER_APP / "pyproject.toml").read_text())
    config = project["tool"]["flwr"]["app"]["config"]
    needed = {"num-server-rounds", "local-epochs", "learning-rate", "min-nodes", "min-replies", "reply-timeout-s"}
    assert needed <= set(config)
    assert project["tool"]["flwr"]["app"]["components"] == {
        "serverapp": "fl.serverapp:app",
        "clientapp": "fl.clientapp:app",
    }


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"flower-superlink did not listen on port {port} within {timeout:.0f}s")


@pytest.fixture(scope="module")
def superlink(tmp_path_factory, bin_dir, free_port):
    """A real SuperLink on a free local port, TLS on as in the stack, and a FLWR_HOME whose default connection
    "t" points at it and verifies its certificate."""
    from mledge.security.pki import ensure_tls, flwr_connection_toml, superlink_tls_args

    root = tmp_path_factory.mktemp("superlink")
    home = root / "flwr-home"
    home.mkdir()
    port = free_port()
    tls = ensure_tls(root / "secrets")
    (home / "config.toml").write_text(flwr_connection_toml(CONNECTION, f"127.0.0.1:{port}", tls))
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "FLWR_HOME": str(home)}
    log = (root / "superlink.log").open("wb")
    process = subprocess.Popen(
        [
            str(bin_dir / "flower-superlink"),
            *superlink_tls_args(tls),
            "--disable-runtime-dependency-installation",
            "--database",
            str(root / "sl.db"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        _wait_for_port(port, process, timeout=60)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("FLWR_HOME", str(home))
            yield {"flwr": str(bin_dir / "flwr"), "port": port}
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        log.close()


def test_no_nodes_are_online_on_a_fresh_superlink(superlink):
    assert online_nodes(CONNECTION, flwr_bin=superlink["flwr"]) == []


def test_waiting_for_nodes_times_out_saying_how_many_came(superlink):
    start = time.monotonic()
    with pytest.raises(TimeoutError) as err:
        wait_for_nodes(min_nodes=1, timeout=3, connection=CONNECTION, flwr_bin=superlink["flwr"], poll_s=0.5)
    assert "only 0 of the 1 required SuperNodes" in str(err.value)
    assert "within 3s" in str(err.value)
    assert time.monotonic() - start >= 3


def test_an_unknown_run_is_a_flower_error(superlink):
    with pytest.raises(FlowerError) as err:
        run_info("123456789", CONNECTION, flwr_bin=superlink["flwr"])
    assert "flwr ls --run-id 123456789" in str(err.value)
    assert "not found" in str(err.value).lower()
