"""Flower TLS and SuperNode authentication: the local CA, site keys, and a real SuperLink that enforces both.

The SuperLink runs with TLS from ``mledge.pki`` and ``--enable-supernode-auth`` on a free port with a temporary
home; every process is started here in its own session and stopped by its PID. Waiting is polling with deadlines.
"""

from __future__ import annotations

import datetime as dt
import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from flwr.cli.supernode.register import try_load_public_key

from fl.runs import FlowerError, await_run, flwr, submit_run
from mledge.security import node_keys, pki

CONNECTION = "secure"
PLAINTEXT = "plaintext"  # the same SuperLink, reached without TLS: must fail
CLI_TIMEOUT = 60.0

# --- the local CA, no processes -----------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_the_ca_files_are_private_and_the_ca_verifies_the_server_cert(tmp_path):
    files = pki.ensure_tls(tmp_path / "secrets", hostnames=["superlink"])
    assert files.ca_cert.parent == (tmp_path / "secrets" / "tls").resolve()
    assert _mode(tmp_path / "secrets") == 0o700 and _mode(files.ca_cert.parent) == 0o700
    for path in (files.ca_cert, files.ca_key, files.server_cert, files.server_key):
        assert _mode(path) == 0o600, path
    for name in ("127.0.0.1", "localhost", "superlink"):
        pki.verify_server_cert(files, name)
    with pytest.raises(pki.TlsError, match="not valid for evil.example"):
        pki.verify_server_cert(files, "evil.example")
    # Another authority does not vouch for this server.
    other = pki.ensure_tls(tmp_path / "other")
    with pytest.raises(pki.TlsError):
        pki.verify_server_cert(
            pki.TlsFiles(other.ca_cert, files.server_cert, files.server_key, other.ca_key), "localhost"
        )
    server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    assert server.not_valid_after_utc - server.not_valid_before_utc < dt.timedelta(days=400)


def test_ensure_tls_reuses_valid_files_and_renews_what_expires(tmp_path):
    secrets = tmp_path / "secrets"
    files = pki.ensure_tls(secrets)
    first = {p: p.read_bytes() for p in (files.ca_cert, files.ca_key, files.server_cert, files.server_key)}
    os.chmod(files.server_key, 0o644)  # loosened by someone: tightened again, content kept
    assert pki.ensure_tls(secrets) == files
    assert {p: p.read_bytes() for p in first} == first
    assert _mode(files.server_key) == 0o600

    # Close to the server certificate's end: a new one (and key) from the same CA.
    server = x509.load_pem_x509_certificate(first[files.server_cert])
    pki.ensure_tls(secrets, now=server.not_valid_after_utc - dt.timedelta(days=10))
    assert files.ca_cert.read_bytes() == first[files.ca_cert]
    assert files.server_cert.read_bytes() != first[files.server_cert]
    assert files.server_key.read_bytes() != first[files.server_key]

    # A new host name is added to the certificate; a missing certificate is reissued.
    pki.ensure_tls(secrets, hostnames=["superlink"])
    pki.verify_server_cert(files, "superlink")
    files.server_cert.unlink()
    pki.ensure_tls(secrets)
    pki.verify_server_cert(files, "localhost")

    # Close to the CA's end: a new CA, and a server certificate from it.
    ca = x509.load_pem_x509_certificate(first[files.ca_cert])
    later = ca.not_valid_after_utc - dt.timedelta(days=1)
    pki.ensure_tls(secrets, now=later)
    assert files.ca_cert.read_bytes() != first[files.ca_cert]
    pki.verify_server_cert(files, "127.0.0.1", now=later)


def test_a_broken_ca_is_set_aside_and_replaced(tmp_path):
    secrets = tmp_path / "secrets"
    files = pki.ensure_tls(secrets)
    files.ca_key.write_text("not a key")
    pki.ensure_tls(secrets)
    pki.verify_server_cert(files, "localhost")
    kept = sorted(p.name.split(".invalid-")[0] for p in files.ca_cert.parent.glob("*.invalid-*"))
    assert kept == ["ca.crt", "ca.key"]


def test_flwr_connection_verifies_the_ca_instead_of_being_insecure(tmp_path):
    import tomllib

    files = pki.tls_files(tmp_path)
    config = tomllib.loads(pki.flwr_connection_toml("mledge", "127.0.0.1:9091", files))
    assert config["superlink"] == {
        "default": "mledge",
        "mledge": {"address": "127.0.0.1:9091", "root-certificates": str(files.ca_cert)},
    }


# --- site keys, no processes --------------------------------------------------------------------------------


