"""What both end-to-end modules need to run the real stack: a deployment home its users can reach, and the
environment `mledge stack up` gets (free ports, only the test's own settings)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
# Settings of the developer's shell that would point the test's stack elsewhere.
DROPPED = ("MLFLOW_TRACKING_URI", "FLWR_HOME", "PYTHONPATH", "MLEDGE_AIRFLOW_DB_URL", "MLEDGE_PLATFORM_DB_URL",
           "MLEDGE_COST_DB_URL", "MLEDGE_DRIFT_SCHEDULE", "MLEDGE_PLATFORM_HOME", "MLEDGE_DATA_ROOT",
           "MLEDGE_SIMULATION_SITES")


@pytest.fixture(scope="module")
def deployment_home() -> Iterator[Path]:
    """A fresh MLEDGE_HOME outside pytest's tmp folders: those are private to root, and as root the stack runs
    the platform and each site as their own users, who must pass through it to their homes."""
    home = Path(tempfile.mkdtemp(prefix="mledge-e2e-"))
    os.chmod(home, 0o755)
    yield home
    shutil.rmtree(home, ignore_errors=True)


def stack_env(home: Path, ports: Mapping[str, int], **extra: str) -> dict[str, str]:
    """The environment of the test's `mledge` commands: the shell's, less what would point elsewhere."""
    env = {k: v for k, v in os.environ.items() if k not in DROPPED}
    env.update(
        MLEDGE_HOME=str(home),
        MLEDGE_AIRFLOW_PORT=str(ports["airflow"]),
        MLEDGE_MLFLOW_PORT=str(ports["mlflow"]),
        MLEDGE_SUPERLINK_PORT=str(ports["superlink"]),
        MLEDGE_FLEET_PORT=str(ports["fleet"]),
        MLEDGE_EDGE_PORT=str(ports["edge"]),
        MLEDGE_MLFLOW_GATEWAY_PORT=str(ports["mlflow_gateway"]),
        MLEDGE_SUPERNODE_PORT=str(ports["supernode"]),
        MLEDGE_VENVS=str(BIN.parent.parent),  # the environments of the interpreter running the tests
        **extra,
    )
    return env


def stack_ports(free_ports, start: int) -> dict[str, int]:
    """Free ports for one stack: Airflow, MLflow, the SuperLink, the three gateways, and three SuperNodes."""
    airflow, mlflow, superlink, fleet, edge, mlflow_gateway, supernode, *_ = free_ports(9, start=start)
    return {"airflow": airflow, "mlflow": mlflow, "superlink": superlink, "fleet": fleet, "edge": edge,
            "mlflow_gateway": mlflow_gateway, "supernode": supernode}


def run_mledge(env: Mapping[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "mledge"), *args], env=dict(env), capture_output=True, text=True,
                          timeout=timeout)
