"""Free local ports for a test's own stack, so that it runs beside a running demo or another test's stack."""

from __future__ import annotations

import os
import socket


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int, start: int) -> list[int]:
    """`count` consecutive free ports (the SuperNodes take consecutive ones), from ``start`` on."""
    base = start + (os.getpid() % 500) * 20
    while not all(_free(p) for p in range(base, base + count)):
        base += count
    return list(range(base, base + count))