def test_a_site_key_is_made_once_private_and_in_the_format_flower_reads(tmp_path):
    key = node_keys.ensure_node_key("plant_a", tmp_path / "plant_a")
    assert key.private_key == node_keys.private_key_path(tmp_path / "plant_a")
    assert key.private_key == (tmp_path / "plant_a" / "keys" / "supernode.key").resolve()
    assert key.public_key == node_keys.public_key_path(tmp_path / "plant_a")
    assert _mode(key.private_key) == 0o600 and _mode(key.private_key.parent) == 0o700
    assert key.public_key.read_text().startswith("ecdsa-sha2-nistp384 ")
    try_load_public_key(key.public_key)  # Flower's own check in `flwr supernode register`
    again = node_keys.ensure_node_key("plant_a", tmp_path / "plant_a")
    assert again == key
    key.public_key.unlink()  # rewritten from the private key, same identity
    assert node_keys.ensure_node_key("plant_a", tmp_path / "plant_a").fingerprint == key.fingerprint
    assert node_keys.ensure_node_key("plant_b", tmp_path / "plant_b").fingerprint != key.fingerprint
    assert node_keys.supernode_auth_args(key.private_key) == ["--auth-supernode-private-key", str(key.private_key)]


def test_an_unreadable_site_key_is_reported_not_replaced(tmp_path):
    key = node_keys.ensure_node_key("plant_a", tmp_path / "plant_a")
    key.private_key.write_text("garbage")
    with pytest.raises(node_keys.NodeKeyError, match=r"site plant_a: .*supernode.key is not an unencrypted OpenSSH"):
        node_keys.ensure_node_key("plant_a", tmp_path / "plant_a")
    assert key.private_key.read_text() == "garbage"
    with pytest.raises(node_keys.NodeKeyError, match="site name"):
        node_keys.ensure_node_key("../etc", tmp_path / "x")


# --- a real SuperLink with TLS and SuperNode authentication ----------------------------------------------------


