"""SuperNode authentication: each site's key pair, made where the site runs; only its public key is registered.

Where the keys live: ``<site store>/keys/`` (``$MLEDGE_HOME/sites/<site>/keys/`` in the local stack), directory
0700, ``supernode.key`` 0600 and ``supernode.pub`` 0644. The key is the site's identity, so it sits with the site's
own data (in the compose stack: the site's own volume, mounted into that site's SuperNode only), and not under
``$MLEDGE_HOME/secrets``, which holds the platform's secrets (CA, passwords) and is mounted where the SuperLink and
Airflow run. The private key never leaves that folder; the SuperNode reads it there.

Flower 1.41, commands and flags used (checked with ``--help`` and against a running SuperLink):

- SuperLink: ``flower-superlink --enable-supernode-auth`` (refuses to start without TLS: see ``mledge.pki``).
- Register: ``flwr supernode register <supernode.pub> <connection> --name <site> --format json`` answers
  ``{"success": true, "node-id": <int>}``; the node id is tied to the key for as long as it stays registered. A key
  registered before answers ``{"success": false, "error-message": "... [code: 23] Public key already in use."}``
  (exit status 0), which counts as registered here. The key must be an OpenSSH-format public key on a NIST curve;
  Ed25519 and PEM keys are refused, so keys are EC P-384 in OpenSSH format (private and public).
- List: ``flwr supernode list <connection> --format json`` gives node-id, owner-name, status
  (registered|online|offline|unregistered) and times, but not the name given at registration: the site of each
  node id is kept in a local registry file (``registry`` below, JSON) written at registration.
- Unregister: ``flwr supernode unregister <node-id> <connection> --format json``, used when a site's key was
  replaced, so that the old key stops working.
- SuperNode: ``flower-supernode --auth-supernode-private-key <supernode.key>`` (with ``--root-certificates``).

How a refusal shows (Flower 1.41):

- the SuperNode logs ``Exit Code: 305`` / ``[code: 2004] Failed to activate SuperNode.`` and exits non-zero
  (``supernode_refusal`` finds it in the latest start of a SuperNode's log; a plaintext SuperNode also logs
  ``Exit Code: 305``, but with a connection error instead of code 2004, and is not reported as refused);
- the SuperLink logs ``[/v1/fleet/activate-node][ApiError:2004] Attempted to register SuperNode with public key:
  b'-----BEGIN PUBLIC KEY-----\\n...', exception: No SuperNode found with the given public key.`` and answers HTTP
  412 (``refused_nodes`` turns those lines into the refused sites or key fingerprints).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fl.runs import FlowerError, flwr
from mledge.security.files import private_dir, tighten, write_private

PRIVATE_KEY = "supernode.key"  # pragma: allowlist secret (a file name)
PUBLIC_KEY = "supernode.pub"
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
ALREADY_REGISTERED = ("[code: 23]", "Public key already in use")
# The SuperLink's log line for a refused activation; the key is the repr of PEM bytes (newlines as "\n").
REFUSED_ACTIVATION = re.compile(
    r"\[/v1/fleet/activate-node\]\[ApiError:2004\] Attempted to register SuperNode with public key: "
    r"b'(?P<pem>-----BEGIN PUBLIC KEY-----.*?-----END PUBLIC KEY-----)(?:\\n)?'"
)
SUPERLINK_START = "Starting Flower SuperLink"
SUPERNODE_START = "Starting Flower SuperNode"
SUPERNODE_REFUSED = "[code: 2004] Failed to activate SuperNode"
SUPERNODE_ACTIVATED = re.compile(r"SuperNode ID: (\d+)")


class NodeKeyError(RuntimeError):
    """A site's key is unusable or a registration went wrong; the message names the site and the file."""


@dataclass(frozen=True)
class NodeKey:
    site: str
    private_key: Path
    public_key: Path
    fingerprint: str  # "SHA256:<base64>", as ``ssh-keygen -l`` prints it


