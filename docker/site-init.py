#!/usr/bin/env python3
"""One site's setup in the production stack (docker-compose.yml's one-shot ``site-init-<site>``), done inside that
site's own volume and nowhere else: what ``mledge stack up`` prepares for a site (mledge/ops/stack.py ``prepare``
and ``init_site_data``), for one site.

- its SuperNode key pair, made here, so the private key never leaves the site's volume;
- a copy of the platform's CA certificate (public): its SuperNode and edge worker verify the gateways with it;
- its edge worker's AIRFLOW_HOME (0700);
- ``--batches`` generated demonstration batches in its store (0: none, for a site that brings its own data);
- an export of its *public* key as ``<export dir>/<site>.pub``, which the platform registers (``register-nodes``).

    site-init.py SITE --ca-cert FILE --export-dir DIR [--batches N]

The site's home is ``$MLEDGE_DATA_ROOT/<site>`` (mledge.ops.settings); it must exist (the site's volume). Prints one
JSON line (site, key fingerprint, files); never a key. Idempotent: an existing key pair and existing batches are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site")
    parser.add_argument("--ca-cert", type=Path, required=True, help="the platform's CA certificate (public)")
    parser.add_argument("--export-dir", type=Path, required=True, help="where <site>.pub goes for the platform")
    parser.add_argument("--batches", type=int, default=0, help="at least this many generated batches (default 0)")
    args = parser.parse_args(argv)

    from mledge.ops.components import site_ca
    from mledge.ops.settings import Settings
    from mledge.security import node_keys
    from mledge.security.files import private_dir, write_private

    settings, site = Settings(), args.site
    try:
        if site not in settings.sites:
            raise ValueError(f"unknown site {site!r}; sites: {', '.join(settings.sites)}")
        claimed = os.environ.get("MLEDGE_SITE")
        if claimed and claimed != site:
            raise ValueError(f"MLEDGE_SITE is {claimed!r}, not {site!r}")
        home = settings.site_home(site)
        if not home.is_dir():
            raise ValueError(f"{home} does not exist: mount the site's volume there (MLEDGE_DATA_ROOT/<site>)")
        ca_text = args.ca_cert.read_bytes()
        if b"BEGIN CERTIFICATE" not in ca_text:
            raise ValueError(f"{args.ca_cert} is not a PEM certificate")
        key = node_keys.ensure_node_key(site, home)
        ca = site_ca(settings, site)
        ca.parent.mkdir(parents=True, exist_ok=True)
        write_private(ca, ca_text, mode=0o644)  # public material; rewritten each time, so a new CA reaches the site
        private_dir(settings.edge_home(site))
        added: list[Path] = []
        if args.batches > 0:
            from mledge.onsite.profiles import site_profile
            from mledge.onsite.store import ensure_batches

            added = ensure_batches(settings.site_store(site), site_profile(site), args.batches)
        args.export_dir.mkdir(parents=True, exist_ok=True)
        exported = args.export_dir / f"{site}.pub"
        write_private(exported, key.public_key.read_bytes(), mode=0o644)
    except (OSError, ValueError, node_keys.NodeKeyError) as exc:
        print(f"site-init {site}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({
        "site": site, "home": str(home), "fingerprint": key.fingerprint, "ca_cert": str(ca),
        "public_key_exported": str(exported), "batches_added": len(added),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