class Processes:
    """Processes started by this test module, each in its own session, stopped by PID (process group)."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env = root, env
        self.started: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        with open(self.root / f"{name}.log", "wb") as log:
            process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.root,
                start_new_session=True,
            )
        self.started[name] = process
        return process

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def stop(self, name: str) -> None:
        process = self.started.pop(name)
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
            except ProcessLookupError:
                pass

    def stop_all(self) -> None:
        for name in reversed(list(self.started)):  # SuperNodes before the SuperLink
            self.stop(name)


@pytest.fixture(scope="module")
def flower(tmp_path_factory, bin_dir, free_port, wait_until):
    root = tmp_path_factory.mktemp("flower-secure")
    home = root / "flwr-home"
    home.mkdir()
    tls = pki.ensure_tls(root / "secrets")
    port = free_port()
    address = f"127.0.0.1:{port}"
    (home / "config.toml").write_text(
        pki.flwr_connection_toml(CONNECTION, address, tls)
        + f'\n[superlink.{PLAINTEXT}]\naddress = "{address}"\ninsecure = true\n'
    )
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "FLWR_HOME": str(home)}
    env.pop("PYTHONPATH", None)
    processes = Processes(root, env)
    superlink = processes.start(
        "superlink",
        [
            str(bin_dir / "flower-superlink"),
            *pki.superlink_tls_args(tls),
            *node_keys.superlink_auth_args(),
            "--disable-runtime-dependency-installation",
            "--database",
            str(root / "superlink.db"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
    )
    try:
        wait_until("SuperLink listening", lambda: _listening(port, superlink, processes), timeout=60)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("FLWR_HOME", str(home))  # for the `flwr` CLI that fl.runs and node_keys start
            yield {
                "root": root,
                "tls": tls,
                "port": port,
                "address": address,
                "bin": bin_dir,
                "flwr": str(bin_dir / "flwr"),
                "registry": root / "flower" / "supernodes.json",
                "processes": processes,
                "free_port": free_port,
                "wait_until": wait_until,
            }
    finally:
        processes.stop_all()


def _listening(port: int, process: subprocess.Popen, processes: Processes) -> bool:
    if process.poll() is not None:
        raise RuntimeError(f"flower-superlink exited {process.returncode}:\n{processes.log('superlink')[-3000:]}")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _start_supernode(flower: dict, name: str, site: str, auth: list[str], tls: list[str]) -> subprocess.Popen:
    port = flower["free_port"]()  # each SuperNode serves its own local Runtime API
    return flower["processes"].start(
        name,
        [
            str(flower["bin"] / "flower-supernode"),
            *tls,
            *auth,
            "--superlink",
            flower["address"],
            "--node-config",
            f"site='{site}'",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
    )


def _nodes(flower: dict) -> list[dict]:
    return node_keys.registered_nodes(CONNECTION, flower["registry"], flower["flwr"])


@pytest.fixture(scope="module")
def site_a(flower):
    """plant_a: its key made at the site, its public key registered, its SuperNode online."""
    key = node_keys.ensure_node_key("plant_a", flower["root"] / "sites" / "plant_a")
    [registered] = node_keys.ensure_registered(
        {"plant_a": key.public_key}, CONNECTION, flower["registry"], flower["flwr"]
    )
    process = _start_supernode(
        flower,
        "supernode-plant_a",
        "plant_a",
        node_keys.supernode_auth_args(key.private_key),
        pki.supernode_tls_args(flower["tls"]),
    )

    def online() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"plant_a's SuperNode exited {process.returncode}")
        return any(n["node_id"] == registered.node_id and n["status"] == "online" for n in _nodes(flower))

    flower["wait_until"]("plant_a online", online, timeout=60, every=1)
    return {"key": key, "node": registered, "process": process}


def test_the_superlink_answers_only_tls_that_our_ca_vouches_for(flower):
    tls = flower["tls"]
    context = ssl.create_default_context(cafile=str(tls.ca_cert))
    for name in ("localhost", "127.0.0.1"):
        with socket.create_connection(("127.0.0.1", flower["port"]), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname=name) as conn:
                served = conn.getpeercert(binary_form=True)
    assert served == x509.load_pem_x509_certificate(tls.server_cert.read_bytes()).public_bytes(Encoding.DER)
    # A client that trusts only the public roots refuses the certificate.
    with socket.create_connection(("127.0.0.1", flower["port"]), timeout=10) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            ssl.create_default_context(cafile=None).wrap_socket(raw, server_hostname="localhost")
    # Plain HTTP gets no HTTP answer.
    conn = http.client.HTTPConnection("127.0.0.1", flower["port"], timeout=10)
    with pytest.raises((http.client.HTTPException, OSError)):
        conn.request("POST", "/v1/control/list-nodes", body=b"")
        conn.getresponse()
    conn.close()


def test_the_flwr_cli_fails_in_plaintext(flower):
    # The same CLI over TLS (connection CONNECTION) is what every other test here uses.
    with pytest.raises(FlowerError, match="unavailable"):
        flwr(["ls", PLAINTEXT], flower["flwr"], timeout=CLI_TIMEOUT)


@pytest.fixture(scope="module")
def outsiders(flower, site_a):
    """Two SuperNodes the SuperLink must turn away, started together: one in plaintext, one with a key of its
    own that nobody registered. Returns once both have given up."""
    stranger = node_keys.ensure_node_key("plant_b", flower["root"] / "sites" / "plant_b")  # never registered
    tls = pki.supernode_tls_args(flower["tls"])
    started = {
        "supernode-plant_b": _start_supernode(
            flower, "supernode-plant_b", "plant_b", node_keys.supernode_auth_args(stranger.private_key), tls
        ),
        "supernode-plaintext": _start_supernode(
            flower, "supernode-plaintext", "plant_x", ["--insecure", "--max-retries", "1"], []
        ),
    }
    gave_up = lambda: all(p.poll() is not None for p in started.values())  # noqa: E731
    flower["wait_until"]("both outsiders give up", gave_up, timeout=90)
    return {"stranger": stranger, "exit": {name: p.returncode for name, p in started.items()}}


def test_a_plaintext_supernode_cannot_connect(flower, outsiders):
    # 305 is in its log; the exit status itself depends on how its SuperExec child shuts down.
    assert outsiders["exit"]["supernode-plaintext"] != 0
    log = flower["processes"].log("supernode-plaintext")
    assert "Exit Code: 305" in log and "Failed to initialize the connection to the SuperLink" in log
    assert node_keys.supernode_refusal(log) is None  # not an authentication refusal: it never got that far


def test_a_registered_supernode_connects_and_an_unregistered_one_is_refused(flower, site_a, outsiders):
    processes, stranger = flower["processes"], outsiders["stranger"]
    assert outsiders["exit"]["supernode-plant_b"] != 0
    assert node_keys.supernode_refusal(processes.log("supernode-plant_b")).startswith("refused by the SuperLink")
    assert node_keys.supernode_refusal(processes.log("supernode-plant_a")) is None
    assert node_keys.supernode_activated(processes.log("supernode-plant_a")) == site_a["node"].node_id
    assert node_keys.supernode_activated(processes.log("supernode-plant_b")) is None
    assert site_a["process"].poll() is None

    nodes = _nodes(flower)
    online = [(n["site"], n["node_id"]) for n in nodes if n["status"] == "online"]
    assert online == [("plant_a", site_a["node"].node_id)]
    assert all(n["site"] is not None for n in nodes)  # the SuperLink knows only keys we registered

    superlink_log = processes.log("superlink")
    keys = {"plant_a": site_a["key"].public_key, "plant_b": stranger.public_key}
    assert node_keys.refused_nodes(superlink_log, keys) == ["plant_b"]
    assert node_keys.refused_nodes(superlink_log) == [f"unknown key {stranger.fingerprint}"]
    # Only refusals since the SuperLink's latest start count.
    assert node_keys.refused_nodes(superlink_log + "\nINFO :      Starting Flower SuperLink\n", keys) == []


def test_registration_is_idempotent(flower, site_a):
    again = node_keys.ensure_registered(
        {"plant_a": site_a["key"].public_key}, CONNECTION, flower["registry"], flower["flwr"]
    )
    assert [(r.node_id, r.newly_registered) for r in again] == [(site_a["node"].node_id, False)]
    # Registering the same key directly: Flower says it is in use, which counts as registered.
    direct = node_keys.register_node(
        "plant_a", site_a["key"].public_key, CONNECTION, flower["registry"], flower["flwr"]
    )
    assert (direct.node_id, direct.newly_registered) == (site_a["node"].node_id, False)
    with pytest.raises(node_keys.NodeKeyError, match="registered for site plant_a"):
        node_keys.register_node("plant_z", site_a["key"].public_key, CONNECTION, flower["registry"], flower["flwr"])


def test_a_replaced_site_key_is_unregistered_and_cannot_come_back(flower, site_a, tmp_path):
    store = flower["root"] / "sites" / "plant_c"
    old = node_keys.ensure_node_key("plant_c", store)
    first = node_keys.register_node("plant_c", old.public_key, CONNECTION, flower["registry"], flower["flwr"])
    kept = shutil.copy(old.public_key, tmp_path / "old.pub")
    shutil.rmtree(node_keys.key_dir(store))  # the site makes a new key
    new = node_keys.ensure_node_key("plant_c", store)
    second = node_keys.register_node("plant_c", new.public_key, CONNECTION, flower["registry"], flower["flwr"])
    assert first.newly_registered and second.newly_registered and second.node_id != first.node_id
    status = {n["node_id"]: (n["site"], n["status"]) for n in _nodes(flower)}
    assert status[first.node_id] == ("plant_c", "unregistered")
    assert status[second.node_id] == ("plant_c", "registered")
    with pytest.raises(node_keys.NodeKeyError, match="was unregistered from the SuperLink"):
        node_keys.register_node("plant_c", Path(kept), CONNECTION, flower["registry"], flower["flwr"])


ECHO_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "mledge-tls-echo"
version = "0.1.0"
description = "Asks every SuperNode for its site name"
license = "Apache-2.0"
dependencies = ["flwr"]

[tool.flwr.app]
publisher = "mledge"

[tool.flwr.app.components]
serverapp = "tls_echo.server:app"
clientapp = "tls_echo.client:app"
"""

