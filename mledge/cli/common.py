"""What every command group shares: how a command is added to the parser, and small argument types."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path

Adder = Callable[..., argparse.ArgumentParser]


def add(group: argparse._SubParsersAction, name: str, func: Callable, help: str) -> argparse.ArgumentParser:
    """One subcommand ``name`` running ``func(args, settings)``; its result is printed as JSON."""
    sub = group.add_parser(name, help=help, description=help)
    sub.set_defaults(func=func)
    return sub


def group(commands: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:
    return commands.add_parser(name, help=help, description=help).add_subparsers(dest="sub", required=True)


def share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share within [0, 1]")
    return value


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def json_object(value: str) -> dict:
    """An argparse type: one JSON object (what another step printed)."""
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {type(parsed).__name__}")
    return parsed


def at_site(func: Callable) -> Callable:
    """Mark a command that reads or writes one site's store: run as root, it becomes the site's own user first."""
    func.at_site = True
    return func


def become_site(home: Path, site: str) -> None:
    """Run on as the owner of the site's home (its Unix user when the stack runs as root); a no-op otherwise, and
    when the site's home is not there yet. Files the command writes then belong to the site, as its worker's do."""
    if os.geteuid() != 0 or not home.exists():
        return
    owner = home.stat()
    if owner.st_uid == 0:
        return
    os.setgroups([])
    os.setgid(owner.st_gid)
    os.setuid(owner.st_uid)
