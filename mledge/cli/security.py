"""``mledge pki|nodes|secrets|mlflow ...``: the SuperLink's CA, SuperNode keys, stored credentials, MLflow grants."""

from __future__ import annotations

import argparse
from pathlib import Path

from mledge.cli.common import add, group
from mledge.contracts import FLWR_CONNECTION
from mledge.ops.settings import Settings


def cmd_pki_init(args: argparse.Namespace, settings: Settings) -> dict:
    """The local CA and SuperLink certificate, and a key pair for each site whose store is here (mounted)."""
    from mledge.ops.components import superlink_hostnames
    from mledge.security import node_keys, pki

    tls = pki.ensure_tls(settings.secrets, hostnames=[*args.hostname, *superlink_hostnames()])
    keys = {
        site: node_keys.ensure_node_key(site, settings.site_store(site))
        for site in settings.sites
        if settings.site_store(site).is_dir()
    }
    return {
        "ca_cert": str(tls.ca_cert),
        "server_cert": str(tls.server_cert),
        "server_key": str(tls.server_key),
        "sites": {s: {"public_key": str(k.public_key), "fingerprint": k.fingerprint} for s, k in keys.items()},
    }


def cmd_nodes_register(args: argparse.Namespace, settings: Settings) -> list[dict]:
    """Register public keys with the SuperLink: <dir>/<site>.pub, or each site's own keys/supernode.pub."""
    from mledge.ops.components import supernode_registry
    from mledge.security import node_keys

    if args.public_keys_dir:
        keys = {p.stem: p for p in sorted(Path(args.public_keys_dir).glob("*.pub"))}
        if not keys:
            raise FileNotFoundError(f"no <site>.pub public key in {args.public_keys_dir}")
    else:
        here = [s for s in settings.sites if settings.site_store(s).is_dir()]
        keys = {s: node_keys.public_key_path(settings.site_store(s)) for s in here}
    done = node_keys.ensure_registered(keys, FLWR_CONNECTION, supernode_registry(settings), settings.flwr_bin)
    return [
        {"site": n.site, "node_id": n.node_id, "fingerprint": n.fingerprint, "newly_registered": n.newly_registered}
        for n in done
    ]


def cmd_nodes_list(args: argparse.Namespace, settings: Settings) -> list[dict]:
    from mledge.ops.components import supernode_registry
    from mledge.security import node_keys

    return node_keys.registered_nodes(FLWR_CONNECTION, supernode_registry(settings), settings.flwr_bin)


def cmd_mlflow_apply_permissions(args: argparse.Namespace, settings: Settings) -> dict:
    from mledge.security.mlflow_auth import apply_permissions

    return apply_permissions(settings)


def cmd_secrets_show(args: argparse.Namespace, settings: Settings) -> dict:
    """A stored credential, on request (the only place besides first setup where one is printed)."""
    from mledge.security import mlflow_auth

    identity = args.name.removeprefix("mlflow-")
    return {"url": settings.mlflow_uri, "username": identity, "password": mlflow_auth.show_password(settings, identity)}


def register(commands: argparse._SubParsersAction) -> None:
    pki = group(commands, "pki", "the SuperLink's local CA")
    p = add(pki, "init", cmd_pki_init, "create or reuse the local CA, SuperLink certificate and site key pairs")
    p.add_argument("--hostname", action="append", default=[], help="extra SuperLink name (repeatable)")
    nodes = group(commands, "nodes", "SuperNode keys")
    p = add(nodes, "register", cmd_nodes_register, "register site public keys with the SuperLink (idempotent)")
    p.add_argument("--public-keys-dir", default=None, help="folder of <site>.pub files (default: each site's key)")
    add(nodes, "list", cmd_nodes_list, "the SuperLink's SuperNodes with their sites and status")

    mlf = group(commands, "mlflow", "the tracking server")
    add(mlf, "apply-permissions", cmd_mlflow_apply_permissions, "users and grants of mlflow/permissions.toml")

    sec = group(commands, "secrets", "generated credentials")
    p = add(sec, "show", cmd_secrets_show, "print one stored credential, e.g. mlflow-admin (MLflow UI login)")
    p.add_argument("name", help="mlflow-<identity>: mlflow-admin, mlflow-platform, mlflow-plant_a, ...")
