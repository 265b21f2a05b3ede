"""What the local stack runs: each component's command line, user, home and environment.

Platform side (user ``mledge-platform``, home ``<MLEDGE_HOME>/platform``, no site store in it): the MLflow
tracking server, the Flower SuperLink (all its APIs on the platform side only), Airflow's api-server, scheduler,
dag-processor and triggerer, and two gateways that are the only doors for sites: ``gateway-fleet`` (Flower's Fleet
API) and ``gateway-edge`` (Airflow's Edge worker and Execution APIs); see mledge/ops/gateway.py.

Site side, per site (user ``mledge-<site>``, home ``<MLEDGE_HOME>/sites/<site>``: its store, its keys, its
worker's logs): the site's trainer (mledge/onsite/trainer.py: the ClientApp's handlers kept warm, reachable only on
a Unix socket in the site's home), the Flower SuperNode, whose ClientApp forwards to that trainer, and the Airflow
edge worker serving the queue named after the site. The SuperNode and the worker only open outbound connections,
to the gateways; the trainer opens none.

Every environment is built from an allow-list (``_base_env`` and the additions of each side): no component
inherits the supervisor's environment, so no site process holds a platform credential or database URL, and the
telemetry of every library that phones home is off.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import signal
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from functools import cache, partial
from pathlib import Path

from mledge.contracts import AIRFLOW_EXECUTORS, FLWR_CONNECTION, SUPERNODE_REGISTRY
from mledge.onsite.trainer_client import TRAINER_KEY, ready, socket_path
from mledge.ops.identities import PLATFORM_USER, Account, site_user
from mledge.ops.processes import Component, http_ok, port_open
from mledge.ops.settings import Settings, mlflow_server_config
from mledge.security.files import locked, private_dir, write_private

# user -> SimpleAuthManager role; "platform" is the platform's own tasks reading Airflow (edge workers' state).
AIRFLOW_USERS = {"admin": "admin", "viewer": "viewer", "platform": "viewer"}
# Telemetry of every library that would phone home: off (an offline platform bound to privacy).
TELEMETRY_OFF = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",  # MLflow, Evidently and others honour it
    "FLWR_TELEMETRY_ENABLED": "0",
}
# MLflow's client retries a refused request 7 times with doubling waits (about 4 min); a task or a round's metric
# sink then hangs that long while MLflow is down. A few short tries, then our own retries take over: the outbox
# keeps the round's metrics, Airflow retries the task with its backoff (dags/federated_training.py).
MLFLOW_CLIENT = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}
# MLEDGE_* variables that carry a credential or a database URL: the platform's processes only.
PLATFORM_ONLY = (
    "MLEDGE_AIRFLOW_DB_URL",
    "MLEDGE_PLATFORM_DB_URL",
    "MLEDGE_COST_DB_URL",
    "MLEDGE_MLFLOW_BACKEND_STORE_URI",
    "MLEDGE_MLFLOW_AUTH_DB_URL",
    "MLEDGE_COST_SOURCES",
)
# Set per component, never passed through.
PER_COMPONENT = ("MLEDGE_HOME", "MLEDGE_PLATFORM_HOME", "MLEDGE_DATA_ROOT", "MLEDGE_SITE", "MLEDGE_BIN")
SYSTEM = ("LANG", "LC_ALL", "TZ")


def _base_env(settings: Settings, home: Path, environ: Mapping[str, str], *bins: str) -> dict[str, str]:
    """What every component gets: a PATH to its environment(s), its home, the deployment's non-secret MLEDGE_*
    settings (schedules, ports, URLs) and telemetry off. Nothing else of the supervisor's environment."""
    env = {k: environ[k] for k in SYSTEM if k in environ}
    env.update(
        {k: v for k, v in environ.items() if k.startswith("MLEDGE_") and k not in PLATFORM_ONLY + PER_COMPONENT}
    )
    path = [str(settings.bin(b, "")).rstrip("/") for b in bins] + ["/usr/local/bin", "/usr/bin", "/bin"]
    env.update(
        PATH=os.pathsep.join(path),
        HOME=str(home),
        MLEDGE_HOME=str(home),
        MLEDGE_VENVS=str(settings.venvs),
        MLEDGE_MLFLOW_URL=settings.mlflow_uri,
        MLEDGE_AIRFLOW_URL=settings.airflow_url,
        MLFLOW_TRACKING_URI=settings.mlflow_uri,
        MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK="true",
        MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
        MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="true",
        PYTHONDONTWRITEBYTECODE="1",  # the venvs are shared and read-only to the components' users
        **TELEMETRY_OFF,
        **MLFLOW_CLIENT,
    )
    return env


