"""``mledge sites ...``: the federation's sites as the platform sees them (registered, their edge workers), and
``mledge sites trainer``: a site's long-lived trainer, run at the site (mledge/onsite/trainer.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mledge.cli.common import add, at_site, group
from mledge.ops.settings import Settings


def cmd_sites_list(args: argparse.Namespace, settings: Settings) -> list[str]:
    return list(settings.sites)


def cmd_sites_worker(args: argparse.Namespace, settings: Settings) -> dict:
    """Whether the site's edge worker serves its queue now (what the DAGs check before a site's tasks)."""
    from mledge.ops.status import edge_workers, site_worker

    if args.site not in settings.sites:
        raise ValueError(f"unknown site {args.site!r}; registered sites: {', '.join(settings.sites)}")
    return site_worker(edge_workers(settings, user="platform"), args.site)


def _known(settings: Settings, site: str) -> None:
    if site not in settings.sites:
        raise ValueError(f"unknown site {site!r}; registered sites: {', '.join(settings.sites)}")


@at_site
def cmd_sites_trainer(args: argparse.Namespace, settings: Settings) -> dict:
    """Serve the site's trainer in the foreground until SIGTERM (the stack's ``trainer-<site>`` runs this)."""
    from mledge.onsite import trainer
    from mledge.onsite.trainer_client import socket_path

    if not args.store:  # a site of this deployment; with --store any site (a benchmark's simulated ones)
        _known(settings, args.site)
    store = Path(args.store) if args.store else settings.site_store(args.site)
    path = Path(args.socket) if args.socket else socket_path(store)
    return trainer.serve(args.site, store, path, app=args.app)


def cmd_sites_trainer_status(args: argparse.Namespace, settings: Settings) -> dict:
    """The site's trainer as it answers on its socket (run as the site's user, or root)."""
    from mledge.onsite.trainer_client import socket_path, status

    _known(settings, args.site)
    path = Path(args.socket) if args.socket else socket_path(settings.site_home(args.site))
    return status(path, site=args.site)


def register(commands: argparse._SubParsersAction) -> None:
    sites = group(commands, "sites", "the federation's sites")
    add(sites, "list", cmd_sites_list, "the registered sites, as a JSON list")
    p = add(sites, "worker", cmd_sites_worker, "whether a site's edge worker is connected and serving its queue")
    p.add_argument("--site", required=True)
    p = add(sites, "trainer", cmd_sites_trainer, "serve a site's long-lived trainer (at the site, in the foreground)")
    p.add_argument("--site", required=True)
    p.add_argument("--socket", help="its Unix socket (default: <site home>/trainer/trainer.sock)")
    p.add_argument("--store", help="the site's home and store (default: the deployment's home of --site)")
    p.add_argument("--app", default="fl.clientapp:app", help="the ClientApp whose handlers it runs")
    p = add(sites, "trainer-status", cmd_sites_trainer_status, "whether a site's trainer answers, and its state")
    p.add_argument("--site", required=True)
    p.add_argument("--socket", help="its Unix socket (default: <site home>/trainer/trainer.sock)")
