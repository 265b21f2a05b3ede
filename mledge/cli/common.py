"""What every command group shares: how a command is added to the parser, and small argument types."""

from __future__ import annotations

import argparse
from collections.abc import Callable

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