def platform_env(settings: Settings, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The platform's processes: its home, its databases, its Flower connection, the ``platform`` MLflow identity."""
    from mledge.security import mlflow_auth

    home = settings.platform_home
    env = _base_env(settings, home, environ, "workload")
    env.update({k: environ[k] for k in PLATFORM_ONLY if k in environ})
    env.update(
        MLEDGE_PLATFORM_HOME=str(home),
        MLEDGE_SUPERLINK_ADDRESS=settings.superlink_address,
        FLWR_HOME=str(settings.flwr_home),
        **trust(settings.ca_cert),
        **mlflow_auth.client_env(settings, "platform"),
    )
    return env


SYSTEM_CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")


def bundle_path(ca: Path) -> Path:
    return ca.with_name("ca-bundle.pem")


def write_bundle(ca: Path) -> Path:
    """Our CA plus the system's public CAs, beside ``ca``: one file that every HTTP client can be pointed at
    (REQUESTS_CA_BUNDLE replaces, not extends, what requests trusts: our servers and the clouds' must both verify)."""
    system = next((Path(p) for p in SYSTEM_CA_BUNDLES if Path(p).is_file()), None)
    if system is None:
        try:
            import certifi

            system = Path(certifi.where())
        except ImportError:
            system = None
    text = ca.read_text() + ("\n" + system.read_text() if system else "")
    path = bundle_path(ca)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
        os.chmod(path, 0o644)  # public certificates
    return path


def trust(ca: Path) -> dict[str, str]:
    """What makes a process's HTTP clients (requests, httpx, urllib, MLflow's) verify our servers with our CA,
    and the public ones as before (``write_bundle`` made the bundle beside it)."""
    bundle = str(bundle_path(ca))
    return {"REQUESTS_CA_BUNDLE": bundle, "SSL_CERT_FILE": bundle, "MLFLOW_TRACKING_SERVER_CERT_PATH": bundle}


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def tls_context(settings: Settings):
    """An SSL context verifying with the platform's CA (health checks); None when TLS is off, or when there is no
    CA yet (a home the stack has not set up: then nothing of ours answers, and the system's CAs say so)."""
    import ssl

    if not settings.tls or not settings.ca_cert.exists():
        return None
    return ssl.create_default_context(cafile=str(settings.ca_cert))


def site_env(settings: Settings, site: str, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """A site's processes: its own home and store, its own MLflow identity, the platform's CA to verify TLS."""
    from mledge.security import mlflow_auth

    home = settings.site_home(site)
    ca = site_ca(settings, site)
    env = _base_env(settings, home, environ, "workload")
    env.update(
        MLEDGE_DATA_ROOT=str(settings.data_root),
        MLEDGE_SITE=site,
        **trust(ca),
        # A site reaches MLflow through the MLflow gateway (REST only, TLS verified with its CA copy).
        MLFLOW_TRACKING_URI=settings.mlflow_site_url,
        MLEDGE_MLFLOW_URL=settings.mlflow_site_url,
        **mlflow_auth.client_env(settings, site),
        **site_runtime(settings),
    )
    return env


# The trainer opens no connection: it gets the site's environment without the site's MLflow identity.
TRAINER_WITHOUT = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI", "MLEDGE_MLFLOW_URL")


def trainer_env(settings: Settings, site: str, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """A site's trainer: what its other processes get (site_env), less any credential; it needs none."""
    return {k: v for k, v in site_env(settings, site, environ).items() if k not in TRAINER_WITHOUT}


# How often a SuperNode's SuperExec looks for a message to start a ClientApp for (Flower's default: every second);
# a round waits for it at every site.
SUPEREXEC_POLL_S = "0.25"


def site_runtime(settings: Settings) -> dict[str, str]:
    """Every site of this stack runs on this machine: each gets its share of the cores for its numeric libraries
    (torch, BLAS), or their thread pools, all spinning at once, slow every round down many times over."""
    threads = max(1, (os.cpu_count() or 1) // max(1, len(settings.sites)))
    return {"OMP_NUM_THREADS": str(threads), "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": SUPEREXEC_POLL_S}


def site_ca(settings: Settings, site: str) -> Path:
    """The site's copy of the platform's CA certificate (public): what it verifies the gateways with."""
    return settings.site_home(site) / "tls" / "ca.crt"


# --- Airflow ---------------------------------------------------------------------------------------------


def ensure_secret_env(settings: Settings) -> dict[str, str]:
    """Secrets generated on first start, kept in the platform's secrets (mode 0600), never in git or code."""
    path = private_dir(settings.secrets) / "airflow.env"
    with locked(settings.secrets / ".airflow.lock"):
        if not path.exists():
            write_private(
                path,
                f"AIRFLOW__API_AUTH__JWT_SECRET={secrets.token_urlsafe(48)}\n"
                f"AIRFLOW__API__SECRET_KEY={secrets.token_urlsafe(48)}\n",
            )
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def airflow_passwords_file(settings: Settings) -> Path:
    return settings.secrets / "airflow_passwords.json"


def airflow_password(settings: Settings, user: str) -> str:
    """An Airflow user's password: from the deployment's environment (``MLEDGE_AIRFLOW_PASSWORD_<USER>``, compose),
    else from the platform's secrets."""
    from mledge.ops.airflow_api import password_for

    return os.environ.get(f"MLEDGE_AIRFLOW_PASSWORD_{user.upper()}") or password_for(
        airflow_passwords_file(settings), user
    )


def ensure_airflow_passwords(settings: Settings) -> Path:
    """Generate the Airflow users' passwords ourselves, before the api-server's first start.

    SimpleAuthManager generates missing ones itself but also prints them to its log; with every user already in
    the file it prints nothing.
    """
    path = airflow_passwords_file(settings)
    private_dir(settings.secrets)
    with locked(settings.secrets / ".airflow.lock"):
        known = json.loads(path.read_text() or "{}") if path.exists() else {}
        missing = [user for user in AIRFLOW_USERS if user not in known]
        if missing:
            known.update({user: secrets.token_urlsafe(18) for user in missing})
            write_private(path, json.dumps(known) + "\n")
    return path


def _airflow_common(settings: Settings, home: Path) -> dict[str, str]:
    return dict(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(settings.repo / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__EXECUTOR=AIRFLOW_EXECUTORS,
        MLEDGE_BIN=str(settings.bin("workload", "mledge")),
    )


def airflow_env(settings: Settings, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Airflow's central processes: the platform's environment plus Airflow's settings and secrets."""
    env = platform_env(settings, environ)
    db_url = settings.airflow_db_url or f"sqlite:///{settings.airflow_home / 'airflow.db'}"
    env.update(ensure_secret_env(settings))
    # Airflow Connections given as AIRFLOW_CONN_* (cloud billing credentials, SMTP): the platform's Airflow only,
    # never a site's worker.
    env.update({k: v for k, v in environ.items() if k.startswith("AIRFLOW_CONN_")})
    env.update(_airflow_common(settings, settings.airflow_home))
    env.update(
        PATH=f"{str(settings.bin('orchestrator', '')).rstrip('/')}{os.pathsep}{env['PATH']}",
        AIRFLOW__CORE__PARALLELISM="4",  # each slot is a worker process; 4 is plenty on two cores
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=db_url,
        AIRFLOW__API__HOST=settings.bind_host,
        AIRFLOW__API__PORT=str(settings.airflow_port),
        AIRFLOW__API__BASE_URL=settings.airflow_url,
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{settings.airflow_url}/execution/",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=",".join(f"{u}:{r}" for u, r in AIRFLOW_USERS.items()),
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(ensure_airflow_passwords(settings)),
        AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="30",
        # The Edge worker API, mounted on the api-server; sites reach it only through gateway-edge.
        AIRFLOW__EDGE__API_ENABLED="True",
        **airflow_tls(settings),
        AIRFLOW__EDGE__API_URL=f"{settings.edge_url}/edge_worker/v1/rpcapi",
    )
    return env


def airflow_tls(settings: Settings) -> dict[str, str]:
    """The api-server's TLS (Airflow's own [api] ssl_* settings); its task runners trust the same certificate."""
    if not settings.tls:
        return {}
    from mledge.security import pki

    tls = pki.tls_files(settings.secrets)
    return {
        "AIRFLOW__API__SSL_CERT": str(tls.server_cert),
        "AIRFLOW__API__SSL_KEY": str(tls.server_key),
        "AIRFLOW__API__SSL_CA_FILE": str(tls.ca_cert),
    }


def edge_worker_env(settings: Settings, site: str, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """A site's edge worker: the site's environment, Airflow's worker settings, the shared worker signing key.

    The worker signs its calls with ``[api_auth] jwt_secret`` (apache-airflow-providers-edge3 5.1 has no
    per-worker key on the worker side): README's security section says what a site holding it can and cannot do.
    """
    env = site_env(settings, site, environ)
    home = settings.edge_home(site)
    env.update(_airflow_common(settings, home))
    env.update(
        PATH=f"{str(settings.bin('orchestrator', '')).rstrip('/')}{os.pathsep}{env['PATH']}",
        AIRFLOW__API_AUTH__JWT_SECRET=environ.get("AIRFLOW__API_AUTH__JWT_SECRET")
        or ensure_secret_env(settings)["AIRFLOW__API_AUTH__JWT_SECRET"],
        AIRFLOW__EDGE__API_URL=f"{settings.edge_url}/edge_worker/v1/rpcapi",
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{settings.edge_url}/execution/",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'unused.db'}",  # a worker never opens it
        AIRFLOW__API__SSL_CA_FILE=str(site_ca(settings, site)),  # its tasks' Execution API client verifies with it
        AIRFLOW__EDGE__HEARTBEAT_INTERVAL="10",
    )
    return env


def _airflow_healthy(url: str, context: Callable[[], object] | None = None) -> Callable[[], bool]:
    def check() -> bool:
        try:
            ssl_context = context() if context else None
            with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=3, context=ssl_context) as response:
                health = json.load(response)
        except (urllib.error.URLError, OSError, ValueError):
            return False
        parts = ("metadatabase", "scheduler", "dag_processor")
        return all((health.get(p) or {}).get("status") == "healthy" for p in parts)

    return check


# --- Flower ----------------------------------------------------------------------------------------------


def write_flwr_config(settings: Settings) -> None:
    """The `flwr` CLI's connection to our SuperLink ($FLWR_HOME/config.toml), verifying the local CA."""
    from mledge.security import pki

    settings.flwr_home.mkdir(parents=True, exist_ok=True)
    (settings.flwr_home / "config.toml").write_text(
        pki.flwr_connection_toml(FLWR_CONNECTION, settings.superlink_address, pki.tls_files(settings.secrets))
    )


def supernode_registry(settings: Settings) -> Path:
    """node id -> site of the registered SuperNode keys; beside the SuperLink database it describes."""
    return settings.platform_home / SUPERNODE_REGISTRY


def superlink_hostnames() -> list[str]:
    """Names besides 127.0.0.1/localhost the SuperLink certificate must carry (e.g. the compose service)."""
    return [n.strip() for n in os.environ.get("MLEDGE_SUPERLINK_HOSTNAMES", "").split(",") if n.strip()]


def _supernode_healthy(log: Path, port: int) -> Callable[[], bool]:
    """Healthy once the SuperLink accepted it: a refused SuperNode opens its port too, then exits (code 305)."""
    from mledge.security.node_keys import supernode_activated

    opened = port_open(port)

    def check() -> bool:
        return opened() and log.exists() and supernode_activated(log.read_text(errors="replace")) is not None

    return check


def trainer_socket(settings: Settings, site: str) -> Path:
    """Where a site's trainer listens: a Unix socket in the site's home."""
    return socket_path(settings.site_home(site))


def node_config(settings: Settings, site: str) -> str:
    """A site's SuperNode node config: its name, its store, its trainer's socket, and whether it accepts simulated
    attacks (opt-in)."""
    config = f"site='{site}' data-dir='{settings.site_home(site)}' {TRAINER_KEY}='{trainer_socket(settings, site)}'"
    return config + (" accept-simulated-attacks=true" if site in settings.simulation_sites else "")


def _gateway(
    settings: Settings, route: str, port: int, upstream: str, env: Callable[[], dict], account: Account | None
) -> Component:
    from mledge.security import pki

    tls = pki.tls_files(settings.secrets)
    return Component(
        f"gateway-{route}",
        [
            str(settings.bin("workload", "mledge")), "gateway", route,
            "--listen", f"{settings.bind_host}:{port}", "--upstream", upstream,
            "--cert", str(tls.server_cert), "--key", str(tls.server_key), "--ca", str(tls.ca_cert),
        ],
        env,
        port_open(port),
        home=settings.platform_home,
        account=account,
    )


def components(
    settings: Settings,
    logs: Path,
    accounts: Mapping[str, Account | None] | None = None,
    environ: Mapping[str, str] = os.environ,
) -> list[Component]:
    """Every component in start order (platform first); ``accounts``: user name -> Account when enforced."""
    from mledge.security import mlflow_auth, node_keys, pki

    if not settings.tls and not _loopback(settings.bind_host):
        raise ValueError(
            f"MLEDGE_TLS=off with MLEDGE_BIND_HOST={settings.bind_host}: Airflow and MLflow would take passwords in "
            "the clear on a network; plain HTTP is allowed on loopback only"
        )
    accounts = accounts or {}
    platform = accounts.get(PLATFORM_USER)
    tls = pki.tls_files(settings.secrets)  # paths only: `up` creates the files before anything starts
    wl = cache(lambda: platform_env(settings, environ))
    # The gateways forward bytes: no credential of any kind.
    bare = cache(lambda: _base_env(settings, settings.platform_home, environ, "workload"))
    af = cache(lambda: airflow_env(settings, environ))
    server = mlflow_server_config(settings.repo)["server"]

    def mlflow_env() -> dict[str, str]:
        server_env = mlflow_server_config(settings.repo).get("environment", {})
        env = mlflow_auth.auth_server_env(settings, {**wl(), **server_env})
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            env.pop(key, None)  # the server holds no client identity
        return env

    def under_home(value: str) -> str:
        return value if "://" in value else str(settings.platform_home / value)

    backend = environ.get("MLEDGE_MLFLOW_BACKEND_STORE_URI") or under_home(server["backend_store"])
    found = [
        Component(
            "mlflow",
            [
                str(settings.bin("workload", "mlflow")), "server", *mlflow_auth.auth_server_args(settings),
                "--backend-store-uri", backend if "://" in backend else f"sqlite:///{backend}",
                "--artifacts-destination", under_home(server["artifacts_destination"]),
                "--host", settings.bind_host, "--port", str(settings.mlflow_port),
                "--workers", str(server["workers"]),
                *(["--uvicorn-opts", f"--ssl-certfile {tls.server_cert} --ssl-keyfile {tls.server_key}"]
                  if settings.tls else []),
            ],
            mlflow_env,
            http_ok(f"{settings.mlflow_uri}/health", partial(tls_context, settings)),
            home=settings.platform_home,
            account=platform,
            stop_signal=signal.SIGINT,  # SIGINT shuts gunicorn/uvicorn down cleanly
        ),
        Component(
            "superlink",
            [
                str(settings.bin("workload", "flower-superlink")),
                *pki.superlink_tls_args(tls),
                *node_keys.superlink_auth_args(),
                "--disable-runtime-dependency-installation",
                "--database", str(settings.platform_home / "flower" / "superlink.db"),
                # The platform side only: sites reach the Fleet API through gateway-fleet.
                "--host", settings.bind_host, "--port", str(settings.superlink_port),
            ],
            wl,  # the ServerApp runs in this environment and logs to MLflow as the platform identity
            port_open(settings.superlink_port),
            home=settings.platform_home,
            account=platform,
        ),
        _gateway(settings, "fleet", settings.fleet_port, f"https://{settings.superlink_address}", bare, platform),
        _gateway(settings, "mlflow", settings.mlflow_gateway_port, settings.mlflow_uri, bare, platform),
    ]
    airflow = str(settings.bin("orchestrator", "airflow"))
    found += [
        Component(
            "airflow-api-server",
            [airflow, "api-server", "--host", settings.bind_host, "--port", str(settings.airflow_port)],
            af,
            http_ok(f"{settings.airflow_url}/api/v2/version", partial(tls_context, settings)),
            home=settings.platform_home,
            account=platform,
        ),
        Component("airflow-scheduler", [airflow, "scheduler", "--skip-serve-logs"], af, lambda: True,
                  home=settings.platform_home, account=platform),
        Component("airflow-dag-processor", [airflow, "dag-processor"], af, lambda: True,
                  home=settings.platform_home, account=platform),
        # No log servers: Airflow binds them to every interface ("" in airflow.utils.serve_logs); the api-server
        # reads these processes' logs from the shared log folder instead.
        Component("airflow-triggerer", [airflow, "triggerer", "--skip-serve-logs"], af, lambda: True,
                  home=settings.platform_home, account=platform),
        _gateway(settings, "edge", settings.edge_port, settings.airflow_url, bare, platform),
    ]
    for i, site in enumerate(settings.sites):
        port = settings.supernode_port + i
        account = accounts.get(site_user(site))
        home = settings.site_home(site)
        # Before its SuperNode, so that the first message finds it warm (messages wait for its warm-up anyway).
        found.append(
            Component(
                f"trainer-{site}",
                [str(settings.bin("workload", "mledge")), "sites", "trainer", "--site", site],
                partial(trainer_env, settings, site, environ),
                partial(ready, trainer_socket(settings, site), site),
                home=home,
                side="site",
                site=site,
                account=account,
            )
        )
        found.append(
            Component(
                f"supernode-{site}",
                [
                    str(settings.bin("workload", "flower-supernode")),
                    "--root-certificates", str(site_ca(settings, site)),
                    *node_keys.supernode_auth_args(node_keys.private_key_path(home)),
                    "--superlink", settings.fleet_address,
                    "--node-config", node_config(settings, site),
                    "--host", "127.0.0.1", "--port", str(port),
                ],
                partial(site_env, settings, site, environ),
                _supernode_healthy(logs / f"supernode-{site}.log", port),
                home=home,
                side="site",
                site=site,
                account=account,
            )
        )
        found.append(
            Component(
                f"edge-worker-{site}",
                [airflow, "edge", "worker", "--queues", site, "--edge-hostname", f"edge-{site}",
                 "--concurrency", "2"],
                partial(edge_worker_env, settings, site, environ),
                lambda: True,
                home=home,
                side="site",
                site=site,
                account=account,
            )
        )
    return found


def airflow_healthy(settings: Settings) -> Callable[[], bool]:
    return _airflow_healthy(settings.airflow_url, partial(tls_context, settings))
