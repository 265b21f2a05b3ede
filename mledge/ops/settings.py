"""Where MLEDGE keeps its state and which ports its local stack uses; all from the environment, with defaults.

| variable                | default                 | meaning                                               |
|-------------------------|-------------------------|-------------------------------------------------------|
| MLEDGE_HOME             | <repo>/.state           | this deployment's state: platform/, sites/, logs, PIDs|
| MLEDGE_PLATFORM_HOME    | $MLEDGE_HOME/platform   | the platform's home: databases, secrets, Airflow, MLflow|
| MLEDGE_DATA_ROOT        | $MLEDGE_HOME/sites      | where each site's home is: <root>/<site> (its store, keys)|
| MLEDGE_VENVS            | <repo>/.venvs           | the orchestrator and workload environments            |
| MLEDGE_AIRFLOW_PORT     | 8080                    | Airflow api-server (UI and REST API)                  |
| MLEDGE_MLFLOW_PORT      | mlflow/server.toml, 5000| MLflow tracking server                                |
| MLEDGE_SUPERLINK_PORT   | 9091                    | Flower SuperLink (all its APIs; the platform side only)|
| MLEDGE_FLEET_PORT       | 9092                    | the Fleet gateway: what SuperNodes connect to         |
| MLEDGE_EDGE_PORT        | 8081                    | the Edge gateway: what edge workers connect to        |
| MLEDGE_MLFLOW_GATEWAY_PORT | 5443                 | the MLflow gateway: MLflow's REST API for sites       |
| MLEDGE_SUPERNODE_PORT   | 9094                    | first SuperNode's runtime port; one more per site     |
| MLEDGE_AIRFLOW_DB_URL   | SQLite in MLEDGE_HOME   | Airflow metadata database (e.g. postgresql+psycopg2://)|
| MLEDGE_BIND_HOST        | 127.0.0.1               | address the SuperLink, MLflow and Airflow listen on   |
| MLEDGE_SUPERLINK_ADDRESS| 127.0.0.1:<port>        | where the flwr CLI (platform) reaches the SuperLink   |
| MLEDGE_FLEET_ADDRESS    | 127.0.0.1:<fleet port>  | where SuperNodes (sites) reach the Fleet gateway      |
| MLEDGE_EDGE_URL         | https://127.0.0.1:<edge port> | where edge workers (sites) reach the Edge gateway |
| MLEDGE_SUPERLINK_HOSTNAMES | (none)               | extra names in the SuperLink's TLS certificate        |
| MLEDGE_MLFLOW_URL       | http://127.0.0.1:<port> | where mledge reaches the tracking server              |
| MLEDGE_AIRFLOW_URL      | http://127.0.0.1:<port> | where mledge and tasks reach Airflow's api-server     |
| MLEDGE_MLFLOW_BACKEND_STORE_URI | mlflow/server.toml | MLflow's tracking store (e.g. postgresql+psycopg2://) |
| MLEDGE_SIMULATION_SITES | (none)                  | sites whose SuperNode obeys a run's simulated attack  |
| MLEDGE_TLS              | on                      | Airflow and MLflow speak TLS (off: loopback only)     |
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
    fleet_port: int = field(default_factory=lambda: _port("MLEDGE_FLEET_PORT", 9092))
    edge_port: int = field(default_factory=lambda: _port("MLEDGE_EDGE_PORT", 8081))
    mlflow_gateway_port: int = field(default_factory=lambda: _port("MLEDGE_MLFLOW_GATEWAY_PORT", 5443))
    supernode_port: int = field(default_factory=lambda: _port("MLEDGE_SUPERNODE_PORT", 9094))
    airflow_db_url: str | None = field(default_factory=lambda: os.environ.get("MLEDGE_AIRFLOW_DB_URL") or None)
    # Containers listen on every interface and reach each other by service name; the local stack stays on loopback.
    bind_host: str = field(default_factory=lambda: os.environ.get("MLEDGE_BIND_HOST") or "127.0.0.1")
    sites: tuple[str, ...] = SITES

    @property
    def simulation_sites(self) -> tuple[str, ...]:
        """Sites whose SuperNode accepts a run's simulated attack (MLEDGE_SIMULATION_SITES; none by default)."""
        return tuple(s.strip() for s in os.environ.get("MLEDGE_SIMULATION_SITES", "").split(",") if s.strip())

    @property
    def platform_home(self) -> Path:
        """The platform's home: no site store is in it (central processes get this as their MLEDGE_HOME)."""
        value = os.environ.get("MLEDGE_PLATFORM_HOME")
        return Path(value).resolve() if value else self.home / "platform"

    @property
    def data_root(self) -> Path:
        value = os.environ.get("MLEDGE_DATA_ROOT")
        return Path(value).resolve() if value else self.home / "sites"

    def site_home(self, site: str) -> Path:
        """A site's home: its store (batches, incoming, quarantine, drift workspace), its keys, its worker's files."""
        return self.data_root / site

    def site_store(self, site: str) -> Path:
        return self.site_home(site)

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def secrets(self) -> Path:
        return self.platform_home / "secrets"

    @property
    def airflow_home(self) -> Path:
        return self.platform_home / "airflow"

    @property
    def flwr_home(self) -> Path:
        return self.platform_home / "flwr"

    def edge_home(self, site: str) -> Path:
        """The AIRFLOW_HOME of a site's edge worker (its task logs), inside the site's home."""
        return self.site_home(site) / "edge"

    @property
    def tls(self) -> bool:
        """Whether Airflow's and MLflow's servers speak TLS (the default; ``MLEDGE_TLS=off`` on loopback only)."""
        return os.environ.get("MLEDGE_TLS", "on").lower() not in ("off", "0", "false", "no")

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def ca_cert(self) -> Path:
        """The platform's CA certificate: what its clients verify Airflow, MLflow and the SuperLink with."""
        return self.secrets / "tls" / "ca.crt"

    @property
    def mlflow_uri(self) -> str:
        return os.environ.get("MLEDGE_MLFLOW_URL") or f"{self.scheme}://127.0.0.1:{self.mlflow_port}"

    @property
    def airflow_url(self) -> str:
        return os.environ.get("MLEDGE_AIRFLOW_URL") or f"{self.scheme}://127.0.0.1:{self.airflow_port}"

    @property
    def superlink_address(self) -> str:
        return os.environ.get("MLEDGE_SUPERLINK_ADDRESS") or f"127.0.0.1:{self.superlink_port}"

    @property
    def fleet_address(self) -> str:
        return os.environ.get("MLEDGE_FLEET_ADDRESS") or f"127.0.0.1:{self.fleet_port}"

    @property
    def edge_url(self) -> str:
        return os.environ.get("MLEDGE_EDGE_URL") or f"https://127.0.0.1:{self.edge_port}"

    @property
    def mlflow_site_url(self) -> str:
        """Where sites reach MLflow: the MLflow gateway (its REST API only, TLS)."""
        return os.environ.get("MLEDGE_MLFLOW_SITE_URL") or f"https://127.0.0.1:{self.mlflow_gateway_port}"

    def bin(self, env: str, program: str) -> Path:
        return self.venvs / env / "bin" / program

    @property
    def flwr_bin(self) -> str:
        """The workload environment's ``flwr`` CLI, else ``flwr`` on PATH (containers)."""
        path = self.bin("workload", "flwr")
        return str(path) if path.exists() else "flwr"

    @property
    def platform_db_url(self) -> str:
        return platform_db_url(self.platform_home)
