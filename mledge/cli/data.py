"""``mledge data ...``: the sites' generated data stores."""

from __future__ import annotations

import argparse

from mledge.cli.common import add, at_site, group
from mledge.contracts import SITES
from mledge.ops.settings import Settings


@at_site
def cmd_data_init(args: argparse.Namespace, settings: Settings) -> dict:
    from mledge.ops.stack import init_site_data

    return init_site_data(settings, args.batches, sites=[args.site] if args.site else None)


def register(commands: argparse._SubParsersAction) -> None:
    data = group(commands, "data", "site data stores")
    p = add(data, "init", cmd_data_init, "give every site at least N batches of generated data")
    p.add_argument("--batches", type=int, default=3)
    p.add_argument("--site", choices=list(SITES), help="only this site (a site's own container, say)")
