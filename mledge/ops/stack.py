"""The local stack: start, check and stop MLEDGE's real components as separate processes on this machine.

What runs, as whom and with which environment is mledge/ops/components.py; how a process is started and stopped
by its PID is mledge/ops/processes.py; who may open which folder is mledge/ops/identities.py. The layout:

    $MLEDGE_HOME/platform/         the platform's home (0700, user mledge-platform when run as root)
    $MLEDGE_HOME/sites/<site>/     each site's home: its store, keys, CA copy, worker logs (0700, user mledge-<site>)
    $MLEDGE_HOME/logs, run/        the supervisor's: each component's output and PID (0700, the operator's)

Standard library at import time (TLS and node keys import ``cryptography`` inside functions): the orchestrator
environment and a container can run it as well.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping

from mledge.contracts import FLWR_CONNECTION
from mledge.ops import identities
from mledge.ops.components import (
    airflow_env,
    airflow_healthy,
    components,
    site_ca,
    superlink_hostnames,
    supernode_registry,
    trust,
    write_bundle,
    write_flwr_config,
)
from mledge.ops.identities import PLATFORM_USER, Account, site_user
from mledge.ops.processes import Component, Processes, StackError
from mledge.ops.settings import Settings

__all__ = ["StackError", "down", "init_site_data", "serve", "status", "superlink_hostnames", "supernode_registry",
           "up"]


def processes(settings: Settings) -> Processes:
    return Processes(settings.run_dir, settings.logs)


def accounts(settings: Settings) -> dict[str, Account | None]:
    """user name -> Account: the platform's and each site's, created when the stack runs as root; else none."""
    names = [PLATFORM_USER, *(site_user(s) for s in settings.sites)]
    if not identities.enforced():
        return dict.fromkeys(names)
    return {name: identities.ensure_user(name) for name in names}


def init_site_data(settings: Settings, batches: int, sites: list[str] | None = None) -> dict:
    """Give every site (or only ``sites``) at least ``batches`` batches in its own store (existing ones are kept)."""
    from mledge.onsite.profiles import site_profile
    from mledge.onsite.store import ensure_batches

    added = {}
    for site in sites or settings.sites:
        new = ensure_batches(settings.site_store(site), site_profile(site), batches)
        if new:
            added[site] = [str(p) for p in new]
    return {"data_root": str(settings.data_root), "added": added}


def prepare(settings: Settings, users: Mapping[str, Account | None]) -> dict:
    """Every file the components need before they start, each home owned by its user and private to it.

    The platform's CA, server certificate, secrets and Flower connection in its home; in each site's home its
    SuperNode key pair (made where it runs: here all sites run on this machine) and a copy of the CA certificate.
    Returns the sites' node keys.
    """
    from mledge.security import node_keys, pki

    identities.traversable([settings.home, settings.data_root])
    for path in (settings.platform_home / "flower", settings.platform_home / "mlflow", settings.airflow_home):
        path.mkdir(parents=True, exist_ok=True)
    tls = pki.ensure_tls(settings.secrets, hostnames=superlink_hostnames())
    write_bundle(tls.ca_cert)
    write_flwr_config(settings)
    keys = {}
    for site in settings.sites:
        keys[site] = node_keys.ensure_node_key(site, settings.site_home(site))
        ca = site_ca(settings, site)
        ca.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tls.ca_cert, ca)
        write_bundle(ca)
        settings.edge_home(site).mkdir(parents=True, exist_ok=True)
    return keys


def isolate(settings: Settings, users: Mapping[str, Account | None]) -> None:
    """Each home to its user, 0700 (ownership only when run as root)."""
    identities.own(settings.platform_home, users.get(PLATFORM_USER))
    for site in settings.sites:
        identities.own(settings.site_home(site), users.get(site_user(site)))


def migrate_airflow(settings: Settings) -> None:
    settings.airflow_home.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [str(settings.bin("orchestrator", "airflow")), "db", "migrate"],
        env=airflow_env(settings),
        cwd=settings.platform_home,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise StackError(f"airflow db migrate failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")


def _refusal(settings: Settings) -> Callable[[str], str]:
    """For a SuperNode the SuperLink refused: why, in one clause."""
    from mledge.security.node_keys import supernode_refusal

    def why(name: str) -> str:
        path = processes(settings).log(name)
        if not name.startswith("supernode-") or not path.exists():
            return ""
        refusal = supernode_refusal(path.read_text(errors="replace"))
        return f": {refusal}" if refusal else ""

    return why


def up(settings: Settings, timeout: float = 180.0, say: Callable[[str], None] = print) -> dict[str, int]:
    """Start every component that is not running and wait until all are healthy.

    Order: users and homes; the local CA, secrets and each site's key pair; the databases migrated (the platform
    database, Airflow's); MLflow, the SuperLink and the Fleet gateway; MLflow's users and permission matrix
    (mlflow/permissions.toml); each site's public key registered with the SuperLink; then Airflow, the Edge
    gateway, and each site's SuperNode and edge worker.
    """
    previous = os.umask(0o077)  # what this process writes (secrets, databases, keys) is private from the start
    try:
        return _up(settings, timeout, say)
    finally:
        os.umask(previous)


def _up(settings: Settings, timeout: float, say: Callable[[str], None]) -> dict[str, int]:
    from mledge.db import migrate
    from mledge.security import mlflow_auth, node_keys

    users = accounts(settings)
    if not identities.enforced():
        say(identities.NOT_ENFORCED)
    else:
        for env in ("workload", "orchestrator"):
            why = identities.reachable_by_others(settings.bin(env, "python"))
            if why:
                raise StackError(
                    f"the {env} environment's interpreter cannot run as the components' own users: {why}; rebuild "
                    "the environments with a Python every user can run (`make clean-venvs setup`; the Makefile "
                    "prefers /usr/bin/python3.11)"
                )
    keys = prepare(settings, users)
    if settings.tls:  # this process talks to the servers it starts: it verifies them with the CA just made
        os.environ.update(trust(settings.ca_cert))
    procs = processes(settings)
    every = components(settings, settings.logs, users)
    for component in every:
        component.environment()  # secrets and configuration files they name exist before the homes are handed over
    say(f"platform database at revision {migrate(settings.platform_db_url)}")
    if not procs.running_pid("airflow-api-server"):
        say("migrating the Airflow metadata database")
        migrate_airflow(settings)
    isolate(settings, users)
    pids: dict[str, int] = {}

    def launch(group: list[Component]) -> None:
        for component in group:
            pid, started = procs.start(component)
            pids[component.name] = pid
            who = f" as {component.account.name}" if component.account else ""
            say(f"{'started' if started else 'running'} {component.name}{who} (pid {pid})")
        procs.wait_healthy(group, timeout, _refusal(settings))

    first = [c for c in every if c.name in ("mlflow", "superlink", "gateway-fleet", "gateway-mlflow")]
    launch(first)
    # Before anything logs to MLflow: users, the experiments and registered models (made by `platform`), grants.
    applied = mlflow_auth.apply_permissions(settings)
    if applied["changed"]:
        say(f"applied {applied['matrix']} to MLflow: users created {applied['users_created']}, resources created "
            f"{len(applied['resources_created'])}, grants {len(applied['granted'])} given, "
            f"{len(applied['revoked'])} revoked")
    os.environ.setdefault("FLWR_HOME", str(settings.flwr_home))  # the `flwr` CLI below reads its connection there
    for node in node_keys.ensure_registered(
        {site: key.public_key for site, key in keys.items()},
        FLWR_CONNECTION,
        supernode_registry(settings),
        str(settings.bin("workload", "flwr")),
    ):
        say(f"{'registered' if node.newly_registered else 'known'} SuperNode key of {node.site} "
            f"({node.fingerprint}, node {node.node_id})")
    isolate(settings, users)  # what the steps above wrote as root belongs to the platform too
    platform = [c for c in every if c not in first and c.side == "platform"]
    launch(platform)
    _wait_airflow(settings, timeout)
    launch([c for c in every if c.side == "site"])
    return pids


def _wait_airflow(settings: Settings, timeout: float) -> None:
    check = airflow_healthy(settings)
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise StackError(
                f"Airflow's scheduler and dag-processor did not report healthy within {timeout:.0f}s; see "
                f"{settings.logs}/airflow-scheduler.log and airflow-dag-processor.log"
            )
        time.sleep(1)


def restart(settings: Settings, name: str, timeout: float = 120.0, say: Callable[[str], None] = print) -> int:
    """Stop one component and start it again with its definition as it is now (e.g. a changed node config)."""
    found = {c.name: c for c in components(settings, settings.logs, accounts(settings))}
    if name not in found:
        raise StackError(f"no component {name!r}; components: {', '.join(found)}")
    procs = processes(settings)
    procs.stop(name, found[name].stop_signal)
    pid, _ = procs.start(found[name])
    procs.wait_healthy([found[name]], timeout, _refusal(settings))
    say(f"restarted {name} (pid {pid})")
    return pid


def down(settings: Settings, say: Callable[[str], None] = print) -> list[str]:
    """Stop every component this stack started: the sites first, then Airflow (it drives the rest)."""
    procs = processes(settings)
    stopped = []
    for component in reversed(components(settings, settings.logs)):
        if procs.stop(component.name, component.stop_signal):
            stopped.append(component.name)
            say(f"stopped {component.name}")
    return stopped


def status(settings: Settings) -> dict[str, dict]:
    procs = processes(settings)
    return {
        c.name: {"pid": (pid := procs.running_pid(c.name)), "healthy": bool(pid) and c.healthy(), "side": c.side}
        for c in components(settings, settings.logs)
    }


# --- one component in the foreground (containers) ---------------------------------------------------------


class ServeError(StackError):
    """A component cannot be served as asked; the message names it and what is wrong."""


def required_flags(required: list[str]) -> list[tuple[str, str | None]]:
    """``--flag value --switch`` -> [("--flag", "value"), ("--switch", None)]."""
    pairs: list[tuple[str, str | None]] = []
    for token in required:
        if token.startswith("--"):
            pairs.append((token, None))
        elif pairs and pairs[-1][1] is None:
            pairs[-1] = (pairs[-1][0], token)
        else:
            raise ServeError(f"required argument {token!r} follows no --flag")
    return pairs


def check_argv(component: Component, required: list[str]) -> None:
    """Refuse a command line without a required flag (or with another value), or with --insecure."""
    argv = component.argv
    if "--insecure" in argv:
        raise ServeError(f"{component.name}: the stack's command line has --insecure; TLS cannot be turned off")
    for flag, value in required_flags(required):
        if flag not in argv:
            raise ServeError(f"{component.name}: the stack's command line lacks {flag}, which the deployment requires")
        actual = argv[argv.index(flag) + 1] if argv.index(flag) + 1 < len(argv) else None
        if value is not None and actual != value:
            raise ServeError(f"{component.name}: {flag} is {actual!r} in the stack's command line, not {value!r}")


def serve(settings: Settings, name: str, required: list[str]) -> None:
    """Become one component (exec): its argv and environment as `up` builds them, the process environment winning."""
    found = {c.name: c for c in components(settings, settings.logs)}
    if name not in found:
        raise ServeError(f"no component {name!r}; components: {', '.join(found)}")
    component = found[name]
    if component.side == "platform":
        for path in (settings.platform_home / "flower", settings.platform_home / "mlflow", settings.logs):
            path.mkdir(parents=True, exist_ok=True)
        write_flwr_config(settings)
    check_argv(component, required)
    env = {**component.environment(), **os.environ}
    os.chdir(component.home)
    os.execvpe(component.argv[0], component.argv, env)
