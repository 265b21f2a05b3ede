"""Where MLEDGE keeps its state and which ports its local stack uses; all from the environment, with defaults.

| variable                | default                 | meaning                                               |
|-------------------------|-------------------------|-------------------------------------------------------|
| MLEDGE_HOME             | <repo>/.state           | data, databases, logs, PID files, secrets             |
| MLEDGE_VENVS            | <repo>/.venvs           | the orchestrator and workload environments            |
| MLEDGE_AIRFLOW_PORT     | 8080                    | Airflow api-server (UI and REST API)                  |
| MLEDGE_MLFLOW_PORT      | mlflow/server.toml, 5000| MLflow tracking server                                |
| MLEDGE_SUPERLINK_PORT   | 9091                    | Flower SuperLink (Fleet, Control, Runtime APIs)       |
| MLEDGE_SUPERNODE_PORT   | 9094                    | first SuperNode's runtime port; one more per site     |
| MLEDGE_AIRFLOW_DB_URL   | SQLite in MLEDGE_HOME   | Airflow metadata database (e.g. postgresql+psycopg2://)|
| MLEDGE_BIND_HOST        | 127.0.0.1               | address the SuperLink, MLflow and Airflow listen on   |
| MLEDGE_SUPERLINK_ADDRESS| 127.0.0.1:<port>        | where SuperNodes and the flwr CLI reach the SuperLink |
| MLEDGE_SUPERLINK_HOSTNAMES | (none)               | extra names in the SuperLink's TLS certificate        |
| MLEDGE_MLFLOW_URL       | http://127.0.0.1:<port> | where mledge reaches the tracking server              |
| MLEDGE_AIRFLOW_URL      | http://127.0.0.1:<port> | where mledge and tasks reach Airflow's api-server     |
| MLEDGE_MLFLOW_BACKEND_STORE_URI | mlflow/server.toml | MLflow's tracking store (e.g. postgresql+psycopg2://) |
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from mledge.contracts import REPO, SITES, mledge_home, platform_db_url


def _port(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if not value:
        return default
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ValueError(f"{name}={value!r} is not a TCP port")
    return int(value)


def mlflow_server_config(repo: Path = REPO) -> dict:
    return tomllib.loads((repo / "mlflow" / "server.toml").read_text())


@dataclass(frozen=True)
class Settings:
    repo: Path = REPO
    home: Path = field(default_factory=mledge_home)
    venvs: Path = field(default_factory=lambda: Path(os.environ.get("MLEDGE_VENVS") or REPO / ".venvs").resolve())
    airflow_port: int = field(default_factory=lambda: _port("MLEDGE_AIRFLOW_PORT", 8080))
    mlflow_port: int = field(
        default_factory=lambda: _port("MLEDGE_MLFLOW_PORT", int(mlflow_server_config()["server"]["port"]))
    )
    superlink_port: int = field(default_factory=lambda: _port("MLEDGE_SUPERLINK_PORT", 9091))
    supernode_port: int = field(default_factory=lambda: _port("MLEDGE_SUPERNODE_PORT", 9094))
    airflow_db_url: str | None = field(default_factory=lambda: os.environ.get("MLEDGE_AIRFLOW_DB_URL") or None)
    # Containers listen on every interface and reach each other by service name; the local stack stays on loopback.
    bind_host: str = field(default_factory=lambda: os.environ.get("MLEDGE_BIND_HOST") or "127.0.0.1")
    sites: tuple[str, ...] = SITES

    @property
    def data_root(self) -> Path:
        return self.home / "sites"

    def site_store(self, site: str) -> Path:
        return self.data_root / site

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def secrets(self) -> Path:
        return self.home / "secrets"

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def flwr_home(self) -> Path:
        return self.home / "flwr"

    @property
    def mlflow_uri(self) -> str:
        return os.environ.get("MLEDGE_MLFLOW_URL") or f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def airflow_url(self) -> str:
        return os.environ.get("MLEDGE_AIRFLOW_URL") or f"http://127.0.0.1:{self.airflow_port}"

    @property
    def superlink_address(self) -> str:
        return os.environ.get("MLEDGE_SUPERLINK_ADDRESS") or f"127.0.0.1:{self.superlink_port}"

    def bin(self, env: str, program: str) -> Path:
        return self.venvs / env / "bin" / program

    @property
    def flwr_bin(self) -> str:
        """The workload environment's ``flwr`` CLI, else ``flwr`` on PATH (containers)."""
        path = self.bin("workload", "flwr")
        return str(path) if path.exists() else "flwr"

    @property
    def platform_db_url(self) -> str:
        return platform_db_url(self.home)