ECHO_SERVER = """\
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context) -> None:
    nodes = list(grid.get_node_ids())
    asks = [Message(RecordDict({"q": ConfigRecord({"x": 1})}), node, "query") for node in nodes]
    sites = sorted(r.content["a"]["site"] for r in grid.send_and_receive(asks, timeout=60) if r.has_content())
    if not nodes or len(sites) != len(nodes):
        raise RuntimeError(f"answers from {sites}, nodes {nodes}")  # the run ends finished:failed
"""

ECHO_CLIENT = """\
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.query()
def query(msg: Message, context) -> Message:
    return Message(RecordDict({"a": ConfigRecord({"site": str(context.node_config["site"])})}), reply_to=msg)
"""


def test_a_run_reaches_the_registered_site_over_tls(flower, site_a, tmp_path):
    """ServerApp (through the SuperLink's Runtime API) and ClientApp exchange a message: TLS and auth end to end."""
    app = tmp_path / "app"
    (app / "tls_echo").mkdir(parents=True)
    (app / "pyproject.toml").write_text(ECHO_PYPROJECT)
    (app / "tls_echo" / "__init__.py").write_text("")
    (app / "tls_echo" / "server.py").write_text(ECHO_SERVER)
    (app / "tls_echo" / "client.py").write_text(ECHO_CLIENT)
    run_id = submit_run({}, CONNECTION, app_dir=app, flwr_bin=flower["flwr"])
    info = await_run(run_id, timeout=120, connection=CONNECTION, flwr_bin=flower["flwr"], poll_s=3)
    assert info["status"] == "finished:completed", info