@dataclass(frozen=True)
class RegisteredNode:
    site: str
    node_id: str | None  # None: registered earlier, by something that did not record the id here
    fingerprint: str
    newly_registered: bool


# --- the site's side: its key pair -------------------------------------------------------------------------


def key_dir(site_store: Path) -> Path:
    return Path(site_store) / "keys"


def private_key_path(site_store: Path) -> Path:
    """Where the site's private key is (or will be); creates nothing (for argv built before ``ensure_node_key``)."""
    return (key_dir(site_store) / PRIVATE_KEY).resolve()


def public_key_path(site_store: Path) -> Path:
    return (key_dir(site_store) / PUBLIC_KEY).resolve()


def ensure_node_key(site: str, site_store: Path) -> NodeKey:
    """Create the site's SuperNode key pair on first use, or reuse it; returns where it is and its fingerprint.

    An existing private key is the site's identity and is never replaced here: if it cannot be read, this fails
    saying which file, rather than silently making a new identity. A missing or stale public key is rewritten
    from the private key.
    """
    _check_site(site)
    directory = private_dir(key_dir(site_store))
    private_path, public_path = directory / PRIVATE_KEY, directory / PUBLIC_KEY
    if private_path.exists():
        try:
            key = serialization.load_ssh_private_key(private_path.read_bytes(), password=None)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise NodeKeyError(
                f"site {site}: {private_path} is not an unencrypted OpenSSH private key ({exc}); move it away to "
                "let a new key be made, then register the new public key"
            ) from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise NodeKeyError(f"site {site}: {private_path} is not an EC key; Flower needs a NIST EC key")
        tighten(private_path)
    else:
        key = ec.generate_private_key(ec.SECP384R1())
        write_private(
            private_path,
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            ),
        )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    public_line = public + f" mledge-{site}\n".encode()
    if not public_path.exists() or public_path.read_bytes().split()[:2] != public_line.split()[:2]:
        write_private(public_path, public_line, 0o644)
    return NodeKey(site, private_path.resolve(), public_path.resolve(), fingerprint(key.public_key()))


