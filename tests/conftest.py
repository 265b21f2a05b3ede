"""Helpers every test suite shares (both Python environments and the end-to-end tests): standard library only.

- ``free_ports(count)``: consecutive free local ports (SuperNodes take consecutive ones), so that a test's own
  services run beside a running demo or another test's stack.
- ``wait_until(what, check, timeout)``: poll ``check()`` until it returns something truthy, failing with what was
  awaited; for services coming up, never as a timing assertion.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def find_free_ports(count: int = 1, start: int | None = None) -> list[int]:
    """``count`` consecutive free ports on 127.0.0.1; from ``start`` on (spread by PID), else any the OS picks."""
    if start is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            start = s.getsockname()[1]
        if count == 1:
            return [start]
    base = start + (os.getpid() % 500) * 20
    while not all(_free(p) for p in range(base, base + count)):
        base += count
    return list(range(base, base + count))


def poll(what: str, check: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:
    """``check()`` until it returns something truthy (which is returned); TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s")
        time.sleep(every)


@pytest.fixture(scope="session")
def free_ports() -> Callable[..., list[int]]:
    return find_free_ports


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    return lambda: find_free_ports(1)[0]


@pytest.fixture(scope="session")
def wait_until() -> Callable[..., Any]:
    return poll
