"""``mledge sites ...``: the federation's sites as the platform sees them (registered, their edge workers)."""

from __future__ import annotations

import argparse

from mledge.cli.common import add, group
from mledge.ops.settings import Settings


def cmd_sites_list(args: argparse.Namespace, settings: Settings) -> list[str]:
    return list(settings.sites)


def cmd_sites_worker(args: argparse.Namespace, settings: Settings) -> dict:
    """Whether the site's edge worker serves its queue now (what the DAGs check before a site's tasks)."""
    from mledge.ops.status import edge_workers, site_worker

    if args.site not in settings.sites:
        raise ValueError(f"unknown site {args.site!r}; registered sites: {', '.join(settings.sites)}")
    return site_worker(edge_workers(settings, user="platform"), args.site)


def register(commands: argparse._SubParsersAction) -> None:
    sites = group(commands, "sites", "the federation's sites")
    add(sites, "list", cmd_sites_list, "the registered sites, as a JSON list")
    p = add(sites, "worker", cmd_sites_worker, "whether a site's edge worker is connected and serving its queue")
    p.add_argument("--site", required=True)