def fingerprint(public_key: ec.EllipticCurvePublicKey) -> str:
    """OpenSSH-style SHA256 fingerprint of a public key (the same for its OpenSSH and PEM forms)."""
    blob = public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).split()[1]
    digest = hashlib.sha256(base64.b64decode(blob)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def public_key_fingerprint(path: Path) -> str:
    """Fingerprint of an OpenSSH public key file; fails naming the file if it is not a NIST EC public key."""
    try:
        key = serialization.load_ssh_public_key(Path(path).read_bytes())
    except FileNotFoundError:
        raise NodeKeyError(f"public key file {path} does not exist") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise NodeKeyError(f"{path} is not an OpenSSH public key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise NodeKeyError(f"{path} is a {type(key).__name__}; Flower registers NIST EC keys only (e.g. P-384)")
    return fingerprint(key)


# --- what the processes are started with -----------------------------------------------------------------


def superlink_auth_args() -> list[str]:
    """``flower-superlink`` flag: only registered SuperNodes may connect (needs the TLS flags of mledge.pki)."""
    return ["--enable-supernode-auth"]


def supernode_auth_args(private_key: Path) -> list[str]:
    """``flower-supernode`` flag: sign requests with the site's private key (read where the site runs)."""
    return ["--auth-supernode-private-key", str(private_key)]


# --- the SuperLink operator's side: registration ----------------------------------------------------------


def register_node(
    site: str,
    public_key: Path,
    connection: str,
    registry: Path,
    flwr_bin: str = "flwr",
) -> RegisteredNode:
    """Register a site's public key with the SuperLink (``flwr supernode register --name <site>``); idempotent.

    ``registry``: the local JSON file mapping node ids to sites (kept beside the SuperLink's database). When the
    site had another key registered, that node is unregistered so that the old key stops working. A key that was
    unregistered cannot come back (Flower keeps it as used): that fails, saying to make a new key.
    The ``flwr`` CLI reads its connection from ``$FLWR_HOME/config.toml``.
    """
    _check_site(site)
    key_print = public_key_fingerprint(public_key)  # validates the file before the SuperLink sees it
    entries = _read_registry(registry)
    previous = next((e for e in entries if e["fingerprint"] == key_print), None)
    if previous and previous["site"] != site:
        raise NodeKeyError(
            f"site {site}: the public key {public_key} ({key_print}) was registered for site {previous['site']}; "
            "each site needs its own key"
        )
    if previous and previous.get("unregistered_at"):
        raise NodeKeyError(_revoked(site, public_key, key_print, previous))
    try:
        answer = flwr(["supernode", "register", str(public_key), connection, "--name", site], flwr_bin)
        node_id, new = str(answer["node-id"]), True
    except FlowerError as exc:
        if not any(marker in str(exc) for marker in ALREADY_REGISTERED):
            raise NodeKeyError(f"site {site}: registering {public_key} with the SuperLink failed: {exc}") from exc
        node_id, new = (previous or {}).get("node_id"), False
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    for old in entries:
        if old["site"] != site or old["fingerprint"] == key_print or old.get("unregistered_at"):
            continue
        if old.get("node_id"):
            _unregister(old["node_id"], connection, flwr_bin)
            old["unregistered_at"] = now
        else:  # registered by someone who did not record its node id: only `flwr supernode unregister` by hand
            old["superseded_at"] = now
    entries = [e for e in entries if e["fingerprint"] != key_print]
    entries.append(
        {
            "site": site,
            "node_id": node_id,
            "fingerprint": key_print,
            "public_key": Path(public_key).read_text().split("\n")[0],
            "registered_at": now if new or not previous else previous.get("registered_at", now),
            "unregistered_at": None,
        }
    )
    _write_registry(registry, entries)
    return RegisteredNode(site, node_id, key_print, new)


def ensure_registered(
    public_keys: Mapping[str, Path],
    connection: str,
    registry: Path,
    flwr_bin: str = "flwr",
) -> list[RegisteredNode]:
    """Make sure every site's public key (site -> ``supernode.pub``) is registered; what ``mledge up`` calls.

    One ``flwr supernode list`` tells which recorded nodes the SuperLink still knows; only the others are
    registered (about 2 s of CLI start-up each), so restarting a registered stack costs one CLI call.
    """
    recorded = {e["fingerprint"]: e for e in _read_registry(registry)}
    status = {str(n["node-id"]): n.get("status") for n in flwr(["supernode", "list", connection], flwr_bin)["nodes"]}
    done = []
    for site, public_key in public_keys.items():
        key_print = public_key_fingerprint(public_key)
        entry = recorded.get(key_print)
        state = status.get(entry["node_id"]) if entry and entry["site"] == site and entry.get("node_id") else None
        if state == "unregistered":
            raise NodeKeyError(_revoked(site, public_key, key_print, entry))
        if state is not None:
            done.append(RegisteredNode(site, entry["node_id"], key_print, newly_registered=False))
        else:  # never registered, or the SuperLink's database is new
            done.append(register_node(site, public_key, connection, registry, flwr_bin))
    return done


def _revoked(site: str, public_key: Path, key_print: str, entry: dict) -> str:
    return (
        f"site {site}: its key {public_key} ({key_print}) was unregistered from the SuperLink (node "
        f"{entry.get('node_id')}) and cannot be registered again; at the site, delete {Path(public_key).parent} "
        "so that a new key is made, then register that one"
    )


def _unregister(node_id: str, connection: str, flwr_bin: str) -> None:
    try:
        flwr(["supernode", "unregister", str(node_id), connection], flwr_bin)
    except FlowerError as exc:
        if "[code: 24]" not in str(exc):  # 24: node not found (already unregistered, or a new SuperLink database)
            raise


def registered_nodes(connection: str, registry: Path, flwr_bin: str = "flwr") -> list[dict]:
    """The SuperLink's nodes (``flwr supernode list``), each with the site it was registered for (or None).

    ``[{"node_id": "...", "site": "plant_a"|None, "status": "registered|online|offline|unregistered",
    "online_at": "...", "offline_at": "...", "created_at": "..."}]``
    """
    sites = registry_sites(registry)
    nodes = flwr(["supernode", "list", connection], flwr_bin)["nodes"]
    return [
        {
            "node_id": str(n["node-id"]),
            "site": sites.get(str(n["node-id"])),
            "status": n.get("status"),
            "created_at": n.get("created-at"),
            "online_at": n.get("online-at"),
            "offline_at": n.get("offline-at"),
        }
        for n in nodes
    ]


def registry_sites(registry: Path) -> dict[str, str]:
    """node id -> site, from the local registry file (empty if there is none yet)."""
    return {e["node_id"]: e["site"] for e in _read_registry(registry) if e.get("node_id")}


# --- refusals in the logs ----------------------------------------------------------------------------------


def refused_nodes(superlink_log: str, site_keys: Mapping[str, Path] | None = None) -> list[str]:
    """Who the SuperLink refused since its last start: a site name when the key is one of ``site_keys`` (site ->
    public key file), otherwise ``"unknown key SHA256:..."``. Each identity once, in order of first refusal.
    """
    start = superlink_log.rfind(SUPERLINK_START)
    text = superlink_log[start:] if start >= 0 else superlink_log
    by_print: dict[str, str] = {}
    for site, path in (site_keys or {}).items():
        try:
            by_print[public_key_fingerprint(path)] = site
        except NodeKeyError:
            continue  # a site without a usable key cannot be the one refused
    refused: list[str] = []
    for match in REFUSED_ACTIVATION.finditer(text):
        pem = match.group("pem").replace("\\n", "\n").encode()
        try:
            key = serialization.load_pem_public_key(pem)
        except (ValueError, UnsupportedAlgorithm):
            continue
        if not isinstance(key, ec.EllipticCurvePublicKey):
            continue
        key_print = fingerprint(key)
        who = by_print.get(key_print, f"unknown key {key_print}")
        if who not in refused:
            refused.append(who)
    return refused


def _latest_start(supernode_log: str) -> str:
    start = supernode_log.rfind(SUPERNODE_START)
    return supernode_log[start:] if start >= 0 else supernode_log


def supernode_activated(supernode_log: str) -> str | None:
    """The node id the SuperNode's latest start was accepted with (it logs it once activated), else None."""
    found = SUPERNODE_ACTIVATED.findall(_latest_start(supernode_log))
    return found[-1] if found else None


def supernode_refusal(supernode_log: str) -> str | None:
    """The refusal of the SuperNode's latest start, if the SuperLink refused it (unregistered key), else None."""
    if SUPERNODE_REFUSED not in _latest_start(supernode_log):
        return None
    return (
        "refused by the SuperLink: its public key is not registered (Flower error 2004, SuperNode exit code 305); "
        "register it with `flwr supernode register <site store>/keys/supernode.pub`"
    )


# --- internals ---------------------------------------------------------------------------------------------


def _check_site(site: str) -> None:
    if not SITE_NAME.match(site):
        raise NodeKeyError(f"site name {site!r}: use letters, digits, '_', '.', '-' (it becomes a path and a name)")


def _read_registry(registry: Path) -> list[dict]:
    path = Path(registry)
    if not path.exists():
        return []
    try:
        document = json.loads(path.read_text())
        entries = document["nodes"]
        if not all(isinstance(e, dict) and {"site", "fingerprint"} <= set(e) for e in entries):
            raise ValueError("every entry needs site and fingerprint")
    except (ValueError, KeyError, TypeError) as exc:
        raise NodeKeyError(f"SuperNode registry {path} is not valid ({exc}); fix or move it away") from exc
    return entries


def _write_registry(registry: Path, entries: list[dict]) -> None:
    path = Path(registry)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"nodes": sorted(entries, key=lambda e: (e["site"], e.get("registered_at", "")))}
    write_private(path, json.dumps(document, indent=2) + "\n")
